"""The last OCPP frames of every station, both directions, and refused handshakes.

In memory and bounded twice: WEB_MESSAGE_LOG_FRAMES per station, and
WEB_MESSAGE_LOG_BYTES for all stations together — when the total goes over, every
station's log loses its oldest quarter (a fleet of chatty chargers cannot push the
gateway's memory up; an idle station keeps its few frames).

Recording is on the OCPP hot path, so it only appends the frame as received or sent
(the string the session already holds, not a copy). Round-trip times are worked out
when someone reads the log: a CALL and the answer with its message id.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

ENTRY_OVERHEAD = 60  # bytes a logged frame costs beyond its text (time, list slots)
KEEP_WHEN_SHRINKING = 8  # frames an idle station keeps when the byte budget is hit
LOOKBACK = 64  # earlier frames read with new ones, to pair an answer with its CALL
REFUSALS_KEPT = 500  # refused handshakes remembered, all stations together


@dataclass(slots=True)
class Refusal:
    at: float
    station: str  # the id the charger asked for (the last path segment), may be ""
    ip: str
    status: int
    reason: str


class MessageLog:
    """Per station one flat list `[time, outgoing, frame, time, outgoing, frame, …]`: an
    idle charger's few frames cost a list, not a deque and a tuple each (measured: the
    difference is ~1 KiB per idle charger). The list may hold a quarter more than the
    limit; trimming then removes the excess at once, so appending stays O(1) amortised."""

    def __init__(self, frames_per_station: int, max_bytes: int):
        self.frames_per_station = frames_per_station
        self.max_bytes = max_bytes
        self.bytes = 0
        self._slack = max(1, frames_per_station // 4)
        self._logs: dict[str, list[Any]] = {}
        self.refusals: deque[Refusal] = deque(maxlen=REFUSALS_KEPT)

    # --- hot path -------------------------------------------------------------------
    def record(self, station: str, outgoing: bool, frame: str) -> None:
        """One frame: `outgoing` is gateway → charger."""
        if not self.frames_per_station:
            return
        log = self._logs.get(station)
        if log is None:
            log = self._logs[station] = []
        log += (time.time(), outgoing, frame)
        self.bytes += len(frame) + ENTRY_OVERHEAD
        if len(log) > 3 * (self.frames_per_station + self._slack):
            self._drop(log, len(log) // 3 - self.frames_per_station)
        if self.bytes > self.max_bytes:
            self._shrink()

    def _drop(self, log: list[Any], frames: int) -> None:
        self.bytes -= sum(len(log[i]) + ENTRY_OVERHEAD for i in range(2, 3 * frames, 3))
        del log[:3 * frames]

    def _shrink(self) -> None:
        # The busy stations' oldest quarter first; an idle station keeps its last few
        # frames unless that alone is not enough.
        for keep in (KEEP_WHEN_SHRINKING, 0):
            for station, log in list(self._logs.items()):
                frames = len(log) // 3
                if frames > keep:
                    self._drop(log, max(1, min(frames - keep, (frames + 3) // 4)))
                if not log:
                    del self._logs[station]
            if self.bytes <= self.max_bytes:
                return

    def refused(self, station: str, ip: str, status: int, reason: str) -> None:
        self.refusals.append(Refusal(time.time(), station, ip, status, reason))

    def forget(self, station: str) -> None:
        log = self._logs.pop(station, None)
        if log:
            self._drop(log, len(log) // 3)

    # --- reading --------------------------------------------------------------------
    def frames(self, station: str, after: float = 0.0) -> list[dict[str, Any]]:
        """The station's last frames, oldest first, with the round trip of each answer."""
        log = self._logs.get(station, [])[-3 * self.frames_per_station:]
        if after:
            # Only the frames after `after` (and a few before, for round trips) are read:
            # a page watching a busy station must not parse its whole log every tick.
            start = len(log)
            while start >= 3 and log[start - 3] > after:
                start -= 3
            log = log[max(0, start - 3 * LOOKBACK):]
        return entries(zip(log[0::3], log[1::3], log[2::3], strict=True), after)

    def last_at(self, station: str) -> float:
        log = self._logs.get(station)
        return float(log[-3]) if log else 0.0

    def refusals_of(self, station: str | None = None) -> list[dict[str, Any]]:
        return [{"at": iso(r.at), "station": r.station, "ip": r.ip, "status": r.status,
                 "reason": r.reason}
                for r in reversed(self.refusals) if station is None or r.station == station]


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def entries(frames: Iterable[tuple[float, bool, str]], after: float = 0.0,
            ) -> list[dict[str, Any]]:
    """Frames → documents: time, direction, message type, id, action, round trip. Pure."""
    calls: dict[tuple[bool, str], tuple[float, str]] = {}  # (sender, id) → (time, action)
    out = []
    for at, outgoing, frame in frames:
        doc: dict[str, Any] = {"t": at, "at": iso(at), "dir": "out" if outgoing else "in",
                               "frame": frame}
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError:
            msg = None
        if isinstance(msg, list) and len(msg) >= 3 and isinstance(msg[1], str):
            kind, message_id = msg[0], msg[1]
            doc["id"] = message_id
            if kind in (2, 5) and isinstance(msg[2], str):
                doc["type"] = "CALL" if kind == 2 else "SEND"
                doc["action"] = msg[2]
                calls[(outgoing, message_id)] = (at, msg[2])
            elif kind in (3, 4, 6):
                doc["type"] = {3: "CALLRESULT", 4: "CALLERROR", 6: "CALLRESULTERROR"}[kind]
                call = calls.pop((not outgoing, message_id), None)
                if call is not None:
                    doc["action"] = call[1]
                    doc["rtt_ms"] = round((at - call[0]) * 1000, 1)
        else:
            doc["type"] = "invalid"
        if at > after:
            out.append(doc)
    return out
