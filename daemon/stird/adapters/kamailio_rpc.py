"""stird → Kamailio control: the `jsonrpcs` module over HTTP (xhttp) or its UNIX
datagram socket (../shared/kamailio/README.md §6).

Facts this follows: the datagram client must bind its own socket path (Kamailio answers
to it); one request and one answer per datagram, answers can be large (121,882 bytes for
200 dialogs); `dlg.end_dlg` takes the dialog hash entry and id as JSON *integers* (strings
give "Dialog not found") and an optional third parameter of extra header lines.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

import aiohttp

MAX_DATAGRAM = 1 << 20


class KamailioRpcError(Exception):
    """Kamailio could not be reached, timed out, or answered with an error object."""


@dataclass(frozen=True, slots=True)
class KamailioTarget:
    url: str | None = None  # http://127.0.0.1:5081/RPC
    socket_path: str | None = None  # /run/kamailio/kamailio_rpc.sock
    timeout: float = 1.0


class KamailioRpc:
    def __init__(self, target: KamailioTarget) -> None:
        if (target.url is None) == (target.socket_path is None):
            raise ValueError("give exactly one of url and socket_path")
        self.target = target
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()  # one datagram exchange at a time on our socket

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            request["params"] = params
        try:
            async with asyncio.timeout(self.target.timeout):
                answer = await self._exchange(json.dumps(request).encode())
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError) as exc:
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

    async def _exchange(self, payload: bytes) -> Any:
        if self.target.url is not None:
            return await self._http(self.target.url, payload)
        return await self._datagram(str(self.target.socket_path), payload)

    async def _http(self, url: str, payload: bytes) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        async with self._session.post(url, data=payload, headers=headers) as response:
            body = await response.content.read(MAX_DATAGRAM + 1)
            if len(body) > MAX_DATAGRAM:
                raise ValueError("answer too large")
            return json.loads(body)

    async def _datagram(self, path: str, payload: bytes) -> Any:
        async with self._lock:
            with tempfile.TemporaryDirectory(prefix="stird-kam-") as folder:
                own = os.path.join(folder, "reply.sock")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.bind(own)  # Kamailio answers to the sender's bound address
                    sock.setblocking(False)
                    loop = asyncio.get_running_loop()
                    await loop.sock_sendto(sock, payload, path)
                    data = await loop.sock_recv(sock, MAX_DATAGRAM)
                finally:
                    sock.close()
            return json.loads(data)

    async def close(self) -> None:
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
