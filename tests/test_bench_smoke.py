"""Smoke test of the benchmark: `python -m bench --quick` runs every scenario, tiny.

Asserts only that every figure is there and positive: no timing thresholds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import mosquitto_binary

REPO = Path(__file__).resolve().parent.parent

EXPECTED = [
    "ingest.10.gateway_calls_per_s", "ingest.10.ceiling_calls_per_s", "ingest.10.ratio_pct",
    "ingest.10.gateway_cpu_pct", "ingest.10.off_calls_per_s", "ingest.10.off_ratio_pct",
    "e2e.p50_ms", "e2e.p99_ms", "e2e.max_ms", "e2e.gateway_cpu_pct", "e2e.delivered_pct",
    "e2e.per_key_pct", "e2e.ceiling_calls_per_s", "e2e.gateway_cpu_reference_pct",
    "ramp.best_sustained_per_s",
    "storm.answered_s", "storm.on_broker_s", "storm.total_s", "storm.stations_on_broker",
    "memory.50.per_charger_kib", "memory.100.per_charger_kib", "memory.connected",
    "memory.50.off_per_charger_kib", "memory.100.off_per_charger_kib",
    "relay.off_calls_per_s", "relay.up_calls_per_s", "relay.down_calls_per_s",
    "relay.ceiling_calls_per_s", "relay.up_vs_off_pct",
    "publish.paho.cpu_us_per_msg", "publish.lean.cpu_us_per_msg", "publish.paho.vs_lean",
]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict:
    try:
        mosquitto_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"bench --quick failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def test_every_figure_present_and_positive(quick_results: dict) -> None:
    figures = quick_results["figures"]
    missing = [key for key in EXPECTED if key not in figures]
    assert not missing, f"missing figures: {missing}"
    not_positive = {key: fig["value"] for key, fig in figures.items()
                    if not fig["diagnostic"] and not fig["value"] > 0}
    assert not not_positive, f"figures that are not positive: {not_positive}"


def test_every_scenario_reported(quick_results: dict) -> None:
    assert quick_results["mode"] == "quick"
    assert set(quick_results["details"]) >= {"ingest", "e2e", "ramp", "storm", "memory",
                                              "relay"}
