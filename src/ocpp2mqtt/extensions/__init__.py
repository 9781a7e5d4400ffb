"""Features that read the gateway's event stream (the Zigbee2MQTT "extension" idea).

Every event goes through one place, `ExtensionHost.emit`: the station's typed state
is updated (`state.apply`), then each extension's `on_event(event, state, update)`
runs. An extension sees the gateway only through its `Context`: publish,
subscribe (returning the unsubscribe), call a station, read the state, a clock,
bridge requests. An extension that raises is logged and counted
(`ocpp2mqtt_extension_errors_total{extension}`); the charger, the other
extensions and the gateway go on.

Handlers run inline on the OCPP hot path: they must never block; publishing only
queues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ocpp2mqtt import events as ev
from ocpp2mqtt.config import Settings
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.state import StateUpdate, Stations, StationState
from ocpp2mqtt.topics import Topics

log = logging.getLogger("ocpp2mqtt.extensions")

LOG_EVERY = 60.0  # seconds between repeated tracebacks of one failing extension


class Extension(Protocol):
    name: str

    def start(self, ctx: Context) -> None: ...

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None: ...

    def on_mqtt_connected(self) -> None: ...

    async def stop(self) -> None: ...


class BaseExtension:
    """Defaults for the optional parts of the contract."""

    name = "extension"
    ctx: Context

    def start(self, ctx: Context) -> None:
        self.ctx = ctx

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        pass

    def on_mqtt_connected(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass(slots=True)
class BridgeResponse:
    """The answer to a `<basepath>/bridge/request/<name>` request."""

    status: str  # "ok" | "error"
    data: dict[str, Any]
    error: str | None = None


RequestHandler = Callable[[Any], BridgeResponse]


class Context(Protocol):
    """What an extension may use of the gateway."""

    settings: Settings
    topics: Topics

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = True,
                qos: int | None = None, essential: bool = False) -> None: ...

    def publish_retained(self, messages: list[tuple[str, str, bool]]) -> None:
        """Several retained messages at MQTT_QOS, in order: (topic, payload, essential)."""

    def subscribe(self, topic_filter: str,
                  handler: Callable[[Incoming], None]) -> Callable[[], None]: ...

    async def call(self, station: str, action: str, payload: dict[str, Any]) -> Any: ...

    def state(self, station: str) -> StationState | None: ...

    def stations(self) -> Mapping[str, StationState]: ...

    def now(self) -> str: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def defer(self, fn: Callable[[], None], delay: float = 0.0) -> None:
        """Run `fn` once this event-loop tick is done (coalescing), or after `delay`
        seconds, fault-isolated."""

    def handle_request(self, name: str, handler: RequestHandler) -> None: ...

    @property
    def mqtt_connected(self) -> bool: ...


@dataclass
class GatewayContext:
    """The Context the composition root builds, one per extension (errors carry its name)."""

    name: str
    failed: Callable[[str], None]  # counts and logs; called inside an except block
    settings: Settings
    topics: Topics
    publish_fn: Callable[..., None]
    publish_retained_fn: Callable[[list[tuple[str, str, bool]]], None]
    subscribe_fn: Callable[[str, Callable[[Incoming], None]], Callable[[], None]]
    call_fn: Callable[[str, str, dict[str, Any]], Awaitable[Any]]
    stations_: Stations
    now_fn: Callable[[], str]
    spawn_fn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    requests: dict[str, RequestHandler]
    connected_fn: Callable[[], bool]

    def __post_init__(self) -> None:
        # Publishing is the hot path: the publisher's own methods, without a forwarding call.
        self.publish = self.publish_fn  # type: ignore[method-assign]
        self.publish_retained = self.publish_retained_fn  # type: ignore[method-assign,assignment]

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = True,
                qos: int | None = None, essential: bool = False) -> None:
        self.publish_fn(topic, payload, retain=retain, qos=qos, essential=essential)

    def publish_retained(self, messages: list[tuple[str, str, bool]]) -> None:
        self.publish_retained_fn(messages)

    def subscribe(self, topic_filter: str,
                  handler: Callable[[Incoming], None]) -> Callable[[], None]:
        name, failed = self.name, self.failed

        def guarded(message: Incoming) -> None:
            try:
                handler(message)
            except Exception:
                failed(name)

        return self.subscribe_fn(topic_filter, guarded)

    async def call(self, station: str, action: str, payload: dict[str, Any]) -> Any:
        return await self.call_fn(station, action, payload)

    def state(self, station: str) -> StationState | None:
        return self.stations_.states.get(station)

    def stations(self) -> Mapping[str, StationState]:
        return self.stations_.states

    def now(self) -> str:
        return self.now_fn()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.spawn_fn(self._guarded(coro))

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failed(self.name)
            return None

    def defer(self, fn: Callable[[], None], delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._run, fn)
        else:
            asyncio.get_running_loop().call_soon(self._run, fn)

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.failed(self.name)

    def handle_request(self, name: str, handler: RequestHandler) -> None:
        self.requests[name] = handler

    @property
    def mqtt_connected(self) -> bool:
        return self.connected_fn()


class ExtensionHost:
    """Runs the reducer and the extensions for every event, each fault-isolated."""

    def __init__(self, stations: Stations, extensions: list[Extension],
                 on_error: Callable[[str], None]):
        self.stations = stations
        self.extensions = extensions
        self._on_error = on_error
        self._last_logged: dict[str, float] = {}

    def start(self, context_for: Callable[[str], Context]) -> None:
        for extension in self.extensions:
            self._guard(extension.name, extension.start, context_for(extension.name))

    async def stop(self) -> None:
        for extension in self.extensions:
            try:
                await extension.stop()
            except Exception:
                self.failed(extension.name)

    def emit(self, event: ev.Event) -> None:
        """The one event stream: reduce into the station's state, then every extension."""
        try:
            state, update = self.stations.apply(event)
        except Exception:
            self.failed("state")
            return
        for extension in self.extensions:
            try:
                extension.on_event(event, state, update)
            except Exception:
                self.failed(extension.name)

    def mqtt_connected(self) -> None:
        for extension in self.extensions:
            self._guard(extension.name, extension.on_mqtt_connected)

    def _guard(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.failed(name)

    def failed(self, name: str) -> None:
        """Count an extension's exception; log its traceback at most once a minute."""
        self._on_error(name)
        now = time.monotonic()
        if now - self._last_logged.get(name, -LOG_EVERY) >= LOG_EVERY:
            self._last_logged[name] = now
            log.exception("extension %s failed (further failures within %g s are only "
                          "counted in ocpp2mqtt_extension_errors_total)", name, LOG_EVERY)

    def extension(self, kind: type) -> Any:
        return next(e for e in self.extensions if isinstance(e, kind))
