"""msec end to end on Asterisk (issue 19): a fake Asterisk replays the HEP3 datagrams
captured from Asterisk 22.10.1 (../shared/asterisk/transcripts/hep/) to stird's collector
and runs the FastAGI verify route like the captured dialplan (AGI as the first step).

The captured INVITEs carry a `shaken` PASSporT; here the Identity header (and Date) of the
captured message is replaced by one stird signs at test time, byte for byte otherwise, and
the datagram re-encoded with Asterisk's chunk layout. Orders tried: HEP before the AGI (as
in 253 of 253 measured calls), HEP after the AGI connected, HEP missing, duplicates and
retransmissions, a wrong capture password. Connected identity (RFC 8862 §4.3–4.4): the
callee's msec in the 200 OK, seen through HEP, confirms the dialog or gets the call hung up
through AMI under the mandatory policy.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.agi import AgiServer
from stird.adapters.ami import AmiClient
from stird.adapters.api import StirApi
from stird.adapters.dialog_api import DialogApi
from stird.adapters.dialog_enders import AsteriskEnder
from stird.adapters.dtls import DtlsCertificates
from stird.adapters.hep import HepCollector, SdpStore
from stird.core.hep import parse_sip
from stird.core.identity import parse_identity
from stird.services.dialogs import DialogPolicy, MsecPolicy, Phase
from tests.adapters.test_agi import make_api, write_dtls_cert
from tests.asterisk_fakes import FakeAmi, FakeChannel, channel_fields, inbound_env, run_agi
from tests.hep_captures import replayed, set_header, sip_text

CALLER, CALLEE = "+12025550100", "+13035550101"
RURI = "sip:+13035550101@127.0.0.1:35060;user=phone"  # the captured INVITE's Request-URI


@pytest.fixture(scope="module")
def module_api(tmp_path_factory: pytest.TempPathFactory) -> StirApi:
    return make_api(tmp_path_factory.mktemp("hep"))


@dataclass
class Lab:
    api: StirApi
    hep: HepCollector
    hep_address: tuple[str, int]
    agi_address: tuple[str, int]
    agi: AgiServer
    sock: socket.socket = field(default_factory=lambda: socket.socket(type=socket.SOCK_DGRAM))

    def send(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.sock.sendto(datagram, self.hep_address)

    async def received(self, count: int, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while self.hep.health["datagrams"] < count:
            assert time.monotonic() < deadline, "the collector did not get the datagrams"
            await asyncio.sleep(0.002)

    def counted(self, name: str, result: str) -> float:
        """Each lab has its own StirApi, so its own registry."""
        value = self.api.metrics.registry.get_sample_value(f"{name}_total", {"result": result})
        return value or 0.0


@pytest.fixture
async def lab_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Lab] = []

    async def make(api: StirApi | None = None, *, password: str | None = None,
                   dtls: DtlsCertificates | None = None, **agi: Any) -> Lab:  # fmt: skip
        use = api or make_api(tmp_path / f"lab{len(made)}")
        hep = HepCollector(use, password=password, store=SdpStore(ttl=5.0))
        hep_address = await hep.start("127.0.0.1", 0)
        agi.setdefault("hep_wait", 0.05)
        server = AgiServer(use, dtls or DtlsCertificates({}), hep=hep, **agi)
        agi_address = await server.start("127.0.0.1", 0)
        made.append(lab := Lab(use, hep, hep_address, agi_address, server))
        return lab

    yield make
    for lab in made:
        lab.sock.close()
        await lab.agi.close()
        await lab.hep.close()


async def msec_invite(api: StirApi, name: str = "01", *, tamper: bool = False) -> str:
    """The captured inbound INVITE ``name`` carrying only a valid msec Identity over its
    own SDP offer (with the fingerprint changed afterwards when ``tamper``)."""
    invite = sip_text(name)
    sdp = invite.split("\r\n\r\n", 1)[1]
    out = await api.sign({"orig": CALLER, "dest": [CALLEE], "sdp": sdp, "ppt": "msec"})
    [msec] = [v for v in out["identity"] if parse_identity(v)[0].ppt == "msec"]
    message = set_header(set_header(invite, "Identity", msec), "Date", out["date"])
    if tamper:  # one hex digit of the offer's fingerprint, after signing
        message = message.replace("a=fingerprint:sha-256 03:", "a=fingerprint:sha-256 04:")
    return message


def agi_channel(message: str) -> FakeChannel:
    """The inbound channel of the captured call: the AGI reads the received INVITE's
    headers; CHANNEL(pjsip,call-id) gives the same string as HEP chunk 17."""
    sip = parse_sip(message.encode())
    names = {"from": "From", "to": "To", "call-id": "Call-ID", "date": "Date",
             "identity": "Identity"}  # fmt: skip
    headers = [(names[n], v) for n, v in sip.headers if n in names]
    return FakeChannel(inbound_env("verify", agi_channel="PJSIP/carrier-00000000"),
                       variables={"CHANNEL(pjsip,request_uri)": RURI}, headers=headers)  # fmt: skip


# --- inbound msec: mky against the HEP copy of the offer ---------------------------------


async def test_msec_only_call_is_verified_with_mky_checked(lab_factory: Any) -> None:
    lab = await lab_factory()
    message = await msec_invite(lab.api)
    lab.send(replayed("01", message), replayed("02"))  # the INVITE, then the 100
    await lab.received(2)
    channel = await run_agi(lab.agi_address, agi_channel(message))
    v = channel.variables
    assert (v["STIRD_VERDICT"], v["STIRD_MKY"], v["STIRD_ACTION"]) == (
        "valid", "checked", "continue")  # fmt: skip
    assert v["STIRD_VERSTAT"] == "TN-Validation-Passed"
    assert lab.counted("stird_hep_sdp", "match") == 1


async def test_tampered_fingerprint_is_438(lab_factory: Any) -> None:
    lab = await lab_factory()
    message = await msec_invite(lab.api, tamper=True)
    lab.send(replayed("01", message))
    await lab.received(1)
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert (v["STIRD_VERDICT"], v["STIRD_CODE"], v["STIRD_ACTION"]) == ("invalid", "438", "reject")
    assert v["STIRD_MKY"] == "checked"


async def test_hep_after_the_agi_connected_is_waited_for(lab_factory: Any) -> None:
    lab = await lab_factory(hep_wait=3.0)  # a bound, not a timing: the copy comes first
    message = await msec_invite(lab.api)
    session = asyncio.create_task(run_agi(lab.agi_address, agi_channel(message)))
    deadline = time.monotonic() + 5
    while not lab.hep.store._waiters:  # the route is waiting for the copy
        assert time.monotonic() < deadline and not session.done()
        await asyncio.sleep(0.002)
    lab.send(replayed("01", message))
    v = (await asyncio.wait_for(session, 5)).variables
    assert (v["STIRD_VERDICT"], v["STIRD_MKY"]) == ("valid", "checked")


@pytest.mark.parametrize(
    ("policy", "verdict", "verstat", "action", "mky"),
    [
        ("unchecked", "valid", "No-TN-Validation", "continue", "unchecked"),
        ("ignore", "no-identity", "No-TN-Validation", "continue", "ignored"),
        ("reject", "invalid", "TN-Validation-Failed", "reject", "rejected"),
    ],
)
async def test_hep_missing_follows_msec_without_sdp_within_its_bound(
    lab_factory: Any, policy: str, verdict: str, verstat: str, action: str, mky: str
) -> None:
    lab = await lab_factory(hep_wait=0.2, msec_without_sdp=policy)
    message = await msec_invite(lab.api)
    lab.send(replayed("02"), replayed("03"))  # the call's other copies, not the INVITE
    await lab.received(2)
    started = time.monotonic()
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert time.monotonic() - started < 5.0  # bounded: hep_wait, not forever
    assert (v["STIRD_VERDICT"], v["STIRD_VERSTAT"], v["STIRD_ACTION"], v["STIRD_MKY"]) == (
        verdict, verstat, action, mky)  # fmt: skip
    if policy == "reject":
        assert v["STIRD_CODE"] == "438"
    assert lab.counted("stird_hep_sdp", "miss") == 1


async def test_without_hep_the_policy_decides_at_once(module_api: StirApi) -> None:
    server = AgiServer(module_api, DtlsCertificates({}), msec_without_sdp="unchecked")
    address = await server.start("127.0.0.1", 0)
    try:
        message = await msec_invite(module_api)
        v = (await run_agi(address, agi_channel(message))).variables
        assert (v["STIRD_VERDICT"], v["STIRD_VERSTAT"], v["STIRD_MKY"]) == (
            "valid", "No-TN-Validation", "unchecked")  # fmt: skip
    finally:
        await server.close()


async def test_duplicates_and_retransmissions_are_dropped(lab_factory: Any) -> None:
    lab = await lab_factory()
    message = await msec_invite(lab.api, "25")
    # files 25-28: the INVITE, 100, the byte-identical INVITE again, the 100 again
    copies = [replayed("25", message), replayed("26"), replayed("27", message), replayed("28")]
    lab.send(*copies, copies[0])
    await lab.received(5)
    assert lab.counted("stird_hep_datagrams", "duplicate") == 3
    assert len(lab.hep.store) >= 1
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert (v["STIRD_VERDICT"], v["STIRD_MKY"]) == ("valid", "checked")


async def test_a_later_forged_invite_does_not_replace_the_offer(lab_factory: Any) -> None:
    lab = await lab_factory()
    message = await msec_invite(lab.api)
    forged = message.replace("a=fingerprint:sha-256 03:", "a=fingerprint:sha-256 04:")
    lab.send(replayed("01", message), replayed("01", forged))
    await lab.received(2)
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert (v["STIRD_VERDICT"], v["STIRD_MKY"]) == ("valid", "checked")


@pytest.mark.parametrize(("password", "checked"), [("s3cret", True), ("other", False)])
async def test_capture_password(lab_factory: Any, password: str, checked: bool) -> None:
    lab = await lab_factory(password=password)
    message = await msec_invite(lab.api, "32")  # variant B: capture_password = s3cret
    lab.send(replayed("32", message), replayed("01", message))  # and one with no chunk 14
    await lab.received(2)
    assert lab.counted("stird_hep_datagrams", "auth-failed") == (1 if checked else 2)
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert v["STIRD_MKY"] == ("checked" if checked else "unchecked")


async def test_garbage_is_counted_and_the_collector_keeps_working(lab_factory: Any) -> None:
    lab = await lab_factory()
    message = await msec_invite(lab.api)
    good = replayed("01", message)
    lab.send(b"", b"HEP3", good[:-1], good[:40] + b"\xff" * 20, b"\x00" * 65000)
    lab.send(good)
    deadline = time.monotonic() + 5
    while len(lab.hep.store) < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    assert lab.counted("stird_hep_datagrams", "decode-error") == 5
    v = (await run_agi(lab.agi_address, agi_channel(message))).variables
    assert v["STIRD_MKY"] == "checked"


def test_the_store_is_bounded_and_short_lived() -> None:
    now = [0.0]
    store = SdpStore(ttl=2.0, max_calls=3, max_bytes=100, clock=lambda: now[0])
    for n in range(5):
        store.put_offer(f"c{n}", "v=0\r\n" * 4, None)
    assert len(store) == 3 and store.offer("c0") is None and store.offer("c4")
    store.put_offer("big", "x" * 101, None)  # over the byte bound: kept out
    assert store.offer("big") is None and store.size <= 100
    now[0] = 2.5
    assert store.offer("c4") is None


# --- connected identity (RFC 8862 §4.3–4.4) ----------------------------------------------


PHONE = "PJSIP/phone-00000001"


async def outbound_call(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> tuple[Lab, str, str, FakeAmi]:
    """The captured outbound call (files 10-24): the phone's channel runs the sign AGI,
    Asterisk's INVITE to the trunk (file 12) carries stird's msec Identity."""
    fake, client = ami
    fake.channels[PHONE] = channel_fields(PHONE, "stird-1796408718.1")
    api = make_api(tmp_path)
    api.dialogs = DialogApi(DialogPolicy(AsteriskEnder(client), policy=MsecPolicy.MANDATORY,
                                         window=30.0))  # fmt: skip
    cert = tmp_path / "trunk.crt"
    write_dtls_cert(cert)
    lab = await lab_factory(api, dtls=DtlsCertificates({"trunk": cert}))
    env = inbound_env("sign", agi_channel=PHONE, agi_callerid=CALLER, agi_extension=CALLEE,
                      agi_arg_1=CALLEE, agi_arg_2=CALLER, agi_arg_3="trunk")  # fmt: skip
    signed = await run_agi(lab.agi_address, FakeChannel(env))
    identity = signed.variables["STIRD_IDENTITY"]
    assert parse_identity(identity)[0].ppt == "msec", signed.variables
    invite = set_header(sip_text("12"), "Identity", identity)
    lab.send(replayed("12", invite), replayed("13"))
    await lab.received(2)
    call_id = parse_sip(invite.encode()).call_id or ""
    assert api.dialogs.policy is not None
    assert api.dialogs.policy.phase(call_id) is Phase.OFFERED
    return lab, call_id, sip_text("14"), fake


async def callee_msec(api: StirApi, answer: str, *, tamper: bool = False) -> str:
    """The trunk's 200 OK (file 14) with the callee's msec over the answer's fingerprint."""
    sdp = answer.split("\r\n\r\n", 1)[1]
    out = await api.sign({"orig": CALLEE, "dest": [CALLER], "sdp": sdp, "ppt": "msec"})
    [msec] = [v for v in out["identity"] if parse_identity(v)[0].ppt == "msec"]
    message = set_header(set_header(answer, "Identity", msec), "Date", out["date"])
    if tamper:
        message = message.replace("a=fingerprint:SHA-256 4A:", "a=fingerprint:SHA-256 4B:")
    return message


def _fix_parties(message: str) -> str:
    """The capture's From/To are the phone's numbers; give them the signed ones."""
    sip = parse_sip(message.encode())
    frm = f"<sip:{CALLER}@127.0.0.1>;tag={sip.tag('from')}"
    to = f"<sip:{CALLEE}@127.0.0.1>" + (f";tag={sip.tag('to')}" if sip.tag("to") else "")
    return set_header(set_header(message, "From", frm), "To", to)


async def test_callee_proof_in_the_200_confirms_the_dialog(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    lab, call_id, answer, fake = await outbound_call(tmp_path, lab_factory, ami)
    lab.send(replayed("14", await callee_msec(lab.api, _fix_parties(answer))))
    await lab.received(3)
    await lab.hep.drain()
    assert lab.api.dialogs.policy is not None
    assert lab.api.dialogs.policy.phase(call_id) is Phase.CONFIRMED
    assert not [a for a in fake.received if a.get("Action") == "Hangup"]


async def test_a_tampered_callee_proof_hangs_the_call_up_through_ami(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    lab, call_id, answer, fake = await outbound_call(tmp_path, lab_factory, ami)
    message = await callee_msec(lab.api, _fix_parties(answer), tamper=True)
    lab.send(replayed("14", message), replayed("14", message))  # and a retransmission
    await lab.received(4)
    await lab.hep.drain()
    policy = lab.api.dialogs.policy
    assert policy is not None and policy.phase(call_id) is Phase.FAILED
    await policy.tick()  # the timer task: the 2xx is in, so the call is ended now
    [hangup] = [a for a in fake.received if a.get("Action") == "Hangup"]
    assert (hangup["Channel"], hangup["Cause"]) == (PHONE, "21")


async def test_no_callee_proof_in_the_window_hangs_up(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    lab, call_id, _, fake = await outbound_call(tmp_path, lab_factory, ami)
    policy = lab.api.dialogs.policy
    assert policy is not None
    policy.window = 0.0  # the window has passed once the answer is in
    lab.send(replayed("14"))  # the captured 200 OK: no Identity
    await lab.received(3)
    await lab.hep.drain()
    assert policy.phase(call_id) is Phase.ANSWERED
    await policy.tick()
    [hangup] = [a for a in fake.received if a.get("Action") == "Hangup"]
    assert hangup["Channel"] == PHONE


async def test_bye_forgets_the_dialog(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    lab, call_id, _, _ = await outbound_call(tmp_path, lab_factory, ami)
    lab.send(replayed("23"))  # Asterisk's BYE to the trunk
    await lab.received(3)
    assert lab.api.dialogs.policy is not None
    assert lab.api.dialogs.policy.phase(call_id) is None


async def test_callee_update_after_the_answer_confirms(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    """RFC 8862 §4.3 proper: the 200 carries no proof, the callee's UPDATE does."""
    lab, call_id, answer, fake = await outbound_call(tmp_path, lab_factory, ami)
    lab.send(replayed("14"))  # the captured 200 OK without Identity: the window starts
    await lab.received(3)
    await lab.hep.drain()
    policy = lab.api.dialogs.policy
    assert policy is not None and policy.phase(call_id) is Phase.ANSWERED
    ok = parse_sip(answer.encode())
    sdp = answer.split("\r\n\r\n", 1)[1]
    head = (
        f"UPDATE sip:asterisk@127.0.0.1:35060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:35070;branch=z9hG4bK-callee-update-1\r\n"
        f"From: <sip:{CALLEE}@127.0.0.1>;tag={ok.tag('to')}\r\n"
        f"To: <sip:{CALLER}@127.0.0.1>;tag={ok.tag('from')}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 UPDATE\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    )
    out = await lab.api.sign({"orig": CALLEE, "dest": [CALLER], "sdp": sdp, "ppt": "msec"})
    [msec] = [v for v in out["identity"] if parse_identity(v)[0].ppt == "msec"]
    update = set_header(set_header(head + sdp, "Identity", msec), "Date", out["date"])
    lab.send(replayed("14", update))
    await lab.received(4)
    await lab.hep.drain()
    assert policy.phase(call_id) is Phase.CONFIRMED
    await policy.tick()
    assert not [a for a in fake.received if a.get("Action") == "Hangup"]


async def test_an_auth_challenge_keeps_the_dialog_tracked(
    tmp_path: Path, lab_factory: Any, ami: tuple[FakeAmi, AmiClient]
) -> None:
    lab, call_id, answer, _ = await outbound_call(tmp_path, lab_factory, ami)
    challenge = answer.split("\r\n\r\n", 1)[0].replace("SIP/2.0 200 OK", "SIP/2.0 407 Proxy "
                                                       "Authentication Required", 1)  # fmt: skip
    challenge = set_header(set_header(challenge + "\r\n\r\n", "Content-Type", None),
                           "Content-Length", "0")  # fmt: skip
    lab.send(replayed("14", challenge))
    await lab.received(3)
    assert lab.api.dialogs.policy is not None
    assert lab.api.dialogs.policy.phase(call_id) is Phase.OFFERED
    lab.send(replayed("14", challenge.replace("407 Proxy Authentication Required", "486 Busy")))
    await lab.received(4)
    assert lab.api.dialogs.policy.phase(call_id) is None  # a real failure ends it
