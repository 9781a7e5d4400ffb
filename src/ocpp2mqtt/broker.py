"""A local Mosquitto for first runs on a machine with no broker.

Only used when MQTT_HOSTNAME/MQTT_PORT are left at localhost:1883, nothing
answers there, and EMBEDDED_BROKER=auto. We run the real Mosquitto as a child
process instead of an in-process Python broker: it is the broker most users
run anyway, and amqtt (the Python option) pins websockets to an old release,
which would hold back this package's core dependency.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("ocpp2mqtt.broker")


def broker_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def mosquitto_binary() -> str:
    """The mosquitto executable, or RuntimeError saying how to install it."""
    found = find_mosquitto()
    if not found:
        raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto")
    return found


class EmbeddedBroker:
    def __init__(self, port: int = 1883):
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> bool:
        binary = find_mosquitto()
        if binary is None:
            log.error(
                "no MQTT broker answers on localhost:%s and mosquitto is not installed: "
                "install it (apt-get install mosquitto) or set MQTT_HOSTNAME", self.port
            )
            return False
        self._dir = tempfile.TemporaryDirectory(prefix="ocpp2mqtt-broker-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            if broker_reachable("127.0.0.1", self.port, 0.2):
                break
            time.sleep(0.05)
        log.warning(
            "*** no MQTT broker was running: started an embedded Mosquitto on 127.0.0.1:%s "
            "(pid %s). Point MQTT_HOSTNAME at your own broker for real use. ***",
            self.port, self.process.pid,
        )
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._dir is not None:
            self._dir.cleanup()
