"""The ceiling: a bare websockets server that orjson-parses each frame and answers [3, id, {}].

Same library, event loop and connection options as the gateway, nothing else:
what the gateway reaches relative to this is the cost of everything it adds
(validation, mapping, MQTT).

    python -m bench.ceiling --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def _handler(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            msg = orjson.loads(frame)
            await ws.send(orjson.dumps([3, msg[1], {}]).decode())


def _select_subprotocol(connection: ServerConnection, offered) -> str | None:
    return "ocpp1.6" if "ocpp1.6" in offered else None


async def serve_until_stopped(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_handler, host, port, compression=None, max_size=65536,
                     ping_interval=60, ping_timeout=30,
                     select_subprotocol=_select_subprotocol):
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # the gateway uses uvloop when installed; so does the ceiling
    except ImportError:
        asyncio.run(serve_until_stopped(args.host, args.port))
    else:
        uvloop.run(serve_until_stopped(args.host, args.port))


if __name__ == "__main__":
    main()
