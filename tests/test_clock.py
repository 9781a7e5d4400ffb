"""The gateway's clock text (ocpp2mqtt/clock.py): one formatted text per second."""

from __future__ import annotations

from ocpp2mqtt import clock


def test_utc_now_is_iso_8601_utc_to_the_second_and_follows_the_clock(monkeypatch):
    now = [1_700_000_000.9]
    monkeypatch.setattr(clock.time, "time", lambda: now[0])
    assert clock.utc_now() == "2023-11-14T22:13:20Z"
    now[0] = 1_700_000_001.2  # the next second: a new text, not the remembered one
    assert clock.utc_now() == "2023-11-14T22:13:21Z"
    now[0] = 1_700_086_400.0  # a day later
    assert clock.utc_now() == "2023-11-15T22:13:20Z"


def test_precise_utc_now_has_microseconds():
    text = clock.utc_now(precise=True)
    assert text.endswith("Z") and len(text) == len("2023-11-14T22:13:20.123456Z")
