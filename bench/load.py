"""The load process: simulated charge points in one asyncio (uvloop) process.

Runs in its own process (see `Worker` in bench/run.py) and takes commands over
a multiprocessing Pipe: ("connect", {...}) → result dict. It reads the CPU
time of the processes under test itself, at the exact window boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from typing import Any

from bench.frames import MeterValuesFrame, boot_notification, iso_utc, status_notification
from bench.procs import cpu_percent, cpu_snapshot, raise_nofile
from bench.wsclient import CLIENTS

_RESULT = ord("3")  # a CALLRESULT frame starts with b"[3,"


class CallFailed(Exception):
    pass


class Charger:
    __slots__ = ("client", "name", "seq", "wh")

    def __init__(self, name: str, client: Any):
        self.name = name
        self.client = client
        self.seq = 0
        self.wh = 1_000_000

    def uid(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def expect_result(self, frame: bytes) -> bytes:
        reply = await self.client.call(frame)
        if reply[1] != _RESULT:
            raise CallFailed(reply[:300].decode(errors="replace"))
        return reply


def _spread(times: list[float], t0: float) -> dict:
    """p50 / p90 / max of `times` relative to t0, in seconds."""
    if not times:
        return {}
    d = sorted(t - t0 for t in times)
    return {"p50": d[len(d) // 2], "p90": d[int(len(d) * 0.9)], "max": d[-1]}


class Load:
    def __init__(self, client_kind: str):
        self.client_cls = CLIENTS[client_kind]
        self.chargers: list[Charger] = []
        self.meter = MeterValuesFrame()

    async def _boot(self, name: str, client: Any, boot: bool, timeout: float) -> Charger:
        charger = Charger(name, client)
        if boot:
            await asyncio.wait_for(charger.expect_result(boot_notification(charger.uid(), name)),
                                   timeout)
            await asyncio.wait_for(charger.expect_result(status_notification(charger.uid())),
                                   timeout)
        return charger

    async def cmd_connect(self, host: str, port: int, names: list[str], boot: bool = False,
                          concurrency: int = 100, open_timeout: float = 60.0,
                          pids: dict[str, int] | None = None) -> dict:
        """Connect chargers (at most `concurrency` handshakes at once; 0 = all at once),
        optionally each answering BootNotification then StatusNotification; with `pids`,
        also the CPU each process used meanwhile."""
        sem = asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()
        done_at: list[float] = []
        opened_at: list[float] = []

        async def one(name: str) -> Charger:
            async with sem:
                client = await self.client_cls.connect(host, port, f"/{name}", open_timeout)
                opened_at.append(time.time())
                charger = await self._boot(name, client, boot, open_timeout)
            done_at.append(time.time())
            return charger

        cpu0, m0 = (cpu_snapshot(pids) if pids else None), time.monotonic()
        t0 = time.time()
        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        cpu = (cpu_percent(cpu0, cpu_snapshot(pids), time.monotonic() - m0)
               if pids and cpu0 is not None else None)
        ok = [r for r in results if isinstance(r, Charger)]
        errors = [repr(r) for r in results if not isinstance(r, Charger)]
        self.chargers.extend(ok)
        return {"cpu_pct": cpu,
            "t0": t0, "last_done": max(done_at, default=t0), "seconds": time.time() - t0,
            "opened_s": _spread(opened_at, t0), "done_s": _spread(done_at, t0),
            "connected": len(ok), "failed": len(errors), "errors": errors[:3],
            "total": len(self.chargers),
        }

    async def cmd_close_all(self) -> dict:
        n = len(self.chargers)
        await asyncio.gather(*(c.client.aclose() for c in self.chargers),
                             return_exceptions=True)
        self.chargers.clear()
        await asyncio.sleep(0.2)
        return {"closed": n}

    async def _finish(self, tasks: list[asyncio.Task], timeout: float) -> list[str]:
        done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        return [repr(t.exception()) for t in done if not t.cancelled() and t.exception()][:3]

    async def cmd_ingest(self, warmup: float, duration: float, pids: dict[str, int]) -> dict:
        """Closed loop: every charger sends MeterValues back-to-back, each after its answer."""
        stop = False
        count = errors = 0
        build = self.meter.build

        async def run(charger: Charger) -> None:
            nonlocal count, errors
            call = charger.client.call
            ts = iso_utc(time.time())
            kwh = f"{charger.wh / 1000:.4f}"
            while not stop:
                charger.seq += 1
                reply = await call(build(str(charger.seq), ts, kwh))
                count += 1
                if reply[1] != _RESULT:
                    errors += 1

        tasks = [asyncio.create_task(run(c)) for c in self.chargers]
        await asyncio.sleep(warmup)
        c0, cpu0, t0 = count, cpu_snapshot(pids), time.monotonic()
        await asyncio.sleep(duration)
        c1, cpu1, t1 = count, cpu_snapshot(pids), time.monotonic()
        stop = True
        failures = await self._finish(tasks, 30)
        seconds = t1 - t0
        return {
            "calls": c1 - c0, "seconds": seconds, "calls_per_s": (c1 - c0) / seconds,
            "errors": errors, "failures": failures, "cpu_pct": cpu_percent(cpu0, cpu1, seconds),
        }

    async def cmd_rate(self, rate: float, duration: float, pids: dict[str, int],
                       start_delay: float = 0.3) -> dict:
        """Open loop: `rate` MeterValues/s spread evenly over all chargers, each carrying
        its send time (µs) as the meterValue timestamp. A charger still waits for the
        answer to its previous CALL; slots missed by more than one period are skipped."""
        n = len(self.chargers)
        period = n / rate
        t_start = time.time() + start_delay
        t_end = t_start + duration
        sent = answered = errors = skipped = 0
        max_lag = 0.0
        build = self.meter.build

        async def run(i: int, charger: Charger) -> None:
            nonlocal sent, answered, errors, skipped, max_lag
            call = charger.client.call
            next_t = t_start + period * i / n
            while next_t < t_end:
                now = time.time()
                if next_t > now:
                    await asyncio.sleep(next_t - now)
                    now = time.time()
                lag = now - next_t
                if lag > max_lag:
                    max_lag = lag
                if lag > period:
                    missed = int(lag // period)
                    skipped += missed
                    next_t += missed * period
                charger.wh += 7
                charger.seq += 1
                frame = build(str(charger.seq), iso_utc(time.time()), f"{charger.wh / 1000:.4f}")
                sent += 1
                reply = await call(frame)
                answered += 1
                if reply[1] != _RESULT:
                    errors += 1
                next_t += period

        await asyncio.sleep(max(0.0, t_start - time.time()))
        cpu0, m0 = cpu_snapshot(pids), time.monotonic()
        tasks = [asyncio.create_task(run(i, c)) for i, c in enumerate(self.chargers)]
        await asyncio.sleep(max(0.0, t_end - time.time()))
        cpu1, seconds = cpu_snapshot(pids), time.monotonic() - m0
        failures = await self._finish(tasks, 30)
        return {
            "rate": rate, "t_start": t_start, "t_end": t_end, "seconds": seconds,
            "sent": sent, "answered": answered, "errors": errors, "skipped": skipped,
            "max_lag_s": max_lag, "sent_per_s": sent / duration, "failures": failures,
            "cpu_pct": cpu_percent(cpu0, cpu1, seconds),
        }


async def _serve(conn: Any, client_kind: str) -> None:
    load = Load(client_kind)
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                cmd, kwargs = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):
                break
            if cmd == "exit":
                break
            try:
                result = await getattr(load, f"cmd_{cmd}")(**kwargs)
            except Exception:
                result = {"error": traceback.format_exc()}
            conn.send(result)
    finally:
        with contextlib.suppress(Exception):
            await load.cmd_close_all()


def worker_main(conn: Any, client_kind: str) -> None:
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(conn, client_kind))
    else:
        uvloop.run(_serve(conn, client_kind))
