"""The connection policy on every listener (issue #17, "Nothing starves it"): what an
attacker does with half-sent requests, idle connections and unfinished frames, and what
stird does about it (closes them at the deadline, at the cap, past the budget)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from stird.adapters import http_api
from stird.adapters.connpolicy import (
    ConnectionPolicy,
    ConnectionStats,
    ConnectionTracker,
    FrameBudget,
    Listeners,
    Phase,
    Reason,
)
from stird.adapters.http_api import PolicedSite
from stird.adapters.jsonrpc import Dispatcher
from stird.adapters.netstring import NetstringDecoder, NetstringServer, encode
from stird.adapters.sockets import LISTEN_BACKLOG, listen

FAST = ConnectionPolicy(header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5)


def closed(listeners: Listeners, listener: str, reason: Reason) -> float:
    return listeners.stats.closed.labels(listener, reason.value)._value.get()


async def eof_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open then. A
    reset counts as closed: the server closing while the client's bytes are unread in
    its socket makes the kernel answer with RST instead of FIN."""
    data = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


async def still_open(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


# --- the tracker on its own ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tracker(policy: ConnectionPolicy, clock: Clock, budget: bool = False) -> ConnectionTracker:
    stats = ConnectionStats(CollectorRegistry())
    frames = FrameBudget(policy.partial_frame_budget, stats) if budget else None
    return ConnectionTracker("t", policy, stats, frames, clock=clock)


def closer(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


async def test_deadlines_per_phase() -> None:
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(header_timeout=1, body_timeout=2, idle_timeout=5), clock)
    head = t.admit(closer(shut, "head"))
    body = t.admit(closer(shut, "body"))
    idle = t.admit(closer(shut, "idle"), Phase.IDLE)
    busy = t.admit(closer(shut, "busy"), Phase.IDLE)
    assert head and body and idle and busy
    body.wait(Phase.BODY)
    busy.begin()  # answering: no deadline of ours
    clock.now = 1.0
    t.sweep()
    assert shut == ["head"]
    clock.now = 2.0
    t.sweep()
    assert shut == ["head", "body"]
    clock.now = 100.0
    t.sweep()
    assert shut == ["head", "body", "idle"] and len(t) == 1
    busy.end()  # idle from now
    clock.now = 104.9
    t.sweep()
    assert len(t) == 1
    clock.now = 105.0
    t.sweep()
    assert shut[-1] == "busy" and len(t) == 0


async def test_a_fresh_request_restarts_the_deadline() -> None:
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(body_timeout=2), clock)
    conn = t.admit(closer(shut, "kamailio"))
    assert conn is not None
    for step in range(10):  # frames back to back, each read ending inside the next one
        clock.now = step * 1.5
        conn.wait(Phase.BODY, fresh=True)
        t.sweep()
    assert shut == []


async def test_cap_closes_the_oldest_never_completed_and_refuses_only_when_all_are_busy() -> None:
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(max_connections=3), clock)
    a, b, c = (t.admit(closer(shut, n), Phase.IDLE) for n in "abc")
    assert a and b and c
    clock.now = 1
    a.wait(Phase.HEAD)  # a trickle: a never completed a request and stays the oldest
    assert t.admit(closer(shut, "d")) is not None
    assert shut == ["a"]
    for conn in t.connections():
        conn.begin()
    assert t.admit(closer(shut, "e")) is None
    assert shut == ["a", "e"]
    assert t.stats.closed.labels("t", "evicted")._value.get() == 1
    assert t.stats.closed.labels("t", "refused")._value.get() == 1


async def test_cap_keeps_a_connection_that_completed_requests() -> None:
    """Kamailio's connection, quiet for a moment while newer idle connections pile up,
    stays: those that never completed a request go first."""
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(max_connections=3), clock)
    kamailio = t.admit(closer(shut, "kamailio"), Phase.IDLE)
    assert kamailio is not None
    kamailio.begin()
    kamailio.end()
    for step, name in enumerate("abcde"):
        clock.now = step + 1
        assert t.admit(closer(shut, name), Phase.IDLE) is not None
    assert shut == ["a", "b", "c"]


async def test_a_recently_served_connection_outranks_every_never_completed_one() -> None:
    """The PBX's kept-alive connection that answered a request stays while attackers that
    never completed one are there, even those waiting for a promised body (an HTTP head
    with Content-Length: its handler waits, it is not being answered); among served ones
    the longest idle goes first, never one being answered."""
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(max_connections=4), clock)
    pbx, other = (t.admit(closer(shut, n), Phase.HEAD) for n in ("pbx", "other"))
    assert pbx and other
    for conn in (other, pbx):  # other answered first: pbx is the more recently active
        conn.begin()
        conn.end()
    body = t.admit(closer(shut, "body"), Phase.HEAD)
    assert body is not None
    body.begin()  # HTTP: the head is in, the handler waits for the body
    body.wait(Phase.BODY, lambda: False, fresh=True)
    idle = t.admit(closer(shut, "idle"), Phase.HEAD)
    assert idle is not None
    x, y = (t.admit(closer(shut, n), Phase.HEAD) for n in "xy")
    assert x and y
    assert shut == ["body", "idle"]
    y.begin()  # y is being answered
    for name in ("z", "w", "v"):
        last = t.admit(closer(shut, name), Phase.HEAD)
        assert last is not None
    assert shut == ["body", "idle", "x", "z", "w"]  # the fresh ones first, y never
    last.begin()
    assert t.admit(closer(shut, "u"), Phase.HEAD) is not None
    assert shut[-1] == "other"  # then the longest idle of the served


async def test_no_idle_close_or_eviction_with_a_request_in_the_socket() -> None:
    """A client reusing a kept-alive connection is not closed as its request arrives:
    bytes unread in the socket keep the connection from the idle close and the cap."""
    import socket

    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(max_connections=1, idle_timeout=5), clock)
    ours, peer = socket.socketpair()
    try:
        conn = t.admit(closer(shut, "client"), Phase.IDLE, ours.fileno())
        assert conn is not None
        conn.begin()
        conn.end()
        peer.send(b"POST /v1/verify HTTP/1.1\r\n")  # arrived, not read by the loop yet
        clock.now = 10
        t.sweep()
        assert shut == []
        assert t.admit(closer(shut, "attacker"), Phase.IDLE) is None
        assert shut == ["attacker"]
        ours.recv(100)  # read: now it is idle past its deadline
        t.sweep()
        assert shut == ["attacker", "client"]
    finally:
        ours.close()
        peer.close()


async def test_budget_drops_the_biggest_unfinished_frame() -> None:
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(partial_frame_budget=100), clock, budget=True)
    small, big, new = (t.admit(closer(shut, n)) for n in ("small", "big", "new"))
    assert small and big and new and t.budget is not None
    small.hold(20)
    big.hold(70)
    assert shut == []
    new.hold(30)  # 120 > 100: the 70 go
    assert shut == ["big"] and t.budget.total == 50
    small.release()
    assert t.budget.total == 30


def _partial(t: ConnectionTracker) -> float:
    return float(t.stats.partial.collect()[0].samples[0].value)


async def test_partial_frame_gauge_shows_the_budget_at_each_sweep() -> None:
    """Written by the sweeper (every tick), not by each hold: with several workers each
    gauge write is a locked write to the metrics file."""
    clock, shut = Clock(), []
    t = tracker(ConnectionPolicy(partial_frame_budget=100), clock, budget=True)
    conn = t.admit(closer(shut, "conn"))
    assert conn is not None and t.budget is not None
    conn.hold(40)
    t.sweep()
    assert _partial(t) == 40
    conn.hold(0)
    conn.hold(10)
    conn.hold(0)
    assert _partial(t) == 40  # not yet published
    t.sweep()
    assert _partial(t) == 0
    conn.hold(60)
    conn.release()  # gone with its frame
    t.sweep()
    assert _partial(t) == 0 and shut == []


# --- HTTP (aiohttp) ----------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[tuple[int, Listeners]]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/", hello)
    app.router.add_get("/busy", busy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listeners = Listeners.build(
        ConnectionPolicy(header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5,
                         max_connections=8),
        CollectorRegistry(),
    )  # fmt: skip
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await PolicedSite(runner, sock, listeners.tracker("http"), backlog=LISTEN_BACKLOG).start()
    yield port, listeners
    await runner.cleanup()


async def get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        return await eof_within(reader, 5)
    finally:
        writer.close()


async def test_http_after_a_429_the_next_request_waits_and_is_not_closed(
    http: tuple[int, Listeners], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood over a kept-alive connection: after a 429 its next request is read only
    after HOLD_OFF; meanwhile it waits unread in the socket, which keeps the idle close
    (0.5 s here) from closing the connection under it."""
    monkeypatch.setattr(http_api, "HOLD_OFF", 0.7)  # < aiohttp's keep-alive backstop, 1 s
    port, listeners = http
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"slow down"), 5)).startswith(
            b"HTTP/1.1 429"
        )
        await asyncio.sleep(0.1)  # the hold-off began
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):  # held off (a slow machine only answers later)
            await asyncio.wait_for(reader.readuntil(b"hello"), 0.4)
        assert (await asyncio.wait_for(reader.readuntil(b"hello"), 5)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert closed(listeners, "http", Reason.IDLE) == 0


async def test_http_trickled_head_is_closed_at_the_deadline(http: tuple[int, Listeners]) -> None:
    port, listeners = http
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(trickle())
    try:
        assert await eof_within(reader, 3) == b""  # nothing answered, closed
    finally:
        task.cancel()
        writer.close()
    assert closed(listeners, "http", Reason.HEAD) == 1
    assert (await get(port)).endswith(b"hello")


async def test_http_announced_body_never_sent_is_closed(http: tuple[int, Listeners]) -> None:
    port, listeners = http
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    assert await eof_within(reader, 3) == b""
    writer.close()
    assert closed(listeners, "http", Reason.BODY) == 1


async def test_http_cap_evicts_a_promised_body_never_sent_without_a_traceback(
    http: tuple[int, Listeners], caplog: pytest.LogCaptureFixture
) -> None:
    """Heads announcing a body that never comes fill the cap: they wait for their peer,
    they are not being answered, so a new connection is served and the oldest of them
    goes; the handler that failed under it logs no traceback (the tracker counted it)."""
    port, listeners = http
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
    attackers = []
    for _ in range(8):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        attackers.append((reader, writer))
    await asyncio.sleep(0.05)
    assert (await get(port)).endswith(b"hello")
    assert await eof_within(attackers[0][0], 1) == b""
    assert closed(listeners, "http", Reason.EVICTED) == 1
    assert closed(listeners, "http", Reason.REFUSED) == 0
    for _, writer in attackers:
        writer.close()
    await asyncio.sleep(0.1)
    assert "Error handling request" not in caplog.text


async def test_http_idle_keep_alive_is_closed(http: tuple[int, Listeners]) -> None:
    port, listeners = http
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):  # requests keep it open: the idle timeout counts from each answer
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.3)
    answers = await eof_within(reader, 3)
    assert answers.count(b"hello") == 3
    writer.close()
    assert closed(listeners, "http", Reason.IDLE) == 1


async def test_http_cap_closes_the_oldest_idle_and_serves_the_new(
    http: tuple[int, Listeners],
) -> None:
    port, listeners = http
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert (await get(port)).endswith(b"hello")  # the 9th connection is served
    assert await eof_within(idle[0][0], 1) == b""  # the oldest made room
    assert all([await still_open(r, 0.01) for r, _ in idle[1:]])
    assert closed(listeners, "http", Reason.EVICTED) == 1
    for _, writer in idle:
        writer.close()


async def test_http_open_connections_gauge(http: tuple[int, Listeners]) -> None:
    port, listeners = http
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert listeners.stats.open.labels("http")._value.get() == 3
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0.1)
    assert listeners.stats.open.labels("http")._value.get() == 0


# --- netstring JSON-RPC --------------------------------------------------------------------


async def echo(params: Any) -> Any:
    return params


@pytest.fixture
async def netstring() -> AsyncIterator[tuple[int, Listeners, NetstringServer]]:
    listeners = Listeners.build(
        ConnectionPolicy(header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5,
                         max_connections=8, partial_frame_budget=3 << 20),
        CollectorRegistry(),
    )  # fmt: skip
    server = NetstringServer(Dispatcher({"echo": echo}).handle, listeners=listeners)
    _, port = await server.start("127.0.0.1", 0)
    yield port, listeners, server
    await server.close()


def rpc(id_: int) -> bytes:
    return encode(json.dumps({"jsonrpc": "2.0", "id": id_, "method": "echo",
                              "params": {"n": id_}}).encode())  # fmt: skip


async def call(port: int, id_: int = 1) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(rpc(id_))
    decoder = NetstringDecoder()
    try:
        async with asyncio.timeout(5):
            while not (got := decoder.feed(await reader.read(4096))):
                pass
        return json.loads(got[0])
    finally:
        writer.close()


async def test_netstring_idle_connection_is_closed(netstring: Any) -> None:
    port, listeners, _ = netstring
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(rpc(1))  # one request, then silence
    answer = await eof_within(reader, 3)
    assert b'"result"' in answer
    writer.close()
    assert closed(listeners, "jsonrpc", Reason.IDLE) == 1


async def test_netstring_unfinished_frame_closed_at_the_deadline(netstring: Any) -> None:
    port, listeners, server = netstring
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"1048576:" + b"x" * 1000)  # then silence
    await asyncio.sleep(0.1)
    assert listeners.budget.total == 1000
    assert await eof_within(reader, 3) == b""
    writer.close()
    assert closed(listeners, "jsonrpc", Reason.BODY) == 1
    assert listeners.budget.total == 0 and server.open_connections == 0


async def test_netstring_frame_budget_drops_the_biggest(netstring: Any) -> None:
    port, listeners, _ = netstring
    peers = []
    for size in (300_000, 1_000_000, 900_000, 800_000):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"1048576:" + b"y" * size)
        await writer.drain()
        peers.append((reader, writer))
        await asyncio.sleep(0.1)
    # 3,000,000 bytes held, under the 3 MiB budget; 400,000 more tip it over
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"1048576:" + b"z" * 400_000)
    peers.append((reader, writer))
    assert await eof_within(peers[1][0], 2) == b""  # the 1,000,000-byte frame went
    assert closed(listeners, "jsonrpc", Reason.BUDGET) == 1
    assert listeners.budget.total <= 3 << 20
    assert (await call(port))["result"] == {"n": 1}  # work goes on
    for _, w in peers:
        w.close()


async def test_netstring_steady_traffic_is_not_cut(netstring: Any) -> None:
    """A Kamailio connection busy for longer than every timeout, its frames split across
    reads: nothing closes it."""
    port, listeners, _ = netstring
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    wire = b"".join(rpc(i) for i in range(1, 41))
    decoder, answers = NetstringDecoder(), []
    for i in range(0, len(wire), 37):
        writer.write(wire[i : i + 37])
        await asyncio.sleep(0.05)  # 2 s in all, four idle/body timeouts
    async with asyncio.timeout(5):
        while len(answers) < 40:
            answers += decoder.feed(await reader.read(65536))
    writer.close()
    assert sum(listeners.stats.closed.labels("jsonrpc", r.value)._value.get() for r in Reason) == 0


async def test_netstring_cap_closes_the_oldest_idle(netstring: Any) -> None:
    port, listeners, _ = netstring
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert (await call(port))["result"] == {"n": 1}
    assert await eof_within(idle[0][0], 1) == b""
    assert closed(listeners, "jsonrpc", Reason.EVICTED) == 1
    for _, writer in idle:
        writer.close()


async def test_policed_site_keeps_the_runners_handler_options() -> None:
    """PolicedSite builds aiohttp's handler itself: what the runner was given (here
    max_field_size) must still apply, like web.Server would pass it."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, max_field_size=64)
    await runner.setup()
    listeners = Listeners.build(FAST, CollectorRegistry())
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await PolicedSite(runner, sock, listeners.tracker("http"), backlog=LISTEN_BACKLOG).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 200 + b"\r\n\r\n")
        answer = await eof_within(reader, 3)
        writer.close()
        assert b" 400 Bad Request" in answer.split(b"\r\n", 1)[0], answer[:40]
    finally:
        await runner.cleanup()
