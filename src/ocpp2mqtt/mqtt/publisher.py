"""Durable publishing: nothing a charger reported is lost to a broker outage or a crash.

`publish` never awaits the broker: it appends to the current batch; at the end of
the event-loop tick the batch is written to the outbox (SQLite, one row per tick
and class) and, when the broker is up, handed to the transport. Sessions
`await durable()` before they answer a charger, so an answered reading is on disk.
A PUBACK deletes the row. While the broker is away rows accumulate (bounded) and
are replayed in order after reconnect; after a restart, whatever is left is
replayed too.

Whoever publishes says whether a message is *essential* (transactions, energy
registers, command results): over OUTBOX_MAX_BYTES only non-essential rows are
dropped, oldest first.
"""

from __future__ import annotations

import asyncio
import logging

from ocpp2mqtt.config import Settings
from ocpp2mqtt.mqtt.outbox import Message, Outbox
from ocpp2mqtt.mqtt.transport import Transport

log = logging.getLogger("ocpp2mqtt.mqtt")

# MQTT message ids are 16-bit: never have more than this many unacknowledged.
MAX_IN_FLIGHT = 20000
ACK_INTERVAL = 0.05  # PUBACKs are settled in batches: one outbox delete per interval


class DurablePublisher:
    def __init__(self, settings: Settings, transport: Transport, outbox: Outbox):
        self.settings = settings
        self.transport = transport
        self.outbox = outbox
        self.published = 0
        self.publish_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # This tick's queued messages in publish order, as runs of one class (essential
        # or not): one outbox row per run, so the bound can still drop non-essential ones.
        self._runs: list[tuple[bool, list[Message]]] = []
        self._flush_scheduled = False
        self._durable_waiters: list[asyncio.Future[None]] = []
        self._online = False  # broker up AND backlog replayed: new batches go straight out
        self._last_sent = 0  # highest outbox seq handed to the transport
        self._mid_seq: dict[int, int] = {}  # message id → outbox row
        self._remaining: dict[int, int] = {}  # outbox row → messages not yet acknowledged
        self._acked: list[int] = []
        self._delivered: list[int] = []
        self._replaying: asyncio.Task[None] | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._warned_drop = False
        transport.on_ack = self._acked.append

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.outbox.rows:
            log.info("outbox holds %d undelivered batches from before; they go out first",
                     self.outbox.rows)
        self._ack_task = asyncio.ensure_future(self._ack_loop())

    def connected(self) -> None:
        """The transport (re)connected: replay the backlog, then go online."""
        if self._stopping:
            return
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.ensure_future(self._replay())

    def disconnected(self) -> None:
        # What the transport already holds it resends itself after reconnecting; new batches
        # wait in the outbox until the replay has caught up.
        self._online = False

    async def stop(self, timeout: float = 5.0) -> None:
        """Flush, wait (bounded) for the broker to acknowledge, then disconnect."""
        if self._loop is None:
            return
        self._flush()
        deadline = self._loop.time() + timeout
        connected = self.transport.connected
        while connected.is_set() and self._loop.time() < deadline and (
            self._mid_seq or not self._online
        ):
            await asyncio.sleep(ACK_INTERVAL)
            self._process_acks()
        self._process_acks()
        self._stopping = True
        await self.transport.disconnect(deadline - self._loop.time())
        for task in (self._ack_task, self._replaying):
            if task is not None:
                task.cancel()
        self.outbox.close()

    async def _replay(self) -> None:
        """Hand the outbox backlog to the transport, oldest first, then go online."""
        replayed = 0
        while self.transport.connected.is_set() and not self._stopping:
            if len(self._mid_seq) > MAX_IN_FLIGHT:
                await asyncio.sleep(ACK_INTERVAL)
                continue
            rows = self.outbox.after(self._last_sent, 200)
            if not rows:
                self._online = True
                if replayed:
                    log.info("replayed %d queued messages to the broker", replayed)
                return
            for seq, messages in rows:
                self._send(seq, messages)
                replayed += len(messages)
            await asyncio.sleep(0)

    # --- publishing ------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: str | bytes,
        retain: bool = True,
        qos: int | None = None,
        essential: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        """Queue a message; never blocks, never raises for a missing broker."""
        qos = self.settings.mqtt_qos if qos is None else qos
        self.published += 1
        if correlation_data is not None or qos == 0:
            # Responses to MQTT v5 requests and QoS 0 messages skip the outbox.
            if qos == 0 and not self.transport.is_connected():
                self.publish_failures += 1
                return
            if self.transport.publish(topic, payload, qos, retain, correlation_data) is None:
                self.publish_failures += 1
            return
        if isinstance(payload, bytes):
            payload = payload.decode()
        message = (topic, payload, retain, qos)
        runs = self._runs
        if not essential and not runs and self._online and \
                len(self._mid_seq) < MAX_IN_FLIGHT:
            # Non-essential state (voltages, last_seen, …) goes straight out while the
            # broker is up and nothing is queued before it, not even in this tick (an
            # energy register must not arrive after its meter_timestamp): the transport keeps it
            # across a reconnect, and the next reading supersedes it anyway. Only a kill -9
            # in the few milliseconds before the broker's PUBACK can lose one.
            if self.transport.publish(topic, payload, qos, retain) is None:
                self.publish_failures += 1
            return
        if runs and runs[-1][0] == essential:
            runs[-1][1].append(message)
        else:
            runs.append((essential, [message]))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None, "publish() before start()"
            self._loop.call_soon(self._flush)

    @property
    def dirty(self) -> bool:
        """Messages are waiting for this tick's outbox write."""
        return self._flush_scheduled

    async def durable(self) -> None:
        """Wait until everything published so far is in the outbox on disk."""
        if not self._flush_scheduled:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._durable_waiters.append(fut)
        await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches, self._runs = self._runs, []
        tail: list[Message] = []
        if batches and not batches[-1][0] and self._online and \
                len(self._mid_seq) < MAX_IN_FLIGHT:
            # Non-essential messages after the tick's last essential one (a reading's
            # meter_timestamp, the state document) go out like the direct path, after the
            # rest, without an outbox row: the order holds and the outbox stays small.
            tail = batches.pop()[1]
        try:
            # Deletions of acknowledged rows are left to _ack_loop: fewer statements here.
            seqs = self.outbox.write(batches, [])
        except Exception:
            log.exception("outbox write failed; publishing without persistence")
            seqs = [0] * len(batches)
            self.publish_failures += 1
        if self._online and len(self._mid_seq) < MAX_IN_FLIGHT:
            for seq, (_, messages) in zip(seqs, batches, strict=True):
                self._send(seq, messages)
            publish = self.transport.publish
            for topic, payload, retain, qos in tail:
                if publish(topic, payload, qos, retain) is None:
                    self.publish_failures += 1
        elif batches:
            self._online = False
            dropped = self.outbox.enforce_bound(self._last_sent)
            if dropped and not self._warned_drop:
                self._warned_drop = True
                log.warning(
                    "outbox over OUTBOX_MAX_BYTES=%d: dropped the %d oldest non-essential "
                    "messages (energy, transactions and command results are kept)",
                    self.outbox.max_bytes, dropped,
                )
            if self.transport.connected.is_set() and (
                self._replaying is None or self._replaying.done()
            ):
                self._replaying = asyncio.ensure_future(self._replay())
        waiters, self._durable_waiters = self._durable_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _send(self, seq: int, messages: list[Message]) -> None:
        publish = self.transport.publish
        count = 0
        for topic, payload, retain, qos in messages:
            mid = publish(topic, payload, qos, retain)
            if mid is None:
                self.publish_failures += 1
                continue
            self._mid_seq[mid] = seq
            count += 1
        if seq:
            self._remaining[seq] = self._remaining.get(seq, 0) + count
            if count == 0:
                self._delivered.append(seq)
        self._last_sent = max(self._last_sent, seq)

    def _process_acks(self) -> None:
        acked = self._acked  # everything runs on the loop: nothing appends meanwhile
        for mid in acked:
            seq = self._mid_seq.pop(mid, None)
            if not seq:
                continue
            left = self._remaining[seq] - 1
            if left:
                self._remaining[seq] = left
            else:
                del self._remaining[seq]
                self._delivered.append(seq)
        acked.clear()
        if self._delivered:
            delivered, self._delivered = self._delivered, []
            self.outbox.write([], delivered)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            try:
                self._process_acks()
            except Exception:
                log.exception("outbox acknowledgement failed")

    def queue_depth(self) -> int:
        """Messages not yet acknowledged by the broker (in flight + waiting in the outbox)."""
        return len(self._mid_seq) + sum(len(m) for _, m in self._runs) + (
            0 if self._online else self.outbox.rows
        )
