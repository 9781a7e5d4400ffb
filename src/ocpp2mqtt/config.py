"""Configuration from environment variables and a `.env` file.

Every variable of the original ocpp2mqtt keeps its name and default; new ones
are documented in the README's configuration table. A bad value never falls
back silently: `load_settings` raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
MASK = "**********"

# Every setting that holds a secret, and how much of it may be shown: "all" hides the
# value, "values" keeps a mapping's keys (station ids, header names) and hides its values.
SECRET_FIELDS: dict[str, Literal["all", "values", "passwords", "url"]] = {
    "mqtt_password": "all",
    "mqtt_websocket_headers": "values",
    "ocpp_basic_auth": "values",
    "ocpp_upstreams": "passwords",  # every upstream's "password"
    "web_auth_token": "all",
    "store_url": "url",  # the password in postgresql://user:password@host/db
}
UPSTREAM_NAME = r"^[a-z0-9_-]{1,32}$"
# What a secondary upstream may send to the charger unless its "allow" says otherwise:
# questions, never orders.
SECONDARY_ALLOW = ("GetConfiguration", "TriggerMessage", "GetCompositeSchedule",
                   "GetLocalListVersion")


class UpstreamConfig(BaseModel):
    """One back office a charger's messages are relayed to (docs/relay.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=UPSTREAM_NAME)
    url: str
    role: Literal["primary", "secondary"] = "secondary"
    password: SecretStr | None = None
    station_id: str | None = None
    allow: tuple[str, ...] | None = None  # None: every action (primary) / SECONDARY_ALLOW
    tags: tuple[str, ...] | None = None
    ca_file: str | None = None

    @field_validator("url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")) or len(value.split("//", 1)[1]) < 1:
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("station_id")
    @classmethod
    def _station(cls, value: str | None) -> str | None:
        from ocpp2mqtt.ocpp.station_id import InvalidStationId, check_station_id

        if value is not None:
            try:
                check_station_id(value)
            except InvalidStationId as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("allow")
    @classmethod
    def _actions(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from ocpp2mqtt.ocpp import protocol

        known = {a for v in protocol.VERSIONS.values() for a in protocol.central_system_actions(v)}
        for action in value or ():
            if action not in known:
                raise ValueError(f"{action!r} is not an OCPP action a back office sends")
        return value

    @field_validator("ca_file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    def allows(self, action: str) -> bool:
        allowed = self.allow
        if allowed is None:
            return self.role == "primary" or action in SECONDARY_ALLOW
        return action in allowed

    def decides(self, tag: str) -> bool | None:
        """True: this upstream decides `tag`; None: only if it is the deciding primary."""
        if self.tags is not None:
            return tag in self.tags
        return None


_UPSTREAMS = TypeAdapter(dict[str, list[UpstreamConfig]])


class GroupStation(BaseModel):
    """A station of a load-balancing group (docs/load-balancing.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    priority: int = 0  # higher is served first
    min_current: float = Field(6.0, ge=0)  # below this the station is paused
    max_current: float | None = Field(None, gt=0)  # default CURRENT_LIMIT_MAX
    phases: int = Field(3, ge=1, le=3)  # for solar: watts ↔ amps


class GroupConfig(BaseModel):
    """A load-balancing group: stations behind one fuse (docs/load-balancing.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=UPSTREAM_NAME)
    stations: tuple[GroupStation, ...] = Field(min_length=1)
    max_current: float = Field(gt=0)  # A per phase: the fuse
    meter_topic: str | None = None  # the rest of the house, A: plain or {"l1","l2","l3"}
    meter_stale_s: float = Field(60, gt=0)
    failsafe_current: float = Field(6, ge=0)
    failsafe_validity_s: float = Field(120, ge=1)
    reserve_s: float = Field(120, ge=0)
    grid_power_topic: str | None = None  # solar: W at the grid connection, export negative
    voltage: float = Field(230, gt=0)
    solar_smoothing_s: float = Field(30, ge=0)
    solar_start_s: float = Field(60, ge=0)
    solar_stop_s: float = Field(300, ge=0)
    solar_min_on_s: float = Field(300, ge=0)
    solar_min_off_s: float = Field(300, ge=0)

    @field_validator("stations", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"id": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("meter_topic", "grid_power_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(ch in value for ch in "+#\0")):
            raise ValueError("must be an MQTT topic without wildcards (+, #)")
        return value

    @model_validator(mode="after")
    def _unique(self) -> GroupConfig:
        ids = [s.id for s in self.stations]
        if len(set(ids)) != len(ids):
            raise ValueError("a station is listed twice")
        return self


def _groups(value: Any) -> Any:
    value = _json_value(value, list)
    seen: dict[str, str] = {}
    for group in value:
        if not isinstance(group, dict):
            raise ValueError("must be a list of group objects")
        for station in group.get("stations") or ():
            sid = station if isinstance(station, str) else (
                station.get("id") if isinstance(station, dict) else None)
            if isinstance(sid, str) and sid in seen and seen[sid] != group.get("name"):
                raise ValueError(f"station {sid!r} is in two groups ({seen[sid]}, "
                                 f"{group.get('name')})")
            if isinstance(sid, str):
                seen[sid] = str(group.get("name"))
    names = [g.get("name") for g in value]
    if len(set(names)) != len(names):
        raise ValueError("group names repeat")
    return value


def parse_steps(text: str) -> tuple[float, ...]:
    """"6,8,10,13,16" → (6.0, 8.0, 10.0, 13.0, 16.0); raises ValueError naming the bad part."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{part!r} is not a current ≥ 0")
        out.append(value)
    if not out:
        raise ValueError("name at least one current")
    return tuple(sorted(set(out)))


def _steps(value: Any) -> Any:
    """CURRENT_LIMIT_STEPS: "6,8,10" for every station, or JSON {station: "6,8" | [6, 8]}."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if not text.startswith("{"):
            return {"*": parse_steps(text)}
        value = _json_value(text, dict)
    if isinstance(value, dict):
        out = {}
        for station, steps in value.items():
            if isinstance(steps, list):
                steps = ",".join(str(s) for s in steps)
            if not isinstance(steps, str):
                raise ValueError(f"{station}: must be a comma list or a list of currents")
            try:
                out[station] = parse_steps(steps)
            except ValueError as exc:
                raise ValueError(f"{station}: {exc}") from None
        return out
    return value


def _upstreams(value: Any) -> Any:
    value = _json_value(value, dict)
    for station, upstreams in value.items():
        if not isinstance(upstreams, list):
            raise ValueError(f"{station}: must be a list of upstreams")
    return value


def _check_upstreams(upstreams: dict[str, list[UpstreamConfig]]) -> None:
    from ocpp2mqtt.ocpp.station_id import InvalidStationId, check_station_id

    for station, links in upstreams.items():
        if station != "*":
            try:
                check_station_id(station)
            except InvalidStationId as exc:
                raise ValueError(f"{station!r}: {exc}") from None
        names = [u.name for u in links]
        if len(set(names)) != len(names):
            raise ValueError(f"{station}: upstream names repeat ({', '.join(names)})")
        if sum(u.role == "primary" for u in links) > 1:
            raise ValueError(f"{station}: more than one primary upstream")


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable."""


def _json_value(raw: Any, kind: type) -> Any:
    if not isinstance(raw, str):
        return raw
    if raw.strip() == "":
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, kind):
        raise ValueError(f"must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- MQTT (names and defaults of the original) ---
    mqtt_hostname: str = "localhost"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_basepath: str = "ocpp/test"
    mqtt_username: str = ""
    mqtt_password: SecretStr = SecretStr("")
    mqtt_transport: Literal["tcp", "websockets", "unix"] = "tcp"
    mqtt_keepalive: int = Field(60, ge=5)
    mqtt_timeout: float = Field(30, gt=0)
    mqtt_reconnect_base_delay: float = Field(5, gt=0)
    mqtt_reconnect_max_delay: float = Field(60, gt=0)
    mqtt_client_id: str = ""
    mqtt_usestationname: bool = False
    mqtt_websocket_path: str = ""
    mqtt_websocket_headers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # --- MQTT (new) ---
    mqtt_qos: int = Field(1, ge=0, le=2)
    mqtt_publish_unchanged: bool = True
    mqtt_tls: bool = False
    mqtt_tls_ca_file: str = ""
    mqtt_tls_cert_file: str = ""
    mqtt_tls_key_file: str = ""
    mqtt_tls_insecure: bool = False
    outbox_max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Group commit (mqtt/publisher.py): at most one outbox write and one socket write per
    # this many milliseconds; a lone message goes at once. 0: every event-loop tick.
    mqtt_batch_ms: float = Field(3.0, ge=0, le=100)
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"
    embedded_broker: Literal["auto", "off"] = "auto"

    # --- OCPP server ---
    listen_addr: str = "0.0.0.0"
    listen_port: int = Field(3000, ge=0, le=65535)
    authorized_tag_id_list: Annotated[list[str], NoDecode] = Field(default_factory=list)
    expected_charge_points: Annotated[list[str], NoDecode] = Field(default_factory=list)
    heartbeat_interval: int = Field(300, ge=10)
    ocpp_response_timeout: float = Field(30, gt=0)
    ocpp_command_retry_attempts: int = Field(5, ge=0)
    ocpp_command_retry_base_delay: float = Field(0.3, ge=0)
    default_id_tag: str = Field("ocpp2mqtt", min_length=1, max_length=20)
    station_id_fallback: str = "cp_{ip}"
    ocpp_strict_subprotocol: bool = False
    # Subprotocols offered to chargers, in order of preference (comma-separated).
    ocpp_versions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"])
    ocpp_lenient_schema: bool = True
    connector_topics: Literal["auto", "always", "never"] = "auto"
    max_frame_size: int = Field(65536, ge=1024)
    ws_ping_interval: float = Field(60, ge=0)
    ws_ping_timeout: float = Field(30, ge=0)
    max_connections: int = Field(20000, ge=1)
    ocpp_rate_limit: float = Field(20, ge=0)  # messages/s per station (0 = off)
    ocpp_rate_burst: int = Field(200, ge=1)

    # --- Charger authentication (OCPP 1.6 security profiles 1 and 2) ---
    ocpp_basic_auth: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    ocpp_basic_auth_file: str = ""
    ocpp_allowlist_only: bool = False
    ocpp_tls_cert_file: str = ""
    ocpp_tls_key_file: str = ""
    data_dir: Path = Path("data")

    # --- Store (store/) ---
    # Empty or sqlite:// : SQLite in DATA_DIR (sqlite:///path/file.sqlite3: that file).
    # postgresql://user:password@host:5432/db: every replica shares one PostgreSQL
    # database (docs/scaling.md).
    store_url: str = ""
    store_sync_timeout: float = Field(2.0, gt=0, le=60)

    # --- Relay to other back offices (relay/, docs/relay.md) ---
    ocpp_upstreams: Annotated[dict[str, list[UpstreamConfig]], NoDecode] = Field(
        default_factory=dict)
    ocpp_upstreams_file: str = ""
    ocpp_upstream_timeout: float = Field(10, gt=0)
    ocpp_upstream_reconnect_max_delay: float = Field(30, gt=0)
    ocpp_upstream_queue_limit: int = Field(10000, ge=10)

    # --- Current limits (set_current_limit → SetChargingProfile) ---
    current_limit_purpose: Literal["TxDefaultProfile", "TxProfile", "ChargePointMaxProfile"] = (
        "TxDefaultProfile"
    )
    current_limit_stack_level: int = Field(1, ge=0)
    current_limit_profile_kind: Literal["Relative", "Absolute"] = "Relative"
    current_limit_profile_id: int = Field(1000, ge=1)
    current_limit_round_amps: bool = False
    current_limit_min_current: float = Field(0.0, ge=0)
    current_limit_unit: Literal["native", "A"] = "native"
    current_limit_phases: int = Field(3, ge=1, le=3)
    current_limit_voltage: float = Field(230.0, gt=0)
    current_limit_max: float = Field(32.0, gt=0)
    # Kind to the flash (charging/knowledge.py): increases only past the hysteresis, at
    # most once per interval per station; decreases at once.
    current_limit_min_interval: float = Field(10.0, ge=0)
    current_limit_hysteresis: float = Field(1.0, ge=0)
    current_limit_steps: Annotated[dict[str, tuple[float, ...]], NoDecode] = Field(
        default_factory=dict)

    # --- Load balancing and solar (docs/load-balancing.md) ---
    load_balancing: Annotated[tuple[GroupConfig, ...], NoDecode] = ()

    # --- Configuration on boot ---
    ocpp_boot_configuration: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    ocpp_boot_configuration_stations: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(
        default_factory=dict
    )
    ocpp_boot_get_configuration: bool = False

    # --- Home Assistant discovery (extensions/homeassistant.py) ---
    homeassistant_discovery: bool = True
    homeassistant_discovery_prefix: str = "homeassistant"

    # --- Health and metrics over HTTP (health.py) ---
    http_enabled: bool = True
    http_addr: str = "0.0.0.0"
    http_port: int = Field(8081, ge=0, le=65535)

    # --- The web page on the same server (web/, docs/web.md) ---
    web_enabled: bool = True
    web_auth_token: str = ""  # empty: open on the network, as the page says
    # Without a token: host names (beside IP addresses and local names) the page answers as
    web_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    web_message_log_frames: int = Field(300, ge=0, le=5_000)  # per station
    web_message_log_bytes: int = Field(16 * 1024 * 1024, ge=0)  # all stations together

    # --- Logging (names and defaults of the original) ---
    log_level: LogLevel = "INFO"
    log_file: str = ""
    log_max_size: int = Field(10485760, ge=0)
    log_backup_count: int = Field(5, ge=0)
    log_format: str = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
    log_date_format: str = "%Y-%m-%d %H:%M:%S"

    @field_validator(
        "mqtt_usestationname", "ocpp_strict_subprotocol", "ocpp_lenient_schema",
        "mqtt_publish_unchanged",
        "current_limit_round_amps",
        "ocpp_boot_get_configuration", "homeassistant_discovery", "http_enabled", "mqtt_tls",
        "web_enabled",
        "mqtt_tls_insecure", "ocpp_allowlist_only", mode="before",
    )
    @classmethod
    def _empty_is_false(cls, value: Any) -> Any:
        # The original documents MQTT_USESTATIONNAME's default as "(empty)".
        if isinstance(value, str) and value.strip() == "":
            return False
        return value

    @field_validator("ocpp_versions", mode="before")
    @classmethod
    def _versions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        known = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")
        if not value:
            raise ValueError(f"name at least one of {', '.join(known)}")
        for name in value:
            if name not in known:
                raise ValueError(f"{name!r} is not one of {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError("names a version twice")
        return value

    @field_validator("authorized_tag_id_list", "expected_charge_points", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        return _json_value(value, list)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("postgresql://", "postgres://", "sqlite://")):
            raise ValueError("must be empty or sqlite:// (SQLite in DATA_DIR), "
                             "sqlite:///path/to/file.sqlite3, or a PostgreSQL URL: "
                             "postgresql://user:password@host:5432/database")
        return value

    @property
    def shared_store(self) -> bool:
        return self.store_url.startswith(("postgresql://", "postgres://"))

    @property
    def sqlite_path(self) -> Path:
        """The replica's SQLite store (with a shared store: its working copy)."""
        path = self.store_url[len("sqlite://"):] if self.store_url.startswith("sqlite://") \
            else ""
        return Path(path) if path else self.data_dir / "ocpp2mqtt.sqlite3"

    @field_validator("web_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return _json_value(value, list)
            return tuple(h.strip() for h in value.split(",") if h.strip())
        return value

    @field_validator("expected_charge_points")
    @classmethod
    def _valid_station_ids(cls, value: list[str]) -> list[str]:
        from ocpp2mqtt.ocpp.station_id import InvalidStationId, check_station_id

        for station in value:
            try:
                check_station_id(str(station))
            except InvalidStationId as exc:
                raise ValueError(f"{station!r}: {exc}") from None
        return [str(v) for v in value]

    @field_validator(
        "mqtt_websocket_headers", "ocpp_boot_configuration", "ocpp_boot_configuration_stations",
        "ocpp_basic_auth",
        mode="before",
    )
    @classmethod
    def _json_dict(cls, value: Any) -> Any:
        return _json_value(value, dict)

    @field_validator("ocpp_upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: Any) -> Any:
        return _upstreams(value)

    @field_validator("ocpp_upstreams")
    @classmethod
    def _valid_upstreams(cls, value: dict[str, list[UpstreamConfig]]
                         ) -> dict[str, list[UpstreamConfig]]:
        _check_upstreams(value)
        return value

    @field_validator("load_balancing", mode="before")
    @classmethod
    def _parse_groups(cls, value: Any) -> Any:
        return _groups(value)

    @field_validator("current_limit_steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> Any:
        return _steps(value)

    def steps_for(self, station: str) -> tuple[float, ...] | None:
        """CURRENT_LIMIT_STEPS of `station` (its own entry, else the one for every station)."""
        return self.current_limit_steps.get(station) or self.current_limit_steps.get("*")

    def pinned(self, name: str) -> bool:
        """The user set this CURRENT_LIMIT_* setting: it is not varied (charging/)."""
        return name in self.model_fields_set

    def upstreams_for(self, station: str) -> list[UpstreamConfig]:
        """The upstreams of `station`: its own entry replaces `*`."""
        found = self.ocpp_upstreams.get(station)
        return list(found) if found is not None else list(self.ocpp_upstreams.get("*", ()))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _default_format(cls, value: Any) -> Any:
        # The original documents LOG_FORMAT as "(default)" when empty.
        if isinstance(value, str) and not value.strip():
            return "%(asctime)s %(levelname)s [%(name)s] %(message)s"
        return value

    @field_validator("mqtt_basepath")
    @classmethod
    def _clean_basepath(cls, value: str) -> str:
        cleaned = "/".join(part for part in value.split("/") if part)
        if any(ch in cleaned for ch in "+#\0"):
            raise ValueError("must not contain MQTT wildcards (+, #) or NUL")
        return cleaned

    def boot_configuration(self, station: str) -> dict[str, str]:
        """ChangeConfiguration keys to set when `station` boots (global, then per station)."""
        merged = {**self.ocpp_boot_configuration,
                  **self.ocpp_boot_configuration_stations.get(station, {})}
        return {
            k: (v if isinstance(v, str) else json.dumps(v) if not isinstance(v, bool)
                else str(v).lower())
            for k, v in merged.items()
        }

    @model_validator(mode="after")
    def _check_files(self) -> Settings:
        for name in ("mqtt_tls_ca_file", "mqtt_tls_cert_file", "mqtt_tls_key_file",
                     "ocpp_basic_auth_file", "ocpp_tls_cert_file", "ocpp_tls_key_file",
                     "ocpp_upstreams_file"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise ValueError(f"{name.upper()}: file not found: {value}")
        if self.ocpp_upstreams_file:
            self._merge_upstreams_file()
        if bool(self.ocpp_tls_cert_file) != bool(self.ocpp_tls_key_file):
            raise ValueError("OCPP_TLS_CERT_FILE and OCPP_TLS_KEY_FILE must be set together")
        return self

    def _merge_upstreams_file(self) -> None:
        try:
            raw = _upstreams(Path(self.ocpp_upstreams_file).read_text("utf-8"))
            parsed = _UPSTREAMS.validate_python(raw)
            merged = {**parsed, **self.ocpp_upstreams}  # the variable's entries win
            _check_upstreams(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"OCPP_UPSTREAMS_FILE: {path}: {first['msg']}") from None
        except ValueError as exc:
            raise ValueError(f"OCPP_UPSTREAMS_FILE: {exc}") from None
        self.ocpp_upstreams = merged

    def redacted(self) -> dict[str, Any]:
        """Every setting by variable name, secrets masked (SECRET_FIELDS): for check-config."""
        out = {}
        for key, value in self.model_dump().items():
            how = SECRET_FIELDS.get(key)
            if how == "values" and isinstance(value, dict):
                value = dict.fromkeys(value, MASK)
            elif how == "passwords" and isinstance(value, dict):
                value = {station: [{**u, "password": MASK if u.get("password") else None}
                                   for u in links] for station, links in value.items()}
            elif how == "url" and isinstance(value, str):
                value = mask_url(value)
            elif how is not None:
                value = MASK if value else ""
            out[_env_name(key)] = value
        return out

    @property
    def reconnect_delays(self) -> tuple[float, float]:
        return self.mqtt_reconnect_base_delay, max(
            self.mqtt_reconnect_base_delay, self.mqtt_reconnect_max_delay
        )


def _env_name(field: str) -> str:
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, `.env` and keyword overrides.

    Raises `ConfigError` with a one-line message naming the variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        msg = first["msg"].removeprefix("Value error, ")
        if len(first["loc"]) > 1:  # a field inside a JSON value: name it
            msg = ".".join(str(p) for p in first["loc"][1:]) + f": {msg}"
        if not field:  # a whole-model check: its message already names the variable
            raise ConfigError(msg) from None
        raw = first.get("input")
        secret = field in SECRET_FIELDS
        shown = "" if secret or isinstance(raw, dict) else f" (got {raw!r})"
        raise ConfigError(f"{_env_name(field)}: {msg}{shown}") from None
    except SettingsError as exc:
        text = str(exc)
        field = text.split('"')[1] if '"' in text else "?"
        raise ConfigError(f"{_env_name(field)}: {text}") from None


def mask_url(url: str) -> str:
    """`postgresql://user:secret@host/db` → `postgresql://user:**********@host/db`."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}"


def env_documentation() -> list[tuple[str, Any]]:
    """(variable, default) pairs, used by the README test to keep docs honest."""
    out = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        out.append((_env_name(name), default))
    return out


__all__ = ["SECRET_FIELDS", "ConfigError", "Settings", "env_documentation", "load_settings",
           "parse_steps"]
