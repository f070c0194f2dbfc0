"""The msec dialog policy in the daemon ([dialog], RFC 8862 §4.3–4.4): stir.sign opens a
tracked dialog, stir.dialog moves it, stir.verify {"direction": "backwards"} judges the
callee's proof, the timer task ends silent dialogs through a (fake) Kamailio jsonrpcs,
and the outcomes are counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stird.adapters.netstring import NetstringDecoder, encode
from stird.wiring.app import Daemon
from stird.wiring.config import (
    Config,
    ConfigError,
    DialogConfig,
    HostPort,
    KamailioConfig,
    parse_config,
)

OFFER_FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
ANSWER_FP = "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00"
CALLER = '"Alice" <sip:+15551110000@127.0.0.1:5190>;tag=1SIPpTag001'
CALLEE = "<sip:+15552220000@127.0.0.1:5060>;tag=1SIPpTag011"


def sdp(fp: str) -> str:
    return f"v=0\r\nm=audio 20000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {fp}\r\n"


# ------------------------------------------------------------------------------ config


def test_dialog_section_defaults_off_and_is_checked() -> None:
    assert parse_config({}).dialog == DialogConfig(policy="off", window=5.0)
    got = parse_config({"dialog": {"policy": "mandatory", "window": 2.5}}).dialog
    assert (got.policy, got.window) == ("mandatory", 2.5)
    for bad, message in (
        ({"policy": "always"}, r"\[dialog\] policy: must be one of"),
        ({"window": 0}, r"\[dialog\] window: must be > 0"),
        ({"window": 301}, r"\[dialog\] window: must be <= 300"),
        ({"timer": 1}, r"\[dialog\] timer: unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({"dialog": bad})


# ------------------------------------------------------------------------------ daemon


@pytest.fixture
async def kamailio() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """jsonrpcs over HTTP: dlg.end_dlg answers {} like Kamailio 5.6."""
    seen: list[dict[str, Any]] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response({"jsonrpc": "2.0", "result": {}, "id": body["id"]})

    app = web.Application()
    app.router.add_post("/RPC", rpc)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/RPC", seen
    await runner.cleanup()


def config(tmp_path: Path, rpc_url: str | None, **dialog: Any) -> Config:
    server = replace(Config().server, http=HostPort("127.0.0.1", 0),
                     jsonrpc=HostPort("127.0.0.1", 0), agi=None, state_dir=tmp_path / "state")  # fmt: skip
    return Config(server=server, kamailio=KamailioConfig(rpc_url=rpc_url, health_interval=60),
                  dialog=DialogConfig(**dialog))  # fmt: skip


Post = Callable[[str, Any], Any]


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Callable[[Config], Any]]:
    daemons: list[Daemon] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(cfg: Config, **options: Any) -> tuple[Daemon, Post]:
        daemon = Daemon(cfg, **options)
        await daemon.start()
        daemons.append(daemon)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        sessions.append(session)
        host, port = daemon.http_address

        async def post(path: str, body: Any) -> Any:
            async with session.post(f"http://{host}:{port}{path}", json=body) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        return daemon, post

    yield start
    for session in sessions:
        await session.close()
    for daemon in daemons:
        await daemon.stop()


async def sign_invite(post: Post, callid: str, **extra: Any) -> Any:
    return await post("/v1/sign", {"orig": CALLER, "dest": [CALLEE], "sdp": sdp(OFFER_FP),
                                   "callid": callid, "dlg_h_entry": 7, "dlg_h_id": 42, **extra})  # fmt: skip


async def backwards_update(post: Post, callid: str, *, tamper: bool = False) -> Any:
    """The callee signs its UPDATE (orig = callee, dest = caller, mky = the answer) and
    the caller's side verifies it in the backwards direction."""
    signed = await post("/v1/sign", {"orig": CALLEE, "dest": [CALLER], "sdp": sdp(ANSWER_FP),
                                     "callid": callid, "dialog_forming": False})  # fmt: skip
    assert "dialog" not in signed  # never tracked: not dialog-forming
    identity = signed["identity"]
    if tamper:
        token, rest = identity[0].split(";", 1)
        identity = [token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB") + ";" + rest]
    return await post("/v1/verify", {
        "identity": identity, "from": CALLEE, "to": CALLER, "date": signed["date"],
        "sdp": sdp(ANSWER_FP), "callid": callid, "direction": "backwards",
    })  # fmt: skip


async def metrics(daemon: Daemon) -> str:
    host, port = daemon.http_address
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}/metrics") as response,
    ):
        return await response.text()


async def test_off_by_default_nothing_is_tracked(
    started: Callable[[Config], Any], tmp_path: Path
) -> None:
    daemon, post = await started(config(tmp_path, None))
    signed = await sign_invite(post, "c-off")
    assert "dialog" not in signed
    answer = await post("/v1/dialog", {"event": "answered", "callid": "c-off"})
    assert (answer["policy"], answer["decision"], answer["phase"]) == ("off", "continue", None)
    verdict = await backwards_update(post, "c-off")
    assert verdict["verdict"] == "valid" and verdict["dialog"]["policy"] == "off"
    assert "dialogs" not in daemon.supervisor.tasks


async def test_mandatory_confirmed_invalid_and_timed_out(
    started: Callable[[Config], Any],
    tmp_path: Path,
    kamailio: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = kamailio
    daemon, post = await started(config(tmp_path, url, policy="mandatory", window=0.3))

    # (a) proven: the backwards UPDATE verifies, the dialog is confirmed
    signed = await sign_invite(post, "c-ok")
    assert signed["dialog"] == {"policy": "mandatory", "decision": "continue", "phase": "offered"}
    await post("/v1/dialog", {"event": "answered", "callid": "c-ok"})
    verdict = await backwards_update(post, "c-ok")
    assert (verdict["verdict"], verdict["action"]) == ("valid", "continue")
    assert verdict["dialog"] == {"policy": "mandatory", "decision": "continue",
                                 "phase": "confirmed", "proof": "valid"}  # fmt: skip

    # (c) tampered: 438 for the UPDATE (never "dialog-forming": on_failure decides) and end
    await sign_invite(post, "c-bad")
    await post("/v1/dialog", {"event": "answered", "call_id": "c-bad"})
    verdict = await backwards_update(post, "c-bad", tamper=True)
    assert (verdict["code"], verdict["action"]) == (438, "reject")
    assert verdict["dialog"]["decision"] == "end" and verdict["dialog"]["proof"] == "invalid"

    # (b) silent: ended once the window has passed
    await sign_invite(post, "c-silent")
    await post("/v1/dialog", {"event": "answered", "callid": "c-silent"})
    for _ in range(100):
        if len([r for r in seen if r["method"] == "dlg.end_dlg"]) == 2:
            break
        await asyncio.sleep(0.05)
    ends = [r["params"] for r in seen if r["method"] == "dlg.end_dlg"]
    assert sorted(ends) == [
        [7, 42, 'Reason: STIR;cause=438;text="msec: invalid"\r\n'],
        [7, 42, 'Reason: STIR;cause=438;text="msec: timed-out"\r\n'],
    ]
    text = await metrics(daemon)
    for outcome in ("confirmed", "invalid", "timed-out"):
        assert f'stird_msec_dialogs_total{{outcome="{outcome}",policy="mandatory"}} 1.0' in text
    assert len(daemon.dialogs.api.policy or []) == 1  # only the confirmed one, until it ends
    await post("/v1/dialog", {"event": "ended", "callid": "c-ok"})
    assert len(daemon.dialogs.api.policy or []) == 0


async def test_a_crashing_dialog_task_is_restarted_and_still_enforces(
    started: Callable[..., Any],
    tmp_path: Path,
    kamailio: tuple[str, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, seen = kamailio
    cfg = config(tmp_path, url, policy="mandatory", window=0.2)
    daemon, post = await started(cfg, restart_backoff=0.01)
    policy = daemon.dialogs.api.policy
    real_tick, crashes = policy.tick, 0

    async def flaky() -> int:
        nonlocal crashes
        if crashes < 3:
            crashes += 1
            raise RuntimeError("a bug in the timer")
        return int(await real_tick())

    policy.tick = flaky
    await sign_invite(post, "c-crash")
    await post("/v1/dialog", {"event": "answered", "callid": "c-crash"})
    for _ in range(200):
        if any(r["method"] == "dlg.end_dlg" for r in seen):
            break
        await asyncio.sleep(0.05)
    [end] = [r["params"] for r in seen if r["method"] == "dlg.end_dlg"]
    assert end == [7, 42, 'Reason: STIR;cause=438;text="msec: timed-out"\r\n']
    assert 'stird_task_restarts_total{task="dialogs"} 3.0' in await metrics(daemon)
    failures = [r for r in caplog.records if r.name == "stird.supervisor"]
    assert len(failures) == 3 and all(r.exc_info for r in failures)  # with the traceback
    assert "a bug in the timer" in caplog.text


async def test_healthz_degraded_while_a_task_keeps_failing(
    started: Callable[..., Any], tmp_path: Path
) -> None:
    cfg = config(tmp_path, None, policy="opportunistic")
    daemon, _post = await started(cfg, restart_backoff=0.01)
    policy = daemon.dialogs.api.policy

    async def broken() -> int:
        raise RuntimeError("always")

    host, port = daemon.http_address
    async with aiohttp.ClientSession() as session:

        async def health() -> Any:
            async with session.get(f"http://{host}:{port}/healthz") as response:
                assert response.status == 200
                return await response.json()

        assert (await health())["status"] == "ok"
        policy.tick = broken
        for _ in range(200):
            body = await health()
            if body["status"] == "degraded":
                break
            await asyncio.sleep(0.02)
    assert body["status"] == "degraded" and body["degraded"] == ["dialogs"]
    assert body["tasks"]["dialogs"]["last_error"] == "RuntimeError: always"
    assert body["tasks"]["loop-lag"]["restarts"] == 0


async def test_opportunistic_records_only_and_reload_changes_the_window(
    started: Callable[[Config], Any],
    tmp_path: Path,
    kamailio: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = kamailio
    daemon, post = await started(config(tmp_path, url, policy="opportunistic", window=0.2))
    await sign_invite(post, "c-1")
    await post("/v1/dialog", {"event": "answered", "callid": "c-1"})
    await asyncio.sleep(0.8)
    assert [r for r in seen if r["method"] == "dlg.end_dlg"] == []
    assert 'outcome="timed-out",policy="opportunistic"} 1.0' in await metrics(daemon)
    await daemon.reload(config(tmp_path, url, policy="mandatory", window=9.0))
    policy = daemon.dialogs.api.policy
    assert policy is not None and (policy.policy.value, policy.window) == ("mandatory", 9.0)


async def test_kamailio_notifications_over_the_netstring_listener(
    started: Callable[[Config], Any], tmp_path: Path
) -> None:
    """What stird.cfg sends: janssonrpc_notification (no id, never answered)."""
    daemon, post = await started(config(tmp_path, None, policy="opportunistic"))
    await sign_invite(post, "c-ns")
    assert daemon.jsonrpc_address is not None
    reader, writer = await asyncio.open_connection(*daemon.jsonrpc_address)
    note = {"jsonrpc": "2.0", "method": "stir.dialog",
            "params": {"event": "answered", "callid": "c-ns"}}  # fmt: skip
    ask = {"id": 3, "jsonrpc": "2.0", "method": "stir.dialog",
           "params": {"event": "refused", "callid": "c-ns", "code": 438}}  # fmt: skip
    writer.write(encode(json.dumps(note).encode()) + encode(json.dumps(ask).encode()))
    decoder, answers = NetstringDecoder(), []
    while not answers:
        answers = decoder.feed(await asyncio.wait_for(reader.read(65536), 5))
    writer.close()
    [answer] = [json.loads(a) for a in answers]  # the notification got none
    assert answer["id"] == 3 and answer["result"]["decision"] == "retry"
    assert answer["result"]["phase"] == "answered"
