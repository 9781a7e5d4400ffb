"""Bridge requests: `<basepath>/bridge/request/<name>` → `<basepath>/bridge/response/<name>`.

Zigbee2MQTT's convention: the request is a JSON object (its optional `id` comes
back in the answer) or, for simple requests, a bare string; the answer is
`{"id", "status": "ok" | "error", "data", "error"}`. Other extensions register the
requests they answer with `Context.handle_request` (Home Assistant discovery:
`remove_station`). A request published retained would run at every restart, and
MQTT 3.1.1 hides the retain flag of live messages: every request is cleared.

Several replicas on one base path (docs/scaling.md) all hear a request and all apply
it (each keeps its own view: a group limit, a discovery removal); with a shared store
only one of them — the live replica with the lowest id — answers it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from ocpp2mqtt.extensions import BaseExtension, BridgeResponse, Context, RequestHandler
from ocpp2mqtt.mqtt.transport import Incoming

log = logging.getLogger("ocpp2mqtt.bridge")


class BridgeExtension(BaseExtension):
    name = "bridge"

    def __init__(self, handlers: dict[str, RequestHandler],
                 answers: Callable[[], bool] = lambda: True):
        self.handlers = handlers  # filled by Context.handle_request
        self.answers = answers  # this replica publishes the responses

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        ctx.subscribe(ctx.topics.bridge_requests, self._on_request)

    def _on_request(self, message: Incoming) -> None:
        if not message.payload:
            return  # our own clearing of a retained request
        topics = self.ctx.topics
        name = topics.request_name(message.topic)
        if name is None:
            return
        self.ctx.publish(message.topic, b"", retain=True, qos=1)
        request: Any
        try:
            request = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            request = message.payload.decode(errors="replace").strip()
        request_id = request.get("id") if isinstance(request, dict) else None
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            response = BridgeResponse("error", {}, f"unknown request {name!r}; known: {known}")
        else:
            try:
                response = handler(request)
            except Exception:
                log.exception("bridge request %s failed", name)
                response = BridgeResponse("error", {}, "internal error")
        if not self.answers():
            return
        body = orjson.dumps({"id": request_id, "status": response.status, "data": response.data,
                             "error": response.error})
        self.ctx.publish(topics.bridge_response(name), body, retain=False)
