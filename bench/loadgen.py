"""A bounded Python load generator (asyncio, loopback only) for what wrk cannot drive:
JSON-RPC over netstrings, FastAGI sessions, the CPS store/retrieve pair, the open-loop
fixed-rate run and the mixed RSS run.

Clients are deliberately thin (hand-written HTTP/1.1 keep-alive, netstring framing, a
FastAGI peer answering like Asterisk via ``tests/asterisk_fakes.FakeChannel``) so the
generator, alone on its core, is not what is measured. Every loop stops at a request
count or a deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Op = Callable[[], Awaitable[bool]]  # one request; True when the answer was the expected one


# --- statistics --------------------------------------------------------------------------


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    lat = sorted(latencies)
    return {
        "rps": round(len(lat) / elapsed) if elapsed > 0 else 0,
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "requests": len(lat),
        "errors": errors,
    }


# --- clients -----------------------------------------------------------------------------


class Http:
    """One HTTP/1.1 keep-alive connection (Content-Length bodies, as aiohttp answers)."""

    def __init__(self, port: int, local_host: str | None = None) -> None:
        self.port, self.local_host = port, local_host
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> Http:
        local = (self.local_host, 0) if self.local_host else None
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=local
        )
        return self

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            await self.connect()
        assert self._writer is not None
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    async def post_json(self, path: str, doc: Any) -> tuple[int, Any]:
        status, body = await self.request("POST", path, json.dumps(doc).encode())
        return status, json.loads(body) if body else None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = self._reader = None


class NetstringRpc:
    """JSON-RPC 2.0 over netstrings on one connection, many requests in flight (as
    Kamailio's janssonrpcc multiplexes its calls)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> NetstringRpc:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            while True:
                digits = await self._reader.readuntil(b":")
                payload = await self._reader.readexactly(int(digits[:-1]) + 1)
                answer = json.loads(payload[:-1])
                future = self._waiting.pop(answer.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError(str(exc)))

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        id_ = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[id_] = future
        payload = json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        data = payload.encode()
        self._writer.write(b"%d:%s," % (len(data), data))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer.close()


async def agi_session(port: int, channel: Any) -> bool:
    """One FastAGI session as Asterisk runs it: the agi_* block, then an answer to every
    command (``FakeChannel.answer``) until stird closes. True when STIRD_ACTION was set."""
    from tests.asterisk_fakes import env_chunks  # noqa: PLC0415

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first, second = env_chunks(channel.env)
        writer.write(first + second)
        while line := await reader.readline():
            for chunk in channel.answer(line.decode().rstrip("\n")):
                writer.write(chunk)
        return bool(channel.variables.get("STIRD_ACTION"))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# --- load shapes -------------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    issued: int = 0


async def closed_loop(
    make_worker: Callable[[int], Awaitable[Op]],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    close: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """``concurrency`` workers, each with its own connection(s) from ``make_worker(i)``,
    issue requests back to back until ``max_requests`` or ``max_seconds``."""
    ops = [await make_worker(i) for i in range(concurrency)]
    tally = _Tally()
    deadline = time.perf_counter() + max_seconds

    async def work(op: Op) -> None:
        while tally.issued < max_requests and time.perf_counter() < deadline:
            tally.issued += 1
            start = time.perf_counter()
            try:
                ok = await asyncio.wait_for(op(), 10)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                ok = False
            if ok:
                tally.latencies.append((time.perf_counter() - start) * 1e3)
            else:
                tally.errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(work(op) for op in ops))
    elapsed = time.perf_counter() - start
    if close is not None:
        await close()
    return summary(tally.latencies, tally.errors, elapsed)


async def open_loop(
    op_with: Callable[[Any], Awaitable[bool]], pool: list[Any], rate: float, seconds: float
) -> dict[str, Any]:
    """Requests sent on a fixed schedule (``rate`` per second) whatever the answers do;
    latency counts from the scheduled send time, so a stall shows in full (no
    coordinated omission). Connections come from ``pool``; when all are busy the request
    waits for one, and that wait counts."""
    idle: asyncio.Queue[Any] = asyncio.Queue()
    for conn in pool:
        idle.put_nowait(conn)
    tally = _Tally()
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        conn = await idle.get()
        try:
            ok = await asyncio.wait_for(op_with(conn), 10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            ok = False
        idle.put_nowait(conn)
        if ok:
            tally.latencies.append((time.perf_counter() - scheduled) * 1e3)
        else:
            tally.errors += 1

    start = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            task = asyncio.get_running_loop().create_task(one(start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.0005)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    pending = list(tasks)  # still unanswered 15 s after the last send: the server fell behind
    unfinished = len(pending)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    elapsed = time.perf_counter() - start
    lat = sorted(tally.latencies)
    return {
        "target_rps": rate,
        "achieved_rps": round(len(lat) / elapsed),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
        "max_ms": round(lat[-1], 3) if lat else float("nan"),
        "requests": len(lat),
        "errors": tally.errors,
        "unfinished": unfinished,
    }
