"""The relay's rules, as pure functions: where an upstream is, who decides an id tag, how
the charger's answer is made from the back offices' and ours, what a blocked command
is answered, which messages belong to a transaction. No sockets, no database.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

from ocpp2mqtt.config import UpstreamConfig
from ocpp2mqtt.ocpp import protocol

# (version family, action) → (path of the id tag in the request, field of its answer)
_TAG_FIELDS: dict[tuple[bool, str], tuple[tuple[str, ...], str]] = {
    (True, "Authorize"): (("idTag",), "idTagInfo"),
    (True, "StartTransaction"): (("idTag",), "idTagInfo"),
    (True, "StopTransaction"): (("idTag",), "idTagInfo"),
    (False, "Authorize"): (("idToken", "idToken"), "idTokenInfo"),
    (False, "TransactionEvent"): (("idToken", "idToken"), "idTokenInfo"),
}
# What a back office must never miss: kept in its queue however long it is away.
_TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent"})


def upstream_url(base: str, station_id: str) -> str:
    """The back office's URL for a station: the id as the last path segment, joined
    with exactly one `/`, as a charger configured with `base` would connect."""
    return f"{base.rstrip('/')}/{quote(station_id, safe='')}"


def basic_auth(user: str, password: str) -> str:
    """The Authorization header of OCPP security profile 1/2 (the user is the station id)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tag_of(version: protocol.OcppVersion, action: str, payload: dict[str, Any]) -> str | None:
    """The id tag (1.6) or id token (2.x) a charger's CALL asks about, if any."""
    found = _TAG_FIELDS.get((version is protocol.V16, action))
    if found is None:
        return None
    value: Any = payload
    for part in found[0]:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, str) else None


def answer_field(version: protocol.OcppVersion, action: str) -> str | None:
    """The answer's field that carries the tag's authorisation (idTagInfo, idTokenInfo)."""
    found = _TAG_FIELDS.get((version is protocol.V16, action))
    return found[1] if found else None


def decider(upstreams: Sequence[UpstreamConfig], tag: str) -> UpstreamConfig | None:
    """Who decides whether `tag` may charge: the upstream listing it in `tags`, else a
    primary without `tags`, else nobody (the gateway, locally)."""
    for upstream in upstreams:
        if upstream.tags is not None and tag in upstream.tags:
            return upstream
    for upstream in upstreams:
        if upstream.role == "primary" and upstream.tags is None:
            return upstream
    return None


def is_transactional(version: protocol.OcppVersion, action: str,
                     payload: dict[str, Any]) -> bool:
    """A message of a transaction: never dropped from a queue (1.6 MeterValues only
    when it names a transaction)."""
    if action in _TRANSACTION_ACTIONS:
        return True
    return version is protocol.V16 and action == "MeterValues" and "transactionId" in payload


@cache
def answer_matters(version: protocol.OcppVersion, action: str) -> bool:
    """Whether the answer to `action` says anything (MeterValues.conf is `{}`): only then
    is a back office's answer worth waiting for."""
    name = version.schema_name(action, response=True)
    if not protocol.has_schema(version, name):
        return False
    properties = protocol.load_schema(version.package, name).get("properties", {})
    return any(key != "customData" for key in properties)


def status_key(payload: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a StatusNotification news (a repeat of it may be coalesced)."""
    return (payload.get("connectorId"), payload.get("evseId"), payload.get("status"),
            payload.get("connectorStatus"), payload.get("errorCode"), payload.get("info"),
            payload.get("vendorErrorCode"))


def rejection(version: protocol.OcppVersion, action: str) -> dict[str, Any] | None:
    """The answer that refuses `action` in its own terms — `{"status": "Rejected"}` where
    the response has only a status and "Rejected" is one of its values — else None
    (refuse with CALLERROR NotSupported)."""
    name = version.schema_name(action, response=True)
    if not protocol.has_schema(version, name):
        return None
    schema = protocol.load_schema(version.package, name)
    if schema.get("required") != ["status"]:
        return None
    status = schema.get("properties", {}).get("status", {})
    ref = status.get("$ref")
    if isinstance(ref, str):
        status = schema.get("definitions", {}).get(ref.rsplit("/", 1)[-1], {})
    return {"status": "Rejected"} if "Rejected" in status.get("enum", ()) else None


@dataclass(slots=True)
class Decision:
    """What the back offices decided about one charger CALL, in time to answer it."""

    primary: dict[str, Any] | None = None  # the primary's (schema-checked) answer
    tag_info: dict[str, Any] | None = None  # the deciding upstream's idTagInfo/idTokenInfo
    transaction_id: int | None = None  # 1.6 StartTransaction: the id the primary gave

    def tag_status(self, local: str) -> str:
        """The tag's status for the gateway's own state: the decider's, unless the
        homeowner blocked charging (`local` is then "Blocked")."""
        if local == "Blocked" or self.tag_info is None:
            return local
        status = self.tag_info.get("status")
        return status if isinstance(status, str) else local

    def merge(self, version: protocol.OcppVersion, action: str,
              local: dict[str, Any]) -> dict[str, Any]:
        """The charger's answer: the primary's if it answered, else ours; the tag's
        authorisation from whoever decides it; a 1.6 transaction id as our handler
        recorded it (the primary's, when it gave one)."""
        out = dict(self.primary) if self.primary is not None else dict(local)
        field = answer_field(version, action)
        if field is not None and field in local:
            mine = local[field]
            verdict = self.tag_info
            same = verdict is not None and verdict.get("status") == mine.get("status")
            # The decider's whole answer (expiry, parent tag) when our state agrees with
            # it; ours when we decided, or the homeowner's "Blocked" overrode it.
            out[field] = verdict if same else mine
        if version is protocol.V16 and action == "StartTransaction":
            out["transactionId"] = local["transactionId"]
        return out
