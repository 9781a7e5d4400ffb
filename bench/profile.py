"""py-spy profiles of the gateway process: record collapsed stacks, summarise own time.

`py-spy record --format raw --function --full-filenames` writes one line per
distinct stack, "frame;frame;...;leaf count". The leaf is where the sample
was taken, so counting leaves gives each function's own (self) time;
counting each function once per stack gives inclusive time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.procs import REPO, child_setup

# Frames every sample of a thread passes through: left out of the inclusive ranking.
_SCAFFOLDING = ("runpy", "threading.py", "asyncio/runners.py", "ocpp2mqtt/cli.py",
                "ocpp2mqtt/__main__.py", "<frozen runpy>")
_SCAFFOLDING_FUNCS = ("Client._thread_main", "Client.loop_forever", "Client._loop")

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 200, idle: bool = False,
          delay: float = 0.0) -> subprocess.Popen | None:
    """py-spy record in the background; `idle` also samples waiting threads (wall clock)."""
    exe = py_spy()
    if exe is None:
        return None
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(rate), "--format", "raw", "--function", "--full-filenames",
           "--threads", "-o", str(out)]
    if idle:
        cmd.append("--idle")
    if delay > 0:
        cmd = ["sh", "-c", f'sleep {delay:.2f}; exec "$@"', "py-spy", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=child_setup)


def finish(proc: subprocess.Popen | None, timeout: float = 60) -> str:
    if proc is None:
        return "py-spy is not installed (.venv/bin/pip install py-spy)"
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace").strip().splitlines()[-1:][0] if err else ""


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return path.replace(str(REPO) + "/", "")


def area(path: str) -> str:
    """Which package a frame belongs to: ocpp2mqtt, websockets, paho, asyncio, ..."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/src/ocpp2mqtt/" in path:
        return "ocpp2mqtt"
    if "/lib/python3" in path:
        tail = path.split("/lib/python3", 1)[1].split("/", 1)
        return "stdlib:" + tail[1].split("/", 1)[0].removesuffix(".py") if len(tail) > 1 else path
    return path or "?"


def _frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), ""
    return m["func"], m["file"]


def _thread_kind(frames: list[tuple[str, str]]) -> str:
    for func, path in frames:
        if "paho" in path and func.endswith("_thread_main"):
            return "paho network thread"
        if "asyncio" in path and func.endswith("run"):
            return "event loop thread"
        if func.endswith("_worker") and "concurrent" in path:
            return "executor thread"
    return "other thread"


def summarise(raw: Path, top: int = 15) -> dict:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames and frames[0][0].startswith(("thread", "process")):
            frames = frames[1:]  # --threads puts "thread (0x…)" at the root
        if not frames:
            continue
        total += count
        threads[_thread_kind(frames)] += count
        func, path = frames[-1]
        own[f"{func} ({_short_file(path)})"] += count
        areas[area(path)] += count
        for name in {f"{fn} ({_short_file(p)})" for fn, p in frames
                     if not p.endswith(_SCAFFOLDING) and fn not in _SCAFFOLDING_FUNCS}:
            inclusive[name] += count

    def pct(counter: Counter[str], n: int) -> list[list]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)]

    if not total:
        return {"samples": 0, "own": [], "inclusive": [], "areas": [], "threads": []}
    return {"samples": total, "own": pct(own, top), "inclusive": pct(inclusive, top),
            "areas": pct(areas, 12), "threads": pct(threads, 5)}


def render(name: str, summary: dict) -> str:
    lines = [f"--- profile: {name} ({summary['samples']} samples)"]
    if not summary["samples"]:
        return lines[0] + "\n    (no samples)"
    lines.append("  by thread: " + ", ".join(f"{a} {p} %" for a, p in summary["threads"]))
    lines.append("  own time by package: " + ", ".join(f"{a} {p} %" for a, p in summary["areas"]))
    lines.append("  top functions by own time:")
    lines += [f"    {p:5.1f} %  {n}" for n, p in summary["own"]]
    lines.append("  top functions by inclusive time:")
    lines += [f"    {p:5.1f} %  {n}" for n, p in summary["inclusive"]]
    return "\n".join(lines)
