"""stird → Kamailio control: the `jsonrpcs` module over HTTP (xhttp) or its UNIX
datagram socket (../shared/kamailio/README.md §6).

Facts this follows: the datagram client must bind its own socket (Kamailio answers to
the sender's address; stird binds a few abstract-namespace sockets once and matches
answers to calls by id, so calls run concurrently); one request and one answer per
datagram, answers can be large (121,882 bytes for 200 dialogs); `dlg.end_dlg` takes the
dialog hash entry and id as JSON *integers* (strings give "Dialog not found") and an
optional third parameter of extra header lines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp

MAX_DATAGRAM = 1 << 20
SLOTS_PER_SOCKET = 8  # answers one reply socket may have queued (max_dgram_qlen is 10)
POOL = 4  # reply sockets: up to 32 datagram calls in flight, the rest wait their turn

log = logging.getLogger("stird.kamailio")


class KamailioRpcError(Exception):
    """Kamailio could not be reached, timed out, or answered with an error object."""


@dataclass(frozen=True, slots=True)
class KamailioTarget:
    url: str | None = None  # http://127.0.0.1:5081/RPC
    socket_path: str | None = None  # /run/kamailio/kamailio_rpc.sock
    timeout: float = 1.0


class DatagramMux:
    """Calls in flight on one reply socket, answers matched to calls by JSON-RPC id.

    The socket is bound once, when the first call needs it, to a random abstract-namespace
    address: no file to create or remove, and no permission for Kamailio's user to get
    (Kamailio answers from an unbound, non-blocking socket to whatever address sent the
    request). Kamailio drops an answer when our receive queue is full
    (``net.unix.max_dgram_qlen``, 10 by default), so at most ``slots`` calls wait on one
    socket; :class:`KamailioRpc` spreads calls over a small pool of them. Ids are random
    (a local process could write to the abstract address, but not guess an id in flight);
    unknown ids and garbage are dropped.
    """

    def __init__(self, path: str, *, slots: int = SLOTS_PER_SOCKET) -> None:
        self.path = path
        self._slots = asyncio.Semaphore(slots)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._buffer = bytearray(MAX_DATAGRAM)
        self._loop = asyncio.get_running_loop()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind("\0stird-kamailio-" + secrets.token_hex(8))
            self._sock.setblocking(False)
            self._loop.add_reader(self._sock.fileno(), self._readable)
        except BaseException:
            self._sock.close()
            raise

    @property
    def load(self) -> int:
        return len(self._waiting)

    async def exchange(self, request_id: int, payload: bytes) -> Any:
        async with self._slots:
            future: asyncio.Future[Any] = self._loop.create_future()
            self._waiting[request_id] = future
            try:
                await self._send(payload)
                return await future
            finally:
                self._waiting.pop(request_id, None)

    async def _send(self, payload: bytes) -> None:
        """sendto() Kamailio's socket; while its queue is full, retry shortly (an
        unconnected datagram socket never polls unwritable; the caller's timeout bounds
        the retries)."""
        pause = 0.001
        while True:
            try:
                self._sock.sendto(payload, self.path)
                return
            except BlockingIOError:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _readable(self) -> None:
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("Kamailio reply socket: %s", exc)
                return
            self._deliver(bytes(self._buffer[:size]))

    def _deliver(self, data: bytes) -> None:
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):  # a local peer's junk, deep nesting included
            return
        request_id = answer.get("id") if isinstance(answer, dict) else None
        future = self._waiting.get(request_id) if type(request_id) is int else None
        if future is not None and not future.done():
            future.set_result(answer)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(OSError("closed"))


class KamailioRpc:
    def __init__(self, target: KamailioTarget) -> None:
        if (target.url is None) == (target.socket_path is None):
            raise ValueError("give exactly one of url and socket_path")
        self.target = target
        self._ids = itertools.count(secrets.randbits(48))  # unguessable, JSON-safe
        self._session: aiohttp.ClientSession | None = None
        self._muxes: list[DatagramMux] = []  # reply sockets, opened as calls need them

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            request["params"] = params
        try:
            async with asyncio.timeout(self.target.timeout):
                answer = await self._exchange(json.dumps(request).encode(), request["id"])
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError, RecursionError) as exc:
            raise KamailioRpcError(f"{method}: {type(exc).__name__}: {exc}") from None
        if not isinstance(answer, dict):
            raise KamailioRpcError(f"{method}: not a JSON-RPC answer")
        if answer.get("error") is not None:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise KamailioRpcError(f"{method}: {message}")
        return answer.get("result")

    async def end_dialog(self, h_entry: int, h_id: int, reason: str | None = None) -> None:
        """`dlg.end_dlg`: Kamailio sends BYE to both parties (with a Reason header)."""
        params: list[Any] = [int(h_entry), int(h_id)]
        if reason:
            params.append(f"Reason: {reason}\r\n")
        await self.call("dlg.end_dlg", params)

    async def health(self) -> dict[str, Any]:
        """`dlg.stats_active` as a liveness probe (any answer means Kamailio is there)."""
        result = await self.call("dlg.stats_active")
        return result if isinstance(result, dict) else {"result": result}

    async def _exchange(self, payload: bytes, request_id: int) -> Any:
        if self.target.url is not None:
            return await self._http(self.target.url, payload)
        return await self._datagram(payload, request_id)

    async def _http(self, url: str, payload: bytes) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        async with self._session.post(url, data=payload, headers=headers) as response:
            body = await response.content.read(MAX_DATAGRAM + 1)
            if len(body) > MAX_DATAGRAM:
                raise ValueError("answer too large")
            return json.loads(body)

    async def _datagram(self, payload: bytes, request_id: int) -> Any:
        if len(self._muxes) < POOL and all(m.load for m in self._muxes):
            self._muxes.append(DatagramMux(str(self.target.socket_path)))
        mux = min(self._muxes, key=lambda m: m.load)
        return await mux.exchange(request_id, payload)

    async def close(self) -> None:
        for mux in self._muxes:
            mux.close()
        self._muxes.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def probe(rpc: KamailioRpc) -> dict[str, Any]:
    """A health entry for /healthz: reachable or not, with the error."""
    try:
        return {"reachable": True, "dialogs": await rpc.health()}
    except KamailioRpcError as exc:
        return {"reachable": False, "error": str(exc)}


__all__ = ["KamailioRpc", "KamailioRpcError", "KamailioTarget", "probe"]
