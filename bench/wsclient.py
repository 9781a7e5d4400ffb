"""Lean OCPP-J charge point clients for load generation.

`RawClient` speaks RFC 6455 directly on an asyncio Protocol: a hand-written
upgrade request, unfragmented text frames with an all-zero masking key (so
masking costs nothing here; the server still unmasks every byte), and a
parser for the server's unmasked frames. It costs a few µs per CALL, so one
load process can saturate a server on the other core. `LibClient` does the
same with the `websockets` client (`--client websockets`), for comparison.

Both offer `call(frame) -> reply` for one outstanding CALL at a time (what
OCPP allows per direction) and `close()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections import deque

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"


def _text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + _ZERO_MASK + payload


def _control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + _ZERO_MASK + payload


class RawClient(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str, subprotocol: str = "ocpp1.6"):
        self._key = base64.b64encode(os.urandom(16))
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.opened: asyncio.Future = loop.create_future()
        self._buf = bytearray()
        self._handshaken = False
        self._waiter: asyncio.Future | None = None
        self._inbox: deque[bytes] = deque()
        self._fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, path: str, timeout: float = 30.0) -> RawClient:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(host, port, path), host, port), timeout
        )
        try:
            await asyncio.wait_for(proto.opened, timeout)
        except BaseException:
            proto.abort()
            raise
        return proto

    # --- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
            if not head.startswith("HTTP/1.1 101") or accept not in head:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                self.abort()
                return
            self._handshaken = True
            if not self.opened.done():
                self.opened.set_result(None)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            start = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length = int.from_bytes(buf[2:4], "big")
                start = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length = int.from_bytes(buf[2:10], "big")
                start = 10
            end = start + length
            if len(buf) < end:
                return
            payload = bytes(buf[start:end])
            del buf[:end]
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                if not b0 & 0x80:  # fragmented message (the servers here never do this)
                    self._fragments.append(payload)
                    continue
                if self._fragments:
                    self._fragments.append(payload)
                    payload = b"".join(self._fragments)
                    self._fragments.clear()
                self._deliver(payload)
            elif opcode == 9:  # ping → pong
                self._write(_control_frame(0xA, payload[:125]))
            elif opcode == 8:  # close → echo and hang up
                self._write(_control_frame(0x8, payload[:2]))
                self.abort()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost during handshake"))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection lost"))

    # --- API ---------------------------------------------------------------------
    def _deliver(self, payload: bytes) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(payload)
        else:
            self._inbox.append(payload)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send(self, frame: bytes) -> None:
        if self.closed:
            raise ConnectionError("connection closed")
        self.transport.write(_text_frame(frame))  # type: ignore[union-attr]

    async def recv(self) -> bytes:
        if self._inbox:
            return self._inbox.popleft()
        if self.closed:
            raise ConnectionError("connection closed")
        self._waiter = self._loop.create_future()
        return await self._waiter

    async def call(self, frame: bytes) -> bytes:
        self.send(frame)
        return await self.recv()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Send a close frame (1000) and hang up without waiting for the echo."""
        if not self.closed:
            self._write(_control_frame(0x8, (1000).to_bytes(2, "big")))
        self.abort()

    async def aclose(self) -> None:
        self.close()


class LibClient:
    """The same interface on the `websockets` client (slower; for comparison)."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def connect(cls, host: str, port: int, path: str, timeout: float = 30.0) -> LibClient:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://{host}:{port}{path}", subprotocols=["ocpp1.6"],
                           compression=None, ping_interval=None, open_timeout=timeout,
                           max_size=None)
        return cls(ws)

    @property
    def closed(self) -> bool:
        from websockets.protocol import State

        return self.ws.state is State.CLOSED

    async def call(self, frame: bytes) -> bytes:
        await self.ws.send(frame, text=True)
        return await self.ws.recv(decode=False)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


CLIENTS = {"raw": RawClient, "websockets": LibClient}
