"""Processes the benchmark starts (Mosquitto, the gateway, the ceiling server) and /proc readers.

Every child gets RLIMIT_NOFILE raised to its hard limit and PR_SET_PDEATHSIG,
so nothing outlives the benchmark even if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ocpp2mqtt.broker import mosquitto_binary

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_setup() -> None:
    """preexec_fn: more file descriptors, and die with the benchmark."""
    raise_nofile()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port() -> int:
    """A free TCP port for a server started later (Mosquitto, a gateway process).

    Below the kernel's ephemeral range: the port is released before the server binds it,
    and in between an outgoing connection must not take it as its source port (a test
    with 1,000 chargers opens 1,000 of those at once). A random pick, checked by binding,
    keeps parallel workers and concurrent runs apart.
    """
    low = min(_ephemeral_low(), 65536)
    for _ in range(1000):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- /proc ---------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # stat(5) fields 14 and 15


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def listen_drops() -> int:
    """TcpExt ListenDrops of this network namespace (SYNs dropped: accept queue full)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/net/netstat", encoding="ascii") as f:
            lines = [ln.split() for ln in f]
        names, values = next((a, b) for a, b in itertools.pairwise(lines)
                             if a[0] == "TcpExt:" and b[0] == "TcpExt:")
        return int(values[names.index("ListenDrops")])
    return 0


def host_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds: busy (all processes) and steal (taken by the hypervisor)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return {"host_busy": (user + nice + system + irq + softirq) / CLK_TCK,
            "host_steal": steal / CLK_TCK}


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            out[name] = cpu_seconds(pid)
    with contextlib.suppress(OSError, ValueError):
        out.update(host_cpu())
    return out


def cpu_percent(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    return {k: round(100 * (after[k] - before[k]) / seconds, 1)
            for k in before if k in after and seconds > 0}


# --- Mosquitto -------------------------------------------------------------------------
class Mosquitto:
    """A real Mosquitto on a free loopback port, with a temporary config."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
        )
        log = open(self.dir / "mosquitto.log", "wb")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
        log.close()
        wait_port(self.port, self.proc, 10, "mosquitto")
        return self

    def stop(self) -> None:
        stop_process(self.proc)


# --- the gateway ------------------------------------------------------------------------
# The variant measured beside the defaults: the features that run on every event off.
SWITCHED_OFF = {"HOMEASSISTANT_DISCOVERY": "false", "HTTP_ENABLED": "false"}


class GatewayProcess:
    """`python -m ocpp2mqtt` as a separate process, configured for the benchmark."""

    def __init__(self, mqtt_port: int, workdir: Path, basepath: str = "bench",
                 extra_env: dict[str, str] | None = None):
        self.mqtt_port = mqtt_port
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.http_port = free_port()
        self.basepath = basepath
        self.dir = Path(tempfile.mkdtemp(prefix="gw-", dir=workdir))
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> GatewayProcess:
        env = dict(os.environ)
        env.update(
            MQTT_HOSTNAME="127.0.0.1",
            MQTT_PORT=str(self.mqtt_port),
            LISTEN_ADDR="127.0.0.1",
            LISTEN_PORT=str(self.port),
            MQTT_USESTATIONNAME="true",
            MQTT_BASEPATH=self.basepath,
            # The defaults users run: Home Assistant discovery and the HTTP server (health,
            # metrics, the web page) on; scenarios add SWITCHED_OFF beside them.
            HTTP_ADDR="127.0.0.1",
            HTTP_PORT=str(self.http_port),
            EMBEDDED_BROKER="off",
            DATA_DIR=str(self.dir / "data"),
            LOG_LEVEL="WARNING",
            # The per-station flood guard (default 20 msg/s) would cap back-to-back
            # ingest at 20 CALLs/s per charger: off, to measure the gateway itself.
            OCPP_RATE_LIMIT="0",
        )
        env.update(self.extra_env)
        log = open(self.dir / "gateway.log", "wb")
        # cwd: the temp dir, so a developer's .env in the repo cannot change the set-up.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocpp2mqtt"], env=env, cwd=self.dir,
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_setup,
        )
        log.close()
        try:
            wait_port(self.port, self.proc, 30, "gateway")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{self.log_tail()}") from None
        return self

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.dir / "gateway.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        stop_process(self.proc, 30)


class CeilingProcess:
    """The bare parse-and-answer websockets server (bench/ceiling.py)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> CeilingProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling", "--port", str(self.port)],
            cwd=REPO, preexec_fn=child_setup,
        )
        wait_port(self.port, self.proc, 20, "ceiling server")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
