"""stird's client for Kamailio's jsonrpcs, against fakes that answer like the transcripts
in ../shared/kamailio/transcripts/jsonrpcs-control.txt (integers required for dlg.end_dlg)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stird.adapters.kamailio_rpc import KamailioRpc, KamailioRpcError, KamailioTarget, probe

DIALOGS = {(3866, 2333)}


def answer(request: dict[str, Any], seen: list[dict[str, Any]]) -> dict[str, Any]:
    seen.append(request)
    method, params, id_ = request["method"], request.get("params", []), request["id"]
    if method == "dlg.end_dlg":
        if not all(isinstance(p, int) for p in params[:2]) or tuple(params[:2]) not in DIALOGS:
            return {
                "jsonrpc": "2.0",
                "error": {"code": 404, "message": "Dialog not found"},
                "id": id_,
            }
        return {"jsonrpc": "2.0", "result": {}, "id": id_}
    if method == "dlg.stats_active":
        return {
            "jsonrpc": "2.0",
            "result": {"starting": 0, "connecting": 0, "answering": 0, "ongoing": 1, "all": 1},
            "id": id_,
        }
    return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method Not Found"}, "id": id_}


@pytest.fixture
async def dgram(tmp_path: Path) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    path = str(tmp_path / "kamailio_rpc.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        while True:
            data, peer = await loop.sock_recvfrom(sock, 65536)
            if peer:  # an unbound client gets no answer, as with Kamailio
                await loop.sock_sendto(
                    sock, json.dumps(answer(json.loads(data), seen)).encode(), peer
                )

    task = asyncio.create_task(serve())
    yield path, seen
    task.cancel()
    sock.close()


@pytest.fixture
async def http() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def rpc(request: web.Request) -> web.Response:
        return web.json_response(answer(await request.json(), seen))

    app = web.Application()
    app.router.add_post("/RPC", rpc)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/RPC", seen
    await runner.cleanup()


async def test_end_dialog_over_the_unix_socket(dgram: tuple[str, list[dict[str, Any]]]) -> None:
    path, seen = dgram
    rpc = KamailioRpc(KamailioTarget(socket_path=path))
    await rpc.end_dialog(3866, 2333, 'SIP;cause=438;text="Invalid Identity Header"')
    assert seen[-1]["params"] == [
        3866,
        2333,
        'Reason: SIP;cause=438;text="Invalid Identity Header"\r\n',
    ]
    with pytest.raises(KamailioRpcError, match="Dialog not found"):
        await rpc.end_dialog(1, 2)
    assert (await probe(rpc))["reachable"] is True


async def test_end_dialog_over_http(http: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = http
    rpc = KamailioRpc(KamailioTarget(url=url))
    await rpc.end_dialog(3866, 2333)
    assert seen[-1]["params"] == [3866, 2333]  # integers, never strings
    assert (await rpc.health())["all"] == 1
    await rpc.close()


async def test_unreachable_kamailio_is_reported_within_the_timeout(tmp_path: Path) -> None:
    rpc = KamailioRpc(KamailioTarget(socket_path=str(tmp_path / "none.sock"), timeout=0.3))
    health = await probe(rpc)
    assert health["reachable"] is False
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "silent.sock"))  # receives, never answers
    rpc = KamailioRpc(KamailioTarget(socket_path=str(tmp_path / "silent.sock"), timeout=0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(KamailioRpcError, match="TimeoutError"):
        await rpc.health()
    assert loop.time() - started < 1.0
    silent.close()


def test_exactly_one_transport() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        KamailioRpc(KamailioTarget())


@pytest.fixture
async def slow_dgram(tmp_path: Path) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A jsonrpcs datagram server that answers each request 50 ms after it came, several
    at once (as Kamailio's several RPC processes do)."""
    path = str(tmp_path / "kamailio_rpc.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    seen: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def later(data: bytes, peer: str) -> None:
        await asyncio.sleep(0.05)
        reply = json.dumps(answer(json.loads(data), seen)).encode()
        sock.sendto(reply, peer)  # like Kamailio: non-blocking, lost if the queue is full

    async def serve() -> None:
        while True:
            data, peer = await loop.sock_recvfrom(sock, 65536)
            task = asyncio.create_task(later(data, peer))
            pending.add(task)
            task.add_done_callback(pending.discard)

    task = asyncio.create_task(serve())
    yield path, seen
    task.cancel()
    sock.close()


async def test_a_burst_of_calls_runs_concurrently_within_the_timeout(
    slow_dgram: tuple[str, list[dict[str, Any]]],
) -> None:
    """50 `dlg.end_dlg` at once (a burst under the mandatory policy) against a server
    that takes 50 ms each: one after another they would need 2.5 s, beyond the 1 s
    timeout, and the dialogs would stay up."""
    path, seen = slow_dgram
    rpc = KamailioRpc(KamailioTarget(socket_path=path, timeout=1.0))
    results = await asyncio.gather(
        *(rpc.end_dialog(3866, 2333, "STIR;cause=438") for _ in range(50)),
        return_exceptions=True,
    )
    assert results == [None] * 50
    assert len(seen) == 50 and len({r["id"] for r in seen}) == 50
    await rpc.close()


async def test_forged_and_stray_answers_are_ignored(tmp_path: Path) -> None:
    """The reply socket is abstract, so any local process can write to it: answers with
    an id not in flight, without one, or not JSON, are dropped, and ids are not
    guessable from a counter; the real answer still completes the call."""
    path = str(tmp_path / "kamailio_rpc.sock")
    kamailio = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    kamailio.bind(path)
    kamailio.setblocking(False)
    forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unbound, like Kamailio's
    loop = asyncio.get_running_loop()
    rpc = KamailioRpc(KamailioTarget(socket_path=path, timeout=2.0))
    call = asyncio.create_task(rpc.call("dlg.stats_active"))
    data, peer = await loop.sock_recvfrom(kamailio, 65536)
    request_id = json.loads(data)["id"]
    assert request_id > 1000  # random start, not 1, 2, 3...
    for forged in ({"result": "forged", "id": 1}, {"result": "forged", "id": request_id + 1},
                   {"result": "forged", "id": str(request_id)}, {"result": "forged"}, [1]):  # fmt: skip
        forger.sendto(json.dumps(forged).encode(), peer)
    forger.sendto(b"\xff not json", peer)
    await asyncio.sleep(0.05)
    assert not call.done()
    kamailio.sendto(
        json.dumps({"jsonrpc": "2.0", "result": "real", "id": request_id}).encode(), peer
    )
    assert await asyncio.wait_for(call, 5) == "real"
    await rpc.close()
    kamailio.close()
    forger.close()


async def test_no_file_is_created_per_call(
    dgram: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = dgram
    import tempfile

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("filesystem work on the event loop")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    rpc = KamailioRpc(KamailioTarget(socket_path=path))
    for _ in range(3):
        assert (await rpc.health())["all"] == 1
    await rpc.close()


def test_datagram_calls_on_the_daemons_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On uvloop (what `stird serve` runs), where loop.sock_sendto/sock_recvfrom raise
    NotImplementedError: the client uses only add_reader and plain non-blocking calls.
    The fake Kamailio here does the same."""
    from stird.wiring import eventloop

    monkeypatch.delenv("STIRD_EVENT_LOOP", raising=False)
    factory = eventloop.loop_factory()
    assert factory is not None and "uvloop" in factory.__module__
    path = str(tmp_path / "kamailio_rpc.sock")

    async def main() -> list[Any]:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(path)
        server.setblocking(False)
        loop = asyncio.get_running_loop()

        def reply(data: bytes, peer: str) -> None:
            server.sendto(json.dumps(answer(json.loads(data), [])).encode(), peer)

        def readable() -> None:
            while True:
                try:
                    data, peer = server.recvfrom(65536)
                except BlockingIOError:
                    return
                loop.call_later(0.05, reply, data, peer)

        loop.add_reader(server.fileno(), readable)
        rpc = KamailioRpc(KamailioTarget(socket_path=path, timeout=1.0))
        try:
            return await asyncio.gather(*(rpc.health() for _ in range(50)))
        finally:
            await rpc.close()
            loop.remove_reader(server.fileno())
            server.close()

    results = eventloop.run(main())
    assert [r["all"] for r in results] == [1] * 50


async def test_hostile_datagram_replies_are_dropped_and_the_answer_still_arrives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local process can write to the abstract reply socket: deep nesting and junk are
    dropped (json raises RecursionError there, not ValueError), the real answer is read."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "rpc.sock"
    server.bind(str(path))
    server.setblocking(False)
    rpc = KamailioRpc(KamailioTarget(socket_path=str(path), timeout=2.0))
    loop = asyncio.get_running_loop()

    async def answer() -> None:
        data, peer = await loop.sock_recvfrom(server, 65536)
        request = json.loads(data)
        for junk in (b"[" * 100_000, b"\xff\xfe", b"{}", b"[1,2]"):
            server.sendto(junk, peer)
        reply = {"jsonrpc": "2.0", "id": request["id"], "result": {"active": 0}}
        server.sendto(json.dumps(reply).encode(), peer)

    task = asyncio.create_task(answer())
    try:
        assert await rpc.call("dlg.stats_active") == {"active": 0}
    finally:
        await task
        server.close()
    assert "Exception in callback" not in caplog.text  # nothing escaped the reader
