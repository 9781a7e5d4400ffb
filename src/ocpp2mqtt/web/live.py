"""Live values for open pages: an extension on the event stream, pushed as Server-Sent
Events.

While no page is open this costs one `if` per event. With pages open, an event marks
its station; every TICK the changed stations are rendered once (`views.station_row`)
and the same bytes go to every open page — a thousand chargers reporting every second
are one message of changed rows per tick, not a thousand. A page that looks at one
station also gets its full document and its new OCPP frames.

A page that cannot keep up (its queue is full) gets `resync` instead of an ever
longer queue: it reloads what it shows.

The extension also keeps what each charger last said about its configuration
(`Configurations`): a 1.6 GetConfiguration answer, or the 2.x NotifyReport parts
that follow a GetBaseReport, which arrive as events and are pushed to the
station's page as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.state import StateUpdate, StationState
from ocpp2mqtt.web import views
from ocpp2mqtt.web.message_log import MessageLog

TICK = 0.25  # seconds between pushes: smooth to watch, cheap with 1,000 stations
QUEUE = 32  # pushes a page may fall behind before it is told to resync
GATEWAY_EVERY = 8  # ticks between pushes of the gateway's status (2 s)


def sse(kind: str, data: Any) -> bytes:
    """One Server-Sent Event."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Page:
    """One open page's stream."""

    def __init__(self, station: str | None, frames_after: float, gateway: bool = False):
        self.station = station
        self.gateway = gateway  # wants the gateway's status every GATEWAY_EVERY ticks
        self.frames_after = frames_after
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)

    def end(self) -> None:
        """The gateway is stopping: the stream ends (an empty message)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(b"")

    def push(self, message: bytes) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(sse("resync", {}))


class Configurations:
    """The configuration keys each charger last reported: key → {key, readonly, value}."""

    def __init__(self) -> None:
        self._by_station: dict[str, tuple[float, dict[str, dict[str, Any]], list[str]]] = {}
        self._renewing: set[str] = set()  # a new report was asked for: it replaces the keys

    def expect_report(self, station: str, expected: bool = True) -> None:
        if expected:
            self._renewing.add(station)
        else:
            self._renewing.discard(station)

    def read(self, station: str, keys: list[dict[str, Any]], unknown: list[str]) -> None:
        """A whole GetConfiguration answer: replaces what was known."""
        entries = {str(k.get("key")): {"key": str(k.get("key")),
                                       "readonly": bool(k.get("readonly")),
                                       "value": k.get("value")} for k in keys}
        self._by_station[station] = (time.time(), entries, list(unknown))

    def reported(self, station: str, values: dict[str, str], readonly: frozenset[str]) -> None:
        """Part of a 2.x report: merged into what is known (the first part of a report the
        page asked for replaces it)."""
        _, entries, unknown = self._by_station.get(station, (0.0, {}, []))
        if station in self._renewing:
            self._renewing.discard(station)
            entries, unknown = {}, []
        for key, value in values.items():
            entries[key] = {"key": key, "readonly": key in readonly, "value": value}
        self._by_station[station] = (time.time(), entries, unknown)

    def changed(self, station: str, key: str, value: str) -> None:
        known = self._by_station.get(station)
        if known is not None and key in known[1]:
            known[1][key]["value"] = value

    def forget(self, station: str) -> None:
        self._by_station.pop(station, None)

    def document(self, station: str) -> dict[str, Any] | None:
        known = self._by_station.get(station)
        if known is None:
            return None
        at, entries, unknown = known
        keys = sorted(entries.values(), key=lambda k: str(k["key"]).lower())
        return {"at": at, "keys": keys, "unknown": unknown}


class LiveExtension(BaseExtension):
    name = "web"

    def __init__(self, log: MessageLog):
        self.log = log
        self.configurations = Configurations()
        self.pages: set[Page] = set()
        self._dirty: dict[str, StationState] = {}
        self._configured: set[str] = set()  # stations whose report grew since the last push
        self._task: asyncio.Task[Any] | None = None
        self._ticks = 0
        # The gateway view's document (web/app.py sets it): pushed to pages that show it.
        self.gateway_document: Callable[[], dict[str, Any]] | None = None

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        if type(event) is ev.ConfigurationReported:
            self.configurations.reported(event.station, event.values, event.readonly)
            self._configured.add(event.station)
        if self.pages:
            self._dirty[event.station] = state

    def open(self, station: str | None, frames_after: float, gateway: bool = False) -> Page:
        page = Page(station, frames_after, gateway)
        self.pages.add(page)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return page

    def close(self, page: Page) -> None:
        self.pages.discard(page)

    async def _run(self) -> None:
        while self.pages:
            await asyncio.sleep(TICK)
            self.ctx.defer(self.flush)  # fault-isolated and counted like on_event

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        configured, self._configured = self._configured, set()
        self._ticks += 1
        if self._ticks % GATEWAY_EVERY == 0 and self.gateway_document is not None:
            watching = [page for page in self.pages if page.gateway]
            if watching:
                status = sse("gateway", self.gateway_document())
                for page in watching:
                    page.push(status)
        if dirty:
            rows = sse("rows", [views.station_row(state) for state in dirty.values()])
        for page in list(self.pages):
            if dirty:
                page.push(rows)
            station = page.station
            if station is None:
                continue
            state = dirty.get(station)
            if state is not None:
                page.push(sse("station", views.station_detail(state)))
            if station in configured:
                page.push(sse("configuration", self.configurations.document(station)))
            if self.log.last_at(station) > page.frames_after:
                frames = self.log.frames(station, page.frames_after)
                if frames:
                    page.frames_after = frames[-1]["t"]
                    page.push(sse("frames", frames))

    def end_pages(self) -> None:
        """End every open page's stream, so the HTTP server can stop at once."""
        for page in self.pages:
            page.end()
        self.pages.clear()

    async def stop(self) -> None:
        self.end_pages()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
