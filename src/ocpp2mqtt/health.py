"""HTTP health and metrics endpoints (issue 7). Placeholder until implemented."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway


async def start_http(gateway: Gateway) -> asyncio.AbstractServer | None:
    """Start /healthz, /readyz, /metrics on HTTP_ADDR:HTTP_PORT; None when disabled."""
    return None
