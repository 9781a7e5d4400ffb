"""Durable publishing: nothing a charger reported is lost to a broker outage or a crash.

`publish` never awaits the broker: it appends to the current batch. At the end of the
event-loop tick (or within MQTT_BATCH_MS, see `_schedule_flush`) the batch's essential
messages are written to the outbox (SQLite, one row) and, when the broker is up, the
whole batch is handed to the transport in publish order; while the broker is away,
every message goes to the outbox. Sessions `await durable()` before they answer a
charger, so an answered reading's energy and transaction are on disk. A PUBACK
deletes the row. While the broker is away rows accumulate (bounded) and are replayed
in order after reconnect; after a restart, whatever is left is replayed too.

Whoever publishes says whether a message is *essential* (transactions, energy
registers, command results): over OUTBOX_MAX_BYTES only non-essential messages are
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
COMPANY_PERIOD = 0.1  # seconds over which the sessions waiting for flushes are counted
ACK_INTERVAL = 0.05  # PUBACKs are settled in batches: one outbox delete per interval


class DurablePublisher:
    def __init__(self, settings: Settings, transport: Transport, outbox: Outbox):
        self.settings = settings
        self.transport = transport
        self.outbox = outbox
        self.published = 0
        self.publish_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # This tick's messages in publish order (see _flush for which reach the outbox).
        self._batch: list[Message] = []
        self._batch_essential = False
        self._flush_scheduled = False
        self._last_flush = 0.0
        self._window = settings.mqtt_batch_ms / 1000
        self._timer: asyncio.TimerHandle | None = None  # a flush waiting for company
        self.batched_flushes = 0  # flushes that waited the whole window
        self._waiting: set[int] = set()  # sessions waiting for the coming flush
        self._company: set[int] = set()  # sessions that waited in this period
        self._company_before = 0  # … and how many in the one before
        self._company_until = 0.0
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
        self._batch.append((topic, payload, retain, qos, essential))
        if essential:
            self._batch_essential = True
        if not self._flush_scheduled:
            self._schedule_flush()

    def publish_retained(self, messages: list[tuple[str, str, bool]]) -> None:
        """`publish` of retained messages at MQTT_QOS, in order: (topic, payload, essential)
        each. One call for the per-key topics of a reading."""
        qos = self.settings.mqtt_qos
        if qos == 0:
            for topic, payload, essential in messages:
                self.publish(topic, payload, essential=essential)
            return
        self.published += len(messages)
        append = self._batch.append
        for topic, payload, essential in messages:
            append((topic, payload, True, qos, essential))
            if essential:
                self._batch_essential = True
        if messages and not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        loop = self._loop
        assert loop is not None, "publish() before start()"
        # Group commit: with a reading or two per tick, as when 1,000 chargers report
        # once a second, the per-flush costs (a SQLite commit, a socket write, waking
        # the sessions) were most of the gateway's CPU (bench/README.md). A flush soon
        # after the last one waits until MQTT_BATCH_MS have passed, for company; one
        # after a quiet spell goes at once, and so does one that every charger heard
        # from lately already waits for (`durable`): nobody else is coming.
        wait = self._last_flush + self._window - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._flush)
        else:
            loop.call_soon(self._flush)

    @property
    def dirty(self) -> bool:
        """Messages are waiting for this tick's outbox write."""
        return self._flush_scheduled and (self._batch_essential or not self._online)

    async def durable(self, who: object = None) -> None:
        """Wait until everything published so far is in the outbox on disk. `who`: the
        session waiting (its charger waits for the answer, and sends nothing meanwhile)."""
        if not self.dirty:
            return
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        self._durable_waiters.append(fut)
        if who is not None:
            key = id(who)
            self._company.add(key)
            self._waiting.add(key)
            if self._timer is not None and \
                    len(self._waiting) >= max(len(self._company), self._company_before):
                self._timer.cancel()
                self._timer = None
                loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        assert self._loop is not None
        now = self._last_flush = self._loop.time()
        if self._timer is not None:
            self._timer = None
            self.batched_flushes += 1
        self._waiting.clear()
        if now >= self._company_until:  # who waited lately: this period and the last
            self._company_before, self._company = len(self._company), set()
            self._company_until = now + COMPANY_PERIOD
        batch, self._batch = self._batch, []
        online = self._online and len(self._mid_seq) < MAX_IN_FLIGHT
        # Online, only the essential messages need the disk; the rest (voltages, a
        # reading's meter_timestamp, the state document) go out with them, in publish
        # order, without an outbox row. The transport keeps them across a reconnect and
        # the next reading supersedes them; only a kill -9 in the few milliseconds before
        # the broker's PUBACK can lose one. Offline, everything waits in the outbox.
        row = [m for m in batch if m[4]] if online else batch
        self._batch_essential = False
        seq = 0
        if row:
            try:
                # Deletions of acknowledged rows are left to _ack_loop: fewer statements here.
                seq = self.outbox.write(row, [])
            except Exception:
                log.exception("outbox write failed; publishing without persistence")
                self.publish_failures += 1
        if online:
            self._send(seq, batch)
        elif row:
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
        """Hand messages to the transport; the essential ones' acks settle row `seq`."""
        publish = self.transport.publish
        mid_seq = self._mid_seq
        online = self._online
        count = 0
        for topic, payload, retain, qos, essential in messages:
            mid = publish(topic, payload, qos, retain)
            if mid is None:
                self.publish_failures += 1
            elif essential or not online:
                mid_seq[mid] = seq
                count += 1
            elif mid:
                mid_seq[mid] = 0  # no row to settle; counted in flight all the same
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
        return len(self._mid_seq) + len(self._batch) + (
            0 if self._online else self.outbox.rows
        )
