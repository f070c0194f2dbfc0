"""Fault injection, FastAGI (issue #9): stird away or dying while Asterisk keeps sending.

What the dialplan does is fact 28 of /work/shared/asterisk/README.md and the contexts of
integrations/asterisk/extensions.conf: ``AGI()`` to a port nobody listens on returns
AGISTATUS=FAILURE; a server that closes without setting a result returns SUCCESS with the
result variable empty; both end in ``PJSIPHangup(500)`` through the
``GotoIf($["${AGISTATUS}" != "SUCCESS" | "${STIRD_ACTION}" = ""]?fail)`` that every
context has. stird clears STIRD_ACTION first and sets it last, so a session cut anywhere
leaves it empty. After stird is back, calls get verdicts again."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from stird.wiring.app import Daemon
from stird.wiring.config import AsteriskConfig, HostPort
from tests.asterisk_fakes import FakeChannel, agi_parse, env_chunks, inbound_env, run_agi
from tests.faults.helpers import free_port, running, server_config, within
from tests.kamailio.harness import Stird, free_ports, wait_until

EXTENSIONS = Path(__file__).resolve().parents[2] / "integrations" / "asterisk" / "extensions.conf"
FAIL_CHECK = '$["${AGISTATUS}" != "SUCCESS" | "${STIRD_ACTION}" = ""]?fail'
HEADERS = [("From", "<sip:+15552220000@carrier.example>"), ("To", "<sip:+15557770001@pbx>")]


def dialplan(agistatus: str, channel: FakeChannel) -> str:
    """What [stird-verify] does once AGI() returns (extensions.conf, fail-closed)."""
    action = channel.variables.get("STIRD_ACTION", "")
    if agistatus != "SUCCESS" or action == "":
        return "PJSIPHangup(500)"
    if action == "reject":
        return f"PJSIPHangup({channel.variables['STIRD_CODE']})"
    return "Goto(from-stird-verified)"


def test_every_context_checks_agistatus_and_the_result() -> None:
    text = EXTENSIONS.read_text()
    contexts = ("stird-outbound", "stird-verify")
    for name in contexts:
        body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
        assert f"GotoIf({FAIL_CHECK})" in body and "(fail),PJSIPHangup(500)" in body, name


async def agi(address: tuple[str, int], channel: FakeChannel) -> str:
    """AGISTATUS of one session (fact 28): FAILURE when the connect is refused."""
    try:
        await run_agi(address, channel, read_timeout=5.0)
    except ConnectionRefusedError:
        return "FAILURE"
    return "SUCCESS"


async def stalled(
    address: tuple[str, int], channel: FakeChannel, answered: int
) -> asyncio.Task[None]:
    """A session that answers ``answered`` commands, then stays silent; returns once stird
    waits on that silence. The task ends when stird closes the connection."""
    reader, writer = await asyncio.open_connection(*address)
    first, second = env_chunks(channel.env)
    writer.write(first + second)
    waiting = asyncio.Event()

    async def serve() -> None:
        try:
            while line := await reader.readline():
                command = line.decode().rstrip("\n")
                channel.commands.append(command)
                if len(channel.commands) <= answered:
                    for chunk in channel.answer(command):
                        writer.write(chunk)
                    continue
                waiting.set()
                if agi_parse(command)[:2] == ["SET", "VARIABLE"]:
                    raise AssertionError(f"stird went on without an answer: {command}")
        finally:
            writer.close()

    task = asyncio.ensure_future(serve())
    await asyncio.wait_for(waiting.wait(), 5)
    return task


def verify_channel() -> FakeChannel:
    return FakeChannel(inbound_env("verify"), headers=list(HEADERS))


async def test_stird_down_is_agistatus_failure_then_served_after_it_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    channel = verify_channel()
    assert dialplan(await agi(("127.0.0.1", port), channel), channel) == "PJSIPHangup(500)"
    config = server_config(tmp_path, agi=HostPort("127.0.0.1", port))
    async with running(config):
        channel = verify_channel()
        assert dialplan(await agi(("127.0.0.1", port), channel), channel) == (
            "Goto(from-stird-verified)")  # fmt: skip
        assert channel.variables["STIRD_VERDICT"] == "no-identity"


@pytest.mark.parametrize("answered", [1, 2])
async def test_stird_stopping_mid_session_leaves_the_dialplan_failing_closed(
    tmp_path: Path, answered: int
) -> None:
    """SIGTERM while a session waits on Asterisk: stird stops at once (not after the
    5 s AGI timeout) and closes the session without a result. Two Identity lines: the
    second read (``answered`` 2) is then line 3's, after the batched first read."""
    asterisk = AsteriskConfig(agi_timeout=5.0)
    config = replace(server_config(tmp_path, agi=HostPort("127.0.0.1", 0)), asterisk=asterisk)
    channel = verify_channel()
    channel.headers += [("Identity", "a.b.c;info=<https://x.example/a.pem>")] * 2
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.agi_address is not None
        session = await stalled(daemon.agi_address, channel, answered)
    finally:
        await within(0.0, daemon.stop())
    await within(0.0, session)
    assert channel.variables.get("STIRD_ACTION", "") == ""
    assert dialplan("SUCCESS", channel) == "PJSIPHangup(500)"


def start(stird: Stird) -> None:
    """``stird serve``, until its FastAGI listener accepts (/healthz answers before the
    FastAGI and JSON-RPC listeners are open)."""
    stird.start()
    wait_until("the FastAGI listener", lambda: _accepts(stird.agi_port), 10)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_stird_killed_mid_session_and_restarted(tmp_path: Path) -> None:
    base = free_ports(3)
    stird = Stird(tmp_path, base, base + 1, base + 2, None)
    start(stird)
    address = ("127.0.0.1", stird.agi_port)
    try:
        ok = verify_channel()
        assert dialplan(await agi(address, ok), ok) == "Goto(from-stird-verified)"
        cut = verify_channel()
        # a session waiting on us when stird is SIGKILLed: the kernel closes the socket
        session = await stalled(address, cut, 1)
        assert stird.proc is not None
        stird.proc.signal(signal.SIGKILL)
        await within(0.0, session)
        assert dialplan("SUCCESS", cut) == "PJSIPHangup(500)"
        down = verify_channel()
        stird.proc.stop()
        assert dialplan(await agi(address, down), down) == "PJSIPHangup(500)"
        await asyncio.to_thread(start, stird)  # same ports, same state dir
        back = verify_channel()
        assert dialplan(await agi(address, back), back) == "Goto(from-stird-verified)"
    finally:
        stird.stop()
