"""JSON-RPC over TCP with netstring framing — what Kamailio's janssonrpcc speaks.

netstring = length ":" payload ","   ; length: decimal, no leading zeros, at most 9 digits
(http://cr.yp.to/proto/netstrings.txt). One long-lived connection per Kamailio instance;
requests may arrive several per read or split across reads; answers go out as soon as
each is ready, in any order. A framing error closes the connection (as Kamailio does).
Deadlines, the connection cap and the unfinished-frame budget: stird.adapters.connpolicy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from stird.adapters import jsoncodec
from stird.adapters.connpolicy import (
    Connection,
    ConnectionPolicy,
    Listeners,
    Phase,
    Reason,
    fd_of,
)
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
    """Incremental decoder: feed bytes, get complete payloads.

    An unfinished payload is kept as the chunks it arrived in, never as one buffer grown
    to the frame's size (a grown buffer is a large allocation the allocator may keep
    after it is freed); :attr:`pending` is how many bytes it holds."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max = max_message
        self._digits = b""  # the length field read so far
        self._need = -1  # bytes of payload and comma still expected; -1: reading the length
        self._chunks: list[bytes] = []
        self.pending = 0

    @property
    def in_head(self) -> bool:
        """Part of a length field has arrived."""
        return bool(self._digits)

    @property
    def in_body(self) -> bool:
        """The length field is complete, the payload (or its comma) is not."""
        return self._need >= 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if self._need < 0:
                pos = self._head(data, pos)
                continue
            take = min(self._need, len(data) - pos)
            self._chunks.append(data if take == len(data) else data[pos : pos + take])
            self._need -= take
            self.pending += take
            pos += take
            if self._need == 0:
                out.append(self._payload())
        return out

    def _head(self, data: bytes, pos: int) -> int:
        room = _MAX_DIGITS + 1 - len(self._digits)
        colon = data.find(b":", pos, pos + room)
        if colon < 0:
            self._digits += data[pos : pos + room]
            if len(self._digits) > _MAX_DIGITS or not self._digits.isdigit():
                raise FramingError("missing length field")
            self.pending = len(self._digits)
            return len(data)
        digits, self._digits = self._digits + data[pos:colon], b""
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            raise FramingError("bad length field")
        length = int(digits)
        if length > self._max:
            raise FramingError(f"message of {length} bytes exceeds {self._max}")
        self._need, self.pending = length + 1, 0
        return colon + 1

    def _payload(self) -> bytes:
        chunks, self._chunks, self._need, self.pending = self._chunks, [], -1, 0
        if chunks[-1][-1:] != b",":
            raise FramingError("missing trailing comma")
        chunks[-1] = chunks[-1][:-1]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: Linux only: ``TCP_QUICKACK`` (12) is not a sticky option, the kernel clears it again
#: when it leaves quick-ACK mode, so it is re-armed after every read.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def tune(sock: Any) -> None:
    """``TCP_NODELAY`` on an accepted socket (asyncio's TransportSocket or uvloop's
    pseudo-socket, both with ``setsockopt``): an answer leaves at once, never held back
    by Nagle behind an earlier answer's unacknowledged bytes."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack(sock)


def quickack(sock: Any) -> None:
    """ACK what was just read now rather than up to 40 ms later.

    Kamailio's janssonrpcc writes without ``TCP_NODELAY``: after a notification (which
    stird does not answer, so no answer carries the ACK) its kernel holds the next
    ``stir.sign`` until that ACK comes, and a delayed ACK is up to 40 ms away. Re-armed
    after every read (see ``_QUICKACK``)."""
    if sock is None or _QUICKACK is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class NetstringServer:
    """Serves a JSON-RPC handler over netstrings on one TCP listener, under the
    connection policy of ``listeners`` (deadlines, cap, frame budget)."""

    def __init__(
        self, handler: Handler, *, listeners: Listeners | None = None, name: str = "jsonrpc"
    ) -> None:
        self._handler = handler
        self._listeners = listeners or Listeners.build(ConnectionPolicy())
        self._tracker = self._listeners.tracker(name)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        return len(self._tracker)

    async def start(
        self, host: str, port: int, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen on ``host``:``port``, or on ``sock`` (bound by a supervisor) if given."""
        self._server = await asyncio.start_server(
            self._serve,
            None if sock else host,
            None if sock else port,
            sock=sock,
            limit=self._listeners.policy.read_chunk,
            backlog=LISTEN_BACKLOG,
        )
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._tracker.close_all()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._tracker.admit(writer.transport.abort, Phase.IDLE, fd_of(writer.transport))
        task = asyncio.current_task()
        if conn is None or task is None:
            return
        self._connections.add(task)
        try:
            await _Connection(self._handler, reader, writer, conn, self._listeners.policy).run()
        finally:
            conn.release()
            self._connections.discard(task)


class _Connection:
    def __init__(
        self,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        policy: ConnectionPolicy,
    ) -> None:
        self._handler, self._reader, self._writer = handler, reader, writer
        self._conn, self._policy = conn, policy
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        decoder = NetstringDecoder()
        sock = self._writer.get_extra_info("socket")
        tune(sock)
        try:
            while data := await self._reader.read(self._policy.read_chunk):
                quickack(sock)
                payloads = decoder.feed(data)
                self._conn.hold(decoder.pending)
                if self._conn.closed:  # the frame budget closed it
                    break
                phase = (
                    Phase.BODY if decoder.in_body else Phase.HEAD if decoder.in_head else Phase.IDLE
                )
                self._conn.wait(phase, fresh=bool(payloads))
                for payload in payloads:
                    await self._slots.acquire()
                    self._conn.begin()
                    task = asyncio.create_task(self._answer(payload))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except FramingError as exc:
            log.warning("netstring peer %s: %s; closing", self._peer(), exc)
        except ConnectionError:
            pass
        finally:
            del decoder  # its chunks go now, not when the answers are done
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
                del payload
                answer = await self._handler(message)
            if answer is not None:
                data = encode(jsoncodec.dumps(answer))
                async with self._lock:
                    self._writer.write(data)
                    async with asyncio.timeout(self._policy.body_timeout):  # no wait_for task
                        await self._writer.drain()
        except TimeoutError:
            self._conn.drop(Reason.SEND)  # the peer does not read its answers
        except ConnectionError:
            pass
        finally:
            self._conn.end()
            self._slots.release()

    async def _finish(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
