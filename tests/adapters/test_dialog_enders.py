"""Ending a condemned msec dialog through the PBX: Kamailio's dlg.end_dlg (a fake jsonrpcs
over HTTP answering like ../shared/kamailio/transcripts/jsonrpcs-control.txt) and AMI
Hangup (the fake Asterisk manager), with the routing and deferring wrappers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from stird.adapters.ami import AmiClient, AmiSettings
from stird.adapters.dialog_enders import (
    AsteriskEnder,
    DeferredEnder,
    KamailioEnder,
    RoutingEnder,
)
from stird.adapters.kamailio_rpc import KamailioRpc, KamailioTarget
from stird.services.dialogs import DialogHandle, DialogPolicy, Outcome
from tests.asterisk_fakes import FakeAmi, channel_fields

LIVE = (3866, 2333)
REASON = 'STIR;cause=438;text="msec: timed-out"'
CHANNEL = "PJSIP/alice-00000007"


@pytest.fixture
async def kamailio() -> AsyncIterator[tuple[KamailioRpc, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        params = body.get("params", [])
        if body["method"] == "dlg.end_dlg" and tuple(params[:2]) == LIVE:
            return web.json_response({"jsonrpc": "2.0", "result": {}, "id": body["id"]})
        error = {"code": 404, "message": "Dialog not found"}
        return web.json_response({"jsonrpc": "2.0", "error": error, "id": body["id"]})

    app = web.Application()
    app.router.add_post("/RPC", rpc)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = KamailioRpc(KamailioTarget(url=f"http://127.0.0.1:{runner.addresses[0][1]}/RPC"))
    yield client, seen
    await client.close()
    await runner.cleanup()


async def test_kamailio_ender_sends_integer_ids_and_a_reason_header_line(
    kamailio: tuple[KamailioRpc, list[dict[str, Any]]],
) -> None:
    rpc, seen = kamailio
    ender = KamailioEnder(rpc)
    assert await ender.end(DialogHandle(kamailio=LIVE), REASON) is True
    assert seen[-1]["method"] == "dlg.end_dlg"
    assert seen[-1]["params"] == [3866, 2333, f"Reason: {REASON}\r\n"]


async def test_kamailio_ender_reports_a_gone_dialog_and_foreign_handles(
    kamailio: tuple[KamailioRpc, list[dict[str, Any]]],
) -> None:
    rpc, seen = kamailio
    ender = KamailioEnder(rpc)
    assert await ender.end(DialogHandle(kamailio=(1, 2)), REASON) is False  # 404
    assert await ender.end(DialogHandle(asterisk_channel=CHANNEL), REASON) is False
    assert len(seen) == 1
    # a reason can never smuggle a second header line in
    assert await ender.end(DialogHandle(kamailio=LIVE), "a\r\nX-Evil: 1") is True
    assert seen[-1]["params"][2] == "Reason: a X-Evil: 1\r\n"


async def test_kamailio_ender_survives_an_unreachable_kamailio() -> None:
    rpc = KamailioRpc(KamailioTarget(url="http://127.0.0.1:9/RPC", timeout=0.3))
    try:
        assert await KamailioEnder(rpc).end(DialogHandle(kamailio=LIVE), REASON) is False
    finally:
        await rpc.close()


async def test_asterisk_ender_hangs_the_channel_up(ami: tuple[FakeAmi, AmiClient]) -> None:
    fake, client = ami
    fake.channels[CHANNEL] = channel_fields(CHANNEL, "stird-1795328785.7")
    ender = AsteriskEnder(client)
    assert await ender.end(DialogHandle(asterisk_channel=CHANNEL), REASON) is True
    [hangup] = [a for a in fake.received if a.get("Action") == "Hangup"]
    assert (hangup["Channel"], hangup["Cause"]) == (CHANNEL, "21")
    # gone now: Asterisk says "No such channel"
    assert await ender.end(DialogHandle(asterisk_channel=CHANNEL), REASON) is False
    assert await ender.end(DialogHandle(kamailio=LIVE), REASON) is False


async def test_asterisk_ender_without_a_manager_connection() -> None:
    client = AmiClient(replace(AmiSettings(), port=9, timeout=0.2))
    assert await AsteriskEnder(client).end(DialogHandle(asterisk_channel=CHANNEL), REASON) is False


class Recorder:
    def __init__(self, name: str, answer: bool = True) -> None:
        self.name, self.answer = name, answer
        self.calls: list[tuple[DialogHandle, str]] = []

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        self.calls.append((handle, reason))
        return self.answer


async def test_routing_picks_the_pbx_by_the_handle() -> None:
    kam, ast = Recorder("kamailio"), Recorder("asterisk")
    routing = RoutingEnder(kam, ast)
    assert await routing.end(DialogHandle(kamailio=LIVE), REASON)
    assert await routing.end(DialogHandle(asterisk_channel=CHANNEL), REASON)
    assert [c[0] for c in kam.calls] == [DialogHandle(kamailio=LIVE)]
    assert [c[0] for c in ast.calls] == [DialogHandle(asterisk_channel=CHANNEL)]
    # no link for it: nothing to do, reported
    assert await RoutingEnder(None, ast).end(DialogHandle(kamailio=LIVE), REASON) is False
    assert await RoutingEnder().end(DialogHandle(asterisk_channel=CHANNEL), REASON) is False


async def test_deferred_ender_answers_first_and_acts_a_moment_later() -> None:
    inner = Recorder("kamailio")
    deferred = DeferredEnder(inner, delay=0.05)
    assert await deferred.end(DialogHandle(kamailio=LIVE), REASON) is True
    assert inner.calls == [] and deferred.pending == 1
    await deferred.drain()
    assert inner.calls == [(DialogHandle(kamailio=LIVE), REASON)] and deferred.pending == 0


async def test_deferred_ender_close_cancels_and_a_failing_pbx_is_contained() -> None:
    class Broken:
        async def end(self, handle: DialogHandle, reason: str) -> bool:
            raise ConnectionError("gone")

    deferred = DeferredEnder(Broken(), delay=0.0)
    await deferred.end(DialogHandle(kamailio=LIVE), REASON)
    await deferred.drain()  # logged, not raised
    slow = DeferredEnder(Recorder("k"), delay=10.0)
    await slow.end(DialogHandle(kamailio=LIVE), REASON)
    await slow.close()
    assert slow.pending == 0


async def test_deferred_ender_is_bounded() -> None:
    inner = Recorder("k")
    deferred = DeferredEnder(inner, delay=10.0, max_pending=2)
    for _ in range(3):
        await deferred.end(DialogHandle(kamailio=LIVE), REASON)
    assert deferred.pending == 2 and len(inner.calls) == 1  # the third acted at once
    await deferred.close()


async def test_the_policy_ends_through_kamailio_after_the_window(
    kamailio: tuple[KamailioRpc, list[dict[str, Any]]],
) -> None:
    rpc, seen = kamailio
    outcomes: list[Outcome] = []
    policy = DialogPolicy(
        RoutingEnder(KamailioEnder(rpc)), window=0.05,
        on_outcome=lambda c, o, p: outcomes.append(o),
    )  # fmt: skip
    policy.offered("call-1", DialogHandle(kamailio=LIVE))
    policy.answered("call-1")
    task = asyncio.create_task(policy.run(interval=0.01))
    try:
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert outcomes == [Outcome.TIMED_OUT]
    assert seen[-1]["params"] == [3866, 2333, 'Reason: STIR;cause=438;text="msec: timed-out"\r\n']
