"""The MQTT publish path, candidates side by side (issue 18).

    ./scripts/bench.sh --only publish        # or: python -m bench.publish_paths

Each candidate runs in a process of its own (uvloop) against the same Mosquitto and
publishes the same messages: per-key state topics of 1,000 stations (`bench/CPnnnn/
state/<key>`, short payloads), QoS 1, in ticks of TICK messages — what the gateway's
publisher hands over per event-loop tick — and waits for every PUBACK before the next
tick but one (two ticks in flight). Measured: CPU µs per message of the publishing
process (user + system, all threads) and messages/s.

- `gateway` — the gateway's MQTT connection (`ocpp2mqtt.mqtt.lean.LeanTransport`).
- `paho` — paho-mqtt driven by the event loop (`bench/paho_transport.py`): the gateway's
  connection before issue 18 (until 2.5 for MQTT over WebSockets).
- `aiomqtt` — paho-mqtt under aiomqtt's asyncio wrapper (if installed).
- `gmqtt` — an asyncio-native client (if installed).
- `lean` — the floor: an asyncio Protocol that writes a whole tick's PUBLISH packets
  (topics pre-encoded) in one transport write and counts PUBACKs in bulk. Not a client
  (no reconnect, no subscriptions, nothing kept for a resend).

`pip install aiomqtt gmqtt` adds the optional candidates (the `bench` extra does).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATIONS = 1000
KEYS = ("power", "current_import", "voltage", "energy", "status", "meter_timestamp",
        "session_energy", "temperature", "soc", "current_offered", "frequency", "power_factor",
        "last_seen")
TICK = 500  # messages per tick
CANDIDATES = ("gateway", "paho", "aiomqtt", "gmqtt", "lean")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def messages(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        station = i // len(KEYS) % STATIONS
        key = KEYS[i % len(KEYS)]
        out.append((f"bench/CP{station:04d}/state/{key}", str(1000 + i % 977).encode()))
    return out


def _cpu() -> float:
    return time.process_time()  # this process, every thread, with ns resolution


# --- candidates ------------------------------------------------------------------------------
async def run_paho(port: int, msgs: list[tuple[str, bytes]]) -> None:
    from bench.paho_transport import MqttTransport

    await _run_transport(MqttTransport, port, msgs)


async def run_gateway(port: int, msgs: list[tuple[str, bytes]]) -> None:
    from ocpp2mqtt.mqtt.lean import LeanTransport

    await _run_transport(LeanTransport, port, msgs)


async def _run_transport(cls: Any, port: int, msgs: list[tuple[str, bytes]]) -> None:
    from ocpp2mqtt.config import load_settings

    settings = load_settings(_env_file=None, mqtt_hostname="127.0.0.1", mqtt_port=port)
    transport = cls(settings, f"bench-{cls.__name__}", "bench/transport/state")
    acked = 0
    done = asyncio.Event()
    wanted = len(msgs)

    def on_ack(mid: int) -> None:
        nonlocal acked
        acked += 1
        if acked >= wanted or acked % TICK == 0:
            done.set()

    transport.on_ack = on_ack
    transport.start()
    await transport.wait_connected(10)
    await _ticks(msgs, lambda t, p: transport.publish(t, p, 1, False), lambda: acked, done)
    await transport.disconnect(2)


async def run_aiomqtt(port: int, msgs: list[tuple[str, bytes]]) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-aiomqtt",
                              max_inflight_messages=0, max_queued_outgoing_messages=0) as c:
        # aiomqtt's publish awaits its PUBACK: a tick is TICK publishes gathered.
        for start in range(0, len(msgs), TICK):
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in msgs[start:start + TICK]))


async def run_gmqtt(port: int, msgs: list[tuple[str, bytes]]) -> None:
    import gmqtt
    from gmqtt.storage import PersistentStorage

    acked = 0
    done = asyncio.Event()
    wanted = len(msgs)

    class Counting(PersistentStorage):  # type: ignore[misc]
        """gmqtt's store of unacknowledged messages: a PUBACK removes one."""

        def remove_message_by_mid(self, mid: int) -> None:
            nonlocal acked
            super().remove_message_by_mid(mid)
            acked += 1
            if acked >= wanted or acked % TICK == 0:
                done.set()

    client = gmqtt.Client("bench-gmqtt", persistent_storage=Counting())
    await client.connect("127.0.0.1", port, version=gmqtt.constants.MQTTv311)
    await _ticks(msgs, lambda t, p: client.publish(t, p, qos=1), lambda: acked, done)
    await client.disconnect()


class _Lean(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.acked = 0
        self.connected = asyncio.get_running_loop().create_future()
        self.progress = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        client_id = b"bench-lean"
        body = (b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(client_id)) + client_id)
        transport.write(b"\x10" + _varint(len(body)) + body)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        i = 0
        n = len(buf)
        acked = 0
        while i + 2 <= n:
            kind = buf[i]
            length = buf[i + 1]  # PUBACK and CONNACK: 2
            if i + 2 + length > n:
                break
            if kind == 0x40:
                acked += 1
            elif kind == 0x20 and not self.connected.done():
                self.connected.set_result(None)
            i += 2 + length
        self.buf = buf[i:]
        if acked:
            self.acked += acked
            self.progress.set()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def run_lean(port: int, msgs: list[tuple[str, bytes]]) -> None:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_Lean, "127.0.0.1", port)
    await proto.connected
    topics: dict[str, bytes] = {}  # pre-encoded, as a gateway keeps them per station
    mid = 0
    for start in range(0, len(msgs), TICK):
        parts = []
        for topic, payload in msgs[start:start + TICK]:
            enc = topics.get(topic)
            if enc is None:
                raw = topic.encode()
                enc = topics[topic] = struct.pack("!H", len(raw)) + raw
            mid = mid % 65535 + 1
            body_len = len(enc) + 2 + len(payload)
            parts += (b"\x32", _varint(body_len), enc, mid.to_bytes(2, "big"), payload)
        assert proto.transport is not None
        proto.transport.write(b"".join(parts))
        while proto.acked < start:  # two ticks in flight
            proto.progress.clear()
            await proto.progress.wait()
    while proto.acked < len(msgs):
        proto.progress.clear()
        await proto.progress.wait()
    assert proto.transport is not None
    proto.transport.write(b"\xe0\x00")
    proto.transport.close()


async def _ticks(msgs: list[tuple[str, bytes]], publish: Callable[[str, bytes], Any],
                 acked: Callable[[], int], done: asyncio.Event) -> None:
    for start in range(0, len(msgs), TICK):
        for topic, payload in msgs[start:start + TICK]:
            publish(topic, payload)
        while acked() < start:  # two ticks in flight
            done.clear()
            await done.wait()
        await asyncio.sleep(0)
    while acked() < len(msgs):
        done.clear()
        await done.wait()


IMPORTS = {"gateway": ("ocpp2mqtt.config", "ocpp2mqtt.mqtt.lean"),
           "paho": ("ocpp2mqtt.config", "bench.paho_transport"),
           "aiomqtt": ("aiomqtt",), "gmqtt": ("gmqtt", "gmqtt.storage"), "lean": ()}
RUNNERS = {"gateway": run_gateway, "paho": run_paho, "aiomqtt": run_aiomqtt,
           "gmqtt": run_gmqtt, "lean": run_lean}


def _child(name: str, port: int, count: int, conn: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    msgs = messages(count)
    try:
        for module in IMPORTS[name]:  # outside the measurement
            importlib.import_module(module)
        cpu0, t0 = _cpu(), time.perf_counter()
        asyncio.run(asyncio.wait_for(RUNNERS[name](port, msgs), 300))
        cpu, wall = _cpu() - cpu0, time.perf_counter() - t0
        conn.send({"name": name, "messages": count, "cpu_us_per_msg": 1e6 * cpu / count,
                   "msgs_per_s": count / wall, "cpu_pct": 100 * cpu / wall})
    except ImportError as exc:
        conn.send({"name": name, "skipped": f"not installed ({exc.name})"})
    except Exception as exc:  # reported, not fatal: the other candidates still run
        conn.send({"name": name, "error": f"{type(exc).__name__}: {exc}"})


def measure(port: int, count: int, names: tuple[str, ...] = CANDIDATES) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")
    out = []
    for name in names:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(name, port, count, child), daemon=True)
        proc.start()
        if parent.poll(360):
            out.append(parent.recv())
        else:
            out.append({"name": name, "error": "timed out"})
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.procs import Mosquitto

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pub-") as tmp:
        broker = Mosquitto(Path(tmp)).start()
        try:
            rows = measure(broker.port, args.messages, tuple(args.only.split(",")))
        finally:
            broker.stop()
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
