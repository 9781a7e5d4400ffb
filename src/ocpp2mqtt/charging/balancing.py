"""A group's capacity shared among the cars that charge, and solar surplus. Pure.

`allocate` is the whole policy: the capacity (the fuse minus what the rest of the
house draws, per phase, the worst phase) goes first to stations holding a reserve
(disconnected while charging: they run on without us), then by priority, higher
first; within one priority the current is shared equally (water filling), nobody
gets more than it can use, and a station that cannot get its minimum is paused
(0 A) rather than starved. The sum never exceeds the capacity.

`Solar` turns the grid power (W, export negative) into the current the solar-mode
stations may use, smoothed, with start/stop thresholds held for a while and minimum
on/off times, so a cloud does not make the charger's relays chatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("fast", "solar", "min_solar", "off")
GIVE_BACK_MARGIN = 2.0  # A above what a car draws that it keeps when it draws less


@dataclass(slots=True)
class Demand:
    """One station of a group, as the balancer sees it now."""

    station: str
    priority: int = 0
    min_current: float = 6.0
    max_current: float = 32.0  # what it may take (its own cap, a user limit, solar)
    active: bool = False  # a car is charging or wants to
    reserved: float = 0.0  # disconnected while charging: kept for it, not written
    steps: tuple[float, ...] | None = None


def allocate(capacity: float, demands: list[Demand]) -> dict[str, float]:
    """Amps per station; idle stations get 0. Σ ≤ max(capacity, 0)."""
    out = {d.station: 0.0 for d in demands}
    left = max(capacity, 0.0)
    for d in demands:
        if d.reserved > 0:
            take = min(d.reserved, left)
            out[d.station] = take
            left -= take
    wanting = [d for d in demands if d.active and d.reserved <= 0 and d.max_current > 0]
    for priority in sorted({d.priority for d in wanting}, reverse=True):
        tier = [d for d in wanting if d.priority == priority]
        # Admit as many as can get their minimum, in the order given (stable, fair).
        admitted = []
        for d in tier:
            floor = max(d.min_current, min(d.steps) if d.steps else 0.0)
            if floor <= left + 1e-9 and floor <= d.max_current + 1e-9:
                admitted.append(d)
                left -= floor
                out[d.station] = floor
        left = _fill(admitted, out, left)
    for d in demands:  # round down to what the charger offers
        if d.steps and out[d.station] > 0 and d.reserved <= 0:
            fitting = [s for s in d.steps if s <= out[d.station] + 1e-9]
            out[d.station] = max(fitting) if fitting else 0.0
    # Down to 0.1 A: a share rounded up could take the sum over the capacity.
    return {k: math.floor(v * 10 + 1e-9) / 10 if v > 0 else 0.0 for k, v in out.items()}


def _fill(admitted: list[Demand], out: dict[str, float], left: float) -> float:
    """Share `left` equally among `admitted` (on top of their minimum), each up to its
    maximum; what one cannot use goes to the others."""
    open_ = [d for d in admitted if out[d.station] < d.max_current - 1e-9]
    while open_ and left > 1e-6:
        share = left / len(open_)
        still = []
        for d in open_:
            room = d.max_current - out[d.station]
            give = min(share, room)
            out[d.station] += give
            left -= give
            if room > share + 1e-9:
                still.append(d)
        if len(still) == len(open_):
            break
        open_ = still
    return left


def give_back(cap: float | None, drawing: float | None, offered: float | None,
              min_current: float = 0.0) -> float | None:
    """The cap on a car's share after a fresh reading (None: no cap). A car that draws
    clearly less than it is offered keeps what it draws plus a margin (never less than
    its minimum: it would be paused, then offered everything again); the cap holds
    until the car uses nearly all it is offered."""
    if drawing is None or offered is None or offered <= 0:
        return cap
    if drawing < offered - GIVE_BACK_MARGIN:
        return max(drawing + GIVE_BACK_MARGIN, min_current)
    if drawing >= offered - GIVE_BACK_MARGIN / 2:
        return None
    return cap


@dataclass(slots=True)
class SolarTiming:
    smoothing_s: float = 30.0
    start_s: float = 60.0  # surplus above the minimum this long → start
    stop_s: float = 300.0  # surplus below the minimum this long → stop
    min_on_s: float = 300.0
    min_off_s: float = 300.0


@dataclass(slots=True)
class _Switch:
    on: bool = False
    since: float = float("-inf")  # when it last switched
    above_since: float | None = None
    below_since: float | None = None


@dataclass(slots=True)
class Solar:
    """The surplus loop of one group (grid power in W, export negative)."""

    timing: SolarTiming = field(default_factory=SolarTiming)
    voltage: float = 230.0
    surplus_w: float | None = None  # smoothed
    grid_at: float | None = None
    switches: dict[str, _Switch] = field(default_factory=dict)

    def reading(self, grid_w: float, now: float, drawing_w: float = 0.0) -> None:
        """A grid power reading, with what the solar stations drew at that moment (W):
        what they draw is part of the grid figure, so the surplus is drawing − grid. Taken
        together here, not later: a car's new current must not be counted against a
        grid figure from before it (that feedback would run the limit up)."""
        surplus = max(0.0, drawing_w - grid_w)
        if self.surplus_w is None or self.grid_at is None or self.timing.smoothing_s <= 0:
            self.surplus_w = surplus
        else:
            dt = max(now - self.grid_at, 0.0)
            alpha = min(1.0, dt / self.timing.smoothing_s) if dt > 0 else 0.0
            self.surplus_w += alpha * (surplus - self.surplus_w)
        self.grid_at = now

    def caps(self, now: float, stations: list[tuple[str, str, int, float]],
             fresh: bool) -> dict[str, float]:
        """Per solar/min_solar station (id, mode, phases, min A): the current the surplus
        allows. `fresh`: the grid reading is recent (else: no surplus)."""
        left = self.surplus_w if fresh and self.surplus_w is not None else 0.0
        out: dict[str, float] = {}
        for station, mode, phases, minimum in stations:
            amps = left / (phases * self.voltage) if phases else 0.0
            sw = self.switches.setdefault(station, _Switch())
            on = self._decide(sw, amps >= minimum, now)
            # On (or min_solar): at least the minimum, from the grid while a dip lasts.
            give = max(minimum, amps) if mode == "min_solar" or on else 0.0
            out[station] = give
            left = max(0.0, left - give * phases * self.voltage)
        return out

    def _decide(self, sw: _Switch, enough: bool, now: float) -> bool:
        t = self.timing
        if enough:
            sw.below_since = None
            above = sw.above_since = sw.above_since if sw.above_since is not None else now
            if not sw.on and now - above >= t.start_s and now - sw.since >= t.min_off_s:
                sw.on, sw.since = True, now
        else:
            sw.above_since = None
            below = sw.below_since = sw.below_since if sw.below_since is not None else now
            if sw.on and now - below >= t.stop_s and now - sw.since >= t.min_on_s:
                sw.on, sw.since = False, now
        return sw.on
