"""RFC 8224 §6.2 decisions of the sans-I/O verifier: one row per situation of the
decision table in DIGEST.md §7, plus the RFC 8862 §4.4 msec rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.core.identity import IdentityHeader
from stird.core.passport import Ppt
from stird.core.sign import SignRequest, sign_request
from stird.core.sipdate import format_sip_date
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import Credential, SipFacts, Trust, Verdict, VerifyPolicy
from stird.core.verify import credential_uris, verify_request

NOW = 1_790_000_000
X5U = "https://cert.example.org/stir.pem"
ORIG, DEST = "12025550100", "12025550101"
FP1 = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
FP2 = "02:1A:CC:54:27:AB:EB:9C:53:3F:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1:7A:03:A2:7D:F9:B0:7F:46:19:B2"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    f"a=fingerprint:sha-256 {FP1}\r\n"
    "m=audio 20000 UDP/TLS/RTP/SAVP 0\r\na=setup:actpass\r\n"
)


@dataclass(frozen=True)
class Pki:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate  # self-signed, TN 12025550100
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    issued: x509.Certificate  # same key, issued by root, TN range 1202555xxxx


@pytest.fixture(scope="module")
def pki() -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certs.make_stir_cert(root_key, now=NOW - 86400, ca=True, common_name="Test STI-CA")
    issued = certs.make_stir_cert(
        key,
        now=NOW - 86400,
        ranges=[certs.TnRange("12025550000", 10000)],
        issuer_key=root_key,
        issuer_cert=root,
    )
    cert = certs.make_stir_cert(key, now=NOW - 86400, tns=[ORIG])
    return Pki(key, cert, root_key, root, issued)


def tn(value: str) -> PartyId:
    return PartyId(IdKind.TN, value)


def identity(pki: Pki, **kw: object) -> str:
    params: dict[str, object] = {
        "orig": tn(ORIG), "dest": (tn(DEST),), "iat": NOW, "ppt": Ppt.MSEC, "sdp": SDP,
    }  # fmt: skip
    params.update(kw)
    key = params.pop("key", pki.key)
    x5u = str(params.pop("x5u", X5U))
    _, header = sign_request(SignRequest(**params), key, x5u)  # type: ignore[arg-type]
    return header.format()


def facts(*values: str, **kw: object) -> SipFacts:
    base = SipFacts(
        identity=values,
        from_=f'"Alice" <sip:+{ORIG}@pbx.example.com;user=phone>;tag=1',
        to=f"<tel:+{DEST}>",
        ruri=f"sip:{DEST}@pbx.example.com",
        date=format_sip_date(NOW),
        sdp=SDP,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def pinned(pki: Pki) -> dict[str, Credential | StirError]:
    return {X5U: Credential((pki.cert,), trust=Trust.ANCHOR)}


POLICY = VerifyPolicy()


def test_valid_msec_full_form(pki: Pki) -> None:
    result = verify_request(facts(identity(pki)), pinned(pki), POLICY, NOW + 5)
    assert result.verdict is Verdict.VALID, result.to_json()
    check = result.passports[0]
    assert (check.ppt, check.orig, check.iat) == ("msec", tn(ORIG), NOW)
    assert check.signer is not None
    assert "12025550100" in check.signer


def test_valid_msec_compact_form_rebuilt_from_signalling(pki: Pki) -> None:
    result = verify_request(facts(identity(pki, compact=True)), pinned(pki), POLICY, NOW)
    assert result.verdict is Verdict.VALID, result.to_json()
    assert result.passports[0].form == "compact"


def test_valid_shaken_and_base_report_attestation(pki: Pki) -> None:
    shaken = identity(pki, ppt=Ppt.SHAKEN, attest="B", origid="x", sdp=None)
    base = identity(pki, ppt=None)
    result = verify_request(facts(shaken, base), pinned(pki), POLICY, NOW)
    assert result.verdict is Verdict.VALID
    assert result.attest == "B"


def test_chain_to_anchor(pki: Pki) -> None:
    creds: dict[str, Credential | StirError] = {X5U: Credential((pki.issued, pki.root))}
    result = verify_request(facts(identity(pki)), creds, VerifyPolicy(anchors=(pki.root,)), NOW)
    assert result.verdict is Verdict.VALID, result.to_json()


def test_credential_uris_skip_unsupported() -> None:
    got = credential_uris(facts("a.b.c;info=<https://a/1>", "a.b.c;info=<https://b/2>;ppt=foo"))
    assert got == ("https://a/1",)


# Each row: (name, how to build the request, credentials, policy, verdict, status, check)
Builder = Callable[[Pki], SipFacts]
Creds = Callable[[Pki], dict[str, Credential | StirError]]


def _expired(pki: Pki) -> dict[str, Credential | StirError]:
    old = certs.make_stir_cert(pki.key, now=NOW - 10 * 86400, days=1, tns=[ORIG])
    return {X5U: Credential((old,), trust=Trust.ANCHOR)}


def _unfetchable(_: Pki) -> dict[str, Credential | StirError]:
    return {X5U: StirError(SipStatus.BAD_IDENTITY_INFO, "timeout", check=Check.CREDENTIAL)}


def _tampered(pki: Pki) -> SipFacts:
    value = identity(pki)
    token, rest = value.split(";", 1)
    head, body, sig = token.split(".")
    return facts(f"{head}.{body}.{sig[:-4]}AAAA;{rest}")


def _x5u_not_info(pki: Pki) -> SipFacts:
    evil = "https://evil.example/c.pem"
    return facts(identity(pki, x5u=evil).replace(f"info=<{evil}>", f"info=<{X5U}>"))


ROWS = [
    ("no identity, required", lambda p: facts(), pinned, VerifyPolicy(require_identity=True),
     Verdict.NO_IDENTITY, SipStatus.USE_IDENTITY_HEADER, None),
    ("no identity, optional", lambda p: facts(), pinned, POLICY, Verdict.NO_IDENTITY, None, None),
    ("only unsupported ppt, required",
     lambda p: facts(f"{identity(p)[: identity(p).index(';')]};info=<{X5U}>;ppt=foo"), pinned,
     VerifyPolicy(require_identity=True), Verdict.UNSUPPORTED,
     SipStatus.USE_SUPPORTED_PASSPORT_FORMAT, None),
    ("credential unobtainable", lambda p: facts(identity(p)), _unfetchable, POLICY,
     Verdict.INVALID, SipStatus.BAD_IDENTITY_INFO, Check.CREDENTIAL),
    ("credential absent", lambda p: facts(identity(p)), lambda p: {}, POLICY,
     Verdict.INVALID, SipStatus.BAD_IDENTITY_INFO, Check.CREDENTIAL),
    ("untrusted: no anchors", lambda p: facts(identity(p)),
     lambda p: {X5U: Credential((p.cert,))}, POLICY,
     Verdict.INVALID, SipStatus.UNSUPPORTED_CREDENTIAL, Check.TRUST),
    ("untrusted: wrong anchor", lambda p: facts(identity(p)),
     lambda p: {X5U: Credential((p.cert,))}, "anchor-root",
     Verdict.INVALID, SipStatus.UNSUPPORTED_CREDENTIAL, Check.TRUST),
    ("expired at iat", lambda p: facts(identity(p)), _expired, POLICY,
     Verdict.INVALID, SipStatus.UNSUPPORTED_CREDENTIAL, Check.TRUST),
    ("signature broken", _tampered, pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.SIGNATURE),
    ("signed by another key", lambda p: facts(identity(p, key=p.root_key)), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.SIGNATURE),
    ("orig is not From", lambda p: facts(identity(p, orig=tn("12025550199"))), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.IDENTITY),
    ("dest is not To", lambda p: facts(identity(p, dest=(tn("12025550177"),))), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.DEST),
    ("TN outside TNAuthList",
     lambda p: facts(identity(p, orig=tn("12025550199")), from_="<sip:+12025550199@x;user=phone>"),
     pinned, POLICY, Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.AUTHORITY),
    ("stale iat", lambda p: facts(identity(p, iat=NOW - 120), date=None), pinned, POLICY,
     Verdict.INVALID, SipStatus.STALE_DATE, Check.FRESHNESS),
    ("stale Date", lambda p: facts(identity(p), date=format_sip_date(NOW - 61)), pinned, POLICY,
     Verdict.INVALID, SipStatus.STALE_DATE, Check.FRESHNESS),
    ("iat in the future", lambda p: facts(identity(p, iat=NOW + 30), date=None), pinned, POLICY,
     Verdict.INVALID, SipStatus.STALE_DATE, Check.FRESHNESS),
    ("mky differs from SDP",
     lambda p: facts(identity(p), sdp=SDP.replace(FP1, FP2)), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.MKY),
    ("SDP k= line with msec", lambda p: facts(identity(p), sdp=SDP + "k=clear:secret\r\n"), pinned,
     POLICY, Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.MKY),
    ("msec without SDP", lambda p: facts(identity(p), sdp=None), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.MKY),
    ("x5u is not info", _x5u_not_info, pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.CREDENTIAL),
    ("Identity ppt differs from the token's",
     lambda p: facts(identity(p, ppt=None).replace(f"info=<{X5U}>", f"info=<{X5U}>;ppt=msec")),
     pinned, POLICY, Verdict.INVALID, SipStatus.INVALID_PASSPORT, Check.PPT),
    ("compact shaken cannot be rebuilt",
     lambda p: facts(f"..AAAA;info=<{X5U}>;ppt=shaken"), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_PASSPORT, Check.SYNTAX),
    ("malformed Identity", lambda p: facts("not a header"), pinned, POLICY,
     Verdict.INVALID, SipStatus.INVALID_IDENTITY_HEADER, Check.SYNTAX),
    ("malformed From", lambda p: facts(identity(p), from_="<<<"), pinned, POLICY,
     Verdict.INVALID, SipStatus.BAD_REQUEST, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("builder", "creds", "policy", "verdict", "status", "check"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_decision_table(
    pki: Pki,
    builder: Builder,
    creds: Creds,
    policy: VerifyPolicy | str,
    verdict: Verdict,
    status: SipStatus | None,
    check: Check | None,
) -> None:
    if policy == "anchor-root":
        policy = VerifyPolicy(anchors=(pki.root,))
    assert isinstance(policy, VerifyPolicy)
    result = verify_request(builder(pki), creds(pki), policy, NOW)
    assert result.verdict is verdict, result.to_json()
    assert result.status is status, result.to_json()
    if check is not None:
        assert result.failed[0].error is not None
        assert result.failed[0].error.check is check, result.to_json()


def test_436_only_when_every_header_failed_on_its_credential(pki: Pki) -> None:
    good_elsewhere = identity(pki, x5u="https://other.example/c.pem", orig=tn("12025550199"))
    creds = {**_unfetchable(pki), "https://other.example/c.pem": Credential((pki.cert,), True)}
    result = verify_request(facts(identity(pki), good_elsewhere), creds, POLICY, NOW)
    assert result.status is SipStatus.INVALID_IDENTITY_HEADER  # the 438, not the 436


def test_one_valid_header_is_enough(pki: Pki) -> None:
    """RFC 8224 §6.2.1: a valid header counts whatever the others say."""
    shaken = identity(pki, ppt=Ppt.SHAKEN, attest="A", origid="o", sdp=None)
    result = verify_request(facts("garbage", shaken), pinned(pki), POLICY, NOW)
    assert result.verdict is Verdict.VALID
    assert [p.valid for p in result.passports] == [False, True]


@pytest.mark.parametrize(
    ("dialog_forming", "verdict"), [(True, Verdict.INVALID), (False, Verdict.VALID)]
)
def test_msec_failure_rejects_dialog_forming_requests(
    pki: Pki, dialog_forming: bool, verdict: Verdict
) -> None:
    """RFC 8862 §4.4: any failure of an msec PASSporT on a dialog-forming request rejects,
    even when another Identity header is valid."""
    shaken = identity(pki, ppt=Ppt.SHAKEN, attest="A", origid="o", sdp=None)
    request = facts(identity(pki), shaken, sdp=SDP.replace(FP1, FP2), dialog_forming=dialog_forming)
    result = verify_request(request, pinned(pki), POLICY, NOW)
    assert result.verdict is verdict
    if verdict is Verdict.INVALID:
        assert result.code == 438


def test_pai_may_carry_the_caller(pki: Pki) -> None:
    request = facts(identity(pki), from_="<sip:anonymous@anonymous.invalid>", pai=f"<tel:+{ORIG}>")
    assert verify_request(request, pinned(pki), POLICY, NOW).verdict is Verdict.VALID
    no_pai = VerifyPolicy(use_pai=False)
    assert verify_request(request, pinned(pki), no_pai, NOW).verdict is Verdict.INVALID


def test_header_json_shape(pki: Pki) -> None:
    out = verify_request(facts(identity(pki)), pinned(pki), POLICY, NOW).to_json()
    assert set(out) == {"verdict", "code", "reason", "detail", "attest", "trust", "passports"}
    assert out["passports"][0]["orig"] == {"tn": ORIG}
    assert out["passports"][0]["failed_check"] is None
    assert isinstance(IdentityHeader("a", "b").format(), str)


# --- SipFacts.sdp_unavailable: Asterisk without the HEP copy of the SDP (issue 19) -------


def test_sdp_unavailable_verifies_msec_without_its_mky_and_says_so(pki: Pki) -> None:
    result = verify_request(
        facts(identity(pki), sdp=None, sdp_unavailable=True), pinned(pki), POLICY, NOW
    )
    assert result.verdict is Verdict.VALID, result.to_json()
    assert result.mky_unchecked


def test_sdp_unavailable_is_ignored_when_the_sdp_is_there(pki: Pki) -> None:
    tampered = SDP.replace(FP1, FP1[:-2] + ("00" if FP1[-2:] != "00" else "11"))
    bad = verify_request(
        facts(identity(pki), sdp=tampered, sdp_unavailable=True), pinned(pki), POLICY, NOW
    )
    assert bad.code == 438
    good = verify_request(facts(identity(pki), sdp_unavailable=True), pinned(pki), POLICY, NOW)
    assert good.verdict is Verdict.VALID and not good.mky_unchecked


def test_without_the_flag_msec_still_needs_the_sdp(pki: Pki) -> None:
    result = verify_request(facts(identity(pki), sdp=None), pinned(pki), POLICY, NOW)
    assert result.code == 438 and not result.mky_unchecked
