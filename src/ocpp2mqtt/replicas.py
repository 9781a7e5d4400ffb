"""Which gateway replica holds which station (docs/scaling.md).

Every replica publishes `<prefix>/state/gateway` = `{"id", "since"}` (retained)
when a station connects to it (state.py writes it with the Connected event) and
listens to everybody's claims. A claim by another replica means the station moved:
a stale connection here is closed without publishing DISCONNECTED, and commands
for it are left to (or handed over to) the new owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.mqtt.router import TopicRouter
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.ocpp.server import OcppServer
from ocpp2mqtt.ocpp.session import Session
from ocpp2mqtt.topics import Topics

log = logging.getLogger("ocpp2mqtt.gateway")


class Replicas:
    def __init__(self, topics: Topics, router: TopicRouter, server: OcppServer,
                 emit: Callable[[ev.Event], None], instance_id: str, started_at: str,
                 released: Callable[[str], None],
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any]):
        self.topics = topics
        self.router = router
        self.server = server
        self.emit = emit
        self.instance_id = instance_id
        self.started_at = started_at
        self.released = released  # the command runner lets go of the station
        self.spawn = spawn
        self.taken_over: dict[str, str] = {}  # station → the replica that has it now

    def start(self) -> None:
        if self.topics.owner_claims is not None:
            self.router.subscribe(self.topics.owner_claims, self._on_claim)

    def owner_of(self, station: str) -> str | None:
        """The other replica that holds `station`, if one claimed it."""
        return self.taken_over.get(station)

    def session_started(self, session: Session) -> None:
        self.taken_over.pop(session.station, None)

    def _on_claim(self, message: Incoming) -> None:
        station = self.topics.station_of(message.topic, "state/gateway")
        if station is None:
            return
        try:
            claim = orjson.loads(message.payload)
            owner, since = str(claim["id"]), str(claim["since"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        session = self.server.sessions.get(station)
        if owner == self.instance_id:
            if message.retain and session is None and since < self.started_at:
                # Our previous run held this station and died without saying goodbye
                # (kill -9, power cut): its retained CONNECTED is stale.
                self.emit(ev.Disconnected(station, utc_now(), reason="gateway restarted"))
            return
        # A claim older than our own connection is stale: a retained one replayed after a
        # broker restart, or a live one that took longer to arrive than the charger took
        # to move here (seen with a charger hopping between replicas within milliseconds).
        if session is not None and since > session.connected_at:
            log.info("%s was claimed by replica %s; closing our stale connection", station,
                     owner)
            session.taken_over = True
            self.spawn(session.ws.close(1001, "connected to another central system replica"))
        if session is None or session.taken_over:
            self.taken_over[station] = owner
            self.released(station)
