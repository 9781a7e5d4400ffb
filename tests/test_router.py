"""The topic router's dispatch (mqtt/router.py): a cheap prefix check before MQTT's
matching rules must not change which handlers a message reaches. Pure: no broker."""

from __future__ import annotations

from paho.mqtt.client import topic_matches_sub

from ocpp2mqtt.mqtt.router import TopicRouter, filter_levels, matches
from ocpp2mqtt.mqtt.transport import Incoming

FILTERS = ["#", "a/#", "a/+", "a/+/c", "+/b", "+/+/c", "a/b/c", "$SYS/#", "ha/+/+/config",
           "ha/sensor/#", "x/y/#", "+", "+/#", "$SYS/+", "+/+", "/#", "/+", "a/b/#", "a/+/#",
           "+/+/+/+", "a//c", "/", "$SYS", "a/b"]
TOPICS = ["a", "a/", "a/b", "a/b/c", "a/b/c/d", "ab", "ab/c", "x/b", "x/y", "x/y/z", "b",
          "$SYS/load", "$SYS", "ha/sensor/cp1/config", "ha/switch/cp1/config", "/b", "a//c", "",
          "/", "//", "$SYS/", "$SYS/a/b", "a/b/", "x/y/", "$", "$a/b", "+", "a/+", "#"]


class Link:
    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.on_message = None

    def subscribe(self, topic: str) -> None:
        self.subscribed.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscribed.remove(topic)


def test_dispatch_reaches_exactly_the_matching_filters():
    router = TopicRouter(Link())  # type: ignore[arg-type]
    got: list[tuple[str, str]] = []
    for f in FILTERS:
        router.subscribe(f, lambda m, f=f: got.append((f, m.topic)))
    for topic in TOPICS:
        got.clear()
        router.dispatch(Incoming(topic, b"", False))
        assert sorted(f for f, _ in got) == sorted(
            f for f in FILTERS if topic_matches_sub(f, topic)), topic


def test_matching_agrees_with_paho_on_every_pair():
    for f in FILTERS:
        for topic in TOPICS:
            assert matches(filter_levels(f), topic) == topic_matches_sub(f, topic), (f, topic)
