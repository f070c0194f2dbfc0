"""The API side of the msec dialog policy: which signatures open a tracked dialog, the
stir.dialog events, and what a backwards request's verdict feeds the policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.dialog_api import DialogApi, handle_of, is_backwards, msec_proof
from stird.adapters.requests import FieldError
from stird.core import certs
from stird.core.errors import SipStatus, StirError
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import PassportCheck, Verdict
from stird.services.authentication import (
    AuthenticationService,
    SigningCredential,
    SignInput,
    SignOutput,
)
from stird.services.dialogs import DialogHandle, DialogPolicy, MsecPolicy, Phase
from stird.services.verdicts import Action, CallVerdict, Verstat

NOW = 1_790_000_000
FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
SDP = f"v=0\r\nm=audio 1 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {FP}\r\n"
KAM = {"callid": "1-77@127.0.0.1", "dlg_h_entry": 3866, "dlg_h_id": 2333}


def sign(sdp: str | None = SDP) -> SignOutput:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=NOW - 60, tns=["12025550100"])
    auth = AuthenticationService(
        [SigningCredential("a", key, (cert,), "https://certs.example/a.pem")], clock=lambda: NOW
    )
    tn = PartyId(IdKind.TN, "12025550100")
    return auth.sign(SignInput(tn, (PartyId(IdKind.TN, "12025550101"),), sdp=sdp))


@dataclass
class Ender:
    ended: list[tuple[DialogHandle, str]] = field(default_factory=list)

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        self.ended.append((handle, reason))
        return True


def api(policy: MsecPolicy = MsecPolicy.MANDATORY) -> tuple[DialogApi, Ender]:
    ender = Ender()
    return DialogApi(DialogPolicy(ender, policy=policy, window=5.0)), ender


def verdict(*checks: tuple[str | None, bool]) -> CallVerdict:
    error = StirError(SipStatus.INVALID_IDENTITY_HEADER, "signature")
    passports = tuple(
        PassportCheck(index=i, supported=True, ppt=ppt, error=None if ok else error)
        for i, (ppt, ok) in enumerate(checks)
    )
    valid = any(ok for _, ok in checks)
    return CallVerdict(
        verdict=Verdict.VALID if valid else Verdict.INVALID,
        status=None if valid else SipStatus.INVALID_IDENTITY_HEADER,
        action=Action.CONTINUE if valid else Action.REJECT,
        verstat=Verstat.PASSED if valid else Verstat.FAILED,
        attest=None, reason_headers=(), detail=None, passports=passports,
    )  # fmt: skip


def test_an_msec_signature_with_kamailio_ids_opens_a_tracked_dialog() -> None:
    dialogs, _ = api()
    state = dialogs.signed({**KAM, "orig": "x", "dest": ["y"]}, sign())
    assert state == {"policy": "mandatory", "decision": "continue", "phase": "offered"}
    assert dialogs.policy is not None and dialogs.policy.phase("1-77@127.0.0.1") is Phase.OFFERED


@pytest.mark.parametrize(
    "params",
    [
        {"callid": "c"},  # no PBX handle: nothing could end it
        {"dlg_h_entry": 1, "dlg_h_id": 2},  # no Call-ID
        {**KAM, "dialog_forming": False},  # the callee's backwards UPDATE being signed
        {**KAM, "direction": "backwards"},
    ],
)
def test_what_is_not_tracked(params: dict[str, Any]) -> None:
    dialogs, _ = api()
    assert dialogs.signed(params, sign()) is None
    assert dialogs.policy is not None and len(dialogs.policy) == 0


def test_no_msec_no_tracking_and_policy_off_tracks_nothing() -> None:
    dialogs, _ = api()
    assert dialogs.signed(KAM, sign(sdp=None)) is None  # shaken only: no keys to prove
    assert DialogApi(None).signed(KAM, sign()) is None


def test_handles() -> None:
    assert handle_of({"dlg_h_entry": 1, "dlg_h_id": 0}) == DialogHandle(kamailio=(1, 0))
    assert handle_of({"asterisk_channel": "PJSIP/a-1"}) == DialogHandle(
        asterisk_channel="PJSIP/a-1"
    )
    assert handle_of({}) is None
    for bad in ({"dlg_h_entry": 1}, {"dlg_h_entry": "1", "dlg_h_id": 2},
                {"dlg_h_entry": True, "dlg_h_id": 2}, {"asterisk_channel": "a\r\nb"}):  # fmt: skip
        with pytest.raises(FieldError):
            handle_of(bad)


def test_direction() -> None:
    assert is_backwards({"direction": "backwards"}) and not is_backwards({})
    with pytest.raises(FieldError, match="direction"):
        is_backwards({"direction": "sideways"})


def test_msec_proof() -> None:
    assert msec_proof(verdict(("msec", True), ("shaken", True))) is True
    assert msec_proof(verdict(("msec", False), ("shaken", True))) is False
    assert msec_proof(verdict(("shaken", True))) is None  # no keys proven, none disproven


async def test_answered_then_a_valid_backwards_request_confirms() -> None:
    dialogs, ender = api()
    dialogs.signed(KAM, sign())
    answer = await dialogs.event({"event": "answered", "callid": KAM["callid"]})
    assert answer == {"event": "answered", "call_id": KAM["callid"], "policy": "mandatory",
                      "decision": "continue", "phase": "answered"}  # fmt: skip
    got = await dialogs.backwards({"callid": KAM["callid"]}, verdict(("msec", True)))
    assert got == {"policy": "mandatory", "decision": "continue", "phase": "confirmed",
                   "proof": "valid"}  # fmt: skip
    assert ender.ended == []


async def test_an_invalid_backwards_request_ends_the_answered_dialog() -> None:
    dialogs, ender = api()
    dialogs.signed(KAM, sign())
    await dialogs.event({"event": "answered", "call_id": KAM["callid"]})
    got = await dialogs.backwards({"call_id": KAM["callid"]}, verdict(("msec", False)))
    assert (got["decision"], got["proof"], got["phase"]) == ("end", "invalid", None)
    assert ender.ended == [(DialogHandle(kamailio=(3866, 2333)),
                            'STIR;cause=438;text="msec: invalid"')]  # fmt: skip


async def test_a_backwards_request_without_msec_leaves_it_to_the_window() -> None:
    dialogs, _ = api()
    dialogs.signed(KAM, sign())
    got = await dialogs.backwards({"callid": KAM["callid"]}, verdict(("shaken", True)))
    assert (got["decision"], got["proof"], got["phase"]) == ("continue", "none", "offered")


async def test_policy_off_answers_continue() -> None:
    dialogs = DialogApi(None)
    got = await dialogs.backwards({}, verdict(("msec", False)))
    assert got == {"policy": "off", "decision": "continue", "phase": None, "proof": "invalid"}
    assert (await dialogs.event({"event": "ended", "callid": "x"}))["policy"] == "off"


async def test_refused_twice_then_the_policy() -> None:
    dialogs, ender = api()
    dialogs.signed(KAM, sign())
    await dialogs.event({"event": "answered", "callid": KAM["callid"]})
    first = await dialogs.event({"event": "refused", "callid": KAM["callid"], "code": 438})
    second = await dialogs.event({"event": "refused", "callid": KAM["callid"], "code": 438})
    assert (first["decision"], second["decision"]) == ("retry", "end")
    assert len(ender.ended) == 1


async def test_ended_forgets() -> None:
    dialogs, _ = api()
    dialogs.signed(KAM, sign())
    answer = await dialogs.event({"event": "ended", "callid": KAM["callid"]})
    assert answer["phase"] is None
    assert dialogs.policy is not None and len(dialogs.policy) == 0


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ("nope", "body"),
        ({"event": "hung", "callid": "c"}, "event"),
        ({"event": "answered"}, "call_id"),
        ({"event": "answered", "callid": ""}, "callid"),
        ({"event": "answered", "call_id": 7}, "call_id"),
        ({"event": "refused", "callid": "c"}, "code"),
        ({"event": "refused", "callid": "c", "code": "438"}, "code"),
        ({"event": "refused", "callid": "c", "code": 200}, "code"),
    ],
)
async def test_bad_events(params: Any, field_name: str) -> None:
    dialogs, _ = api()
    with pytest.raises(FieldError) as caught:
        await dialogs.event(params)
    assert caught.value.field == field_name
