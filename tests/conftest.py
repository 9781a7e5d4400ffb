from __future__ import annotations

# hypothesis' pytest plugin imports this lazily in its terminal summary; under
# CPython 3.11 that late import (with pytest's assertion rewriting, after the
# gateways' worker threads have run) sometimes died with "AST constructor
# recursion depth mismatch". Importing it up front avoids that.
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hypothesis.internal.observability  # noqa: F401
import pytest

from ocpp2mqtt.config import Settings
from ocpp2mqtt.gateway import Gateway
from tests.helpers import Mosquitto, MqttRecorder, Postgres


@pytest.fixture(scope="session")
def broker() -> Iterator[Mosquitto]:
    mosq = Mosquitto().start()
    yield mosq
    mosq.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL per test worker; each test takes its own database (new_database)."""
    pg = Postgres().start()
    yield pg
    pg.close()


@pytest.fixture
def basepath() -> str:
    # A unique base path per test keeps tests apart on one shared broker.
    return f"t{uuid.uuid4().hex[:10]}/ocpp"


def make_settings(broker_port: int, basepath: str, data_dir: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        mqtt_hostname="127.0.0.1",
        mqtt_port=broker_port,
        mqtt_basepath=basepath,
        mqtt_usestationname=True,
        mqtt_reconnect_base_delay=1,
        mqtt_reconnect_max_delay=2,
        listen_addr="127.0.0.1",
        listen_port=0,
        data_dir=data_dir,
        embedded_broker="off",
        http_enabled=False,
        homeassistant_discovery=False,
        ocpp_command_retry_base_delay=0.05,
        ocpp_command_retry_attempts=3,
        ocpp_response_timeout=5,
        # Tests that step a current limit up and down want each step at once; the
        # default (10 s between increases) has its own tests in test_current_control.py.
        current_limit_min_interval=0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings_factory(broker: Mosquitto, basepath: str, tmp_path):
    def factory(**overrides: Any) -> Settings:
        data_dir = overrides.pop("data_dir", tmp_path / "data")
        return make_settings(broker.port, basepath, data_dir, **overrides)

    return factory


@pytest.fixture
async def gateway(settings_factory) -> AsyncIterator[Gateway]:
    gw = Gateway(settings_factory())
    await gw.start()
    assert await gw.mqtt.wait_connected(10)
    yield gw
    await gw.stop()


@pytest.fixture
def url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}"


@pytest.fixture
def recorder(broker: Mosquitto, basepath: str) -> Iterator[MqttRecorder]:
    rec = MqttRecorder(broker.port, f"{basepath.split('/')[0]}/#")
    yield rec
    rec.close()
