"""Issue 2: configuration compatible with the original; bad values stop start-up clearly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ocpp2mqtt import __version__
from ocpp2mqtt.config import Settings, env_documentation

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_README = ROOT.parent / "shared" / "reference" / "original-ocpp2mqtt-README.md"

# The original README's tables: variable → documented default.
ORIGINAL_DEFAULTS = {
    "MQTT_HOSTNAME": "localhost", "MQTT_PORT": 1883, "MQTT_BASEPATH": "ocpp/test",
    "MQTT_USERNAME": "", "MQTT_TRANSPORT": "tcp", "MQTT_KEEPALIVE": 60, "MQTT_TIMEOUT": 30,
    "MQTT_RECONNECT_BASE_DELAY": 5, "MQTT_RECONNECT_MAX_DELAY": 60, "MQTT_CLIENT_ID": "",
    "MQTT_USESTATIONNAME": False, "MQTT_WEBSOCKET_PATH": "", "MQTT_WEBSOCKET_HEADERS": {},
    "LISTEN_ADDR": "0.0.0.0", "LISTEN_PORT": 3000, "AUTHORIZED_TAG_ID_LIST": [],
    "OCPP_COMMAND_RETRY_ATTEMPTS": 5, "OCPP_COMMAND_RETRY_BASE_DELAY": 0.3, "LOG_LEVEL": "INFO",
    "LOG_FILE": "", "LOG_MAX_SIZE": 10485760, "LOG_BACKUP_COUNT": 5,
    "LOG_DATE_FORMAT": "%Y-%m-%d %H:%M:%S",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.split("_")[0] not in ("MQTT", "LISTEN", "LOG", "OCPP", "HTTP")}
    env.update(extra)
    return env


def test_every_original_variable_keeps_name_and_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ORIGINAL_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    defaults = dict(env_documentation())
    for name, value in ORIGINAL_DEFAULTS.items():
        assert defaults[name] == value, name
    assert Settings().mqtt_password.get_secret_value() == ""


def test_original_readme_variables_are_all_known():
    if not ORIGINAL_README.exists():
        pytest.skip("shared reference not present")
    documented = set(re.findall(r"\| `([A-Z_]+)` \|", ORIGINAL_README.read_text()))
    assert documented <= set(dict(env_documentation())), documented - set(
        dict(env_documentation()))


def test_readme_documents_every_variable():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _ in env_documentation() if f"`{name}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_env_file_and_original_formats(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        'MQTT_BASEPATH=ocpp/\nMQTT_USESTATIONNAME=true\nAUTHORIZED_TAG_ID_LIST=["a","b"]\n'
        'EXPECTED_CHARGE_POINTS=["CP1"]\nLOG_LEVEL=debug\n'
    )
    s = Settings()
    assert s.mqtt_basepath == "ocpp"  # trailing slash of the original's example is harmless
    assert s.mqtt_usestationname is True
    assert s.authorized_tag_id_list == ["a", "b"]
    assert s.expected_charge_points == ["CP1"]
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("MQTT_PORT", "abc", "MQTT_PORT"),
        ("LISTEN_PORT", "70000", "LISTEN_PORT"),
        ("AUTHORIZED_TAG_ID_LIST", "[not json", "AUTHORIZED_TAG_ID_LIST"),
        ("AUTHORIZED_TAG_ID_LIST", '{"a": 1}', "AUTHORIZED_TAG_ID_LIST"),
        ("EXPECTED_CHARGE_POINTS", "CP1,CP2", "EXPECTED_CHARGE_POINTS"),
        ("EXPECTED_CHARGE_POINTS", '["ok", "bad/id"]', "EXPECTED_CHARGE_POINTS"),
        ("MQTT_TRANSPORT", "carrier-pigeon", "MQTT_TRANSPORT"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("MQTT_USESTATIONNAME", "perhaps", "MQTT_USESTATIONNAME"),
        ("MQTT_WEBSOCKET_HEADERS", "[1]", "MQTT_WEBSOCKET_HEADERS"),
        ("OCPP_TLS_CERT_FILE", "/nonexistent.pem", "OCPP_TLS_CERT_FILE"),
        ("MQTT_BATCH_MS", "500", "MQTT_BATCH_MS"),
    ],
)
def test_bad_value_stops_startup_naming_the_variable(tmp_path, var, value, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "ocpp2mqtt"], env=clean_env(**{var: value}), cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "configuration error" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_secret_value_is_not_echoed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ocpp2mqtt"], cwd=tmp_path, capture_output=True, text=True,
        env=clean_env(OCPP_BASIC_AUTH='{"CP1": "chargerpw"'), timeout=60,
    )
    assert proc.returncode == 2 and "OCPP_BASIC_AUTH" in proc.stderr
    assert "chargerpw" not in proc.stderr


def test_password_never_echoed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ocpp2mqtt", "check-config"],
        env=clean_env(MQTT_PASSWORD="hunter2", OCPP_BASIC_AUTH='{"CP1": "chargerpw"}'),
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "chargerpw" not in proc.stdout + proc.stderr and "CP1" in proc.stdout
    assert "MQTT_PASSWORD=**********" in proc.stdout


def test_cli_help_and_version(tmp_path):
    version = subprocess.run([sys.executable, "-m", "ocpp2mqtt", "--version"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert version.stdout.strip() == f"ocpp2mqtt {__version__}"
    helptext = subprocess.run([sys.executable, "-m", "ocpp2mqtt", "--help"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert helptext.returncode == 0 and "simulate" in helptext.stdout
    script = Path(sys.executable).parent / "ocpp2mqtt"
    assert subprocess.run([str(script), "--version"], capture_output=True,
                          timeout=60).returncode == 0


def test_docs_name_only_real_variables():
    known = {name for name, _ in env_documentation()}
    prefixes = ("MQTT", "OCPP", "CURRENT", "HTTP", "LOG", "LISTEN", "EXPECTED", "HOMEASSISTANT",
                "STATION", "DEFAULT", "OUTBOX", "EMBEDDED", "CONNECTOR", "MAX", "WS", "DATA",
                "HEARTBEAT", "AUTHORIZED")
    docs = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    for path in docs:
        names = set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
        unknown = {n for n in names if n.split("_")[0] in prefixes} - known
        assert not unknown, f"{path.name} names unknown variables {sorted(unknown)}"
