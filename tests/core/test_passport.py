"""PASSporT (RFC 8225/8588/8862/8946) over the published vectors of DIGEST.md §10."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import given
from hypothesis import strategies as st

from stird.core import jose
from stird.core.errors import Check, StirError
from stird.core.passport import (
    Claims,
    Dest,
    PassportHeader,
    Ppt,
    decode,
    decode_json,
    sign,
    signing_input,
    with_signature,
)
from stird.core.sdp import parse_sdp_keys
from stird.core.tn import IdKind, PartyId
from tests.core import vectors as v


def public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


TN = IdKind.TN
URI = IdKind.URI


# --- published tokens ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "key_pem", "ppt", "iat"),
    [
        pytest.param(v.RFC8225_TOKEN, v.RFC8225_PUBLIC_KEY, None, 1443208345, id="rfc8225-7.1"),
        pytest.param(v.RFC8946_DIV, v.RFC8946_PUBLIC_KEY, "div", 1443208345, id="rfc8946-div"),
        pytest.param(v.RFC8946_OPT, v.RFC8946_PUBLIC_KEY, None, 1443208345, id="rfc8946-opt"),
        pytest.param(
            v.RFC8946_DIV_O, v.RFC8946_PUBLIC_KEY, "div-o", 1443208345, id="rfc8946-div-o"
        ),
    ],
)
def test_published_tokens_verify(token: str, key_pem: bytes, ppt: str | None, iat: int) -> None:
    sp = decode(token)
    assert sp.ppt == ppt
    assert sp.claims.iat == iat
    assert sp.full == token
    sp.verify(public_key(key_pem))


def test_rfc8225_token_claims_and_compact_form() -> None:
    sp = decode(v.RFC8225_TOKEN)
    assert sp.claims.orig == PartyId(TN, "12155551212")
    assert sp.claims.dest == Dest(uri=("sip:alice@example.com",))
    assert sp.header == PassportHeader(x5u="https://cert.example.org/passport.cer")
    assert sp.compact == v.RFC8225_COMPACT


def test_rfc8946_div_claims() -> None:
    div = decode(v.RFC8946_DIV).claims
    assert div.div == PartyId(TN, "121555551213")  # the RFC's typo, covered by its signature
    assert div.dest.tn == ("12155551214",)
    div_o = decode(v.RFC8946_DIV_O).claims
    assert div_o.opt == v.RFC8946_OPT
    assert div_o.dest.tn == ("12155551214",)  # a bare string in the RFC, read as one element


@pytest.mark.parametrize(
    ("token", "key_pem"),
    [
        pytest.param(
            f"{v.RFC8225_APPX_HEADER_B64}.{v.RFC8225_APPX_PAYLOAD_B64}.{v.RFC8225_APPX_SIGNATURE}",
            v.RFC8225_PUBLIC_KEY,
            id="rfc8225-appendix-a-defective-signature",
        ),
        pytest.param(v.RFC8225_TOKEN, v.RFC8946_PUBLIC_KEY, id="wrong-key"),
        pytest.param(
            v.RFC8225_TOKEN.replace("eyJkZXN0", "eyJkZXN1"), v.RFC8225_PUBLIC_KEY, id="tampered"
        ),
    ],
)
def test_signature_failures_are_438(token: str, key_pem: bytes) -> None:
    try:
        sp = decode(token)
    except StirError as exc:  # the tampered payload may not even parse
        assert exc.code == 438
        return
    with pytest.raises(StirError) as info:
        sp.verify(public_key(key_pem))
    assert info.value.code == 438
    assert info.value.check is Check.SIGNATURE


# --- canonical JSON (RFC 8225 §9) ------------------------------------------------------


def test_appendix_a_serialisation_and_base64url() -> None:
    header = PassportHeader(x5u="https://cert.example.org/passport.cer")
    claims = Claims(
        orig=PartyId(TN, "12155551212"), dest=Dest(uri=("sip:alice@example.com",)), iat=1471375418
    )
    assert jose.canonical_json(header.to_json()) == v.RFC8225_APPX_HEADER
    assert jose.canonical_json(claims.to_json()) == v.RFC8225_APPX_PAYLOAD
    expected = f"{v.RFC8225_APPX_HEADER_B64}.{v.RFC8225_APPX_PAYLOAD_B64}".encode()
    assert signing_input(header, claims) == expected


def test_section_9_1_canonical_payload_with_mky() -> None:
    fingerprints = parse_sdp_keys(v.RFC8225_SDP_LINES).all_lines()
    claims = Claims(
        orig=PartyId(TN, "12155551212"),
        dest=Dest(uri=("sip:alice@example.com",)),
        iat=1443208345,
        mky=fingerprints,
    )
    out = jose.canonical_json(claims.to_json())
    assert out == v.RFC8225_CANONICAL_MKY_PAYLOAD
    assert len(out) == 277


def test_rfc8588_canonical_forms() -> None:
    header = PassportHeader(x5u="https://cert.example.org/passport.cer", ppt=Ppt.SHAKEN)
    claims = Claims(
        orig=PartyId(TN, "12155550121"),
        dest=Dest(tn=("12155550131",)),
        iat=1443208345,
        attest="A",
        origid="123e4567-e89b-12d3-a456-426655440000",
    )
    assert jose.canonical_json(header.to_json()) == v.RFC8588_HEADER
    assert jose.canonical_json(claims.to_json()) == v.RFC8588_PAYLOAD


def test_dest_arrays_sorted_and_deduplicated() -> None:
    dest = Dest.of(
        [PartyId(URI, "sip:bob@example.net"), PartyId(TN, "2"), PartyId(URI, "sip:alice@example.com"),
         PartyId(TN, "1"), PartyId(TN, "2")]
    )  # fmt: skip
    assert dest.to_json() == {
        "tn": ["1", "2"],
        "uri": ["sip:alice@example.com", "sip:bob@example.net"],
    }


# --- signing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _claims(**kw: Any) -> Claims:
    base: dict[str, Any] = {
        "orig": PartyId(TN, "12025550100"), "dest": Dest(tn=("12025550101",)), "iat": 1700000000,
    }  # fmt: skip
    base.update(kw)
    return Claims(**base)


def test_sign_round_trip_full_and_compact(key: ec.EllipticCurvePrivateKey) -> None:
    header = PassportHeader(x5u="https://cert.example.org/a.pem", ppt=Ppt.MSEC)
    claims = _claims(mky=parse_sdp_keys(v.RFC8225_SDP_LINES).all_lines())
    signed = sign(header, claims, key)
    again = decode(signed.full)
    assert again.full == signed.full
    assert again.claims.to_json() == signed.claims.to_json()
    again.verify(key.public_key())
    rebuilt = with_signature(header, claims, jose.b64u_decode(signed.compact[2:], "sig"))
    rebuilt.verify(key.public_key())
    # randomised ECDSA: the same claims signed twice give two PASSporTs (issue #16)
    assert sign(header, claims, key).signature != signed.signature


@pytest.mark.parametrize(
    ("header", "claims", "why"),
    [
        (PassportHeader(x5u="u", alg="RS256"), _claims(), "ES256"),
        (PassportHeader(x5u="u"), _claims(dest=Dest()), "dest"),
        (PassportHeader(x5u="u", ppt=Ppt.SHAKEN), _claims(), "attest"),
        (PassportHeader(x5u="u", ppt=Ppt.SHAKEN), _claims(attest="D"), "attest"),
        (PassportHeader(x5u="u", ppt=Ppt.MSEC), _claims(), "fingerprint"),
    ],
)
def test_sign_refuses_what_verifiers_reject(
    key: ec.EllipticCurvePrivateKey, header: PassportHeader, claims: Claims, why: str
) -> None:
    with pytest.raises(StirError, match=why) as info:
        sign(header, claims, key)
    assert info.value.code == 400


# --- decoding hostile input ------------------------------------------------------------


def _token(header: object, payload: object, sig: bytes = b"\0" * 64) -> str:
    def enc(obj: object) -> str:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return jose.b64u_encode(raw)

    return f"{enc(header)}.{enc(payload)}.{jose.b64u_encode(sig)}"


GOOD_HEADER = {"alg": "ES256", "typ": "passport", "x5u": "https://x/c.pem"}
GOOD_PAYLOAD = {"orig": {"tn": "1"}, "dest": {"tn": ["2"]}, "iat": 1}

BAD_TOKENS = {
    "two-parts": "a.b",
    "four-parts": "a.b.c.d",
    "empty": "",
    "not-base64": "a*b.c.d",
    "bad-length": "a.b.c",
    "not-json": _token(b"{", GOOD_PAYLOAD),
    "json-array": _token([1], GOOD_PAYLOAD),
    "latin1": _token(b'{"typ":"\xe9"}', GOOD_PAYLOAD),
    "duplicate-member": _token(
        b'{"typ":"passport","typ":"passport","alg":"ES256","x5u":"x"}', GOOD_PAYLOAD
    ),
    "nan": _token(GOOD_HEADER, b'{"orig":{"tn":"1"},"dest":{"tn":["2"]},"iat":NaN}'),
    "typ-jwt": _token({**GOOD_HEADER, "typ": "JWT"}, GOOD_PAYLOAD),
    "no-x5u": _token({"alg": "ES256", "typ": "passport"}, GOOD_PAYLOAD),
    "x5u-number": _token({**GOOD_HEADER, "x5u": 5}, GOOD_PAYLOAD),
    "no-orig": _token(GOOD_HEADER, {"dest": {"tn": ["2"]}, "iat": 1}),
    "no-iat": _token(GOOD_HEADER, {"orig": {"tn": "1"}, "dest": {"tn": ["2"]}}),
    "float-iat": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "iat": 1.5}),
    "bool-iat": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "iat": True}),
    "negative-iat": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "iat": -1}),
    "word-iat": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "iat": "yesterday"}),
    "dest-array": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "dest": ["2"]}),
    "dest-empty": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "dest": {}}),
    "dest-other-key": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "dest": {"email": ["a"]}}),
    "dest-numbers": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "dest": {"tn": [2]}}),
    "orig-array": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "orig": {"tn": ["1"]}}),
    "orig-two-members": _token(
        GOOD_HEADER, {**GOOD_PAYLOAD, "orig": {"tn": "1", "uri": "sip:a@b"}}
    ),
    "mky-object": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "mky": {"alg": "sha-256", "dig": "00"}}),
    "deep": _token(GOOD_HEADER, {**GOOD_PAYLOAD, "x": json.loads("[" * 40 + "]" * 40)}),
    "huge": "a" * 9000 + ".b.c",
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_decode_rejects_with_438(token: str) -> None:
    with pytest.raises(StirError) as info:
        decode(token)
    assert info.value.code == 438


def test_decode_json_keeps_values_as_received() -> None:
    header, payload = decode_json(v.RFC8225_TOKEN)
    assert payload["iat"] == "1443208345"
    assert header["x5u"] == "https://cert.example.org/passport.cer"


# --- properties ------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _members_in_order(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert names == sorted(names), "members not in code point order (RFC 8225 §9)"
    return dict(pairs)


@given(JSON)
def test_canonical_json_round_trips(value: Any) -> None:
    out = jose.canonical_json(value)
    assert json.loads(out, object_pairs_hook=_members_in_order) == value
    assert jose.canonical_json(json.loads(out)) == out


@given(st.text(max_size=300))
def test_decode_raises_only_the_error_family(text: str) -> None:
    with contextlib.suppress(StirError):
        decode(text)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_decode_of_arbitrary_parts_raises_only_the_error_family(head: bytes, body: bytes) -> None:
    with contextlib.suppress(StirError):
        decode(f"{jose.b64u_encode(head)}.{jose.b64u_encode(body)}.AAAA")


# The fast paths of the signer (jose.canonical_json_plain through orjson, DER → R||S by
# slicing) must agree byte for byte with the reference ones on everything they accept.
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(PLAIN)
def test_plain_canonical_json_is_the_reference_encoding(value: Any) -> None:
    try:
        expected = jose.canonical_json(value)
    except UnicodeEncodeError:  # lone surrogates: neither encoder may produce bytes
        with pytest.raises(UnicodeEncodeError):
            jose.canonical_json_plain(value)
        return
    assert jose.canonical_json_plain(value) == expected


@pytest.mark.parametrize(
    "text", ['\x00\x1f\x7f\u2028\u00e9"\\\n\t\r\b\f/', "\ud7ff\ue000\U0001f600", ""]
)
def test_plain_canonical_json_escapes_like_the_reference(text: str) -> None:
    value = {"b": text, "a": [1, -(2**63), 2**63 - 1, 2**64, True, None], "\u00e9": {"z": 0}}
    assert jose.canonical_json_plain(value) == jose.canonical_json(value)


@given(st.integers(1, 2**256 - 1), st.integers(1, 2**256 - 1))
def test_der_to_raw_matches_the_general_decoder(r: int, s: int) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert jose._der_to_raw(encode_dss_signature(r, s), 32) == raw


@pytest.mark.parametrize("ppt", [None, Ppt.SHAKEN])
def test_an_independent_jws_library_verifies_our_passports(ppt: str | None) -> None:
    # PyJWT (not used by stird itself) checks the signature and reads the claims back.
    import jwt

    key = ec.generate_private_key(ec.SECP256R1())
    orig, dest = PartyId(IdKind.TN, "12025550100"), Dest.of([PartyId(IdKind.TN, "12025550101")])
    shaken = {"attest": "A", "origid": "123e4567-e89b-12d3-a456-426655440000"} if ppt else {}
    claims = Claims(orig=orig, dest=dest, iat=1_700_000_000, **shaken)
    signed = sign(PassportHeader(x5u="https://cert.example/c.pem", ppt=ppt), claims, key)
    decoded = jwt.decode(signed.full, key.public_key(), algorithms=["ES256"],
                         options={"verify_iat": False})  # fmt: skip
    assert decoded == json.loads(jose.canonical_json(claims.to_json()))
    assert jwt.get_unverified_header(signed.full)["x5u"] == "https://cert.example/c.pem"


def test_signature_id_is_the_same_for_both_ecdsa_twins() -> None:
    """(r, s) and (r, n − s) both verify: the replay key must not tell them apart, and
    must tell apart everything else (issue #16)."""
    from stird.core.jose import P256_N, signature_id

    r, s = (7).to_bytes(32, "big"), 12345
    low, high = r + s.to_bytes(32, "big"), r + (P256_N - s).to_bytes(32, "big")
    assert signature_id(b"a.b", low) == signature_id(b"a.b", high)
    assert signature_id(b"a.b", low) != signature_id(b"a.c", low)  # another message
    other_r = (8).to_bytes(32, "big") + s.to_bytes(32, "big")
    assert signature_id(b"a.b", low) != signature_id(b"a.b", other_r)
    assert len(signature_id(b"a.b", low)) == 16
