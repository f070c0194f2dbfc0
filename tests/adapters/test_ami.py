"""AMI client against a fake Asterisk manager that answers like ami-session.txt: login,
call tracking from split frames, PJSIPHangup / Hangup success and "No such channel",
replies matched on Response + ActionID, timeouts, reconnecting after drops and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from stird.adapters.ami import AmiClient, AmiSettings, Outcome
from stird.adapters.ami_calls import CallTable
from stird.adapters.metrics import Metrics
from tests.asterisk_fakes import BANNER, FakeAmi, channel_fields, event, frame

PHONE = channel_fields(
    "PJSIP/phone-0000000f", "stird-lab-1795328781.15", caller=("+15551110000", "Lab Phone"),
    context="stird-outbound", exten="+15551230001",
)  # fmt: skip
TRUNK = channel_fields(
    "PJSIP/trunk-00000010", "stird-lab-1795328781.16", linkedid="stird-lab-1795328781.15",
    state=("0", "Down"), caller=("+15551230001", "<unknown>"),
    connected=("+15551110000", "Lab Phone"), context="stird-predial", priority="2",
)  # fmt: skip
CARRIER = channel_fields(
    "PJSIP/carrier-00000012", "stird-lab-1795328785.18", caller=("+15552220000", "Carrier"),
    exten="+15557779999", priority="4",
)  # fmt: skip
IDENTITY = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln;info=<https://cert.example.invalid/stird.pem>;alg=ES256;ppt=shaken"


def dest(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("Dest" + k, v) for k, v in fields]


def settings(port: int, **options: Any) -> AmiSettings:
    fast = AmiSettings(port=port, secret="stird-ami-secret", timeout=0.5, backoff_min=0.05,
                       backoff_max=0.2, ping_interval=5.0)  # fmt: skip
    return replace(fast, **options)


async def wait_until(check: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAmi]:
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeAmi) -> AsyncIterator[AmiClient]:
    ami = AmiClient(settings(fake.port), Metrics())
    await ami.start()
    assert await ami.wait_connected(2.0)
    yield ami
    await ami.close()


async def test_login_health_and_metrics(fake: FakeAmi) -> None:
    metrics = Metrics()
    ami = AmiClient(settings(fake.port), metrics)
    await ami.start()
    try:
        assert await ami.wait_connected(2.0)
        login = fake.received[0]
        assert (login["Action"], login["Username"], login["Secret"]) == (
            "Login", "stird", "stird-ami-secret")  # fmt: skip
        assert ami.health["connected"] and ami.health["logins"] == 1
        assert ami.health["last_error"] is None
        assert b"stird_ami_connected 1.0" in metrics.render()
    finally:
        await ami.close()
    assert fake.received[-1]["Action"] == "Logoff" and not ami.connected


async def test_events_build_the_call_table(fake: FakeAmi, client: AmiClient) -> None:
    stream = b"".join([
        event("Newchannel", "call,all", *PHONE),
        event("VarSet", "dialplan,all", *PHONE, ("Variable", "__STIRD_DEST"),
              ("Value", "+15551230001")),
        event("Newchannel", "call,all", *TRUNK),
        event("VarSet", "dialplan,all", *TRUNK, ("Variable", "STIRD_IDENTITY"),
              ("Value", IDENTITY)),
        event("VarSet", "dialplan,all", *TRUNK, ("Variable", "GOSUB_RETVAL"), ("Value", "")),
        event("DialBegin", "call,all", *PHONE, *dest(TRUNK), ("DialString", "+15551230001@trunk")),
        event("DialEnd", "call,all", *PHONE, *dest(TRUNK), ("DialStatus", "ANSWER")),
    ])  # fmt: skip
    await fake.send(stream, split=len(stream) // 2 + 7)  # one message split across reads
    await wait_until(lambda: len(client.calls) == 2 and client.calls.get(PHONE[12][1]) is not None
                     and client.calls.get(PHONE[12][1]).dial_status == "ANSWER")  # type: ignore[union-attr]  # fmt: skip
    trunk = client.calls.by_channel("PJSIP/trunk-00000010")
    phone = client.calls.by_channel("PJSIP/phone-0000000f")
    assert trunk is not None and phone is not None
    assert trunk.variable("STIRD_IDENTITY") == IDENTITY and "GOSUB_RETVAL" not in trunk.variables
    assert phone.variable("STIRD_DEST") == "+15551230001" and phone.caller == "+15551110000"
    assert (phone.peer, trunk.peer) == (trunk.uniqueid, phone.uniqueid)
    await fake.send(event("Hangup", "call,all", *TRUNK, ("Cause", "16"),
                          ("Cause-txt", "Normal Clearing")))  # fmt: skip
    await wait_until(lambda: len(client.calls) == 1)
    assert client.calls.hangups[-1].cause == "16" and client.health["calls"] == 1


async def test_pjsip_hangup_success_reports_the_sip_code(fake: FakeAmi, client: AmiClient) -> None:
    fake.channels["PJSIP/carrier-00000012"] = CARRIER
    await fake.send(event("Newchannel", "call,all", *CARRIER))
    await wait_until(lambda: len(client.calls) == 1)
    result = await client.pjsip_hangup("PJSIP/carrier-00000012", "USE_IDENTITY_HEADER")
    assert (result.outcome, result.message) == (Outcome.OK, "Channel Hungup")
    sent = fake.received[-1]
    assert (sent["Action"], sent["Channel"], sent["Cause"]) == (
        "PJSIPHangup", "PJSIP/carrier-00000012", "USE_IDENTITY_HEADER")  # fmt: skip
    await wait_until(lambda: len(client.calls) == 0)
    hangup = client.calls.hangups[-1]
    assert (hangup.channel, hangup.cause, hangup.tech_cause) == (
        "PJSIP/carrier-00000012", "127", "428")  # fmt: skip


async def test_no_such_channel(fake: FakeAmi, client: AmiClient) -> None:
    result = await client.pjsip_hangup("PJSIP/nonexistent-00000000", 438)
    assert (result.outcome, result.message) == (Outcome.NO_SUCH_CHANNEL, "No such channel")
    assert not result.ok
    result = await client.hangup("PJSIP/nonexistent-00000000", 16)
    assert result.outcome is Outcome.NO_SUCH_CHANNEL
    fake.channels["PJSIP/phone-0000000f"] = PHONE
    assert (await client.hangup("PJSIP/phone-0000000f", 16)).ok


async def test_reply_is_matched_on_response_and_action_id(fake: FakeAmi, client: AmiClient) -> None:
    """A UserEvent echoes the ActionID (fact 9): it must not pass for the reply."""
    fake.echo_event_first = True
    fake.channels["PJSIP/carrier-00000012"] = CARRIER
    result = await client.pjsip_hangup("PJSIP/carrier-00000012", 438)
    assert (result.outcome, result.message) == (Outcome.OK, "Channel Hungup")


async def test_invalid_arguments_are_not_sent(fake: FakeAmi, client: AmiClient) -> None:
    count = len(fake.received)
    assert (await client.pjsip_hangup("PJSIP/x", 200)).outcome is Outcome.INVALID
    assert (await client.pjsip_hangup("PJSIP/x\r\nAction: Originate", 438)).outcome is (
        Outcome.INVALID)  # fmt: skip
    assert (await client.hangup("PJSIP/x", 300)).outcome is Outcome.INVALID
    assert len(fake.received) == count


async def test_unanswered_action_times_out(fake: FakeAmi, client: AmiClient) -> None:
    fake.silent.add("pjsiphangup")
    started = time.monotonic()
    result = await client.pjsip_hangup("PJSIP/carrier-00000012", 438)
    assert result.outcome is Outcome.TIMEOUT and time.monotonic() - started < 1.0


async def test_reconnects_after_a_drop_and_an_outage(fake: FakeAmi, client: AmiClient) -> None:
    await fake.drop()
    await wait_until(lambda: fake.logins == 2 and client.connected)
    port = fake.port
    await fake.stop()
    await wait_until(lambda: not client.connected and "Error" in str(client.health["last_error"]))
    result = await client.pjsip_hangup("PJSIP/carrier-00000012", 438)
    assert result.outcome is Outcome.DISCONNECTED
    await fake.start(port)
    await wait_until(lambda: client.connected)
    assert fake.logins == 3 and client.health["logins"] == 3


async def test_unanswered_ping_drops_the_connection(fake: FakeAmi) -> None:
    fake.silent.add("ping")
    ami = AmiClient(settings(fake.port, ping_interval=0.1))
    await ami.start()
    try:
        await wait_until(lambda: fake.logins >= 2)
    finally:
        await ami.close()


async def test_login_refused_backs_off(fake: FakeAmi) -> None:
    ami = AmiClient(settings(fake.port, secret="wrong"))
    await ami.start()
    try:
        await asyncio.sleep(0.6)
        attempts = sum(1 for a in fake.received if a["Action"] == "Login")
        assert not ami.connected and 2 <= attempts <= 8
        assert "Authentication failed" in str(ami.health["last_error"])
    finally:
        await ami.close()


@pytest.mark.parametrize("banner", [b"HTTP/1.1 400 Bad Request\r\n", b"x" * 300])
async def test_not_an_asterisk_manager(fake: FakeAmi, banner: bytes) -> None:
    fake.banner = banner
    ami = AmiClient(settings(fake.port))
    await ami.start()
    try:
        await wait_until(lambda: ami.health["last_error"] is not None)
        assert not ami.connected
    finally:
        await ami.close()


def test_the_fake_sends_the_transcript_bytes() -> None:
    """ami-session.txt: PJSIPHangup replies of 66 (stird-14, success) and 65 bytes
    (stird-13, No such channel), the Hangup event of PJSIP/carrier-00000012 of 467."""
    ok = frame(("Response", "Success"), ("ActionID", "stird-14"), ("Message", "Channel Hungup"))
    error = frame(("Response", "Error"), ("ActionID", "stird-13"), ("Message", "No such channel"))
    hangup = event("Hangup", "call,all", *CARRIER, ("Cause", "127"),
                   ("Cause-txt", "Interworking, unspecified"), ("TechCause", "428"))  # fmt: skip
    assert (len(ok), len(error), len(hangup)) == (66, 65, 467)
    assert BANNER == b"Asterisk Call Manager/11.0.0\r\n"


def test_call_table_is_bounded_by_size_and_age() -> None:
    now = [0.0]
    table = CallTable(max_calls=3, ttl=60.0, clock=lambda: now[0])
    for n in range(5):
        table.apply({"Event": "Newchannel", "Channel": f"PJSIP/c-{n}", "Uniqueid": f"u{n}"})
    assert len(table) == 3 and table.get("u0") is None and table.by_channel("PJSIP/c-4")
    for n in range(40):
        table.apply({"Event": "VarSet", "Channel": "PJSIP/c-4", "Uniqueid": "u4",
                     "Variable": f"STIRD_V{n}", "Value": "x" * 10000})  # fmt: skip
    call = table.get("u4")
    assert call is not None and len(call.variables) == 32
    assert len(call.variable("STIRD_V0") or "") == 8192
    now[0] = 61.0
    table.apply({"Event": "Newchannel", "Channel": "PJSIP/c-9", "Uniqueid": "u9"})
    assert len(table) == 1 and table.by_channel("PJSIP/c-4") is None
