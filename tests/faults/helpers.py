"""Shared pieces of the fault-injection tests (issue #9): a running daemon, HTTP calls,
PASSporTs naming an arbitrary ``x5u``, and raw loopback servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from stird.core.passport import Ppt
from stird.core.tn import parse_cli_id
from stird.services.authentication import AuthenticationService, SignInput, SignPolicy
from stird.services.ports import Clock, system_clock
from stird.wiring.app import Daemon, load_credential
from stird.wiring.config import Config, HostPort

CALLER, CALLEE = "+12025550100", "+12025550101"
#: what every request may add to its own bound before it counts as a hang
MARGIN = 1.0


def server_config(tmp: Path, **server: Any) -> Config:
    """The embedded default on ephemeral loopback ports, state in ``tmp``."""
    base = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None, agi=None,
                   state_dir=tmp / "state")  # fmt: skip
    return Config(server=replace(base, **server))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Daemon, str]]:
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield daemon, "http://{}:{}".format(*daemon.http_address)
    finally:
        await daemon.stop()


async def post(base: str, path: str, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    limit = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limit) as s, s.post(base + path, json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def get_text(base: str, path: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(base + path) as response:
        return await response.text()


def verify_body(identity: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "identity": identity,
        "from": f"<sip:{CALLER}@a.example;user=phone>",
        "to": f"<sip:{CALLEE}@b.example;user=phone>",
        "call_id": str(random.random()),
        **extra,
    }


def metric(text: str, sample: str) -> float:
    """The value of one Prometheus sample line (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def signer_for(
    key: Path, cert: Path, x5u: str, clock: Clock = system_clock
) -> AuthenticationService:
    """Signs shaken PASSporTs whose ``x5u`` is ``x5u`` (a server the test controls)."""
    cred = load_credential("t", key, cert, x5u)
    return AuthenticationService([cred], SignPolicy(ppt=Ppt.SHAKEN, add_shaken=False), clock=clock)


def identity(auth: AuthenticationService, caller: str = CALLER, callee: str = CALLEE) -> list[str]:
    out = auth.sign(SignInput(orig=parse_cli_id(caller), dest=(parse_cli_id(callee),)))
    return list(out.identity)


async def within(bound: float, work: Awaitable[Any]) -> tuple[Any, float]:
    """``work``'s result and how long it took; fails when it outlives ``bound`` + MARGIN."""
    started = time.monotonic()
    async with asyncio.timeout(bound + MARGIN):
        result = await work
    return result, time.monotonic() - started


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running ``handler`` per connection; yields its port.
    Connections still open at the end are closed (the handlers are cancelled)."""
    tasks: set[asyncio.Task[None]] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
