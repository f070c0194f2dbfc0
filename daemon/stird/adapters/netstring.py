"""JSON-RPC over TCP with netstring framing — what Kamailio's janssonrpcc speaks.

netstring = length ":" payload ","   ; length: decimal, no leading zeros, at most 9 digits
(http://cr.yp.to/proto/netstrings.txt). One long-lived connection per Kamailio instance;
requests may arrive several per read or split across reads; answers go out as soon as
each is ready, in any order. A framing error closes the connection (as Kamailio does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from stird.adapters import jsoncodec
from stird.adapters.sockets import LISTEN_BACKLOG

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # 1 MiB per request (a big WebRTC SDP is ~10 KiB)
MAX_INFLIGHT = 256  # requests being worked on per connection
_MAX_DIGITS = 9

Handler = Callable[[Any], Awaitable[Any]]


class FramingError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Incremental decoder: feed bytes, get complete payloads."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while (message := self._next()) is not None:
            out.append(message)
        return out

    def _next(self) -> bytes | None:
        colon = self._buf.find(b":", 0, _MAX_DIGITS + 1)
        if colon < 0:
            head = bytes(self._buf)
            if len(head) > _MAX_DIGITS or (head and not head.isdigit()):
                raise FramingError("missing length field")
            return None
        digits = bytes(self._buf[:colon])
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            raise FramingError("bad length field")
        length = int(digits)
        if length > self._max:
            raise FramingError(f"message of {length} bytes exceeds {self._max}")
        end = colon + 1 + length
        if len(self._buf) <= end:
            return None
        if self._buf[end : end + 1] != b",":
            raise FramingError("missing trailing comma")
        payload = bytes(self._buf[colon + 1 : end])
        del self._buf[: end + 1]
        return payload


class NetstringServer:
    """Serves a JSON-RPC handler over netstrings on one TCP listener."""

    def __init__(self, handler: Handler, *, idle_timeout: float | None = None) -> None:
        self._handler = handler
        self._idle = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_MESSAGE, backlog=LISTEN_BACKLOG
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await _Connection(self._handler, reader, writer, self._idle).run()
        finally:
            if task is not None:
                self._connections.discard(task)


class _Connection:
    def __init__(
        self,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle: float | None,
    ) -> None:
        self._handler, self._reader, self._writer, self._idle = handler, reader, writer, idle
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        decoder = NetstringDecoder()
        try:
            while data := await asyncio.wait_for(self._reader.read(65536), self._idle):
                for payload in decoder.feed(data):
                    await self._slots.acquire()
                    task = asyncio.create_task(self._answer(payload))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except FramingError as exc:
            log.warning("netstring peer %s: %s; closing", self._peer(), exc)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            await self._finish()

    def _peer(self) -> str:
        return str(self._writer.get_extra_info("peername"))

    async def _answer(self, payload: bytes) -> None:
        try:
            try:
                message = jsoncodec.loads(payload)
            except (ValueError, UnicodeDecodeError):
                answer: Any = {
                    "jsonrpc": "2.0",
                    "error": {"code": -32700, "message": "parse error"},
                    "id": None,
                }
            else:
                answer = await self._handler(message)
            if answer is not None:
                data = encode(jsoncodec.dumps(answer))
                async with self._lock:
                    self._writer.write(data)
                    await self._writer.drain()
        except ConnectionError:
            pass
        finally:
            self._slots.release()

    async def _finish(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
