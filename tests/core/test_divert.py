"""Diverted calls (RFC 8946 §4.2): a `div` PASSporT must link to an earlier one."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from stird.core import certs
from stird.core.identity import IdentityHeader
from stird.core.passport import Claims, Dest, PassportHeader, Ppt, sign
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import Credential, SipFacts, Trust, Verdict, VerifyPolicy
from stird.core.verify import verify_request
from tests.core import vectors as v

NOW = 1_790_000_000
A, B, C = "12025550100", "12025550101", "12025550102"  # caller, first callee, new target
ORIG_URL, DIV_URL = "https://carrier-a.example/c.pem", "https://carrier-b.example/c.pem"


def tn(value: str) -> PartyId:
    return PartyId(IdKind.TN, value)


def header(key: ec.EllipticCurvePrivateKey, url: str, ppt: str | None, claims: Claims) -> str:
    signed = sign(PassportHeader(x5u=url, ppt=ppt), claims, key)
    return IdentityHeader(signed.full, url, ppt=ppt).format()


@pytest.fixture(scope="module")
def keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


def creds(
    keys: tuple[ec.EllipticCurvePrivateKey, ...], div_tns: list[str]
) -> dict[str, Credential]:
    a = certs.make_stir_cert(keys[0], now=NOW - 3600, tns=[A])
    b = certs.make_stir_cert(keys[1], now=NOW - 3600, tns=div_tns)
    return {
        ORIG_URL: Credential((a,), trust=Trust.ANCHOR),
        DIV_URL: Credential((b,), trust=Trust.ANCHOR),
    }


def facts(*identity: str) -> SipFacts:
    return SipFacts(identity=identity, from_=f"<tel:+{A}>", to=f"<tel:+{B}>", ruri=f"tel:+{C}")


def original(keys: tuple[ec.EllipticCurvePrivateKey, ...]) -> str:
    return header(keys[0], ORIG_URL, None, Claims(orig=tn(A), dest=Dest(tn=(B,)), iat=NOW))


def diversion(keys: tuple[ec.EllipticCurvePrivateKey, ...], div: str = B) -> str:
    claims = Claims(orig=tn(A), dest=Dest(tn=(C,)), iat=NOW, div=tn(div))
    return header(keys[1], DIV_URL, Ppt.DIV, claims)


def test_linked_diversion_is_valid(keys: tuple[ec.EllipticCurvePrivateKey, ...]) -> None:
    result = verify_request(
        facts(original(keys), diversion(keys)), creds(keys, [B]), VerifyPolicy(), NOW
    )
    assert result.verdict is Verdict.VALID
    assert [p.valid for p in result.passports] == [True, True]
    assert result.passports[1].to_json()["div"] == {"tn": B}


@pytest.mark.parametrize(
    ("build", "div_tns", "check"),
    [
        pytest.param(lambda k: (diversion(k),), [B], "diversion", id="alone"),
        pytest.param(
            lambda k: (original(k), diversion(k, div=C)), [C], "diversion", id="div-not-a-dest"
        ),
        pytest.param(
            lambda k: (original(k), diversion(k)), [A], "authority", id="signer-not-for-div"
        ),
    ],
)
def test_unlinked_or_unauthorised_diversion_fails(
    keys: tuple[ec.EllipticCurvePrivateKey, ...], build: object, div_tns: list[str], check: str
) -> None:
    identity = build(keys)  # type: ignore[operator]
    result = verify_request(facts(*identity), creds(keys, div_tns), VerifyPolicy(), NOW)
    div = result.passports[-1]
    assert div.error is not None and div.error.check.value == check, result.to_json()
    assert div.error.code == 438


def test_rfc8946_vectors_do_not_link_because_of_the_rfc_typo() -> None:
    """The RFC's div value 121555551213 is not the original dest 12155551213 (DIGEST §9)."""
    key = load_pem_private_key(v.RFC8946_PRIVATE_KEY, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = certs.make_stir_cert(key, now=1443208345 - 3600, tns=["12155551212", "121555551213"])
    url = "https://www.example.com/cert.cer"
    request = SipFacts(
        identity=(f"{v.RFC8946_OPT};info=<{url}>", f'{v.RFC8946_DIV}; info=<{url}>;ppt="div"'),
        from_="<tel:+12155551212>", to="<tel:+12155551213>", ruri="tel:+12155551214",
    )  # fmt: skip
    result = verify_request(
        request, {url: Credential((cert,), trust=Trust.ANCHOR)}, VerifyPolicy(), 1443208350
    )
    assert result.verdict is Verdict.VALID  # the original PASSporT stands on its own
    assert result.passports[0].valid
    assert result.passports[1].error is not None
    assert result.passports[1].error.check.value == "diversion"
