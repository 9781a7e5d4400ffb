"""Live values for open pages: an extension on the event stream, pushed as Server-Sent
Events.

While no page is open this costs one `if` per event. With pages open, an event marks
its station; every TICK the changed stations are rendered once (`views.station_row`)
and the same bytes go to every open page — a thousand chargers reporting every second
are one message of changed rows per tick, not a thousand. A page that looks at one
station also gets its full document and its new OCPP frames.

A page that cannot keep up (its queue is full) gets `resync` instead of an ever
longer queue: it reloads what it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.state import StateUpdate, StationState
from ocpp2mqtt.web import views
from ocpp2mqtt.web.message_log import MessageLog

TICK = 0.25  # seconds between pushes: smooth to watch, cheap with 1,000 stations
QUEUE = 32  # pushes a page may fall behind before it is told to resync


def sse(kind: str, data: Any) -> bytes:
    """One Server-Sent Event."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Page:
    """One open page's stream."""

    def __init__(self, station: str | None, frames_after: float):
        self.station = station
        self.frames_after = frames_after
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)

    def push(self, message: bytes) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(sse("resync", {}))


class LiveExtension(BaseExtension):
    name = "web"

    def __init__(self, log: MessageLog):
        self.log = log
        self.pages: set[Page] = set()
        self._dirty: dict[str, StationState] = {}
        self._task: asyncio.Task[Any] | None = None

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        if self.pages:
            self._dirty[event.station] = state

    def open(self, station: str | None, frames_after: float) -> Page:
        page = Page(station, frames_after)
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
            if self.log.last_at(station) > page.frames_after:
                frames = self.log.frames(station, page.frames_after)
                if frames:
                    page.frames_after = frames[-1]["t"]
                    page.push(sse("frames", frames))

    async def stop(self) -> None:
        self.pages.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
