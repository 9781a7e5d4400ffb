"""The MQTT subscriber process (paho): records what arrives, with the arrival time.

Runs in its own process and takes commands over a multiprocessing Pipe.
Retained messages (replayed on subscribe) are ignored: only live traffic
counts. Each record is (arrival unix time, client tag, topic, payload).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Recorder:
    _ids = itertools.count()

    def __init__(self, port: int, tag: str, records: list, lock: threading.Lock):
        self.tag = tag
        self.records = records
        self.lock = lock
        self._acks: dict[int, threading.Event] = {}
        self._connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{tag}-{os.getpid()}-{next(self._ids)}",
            protocol=paho.MQTTv311,
        )
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("subscriber could not connect to the broker")

    def _on_ack(self, client, userdata, mid, *rest) -> None:
        self._acks.setdefault(mid, threading.Event()).set()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.retain:
            return
        # Tags ending in "#size" keep the payload's length: Home Assistant documents are KiBs.
        payload = len(msg.payload) if self.tag.endswith("#size") else msg.payload
        record = (time.time(), self.tag, msg.topic, payload)
        with self.lock:
            self.records.append(record)

    def _acked(self, result: tuple[int, int | None]) -> None:
        rc, mid = result
        if rc != 0 or mid is None:
            raise RuntimeError(f"MQTT (un)subscribe failed: rc={rc}")
        event = self._acks.setdefault(mid, threading.Event())
        ok = event.wait(10)
        self._acks.pop(mid, None)
        if not ok:
            raise RuntimeError("no SUBACK/UNSUBACK within 10 s")

    def subscribe(self, filters: list[str]) -> None:
        for i in range(0, len(filters), 50):
            chunk = filters[i:i + 50]
            self._acked(self.client.subscribe([(f, 0) for f in chunk]))

    def unsubscribe(self, filters: list[str]) -> None:
        if filters:
            self._acked(self.client.unsubscribe(filters))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_value(port: int, topic: str, value: str, wait_s: float) -> bool:
    """Wait until `topic` carries `value` (retained or live)."""
    seen = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-wait-{os.getpid()}")

    def on_message(c, u, msg) -> None:
        if msg.payload.decode(errors="replace") == value:
            seen.set()

    client.on_connect = lambda c, *a: c.subscribe(topic, 1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return seen.wait(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()


def worker_main(conn: Any, port: int) -> None:
    records: list = []
    lock = threading.Lock()
    clients: dict[str, Recorder] = {}

    def recorder(tag: str) -> Recorder:
        if tag not in clients:
            clients[tag] = Recorder(port, tag, records, lock)
        return clients[tag]

    try:
        while True:
            try:
                cmd, kwargs = conn.recv()
            except (EOFError, OSError):
                break
            if cmd == "exit":
                break
            try:
                if cmd == "subscribe":
                    recorder(kwargs.get("tag", "main")).subscribe(kwargs["filters"])
                    result: Any = {"ok": True}
                elif cmd == "unsubscribe":
                    recorder(kwargs.get("tag", "main")).unsubscribe(kwargs["filters"])
                    result = {"ok": True}
                elif cmd == "take":
                    with lock:
                        taken = records[:]
                        records.clear()
                    result = {"records": taken}
                elif cmd == "count":
                    with lock:
                        result = {"count": len(records)}
                elif cmd == "wait_value":
                    result = {"ok": wait_value(port, **kwargs)}
                else:
                    result = {"error": f"unknown command {cmd}"}
            except Exception:
                result = {"error": traceback.format_exc()}
            conn.send(result)
    finally:
        for client in clients.values():
            client.close()
