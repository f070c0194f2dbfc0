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
