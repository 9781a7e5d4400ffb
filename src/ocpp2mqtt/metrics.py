"""Prometheus metrics: every counter the gateway keeps is one of these, so none can be
kept without being exported. Process and Python metrics come from prometheus-client's
own collectors; live gauges (connected stations, queue depth, …) are read at scrape time.

Each gateway has its own registry (tests run several gateways in one process).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocpp2mqtt import __version__

# `_created` series double every counter's output and nobody alerts on them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The classic text format; generate_latest() writes it for the names we use.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# → (kind "gauge" | "counter", name without _total, help, value)
LiveValues = Callable[[], Iterable[tuple[str, str, str, float]]]


class _Live(Collector):
    def __init__(self, read: LiveValues):
        self._read = read

    def collect(self) -> Iterable[Metric]:
        for kind, name, help_text, value in self._read():
            if kind == "counter":
                yield CounterMetricFamily(name, help_text, value=value)
            else:
                yield GaugeMetricFamily(name, help_text, value=value)


class Metrics:
    def __init__(self) -> None:
        self.started = time.monotonic()
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._build = _BuildInfo()
        r.register(self._build)
        self.messages_received = Counter(
            "ocpp2mqtt_ocpp_messages_received", "CALLs received from charge points and "
            "answered, by OCPP action.", ["action"], registry=r)
        self.frame_errors = Counter(
            "ocpp2mqtt_ocpp_frame_errors", "Frames or CALLs from charge points answered with a "
            "CALLERROR, by error code.", ["code"], registry=r)
        self.handshake_rejections = Counter(
            "ocpp2mqtt_ocpp_handshake_rejections", "WebSocket handshakes refused (bad station "
            "id, subprotocol, authentication, limits).", registry=r)
        self.rate_limited = Counter(
            "ocpp2mqtt_ocpp_rate_limited", "Times a charge point went over OCPP_RATE_LIMIT "
            "and was slowed down.", registry=r)
        self.foreign_transactions = Counter(
            "ocpp2mqtt_ocpp_foreign_transactions", "Messages naming a transaction id that "
            "belongs to another station (ignored).", registry=r)
        self.commands = Counter(
            "ocpp2mqtt_commands", "MQTT commands executed, by result status.", ["status"],
            registry=r)
        self.extension_errors = Counter(
            "ocpp2mqtt_extension_errors", "Exceptions raised by an extension (or an MQTT "
            "handler), caught before they reached a charger or another extension.",
            ["extension"], registry=r)
        self.upstream_messages = Counter(
            "ocpp2mqtt_upstream_messages", "Charger messages relayed to a back office, by "
            "upstream and result: answered, error (CALLERROR), invalid (answer not per schema),"
            " late (not answered within OCPP_UPSTREAM_TIMEOUT; still queued), dropped.",
            ["upstream", "result"], registry=r)
        self.upstream_commands = Counter(
            "ocpp2mqtt_upstream_commands", "CALLs from back offices, by upstream and outcome: "
            "relayed to the charger, blocked (not allowed), refused (names another station's "
            "transaction or connector).", ["upstream", "outcome"], registry=r)
        self.limit_writes = Counter(
            "ocpp2mqtt_current_limit_writes", "SetChargingProfile / ChangeConfiguration calls "
            "that set a current limit (each one a flash write at the charger), by kind (limit, "
            "renewal, failsafe) and result (applied, rejected, error).", ["kind", "result"],
            registry=r)
        self._received: dict[str, Counter] = {}

    def message_received(self, action: str) -> None:
        child = self._received.get(action)
        if child is None:  # labels() takes a lock and a dict lookup: cache the child
            child = self._received[action] = self.messages_received.labels(action)
        child.inc()

    def live(self, read: LiveValues) -> None:
        """Values read at every scrape from whoever keeps them (connected stations, the
        outbox's dropped messages, …)."""
        self.registry.register(_Live(read))

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BuildInfo(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("ocpp2mqtt_build_info", "Version of ocpp2mqtt and Python.",
                                   labels=["version", "python"])
        family.add_metric([__version__, sys.version.split()[0]], 1)
        yield family
