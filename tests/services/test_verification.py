"""The verification service: policy, roles, replay, pins and TOFU, deadlines."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.core.passport import Ppt
from stird.core.sign import SignRequest, sign_request
from stird.core.sipdate import format_sip_date
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import Credential, SipFacts, Trust, VerifyPolicy
from stird.services.verdicts import Action, OnFailure, Role, ServicePolicy, Verstat
from stird.services.verification import (
    VerificationService,
    fingerprint,
    replay_key,
    replay_value,
)

NOW = 1_790_000_000
X5U = "https://cert.example.org/alice.pem"
ORIG, DEST = "12025550100", "12025550101"
FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
SDP = f"v=0\r\nm=audio 1 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {FP}\r\n"


class DictStore:
    """A minimal KeyValueStore for these tests (TTL ignored: the clock is frozen)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


@dataclass
class FakeProvider:
    creds: dict[str, Credential | StirError]
    delay: float = 0.0
    calls: list[str] = field(default_factory=list)

    async def credential(self, url: str) -> Credential:
        self.calls.append(url)
        await asyncio.sleep(self.delay)
        found = self.creds.get(url)
        if isinstance(found, StirError):
            raise found
        if found is None:
            raise StirError(SipStatus.BAD_IDENTITY_INFO, "404", check=Check.CREDENTIAL)
        return found


@dataclass(frozen=True)
class Keys:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate  # self-signed, not pinned by anyone yet
    other_key: ec.EllipticCurvePrivateKey
    other_cert: x509.Certificate  # another self-signed cert for the same TN


@pytest.fixture(scope="module")
def keys() -> Keys:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return Keys(
        key,
        certs.make_stir_cert(key, now=NOW - 3600, tns=[ORIG]),
        other,
        certs.make_stir_cert(other, now=NOW - 3600, tns=[ORIG]),
    )


def tn(value: str) -> PartyId:
    return PartyId(IdKind.TN, value)


def identity(key: ec.EllipticCurvePrivateKey, **kw: object) -> str:
    params: dict[str, object] = {
        "orig": tn(ORIG), "dest": (tn(DEST),), "iat": NOW, "ppt": Ppt.MSEC, "sdp": SDP,
    }  # fmt: skip
    params.update(kw)
    x5u = str(params.pop("x5u", X5U))
    _, header = sign_request(SignRequest(**params), key, x5u)  # type: ignore[arg-type]
    return header.format()


def facts(*values: str, **kw: object) -> SipFacts:
    base = SipFacts(
        identity=values,
        from_=f"<sip:+{ORIG}@pbx.example.com;user=phone>",
        to=f"<tel:+{DEST}>",
        date=format_sip_date(NOW),
        sdp=SDP,
        call_id="call-1@pbx",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def service(
    creds: dict[str, Credential | StirError], store: DictStore | None = None, **policy: object
) -> VerificationService:
    return VerificationService(
        FakeProvider(creds),
        store or DictStore(),
        ServicePolicy(**policy),
        clock=lambda: NOW,  # type: ignore[arg-type]
    )


def pinned(keys: Keys) -> dict[str, Credential | StirError]:
    return {X5U: Credential((keys.cert,), trust=Trust.ANCHOR)}


async def test_valid_msec(keys: Keys) -> None:
    verdict = await service(pinned(keys)).verify(facts(identity(keys.key)))
    assert verdict.verdict == "valid"
    assert (verdict.action, verdict.verstat, verdict.reason_header) == (
        Action.CONTINUE, Verstat.PASSED, None,
    )  # fmt: skip
    assert verdict.to_json()["passports"][0]["ppt"] == "msec"


async def test_invalid_msec_rejects_with_sip_reason(keys: Keys) -> None:
    bad = identity(keys.other_key)  # signed by a key the certificate does not hold
    verdict = await service(pinned(keys), on_failure=OnFailure.CONTINUE).verify(facts(bad))
    assert (verdict.action, verdict.code) == (Action.REJECT, 438)  # RFC 8862 §4.4 MUST
    assert verdict.reason_header == 'SIP ;cause=438 ;text="Invalid Identity Header"'
    assert verdict.verstat is Verstat.FAILED


@pytest.mark.parametrize(
    ("on_failure", "action", "reason"),
    [
        (OnFailure.REJECT, Action.REJECT, 'SIP ;cause=438 ;text="Invalid Identity Header"'),
        (OnFailure.CONTINUE, Action.CONTINUE, None),
        (
            OnFailure.CONTINUE_WITH_REASON,
            Action.CONTINUE,
            'STIR ;cause=438 ;text="Invalid Identity Header"',
        ),
    ],
)
async def test_failure_policy_for_baseline(
    keys: Keys, on_failure: OnFailure, action: Action, reason: str | None
) -> None:
    bad = identity(keys.other_key, ppt=None)
    verdict = await service(pinned(keys), on_failure=on_failure).verify(facts(bad))
    assert (verdict.verdict, verdict.action, verdict.reason_header) == ("invalid", action, reason)


async def test_msec_on_non_dialog_forming_request_follows_policy(keys: Keys) -> None:
    bad = identity(keys.other_key)
    svc = service(pinned(keys), on_failure=OnFailure.CONTINUE)
    verdict = await svc.verify(facts(bad, dialog_forming=False))
    assert verdict.action is Action.CONTINUE


async def test_intermediary_never_blocks_over_trust(keys: Keys) -> None:
    """RFC 8862 §4: an untrusted credential (437) does not make an intermediary block."""
    creds: dict[str, Credential | StirError] = {X5U: Credential((keys.cert,))}
    svc = service(creds, role=Role.INTERMEDIARY, tofu=False)
    verdict = await svc.verify(facts(identity(keys.key)))
    assert (verdict.code, verdict.action) == (437, Action.CONTINUE)
    assert verdict.reason_header == 'STIR ;cause=437 ;text="Unsupported Credential"'
    endpoint = await service(creds, tofu=False).verify(facts(identity(keys.key)))
    assert (endpoint.code, endpoint.action) == (437, Action.REJECT)


@pytest.mark.parametrize(
    ("require", "code", "action"), [(True, 428, Action.REJECT), (False, None, Action.CONTINUE)]
)
async def test_no_identity(keys: Keys, require: bool, code: int | None, action: Action) -> None:
    policy = ServicePolicy(verify=VerifyPolicy(require_identity=require))
    svc = VerificationService(FakeProvider({}), DictStore(), policy, clock=lambda: NOW)
    verdict = await svc.verify(facts())
    assert (verdict.verdict, verdict.code, verdict.action, verdict.verstat) == (
        "no-identity", code, action, Verstat.NONE,
    )  # fmt: skip


async def test_minimum_attestation(keys: Keys) -> None:
    shaken = identity(keys.key, ppt=Ppt.SHAKEN, attest="C", origid="o", sdp=None)
    verdict = await service(pinned(keys), min_attest="B").verify(facts(shaken))
    assert (verdict.verdict, verdict.attest, verdict.verstat) == ("valid", "C", Verstat.NONE)
    ok = await service(pinned(keys), min_attest="C").verify(facts(shaken))
    assert ok.verstat is Verstat.PASSED


async def test_replay_for_another_call_is_refused(keys: Keys) -> None:
    svc = service(pinned(keys))
    value = identity(keys.key)
    assert (await svc.verify(facts(value))).verdict == "valid"
    assert (await svc.verify(facts(value))).verdict == "valid"  # the same call again (e.g. 401)
    replayed = await svc.verify(facts(value, call_id="call-2@pbx"))
    assert (replayed.verdict, replayed.code) == ("invalid", 438)
    assert replayed.passports[0].to_json()["failed_check"] == "replay"
    no_replay = service(pinned(keys), replay=False)
    await no_replay.verify(facts(value))
    assert (await no_replay.verify(facts(value, call_id="call-2@pbx"))).verdict == "valid"


async def test_replay_entries_are_compact(keys: Keys) -> None:
    """One short key and a fixed 16-byte value per PASSporT, however long the Call-ID."""
    store = DictStore()
    svc = service(pinned(keys), store)
    value, long_call_id = identity(keys.key), "c" * 4000 + "@pbx"
    assert (await svc.verify(facts(value, call_id=long_call_id))).verdict == "valid"
    [(key, remembered)] = [(k, v) for k, v in store.data.items() if k.startswith("replay:")]
    assert len(key) == 29 and key.startswith("replay:")
    assert remembered == replay_value(long_call_id) and len(remembered) == 16
    assert (await svc.verify(facts(value, call_id=long_call_id))).verdict == "valid"
    assert (await svc.verify(facts(value, call_id=long_call_id + "x"))).code == 438


def test_replay_key_and_value_separate_inputs() -> None:
    keys = {replay_key(i.to_bytes(16, "big")) for i in range(1000)}
    assert len(keys) == 1000 and all(k.isascii() and len(k) == 29 for k in keys)
    assert replay_value("a@x") != replay_value("b@x")


async def test_tofu_pins_the_first_self_signed_credential(keys: Keys) -> None:
    store = DictStore()
    first = service({X5U: Credential((keys.cert,))}, store)
    assert (await first.verify(facts(identity(keys.key)))).verdict == "valid"
    assert len(store.data) == 2  # the pin and the replay entry
    impostor = service({X5U: Credential((keys.other_cert,))}, store)
    verdict = await impostor.verify(facts(identity(keys.other_key), call_id="call-9@pbx"))
    assert (verdict.code, verdict.passports[0].to_json()["failed_check"]) == (437, "trust")


async def test_tofu_never_pins_a_failing_request(keys: Keys) -> None:
    store = DictStore()
    svc = service({X5U: Credential((keys.cert,))}, store)
    stale = await svc.verify(facts(identity(keys.key, iat=NOW - 600), date=None))
    assert stale.code == 403
    assert not any(k.startswith("pin:") for k in store.data)


async def test_explicit_pin(keys: Keys) -> None:
    creds: dict[str, Credential | StirError] = {X5U: Credential((keys.cert,))}
    svc = service(creds, tofu=False, pins=frozenset({fingerprint(keys.cert)}))
    assert (await svc.verify(facts(identity(keys.key)))).verdict == "valid"


async def test_slow_credential_is_436_within_the_deadline(keys: Keys) -> None:
    provider = FakeProvider(pinned(keys), delay=30)
    svc = VerificationService(provider, DictStore(), ServicePolicy(deadline=0.2), clock=lambda: NOW)
    started = time.monotonic()
    verdict = await svc.verify(facts(identity(keys.key)))
    assert time.monotonic() - started < 1.0
    assert (verdict.code, verdict.action) == (436, Action.REJECT)


async def test_one_failing_header_of_several_reports_stir_reason_with_ppi(keys: Keys) -> None:
    good = identity(keys.key, ppt=None)
    bad_url = "https://gone.example/c.pem"
    bad = identity(keys.key, ppt=Ppt.SHAKEN, attest="A", origid="o", sdp=None, x5u=bad_url)
    verdict = await service(pinned(keys)).verify(facts(good, bad))
    assert (verdict.verdict, verdict.action) == ("valid", Action.CONTINUE)
    compact = verdict.passports[1].compact
    assert verdict.reason_header == f'STIR ;cause=436 ;text="Bad Identity Info" ;ppi="{compact}"'


async def test_credentials_fetched_once_per_url_and_concurrently(keys: Keys) -> None:
    provider = FakeProvider(pinned(keys), delay=0.1)
    svc = VerificationService(provider, DictStore(), ServicePolicy(), clock=lambda: NOW)
    two = (identity(keys.key, ppt=None), identity(keys.key, ppt=Ppt.SHAKEN, attest="A", origid="o"))
    started = time.monotonic()
    await svc.verify(facts(*two))
    assert provider.calls == [X5U]
    assert time.monotonic() - started < 1.0


async def test_per_request_deadline_only_shortens(keys: Keys) -> None:
    """Kamailio's janssonrpc timeout (timeout_ms) bounds the credential wait."""
    provider = FakeProvider(pinned(keys), delay=30)
    svc = VerificationService(provider, DictStore(), ServicePolicy(deadline=3.0), clock=lambda: NOW)
    started = time.monotonic()
    verdict = await svc.verify(facts(identity(keys.key)), deadline=0.15)
    assert time.monotonic() - started < 1.0
    assert verdict.code == 436
