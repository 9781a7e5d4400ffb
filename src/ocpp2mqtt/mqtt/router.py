"""Inbound MQTT → handlers, by topic filter.

`subscribe(filter, handler)` returns the function that undoes it. The broker
subscription exists while at least one handler wants the filter. A handler that
raises is logged and counted; the others still get the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ocpp2mqtt.mqtt.transport import Incoming, Transport

log = logging.getLogger("ocpp2mqtt.mqtt")

Handler = Callable[[Incoming], None]


def filter_levels(topic_filter: str) -> tuple[str, ...]:
    return tuple(topic_filter.split("/"))


def matches(levels: tuple[str, ...], topic: str) -> bool:
    """Whether a topic matches a filter split by `filter_levels` (MQTT 5 §4.7).

    paho's topic_matches_sub builds a matcher tree for every call: in a reconnect storm,
    when thousands of our own discovery documents come back, that was 3 % of the
    gateway's CPU. tests/test_router.py holds this to paho's answers."""
    parts = topic.split("/")
    system = topic.startswith("$")  # wildcards in the first level never match $SYS & co
    for i, level in enumerate(levels):
        if level == "#":
            return not (system and i == 0)
        if i >= len(parts):
            return False
        if level == "+":
            if system and i == 0:
                return False
        elif level != parts[i]:
            return False
    return len(parts) == len(levels)


class TopicRouter:
    def __init__(self, transport: Transport,
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.transport = transport
        self._exact: dict[str, list[Handler]] = {}
        self._wildcards: dict[str, list[Handler]] = {}
        # The text before a filter's first wildcard: a topic without it cannot match, and
        # startswith is cheaper than matching level by level (a fresh station's discovery
        # documents come back to us: thousands of messages in a reconnect storm).
        self._prefixes: dict[str, str] = {}
        self._levels: dict[str, tuple[str, ...]] = {}
        self._on_error = on_error
        transport.on_message = self.dispatch

    def subscribe(self, topic_filter: str, handler: Handler) -> Callable[[], None]:
        wildcard = "+" in topic_filter or "#" in topic_filter
        table = self._wildcards if wildcard else self._exact
        if wildcard:
            cut = min(i for i in (topic_filter.find("+"), topic_filter.find("#")) if i >= 0)
            prefix = topic_filter[:cut]
            if topic_filter[cut] == "#":
                prefix = prefix.removesuffix("/")  # "a/#" matches "a" too
            self._prefixes[topic_filter] = prefix
            self._levels[topic_filter] = filter_levels(topic_filter)
        handlers = table.setdefault(topic_filter, [])
        handlers.append(handler)
        if len(handlers) == 1:
            self.transport.subscribe(topic_filter)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            handlers.remove(handler)
            if not handlers and table.get(topic_filter) is handlers:
                del table[topic_filter]
                if wildcard:
                    del self._prefixes[topic_filter]
                    del self._levels[topic_filter]
                self.transport.unsubscribe(topic_filter)

        return unsubscribe

    def subscribed(self, topic_filter: str) -> bool:
        return topic_filter in self._exact or topic_filter in self._wildcards

    def dispatch(self, message: Incoming) -> None:
        handlers = list(self._exact.get(message.topic, ()))
        topic, prefixes, levels = message.topic, self._prefixes, self._levels
        for topic_filter, more in self._wildcards.items():
            if topic.startswith(prefixes[topic_filter]) and matches(levels[topic_filter], topic):
                handlers.extend(more)
        for handler in handlers:
            try:
                handler(message)
            except Exception as exc:
                name = getattr(handler, "__qualname__", repr(handler))
                log.exception("handler %s failed on %s", name, message.topic)
                if self._on_error is not None:
                    self._on_error(name, exc)
