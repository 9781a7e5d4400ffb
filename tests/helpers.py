"""Test parts: a real Mosquitto on a free port, an MQTT recorder, OCPP charge points."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call, call_result
from paho.mqtt.enums import CallbackAPIVersion

from bench.procs import free_port
from ocpp2mqtt.broker import mosquitto_binary


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


class PortTaken(RuntimeError):
    pass


class Mosquitto:
    """A real Mosquitto on a free loopback port; can be stopped and restarted."""

    def __init__(self, extra_conf: str = "", port: int | None = None):
        self.pick_port = port is None  # a free port chosen here may be taken meanwhile
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.dir = tempfile.TemporaryDirectory(prefix="mosq-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        for _ in range(5):
            try:
                return self._start()
            except PortTaken:
                # free_port() closes its socket before mosquitto binds: under many parallel
                # workers another process can take the port in between. Take another one.
                if not self.pick_port:
                    raise
                self.port = free_port()
        raise RuntimeError("mosquitto found no free port in 5 tries")

    def _start(self) -> Mosquitto:
        conf = Path(self.dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"max_queued_messages 100000\n{self.extra_conf}"
            # as root, mosquitto drops to user "mosquitto", which cannot write our temp dir
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        # Its log goes to a file: a pipe nobody reads fills up after some thousand
        # connections, and then mosquitto blocks on its next log line.
        self.log = Path(self.dir.name) / "mosquitto.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error = self.log.read_text(errors="replace")
                if "Address already in use" in error:
                    raise PortTaken(error)
                raise RuntimeError(f"mosquitto exited: {error}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), 0.2
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.dir.cleanup()


def postgres_bin() -> Path:
    """Debian's PostgreSQL server binaries (package postgresql, installed by scripts/test.sh)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise AssertionError("Debian's postgresql is not installed: ./scripts/test.sh installs "
                             "it (apt-get install postgresql)")
    return found[-1].parent


class Postgres:
    """A real PostgreSQL in a temporary directory on a free loopback port; can be stopped,
    killed and restarted. As root the server runs as the `postgres` user (it refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.bin = postgres_bin()
        self.user = "ocpp"
        self._databases = itertools.count(1)
        self.proc: subprocess.Popen | None = None
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o777)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                   self.user, "--no-sync", "-E", "UTF8", "--locale=C"])

    @staticmethod
    def _as_server_user() -> dict[str, Any]:
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              **self._as_server_user())
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stdout}{proc.stderr}")

    def start(self) -> Postgres:
        for _ in range(5):
            log = self.dir / "postgres.log"
            with log.open("ab") as out:
                self.proc = subprocess.Popen([
                    str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "max_connections=200"],
                    stdout=subprocess.DEVNULL, stderr=out, **self._as_server_user())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if self._accepts():
                    return self
                time.sleep(0.05)
            text = log.read_text(errors="replace")
            if self.proc.poll() is not None and "Address already in use" in text:
                self.port = free_port()  # taken between free_port() and the bind
                continue
            raise RuntimeError(f"postgres did not start: {text[-2000:]}")
        raise RuntimeError("postgres found no free port in 5 tries")

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as if it crashed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal({"fast": 2, "immediate": 3, "smart": 15}[mode])
            self.proc.wait(30)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    @property
    def text(self) -> str:
        return self.payload.decode()


class MqttRecorder:
    """Subscribes to a filter and records everything, with poll-with-timeout waits."""

    _ids = itertools.count()

    def __init__(self, port: int, topic: str = "#", protocol: int = paho.MQTTv311,
                 client_id: str | None = None, **tls: Any):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # A fixed client_id makes a persistent session (clean_session=False): the
        # broker keeps QoS 1 messages for us while we are away (e.g. broker restart).
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"recorder-{next(self._ids)}-{time.time_ns()}",
            protocol=protocol,
            clean_session=None if protocol == paho.MQTTv5 else client_id is None,
        )
        if tls:
            self.client.tls_set(**tls)
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # A resumed persistent session keeps its subscription; subscribing again
        # would replay retained messages as if they were new.
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)
        else:
            self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(
                Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                         getattr(msg, "properties", None))
            )

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1,
                properties: Any = None) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain,
                            properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def last(self) -> dict[str, str]:
        """Latest payload per topic."""
        return {m.topic: m.text for m in self.snapshot()}

    def values(self, topic: str) -> list[str]:
        return [m.text for m in self.snapshot() if m.topic == topic]

    async def wait_for(self, topic: str, value: str | None = None, timeout: float = 10.0) -> str:
        """Poll until `topic` has been received (with `value`, if given); return its payload."""
        deadline = time.monotonic() + timeout
        while True:
            for m in reversed(self.snapshot()):
                if m.topic == topic and (value is None or m.text == value):
                    return m.text
            if time.monotonic() > deadline:
                seen = sorted({m.topic for m in self.snapshot()})
                got = self.values(topic)
                raise AssertionError(
                    f"timed out waiting for {topic} = {value!r}; got {got!r}; topics seen: {seen}"
                )
            await asyncio.sleep(0.01)

    async def wait_count(self, topic: str, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.values(topic)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} messages on {topic}, got {self.values(topic)!r}"
                )
            await asyncio.sleep(0.01)
        return self.values(topic)


@dataclass
class Recorded:
    action: str
    payload: dict


class ChargePoint(OcppChargePoint):
    """An `ocpp` library charge point that records the calls it receives.

    `answers` overrides replies per action: a dict (the payload), "error"
    (raise → CALLERROR), or "silent" (never answer).
    """

    def __init__(self, cp_id: str, ws: Any):
        super().__init__(cp_id, ws, response_timeout=10)
        self.received: list[Recorded] = []
        self.answers: dict[str, Any] = {}
        self.got_call = asyncio.Event()

    def _record(self, action: str, **payload: Any) -> Any:
        self.received.append(Recorded(action, payload))
        self.got_call.set()
        return self.answers.get(action)

    async def wait_call(self, action: str, timeout: float = 10.0) -> Recorded:
        deadline = time.monotonic() + timeout
        while True:
            for r in self.received:
                if r.action == action:
                    return r
            if time.monotonic() > deadline:
                raise AssertionError(f"charger never received {action}; got {self.received}")
            await asyncio.sleep(0.01)


def _make_handler(action: str, result_cls: type, default: dict):
    async def handler(self, **payload):
        answer = self._record(action, **payload)
        if answer == "error":
            from ocpp.exceptions import GenericError

            raise GenericError(description="test charger refuses")
        if answer == "silent":
            await asyncio.sleep(3600)
        return result_cls(**(answer if isinstance(answer, dict) else default))

    handler.__name__ = f"on_{action}"
    return on(action)(handler)


_CP_DEFAULTS = {
    "CancelReservation": {"status": "Accepted"},
    "ChangeAvailability": {"status": "Accepted"},
    "ChangeConfiguration": {"status": "Accepted"},
    "ClearCache": {"status": "Accepted"},
    "ClearChargingProfile": {"status": "Accepted"},
    "DataTransfer": {"status": "Accepted"},
    "GetCompositeSchedule": {"status": "Accepted"},
    "GetConfiguration": {"configuration_key": [{"key": "HeartbeatInterval", "readonly": False,
                                                 "value": "300"}]},
    "GetDiagnostics": {"file_name": "diag.zip"},
    "GetLocalListVersion": {"list_version": 3},
    "RemoteStartTransaction": {"status": "Accepted"},
    "RemoteStopTransaction": {"status": "Accepted"},
    "ReserveNow": {"status": "Accepted"},
    "Reset": {"status": "Accepted"},
    "SendLocalList": {"status": "Accepted"},
    "SetChargingProfile": {"status": "Accepted"},
    "TriggerMessage": {"status": "Accepted"},
    "UnlockConnector": {"status": "Unlocked"},
    "UpdateFirmware": {},
}

for _action, _default in _CP_DEFAULTS.items():
    setattr(ChargePoint, f"on_{_action}",
            _make_handler(_action, getattr(call_result, _action), _default))


@dataclass
class Station:
    cp: ChargePoint
    ws: Any
    task: asyncio.Task
    calls: list = field(default_factory=list)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


async def connect_station(url: str, station: str, subprotocols=("ocpp1.6",), **kw) -> Station:
    ws = await websockets.connect(f"{url}/{station}", subprotocols=list(subprotocols), **kw)
    cp = ChargePoint(station, ws)
    task = asyncio.create_task(cp.start())
    return Station(cp, ws, task)


def three_phase_meter_value(timestamp: str, energy_wh: float = 1234.5) -> dict:
    """One meterValue entry: 3 × voltage/current, total power, energy register (8 values)."""
    sampled = []
    for i, phase in enumerate(("L1-N", "L2-N", "L3-N"), start=1):
        sampled.append({"value": f"{229 + i}.{i}", "measurand": "Voltage", "phase": phase,
                        "unit": "V"})
    for i, phase in enumerate(("L1", "L2", "L3"), start=1):
        sampled.append({"value": f"{15 + i}.5", "measurand": "Current.Import", "phase": phase,
                        "unit": "A"})
    sampled.append({"value": "11.04", "measurand": "Power.Active.Import", "unit": "kW"})
    sampled.append({"value": f"{energy_wh / 1000:.4f}", "unit": "kWh",
                    "measurand": "Energy.Active.Import.Register"})
    return {"timestamp": timestamp, "sampledValue": sampled}


__all__ = ["ChargePoint", "Mosquitto", "MqttRecorder", "call", "connect_station", "free_port"]
