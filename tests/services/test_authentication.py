"""The authentication service: credential choice, Date rules, PASSporT types."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import StirError
from stird.core.identity import parse_identity
from stird.core.passport import Ppt, decode
from stird.core.sipdate import format_sip_date
from stird.core.tn import IdKind, PartyId
from stird.services.authentication import (
    AuthenticationService,
    SigningCredential,
    SignInput,
    SignPolicy,
    Uncovered,
)

NOW = 1_790_000_000
FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
SDP = f"v=0\r\nm=audio 1 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {FP}\r\n"


def tn(v: str) -> PartyId:
    return PartyId(IdKind.TN, v)


def uri(v: str) -> PartyId:
    return PartyId(IdKind.URI, v)


def credential(name: str, **select: object) -> SigningCredential:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=NOW - 60, tns=["12025550100"])
    return SigningCredential(name, key, (cert,), f"https://certs.example/{name}.pem", **select)  # type: ignore[arg-type]


def service(*creds: SigningCredential, **policy: object) -> AuthenticationService:
    return AuthenticationService(creds, SignPolicy(**policy), clock=lambda: NOW)  # type: ignore[arg-type]


def ppts(out_identity: tuple[str, ...]) -> list[str | None]:
    return [parse_identity(v)[0].ppt for v in out_identity]


def test_msec_plus_shaken_for_tn_callers() -> None:
    out = service(credential("a")).sign(SignInput(tn("12025550100"), (tn("12025550101"),), sdp=SDP))
    assert ppts(out.identity) == ["msec", "shaken"]
    assert out.date == format_sip_date(NOW) and out.iat == NOW
    msec = decode(parse_identity(out.identity[0])[0].digest)
    assert msec.claims.mky is not None and msec.claims.mky[0].dig == FP.replace(":", "")
    shaken = decode(parse_identity(out.identity[1])[0].digest)
    assert shaken.claims.attest == "A" and shaken.claims.origid and shaken.claims.mky is None


@pytest.mark.parametrize(
    ("request_kw", "policy", "expected"),
    [
        ({"sdp": None}, {}, ["shaken"]),  # no fingerprints: shaken only
        ({}, {"add_shaken": False}, ["msec"]),
        ({"add_shaken": False}, {}, ["msec"]),  # the request's say (stird.cfg STIRD_ONE_PASSPORT)
        ({"add_shaken": True}, {"add_shaken": False}, ["msec", "shaken"]),
        ({"add_shaken": False, "sdp": None}, {}, ["shaken"]),  # no fingerprints: still one
        ({"ppt": Ppt.SHAKEN, "ppt_given": True}, {}, ["shaken"]),
        ({"ppt": None, "ppt_given": True}, {}, [None]),
        ({}, {"ppt": None}, [None]),
    ],
)
def test_types(
    request_kw: dict[str, object], policy: dict[str, object], expected: list[str | None]
) -> None:
    kw: dict[str, object] = {"sdp": SDP, **request_kw}
    out = service(credential("a"), **policy).sign(SignInput(tn("12025550100"), (tn("1"),), **kw))  # type: ignore[arg-type]
    assert ppts(out.identity) == expected


def test_msec_requested_without_fingerprints_is_400() -> None:
    with pytest.raises(StirError) as info:
        service(credential("a")).sign(
            SignInput(tn("12025550100"), (tn("1"),), ppt=Ppt.MSEC, ppt_given=True)
        )
    assert info.value.code == 400


def test_credential_selection_by_range_prefix_domain_and_certificate() -> None:
    by_cert = credential("cert")  # no selectors: its TNAuthList (12025550100)
    by_range = credential("range", ranges=(certs.TnRange("13125550000", 100),))
    by_prefix = credential("prefix", prefixes=("44",))
    by_domain = credential("domain", domains=("example.com",))
    svc = service(by_range, by_prefix, by_domain, by_cert)
    assert svc.choose(tn("13125550042"))[0].name == "range"  # type: ignore[index]
    assert svc.choose(tn("442071234567"))[0].name == "prefix"  # type: ignore[index]
    assert svc.choose(uri("sip:alice@pbx.example.com"))[0].name == "domain"  # type: ignore[index]
    assert svc.choose(tn("12025550100"))[0].name == "cert"  # type: ignore[index]
    with pytest.raises(StirError) as info:
        svc.choose(tn("33123456789"))
    assert info.value.code == 403


def test_uncovered_policies() -> None:
    dest = (tn("12025550101"),)
    unsigned = service(credential("a"), uncovered=Uncovered.UNSIGNED).sign(
        SignInput(tn("999"), dest)
    )
    assert unsigned.identity == ()
    gateway = service(credential("a"), uncovered=Uncovered.SIGN, uncovered_attest="C")
    out = gateway.sign(SignInput(tn("33123456789"), dest))
    assert decode(parse_identity(out.identity[0])[0].digest).claims.attest == "C"


@pytest.mark.parametrize(
    ("offset", "ok"), [(0, True), (59, True), (-60, True), (61, False), (-3600, False)]
)
def test_date_must_be_near_our_clock(offset: int, ok: bool) -> None:
    request = SignInput(tn("12025550100"), (tn("1"),), date=format_sip_date(NOW + offset))
    if ok:
        out = service(credential("a")).sign(request)
        assert out.iat == NOW + offset  # RFC 8224 §4.1: iat from the Date header
    else:
        with pytest.raises(StirError) as info:
            service(credential("a")).sign(request)
        assert info.value.code == 403


def test_expired_credential_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = certs.make_stir_cert(key, now=NOW - 10 * 86400, days=1, tns=["12025550100"])
    svc = service(SigningCredential("old", key, (old,), "https://x/old.pem"))
    with pytest.raises(StirError) as info:
        svc.sign(SignInput(tn("12025550100"), (tn("1"),)))
    assert info.value.code == 403  # refused, with the remedy: never a silently bad PASSporT
    assert "signing credential old expired at" in info.value.detail
    assert "renew" in info.value.detail


def test_credential_expiring_a_second_later_still_signs() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=NOW - 86400 + 1, days=1, tns=["12025550100"])
    svc = service(SigningCredential("edge", key, (cert,), "https://x/edge.pem"))
    assert svc.sign(SignInput(tn("12025550100"), (tn("1"),))).credential == "edge"
