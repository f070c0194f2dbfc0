"""STIR certificates: TNAuthList DER (RFC 8226 §9), authority, chains (RFC 9060), RFC 8862 certs.

Keys and certificates are generated at test time; nothing secret is committed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.core.certs import (
    ANONYMOUS_URI,
    TNAUTHLIST_OID,
    TNAuthList,
    TnRange,
    authorizes,
    cert_to_pem,
    check_authority,
    check_signing_key,
    check_validity,
    encode_tnauthlist,
    load_pem_chain,
    make_anonymous_cert,
    make_stir_cert,
    parse_tnauthlist,
    san_uris,
    tnauthlist_of,
    validate_chain,
)
from stird.core.errors import Check, SipStatus, StirError

NOW = 1_700_000_000
DAY = 86_400
Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def tlv(tag: int, body: bytes) -> bytes:
    """A short-form DER TLV (body < 128 bytes) for building malformed TNAuthLists."""
    assert len(body) < 128
    return bytes((tag, len(body))) + body


def tal_der(*entries: bytes) -> bytes:
    return tlv(0x30, b"".join(entries))


def one(tn: bytes, tag: int = 0x16) -> bytes:
    return tlv(0xA2, tlv(tag, tn))


def rng(start: bytes, count: bytes, extra: bytes = b"") -> bytes:
    return tlv(0xA1, tlv(0x30, tlv(0x16, start) + tlv(0x02, count) + extra))


# --- TNAuthList DER (DIGEST §3.3) ------------------------------------------------------------

VECTORS = [
    ("3008a006160431323334", TNAuthList(spcs=("1234",))),
    (
        "3015a1133011160b3132313235353531303030020203e8",
        TNAuthList(ranges=(TnRange("12125551000", 1000),)),
    ),
    ("300fa20d160b3132313535353531323132", TNAuthList(tns=("12155551212",))),
]


@pytest.mark.parametrize(("der_hex", "tal"), VECTORS)
def test_digest_vectors_decode(der_hex: str, tal: TNAuthList) -> None:
    assert parse_tnauthlist(bytes.fromhex(der_hex)) == tal


@pytest.mark.parametrize(("der_hex", "tal"), VECTORS)
def test_digest_vectors_encode(der_hex: str, tal: TNAuthList) -> None:
    assert encode_tnauthlist(tal).hex() == der_hex


def test_mixed_list_round_trips() -> None:
    tal = TNAuthList(
        spcs=("1234", "ABCD"),
        ranges=(TnRange("12125551000", 1000), TnRange("44", 2)),
        tns=("12155551212", "*67", "#1"),
    )
    assert parse_tnauthlist(encode_tnauthlist(tal)) == tal


SPC_1234 = bytes.fromhex(VECTORS[0][0])
MALFORMED = {
    "empty input": b"",
    "random garbage": b"\x00\x01garbage\xff",
    "truncated": SPC_1234[:-1],
    "trailing byte": SPC_1234 + b"\x00",
    "empty sequence": bytes.fromhex("3000"),
    "outer SET not SEQUENCE": b"\x31" + SPC_1234[1:],
    "unknown choice tag [3]": tal_der(tlv(0xA3, tlv(0x16, b"1234"))),
    "implicit [2] instead of explicit": tal_der(tlv(0x82, b"12155551212")),
    "UTF8String instead of IA5": tal_der(one(b"12155551212", tag=0x0C)),
    "bad charset letter": tal_der(one(b"1215555121a")),
    "bad charset plus": tal_der(one(b"+12155551212")),
    "non-ascii byte": tal_der(one(b"1215\xff")),
    "16-digit TN": tal_der(one(b"1234567890123456")),
    "empty TN": tal_der(one(b"")),
    "empty SPC": tal_der(tlv(0xA0, tlv(0x16, b""))),
    "SPC control char": tal_der(tlv(0xA0, tlv(0x16, b"12\n4"))),
    "range count 1": tal_der(rng(b"12", b"\x01")),
    "range count 0": tal_der(rng(b"12", b"\x00")),
    "range count negative": tal_der(rng(b"12", b"\xff")),
    "range start 10 count 91": tal_der(rng(b"10", b"\x5b")),
    "range start 99 count 2": tal_der(rng(b"99", b"\x02")),
    "range start with star": tal_der(rng(b"1*", b"\x02")),
    "range 16-digit start": tal_der(rng(b"1234567890123456", b"\x02")),
    "range missing count": tal_der(tlv(0xA1, tlv(0x30, tlv(0x16, b"12")))),
    "range extra component": tal_der(rng(b"12", b"\x02", extra=tlv(0x02, b"\x01"))),
    "non-DER long-form length": b"\x30\x81\x08" + SPC_1234[2:],
    "one good one bad entry": tal_der(one(b"12155551212"), one(b"x")),
}


@pytest.mark.parametrize("der", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tnauthlist_raises_stir_error(der: bytes) -> None:
    with pytest.raises(StirError) as info:
        parse_tnauthlist(der)
    assert info.value.status is SipStatus.UNSUPPORTED_CREDENTIAL
    assert info.value.check is Check.CREDENTIAL


def test_boundary_range_is_accepted() -> None:
    """start 10 count 89 ends at 98: start + count = 99 < 10^2."""
    assert parse_tnauthlist(tal_der(rng(b"10", b"\x59"))) == TNAuthList(ranges=(TnRange("10", 89),))


@given(st.binary(max_size=200))
@settings(max_examples=400)
def test_parse_arbitrary_bytes_raises_only_stir_error(data: bytes) -> None:
    with contextlib.suppress(StirError):
        parse_tnauthlist(data)


@given(st.binary(max_size=40))
def test_parse_mutated_vector_raises_only_stir_error(suffix: bytes) -> None:
    with contextlib.suppress(StirError):
        parse_tnauthlist(bytes.fromhex(VECTORS[1][0])[:12] + suffix)


@pytest.mark.parametrize(
    "tal",
    [
        TNAuthList(),
        TNAuthList(ranges=(TnRange("12", 1),)),
        TNAuthList(ranges=(TnRange("10", 91),)),
        TNAuthList(tns=("+1215",)),
        TNAuthList(spcs=("",)),
    ],
)
def test_encode_rejects_invalid_lists(tal: TNAuthList) -> None:
    with pytest.raises(StirError) as info:
        encode_tnauthlist(tal)
    assert info.value.status is SipStatus.BAD_REQUEST


# --- membership and encompassment -------------------------------------------------------------

R = TnRange("12155551000", 100)


@pytest.mark.parametrize(
    ("tn", "inside"),
    [
        ("12155551000", True),  # start
        ("12155551050", True),
        ("12155551099", True),  # start + count - 1
        ("12155551100", False),  # start + count
        ("12155550999", False),  # start - 1
        ("2155551050", False),  # different length
        ("121555510500", False),
        ("*2155551050", False),
        ("1215555105#", False),
        ("", False),
    ],
)
def test_range_membership(tn: str, inside: bool) -> None:
    assert R.contains(tn) is inside


def test_range_with_star_start_never_matches() -> None:
    assert not TnRange("*12", 5).contains("*12")


def spc_db(spc: str, tn: str) -> bool:
    return (spc, tn) == ("1234", "12155559999")


@pytest.mark.parametrize(
    ("tal", "tn", "lookup", "covered"),
    [
        (TNAuthList(tns=("12155551212",)), "12155551212", None, True),
        (TNAuthList(tns=("12155551212",)), "12155551213", None, False),
        (TNAuthList(tns=("*67",)), "*67", None, True),
        (TNAuthList(ranges=(R,)), "12155551042", None, True),
        (TNAuthList(spcs=("1234",)), "12155559999", None, False),
        (TNAuthList(spcs=("1234",)), "12155559999", spc_db, True),
        (TNAuthList(spcs=("1234",)), "12155550000", spc_db, False),
        (TNAuthList(spcs=("9999",)), "12155559999", spc_db, False),
    ],
)
def test_covers_tn(
    tal: TNAuthList, tn: str, lookup: Callable[[str, str], bool] | None, covered: bool
) -> None:
    assert tal.covers_tn(tn, lookup) is covered


PARENT = TNAuthList(
    spcs=("1234",),
    ranges=(TnRange("12155551000", 100), TnRange("12155551100", 50)),
    tns=("12155551150", "*67"),
)


@pytest.mark.parametrize(
    ("child", "inside"),
    [
        (PARENT, True),
        (TNAuthList(spcs=("1234",)), True),
        (TNAuthList(spcs=("5678",)), False),
        (TNAuthList(tns=("12155551099",)), True),
        (TNAuthList(tns=("12155551151",)), False),
        (TNAuthList(tns=("*67",)), True),
        (TNAuthList(ranges=(TnRange("12155551010", 10),)), True),  # inside one range
        (TNAuthList(ranges=(TnRange("12155551090", 61),)), True),  # union of ranges + TN
        (TNAuthList(ranges=(TnRange("12155551090", 62),)), False),  # one past the union
        (TNAuthList(ranges=(TnRange("12155550999", 2),)), False),  # starts below
        (TNAuthList(ranges=(TnRange("2155551010", 10),)), False),  # other length
    ],
)
def test_encompasses(child: TNAuthList, inside: bool) -> None:
    assert PARENT.encompasses(child) is inside


def test_encompasses_uses_spc_lookup_for_tns() -> None:
    child = TNAuthList(tns=("12155559999",))
    parent = TNAuthList(spcs=("1234",))
    assert not parent.encompasses(child)
    assert parent.encompasses(child, spc_db)


# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    root_key: Key
    root: x509.Certificate
    inter_key: Key
    inter: x509.Certificate
    leaf_key: Key
    leaf: x509.Certificate


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, inter_key, leaf_key = new_key(), new_key(), new_key()
    root = make_stir_cert(root_key, now=NOW, ca=True, common_name="Test Root")
    inter = make_stir_cert(
        inter_key,
        now=NOW,
        ca=True,
        path_length=0,
        ranges=[TnRange("12155551000", 1000)],
        spcs=["1234"],
        common_name="Test Intermediate",
        issuer_key=root_key,
        issuer_cert=root,
    )
    leaf = make_stir_cert(
        leaf_key,
        now=NOW,
        tns=["12155551212"],
        ranges=[TnRange("12155551300", 10)],
        issuer_key=inter_key,
        issuer_cert=inter,
    )
    return Pki(root_key, root, inter_key, inter, leaf_key, leaf)


def test_make_stir_cert_extensions(pki: Pki) -> None:
    ext = pki.leaf.extensions
    assert ext.get_extension_for_oid(TNAUTHLIST_OID).critical is False
    assert ext.get_extension_for_class(x509.BasicConstraints).critical is True
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    inter_ski = pki.inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == inter_ski.digest
    assert pki.leaf.issuer == pki.inter.subject
    assert pki.leaf.not_valid_before_utc.timestamp() == NOW - 300
    assert pki.leaf.not_valid_after_utc.timestamp() == NOW + 365 * DAY
    assert pki.leaf.signature_hash_algorithm is not None
    assert pki.leaf.signature_hash_algorithm.name == "sha256"
    assert tnauthlist_of(pki.leaf) == TNAuthList(
        ranges=(TnRange("12155551300", 10),), tns=("12155551212",)
    )
    assert pki.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "STIR 12155551212"
    )
    assert tnauthlist_of(pki.root) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no TN, range, SPC or URI and not a CA
        {"tns": ["12a"]},
        {"tns": ["1"], "days": 0},
        {"tns": ["1"], "path_length": 1},  # pathLen on a non-CA
        {"uris": ["sip:älice@example.com"]},
    ],
)
def test_make_stir_cert_rejects_bad_requests(kwargs: dict[str, object]) -> None:
    with pytest.raises(StirError) as info:
        make_stir_cert(new_key(), now=NOW, **kwargs)  # type: ignore[arg-type]
    assert info.value.status is SipStatus.BAD_REQUEST


def test_make_stir_cert_rejects_mismatched_issuer(pki: Pki) -> None:
    with pytest.raises(StirError):
        make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=new_key(), issuer_cert=pki.root)
    with pytest.raises(StirError):
        make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=pki.root_key)


def test_anonymous_cert() -> None:
    cert = make_anonymous_cert(new_key(), now=NOW)
    assert san_uris(cert) == (ANONYMOUS_URI,)
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc.timestamp() == NOW + DAY
    assert tnauthlist_of(cert) is None
    validate_chain([cert], [cert], NOW)
    assert authorizes([cert], "uri", ANONYMOUS_URI)
    assert not authorizes([cert], "uri", "sip:alice@example.com")
    assert not authorizes([cert], "tn", "12155551212")


# --- authority (RFC 8226 §9, RFC 8862 §4.1) ---------------------------------------------------


def self_signed(**kwargs: object) -> x509.Certificate:
    return make_stir_cert(new_key(), now=NOW, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "kind", "value", "lookup", "ok"),
    [
        ({"tns": ["12155551212"]}, "tn", "12155551212", None, True),
        ({"tns": ["12155551212"]}, "tn", "12155551213", None, False),
        ({"ranges": [R]}, "tn", "12155551099", None, True),
        ({"ranges": [R]}, "tn", "12155551100", None, False),
        ({"spcs": ["1234"]}, "tn", "12155559999", None, False),
        ({"spcs": ["1234"]}, "tn", "12155559999", spc_db, True),
        ({"uris": ["tel:+12155551212"]}, "tn", "12155551212", None, True),
        ({"uris": ["tel:1-215-555-1212"]}, "tn", "12155551212", None, True),
        ({"uris": ["tel:+12155551212"]}, "tn", "12155551213", None, False),
        ({"uris": ["sip:alice@example.com"]}, "tn", "12155551212", None, False),
        ({"uris": ["sip:alice@example.com"]}, "uri", "sip:alice@example.com", None, True),
        ({"uris": ["SIP:alice@EXAMPLE.com"]}, "uri", "sip:alice@example.com", None, True),
        ({"uris": ["sip:al@example.com;transport=tls"]}, "uri", "sip:al@example.com", None, True),
        ({"uris": ["sip:Alice@example.com"]}, "uri", "sip:alice@example.com", None, False),
        ({"uris": ["sip:alice@example.com"]}, "uri", "sip:bob@example.com", None, False),
        ({"uris": ["sip:alice@example.com"]}, "uri", "sips:alice@example.com", None, False),
        ({"uris": ["sip:example.com"]}, "uri", "sip:bob@example.com", None, True),  # domain
        ({"uris": ["sip:example.com"]}, "uri", "sip:bob@example.org", None, False),
        ({"uris": ["sip:example.com"]}, "uri", "sip:bob@sub.example.com", None, False),
        ({"tns": ["12155551212"]}, "uri", "sip:+12155551212@example.com", None, False),
    ],
)
def test_authorizes_single_cert(
    kwargs: dict[str, object],
    kind: str,
    value: str,
    lookup: Callable[[str, str], bool] | None,
    ok: bool,
) -> None:
    assert authorizes([self_signed(**kwargs)], kind, value, lookup) is ok


@pytest.mark.parametrize(
    ("tn", "ok"),
    [
        ("12155551212", True),  # leaf TN inside the intermediate's range
        ("12155551305", True),  # leaf range inside the intermediate's range
    ],
)
def test_authorizes_through_chain(pki: Pki, tn: str, ok: bool) -> None:
    assert authorizes([pki.leaf, pki.inter], "tn", tn) is ok
    check_authority([pki.leaf, pki.inter], "tn", tn)


def test_ca_tnauthlist_limits_leaf(pki: Pki) -> None:
    """RFC 8226 §9: a CA's TNAuthList LIMITS the path, whatever the leaf claims."""
    leaf = make_stir_cert(
        new_key(),
        now=NOW,
        tns=["12155551212", "13125550000"],
        issuer_key=pki.inter_key,
        issuer_cert=pki.inter,
    )
    assert authorizes([leaf], "tn", "13125550000")
    assert not authorizes([leaf, pki.inter], "tn", "13125550000")
    assert authorizes([leaf, pki.inter], "tn", "12155551212")
    assert authorizes([leaf, pki.inter, pki.root], "tn", "12155551212")  # root has no list


def test_check_authority_raises_438() -> None:
    with pytest.raises(StirError) as info:
        check_authority([self_signed(tns=["12155551212"])], "tn", "19995550000")
    assert info.value.status is SipStatus.INVALID_IDENTITY_HEADER
    assert info.value.check is Check.AUTHORITY


def test_authorizes_edge_inputs() -> None:
    assert not authorizes([], "tn", "12155551212")
    with pytest.raises(StirError):
        authorizes([self_signed(tns=["1"])], "mailto", "x")


# --- chain validation (RFC 9060 §6, RFC 8862 §4.1) --------------------------------------------


def test_self_signed_pinned_leaf_ok() -> None:
    leaf = self_signed(tns=["12155551212"])
    validate_chain([leaf], [leaf], NOW)


def test_reissued_self_signed_with_pinned_key_ok() -> None:
    key = new_key()
    pinned = make_stir_cert(key, now=NOW, tns=["12155551212"], common_name="Alice")
    fresh = make_stir_cert(key, now=NOW + DAY, tns=["12155551212"], common_name="Alice")
    validate_chain([fresh], [pinned], NOW + DAY)


def test_chain_ok(pki: Pki) -> None:
    validate_chain([pki.leaf, pki.inter], [pki.root], NOW)
    validate_chain([pki.leaf, pki.inter, pki.root], [pki.root], NOW)
    validate_chain([pki.leaf, pki.inter], [pki.inter], NOW)  # intermediate pinned
    validate_chain([pki.leaf], [pki.inter], NOW + 364 * DAY)


def bad_leaf_signature(pki: Pki) -> list[x509.Certificate]:
    """A leaf naming the intermediate as issuer but signed by an impostor with that name."""
    evil_key = new_key()
    evil = make_stir_cert(evil_key, now=NOW, ca=True, common_name="Test Intermediate")
    leaf = make_stir_cert(
        new_key(), now=NOW, tns=["12155551212"], issuer_key=evil_key, issuer_cert=evil
    )
    return [leaf, pki.inter]


def not_ca_intermediate(pki: Pki) -> list[x509.Certificate]:
    key = new_key()
    inter = make_stir_cert(
        key, now=NOW, tns=["12155551212"], issuer_key=pki.root_key, issuer_cert=pki.root
    )
    leaf = make_stir_cert(
        new_key(), now=NOW, tns=["12155551212"], issuer_key=key, issuer_cert=inter
    )
    return [leaf, inter]


def path_len_violated(pki: Pki) -> list[x509.Certificate]:
    """inter has pathLen 0, yet a second CA sits below it."""
    key = new_key()
    sub = make_stir_cert(
        key, now=NOW, ca=True, spcs=["1234"], issuer_key=pki.inter_key, issuer_cert=pki.inter
    )
    leaf = make_stir_cert(new_key(), now=NOW, spcs=["1234"], issuer_key=key, issuer_cert=sub)
    return [leaf, sub, pki.inter]


def not_encompassed(pki: Pki) -> list[x509.Certificate]:
    leaf = make_stir_cert(
        new_key(), now=NOW, tns=["13125550000"], issuer_key=pki.inter_key, issuer_cert=pki.inter
    )
    return [leaf, pki.inter]


def spc_not_encompassed(pki: Pki) -> list[x509.Certificate]:
    leaf = make_stir_cert(
        new_key(), now=NOW, spcs=["9999"], issuer_key=pki.inter_key, issuer_cert=pki.inter
    )
    return [leaf, pki.inter]


def root_path_len_zero(pki: Pki) -> list[x509.Certificate]:
    key = new_key()
    root = make_stir_cert(key, now=NOW, ca=True, path_length=0, common_name="Test Root")
    inter = make_stir_cert(pki.inter_key, now=NOW, ca=True, issuer_key=key, issuer_cert=root)
    leaf = make_stir_cert(
        new_key(), now=NOW, tns=["1"], issuer_key=pki.inter_key, issuer_cert=inter
    )
    return [leaf, inter, root]


@pytest.mark.parametrize(
    ("build", "at", "anchor", "detail"),
    [
        (lambda p: [p.leaf, p.inter], NOW, "other", "no path to a trust anchor"),
        (lambda p: [p.leaf], NOW, "root", "no path to a trust anchor"),
        (lambda p: [p.leaf, p.inter], NOW + 366 * DAY, "root", "expired"),
        (lambda p: [p.leaf, p.inter], NOW - 301, "root", "not yet valid"),
        (bad_leaf_signature, NOW, "root", "signature"),
        (not_ca_intermediate, NOW, "root", "not a CA"),
        (path_len_violated, NOW, "root", "pathLenConstraint"),
        (root_path_len_zero, NOW, "chain", "pathLenConstraint"),
        (not_encompassed, NOW, "root", "RFC 9060"),
        (spc_not_encompassed, NOW, "root", "RFC 9060"),
        (lambda p: [], NOW, "root", "empty"),
        (lambda p: [p.leaf] * 11, NOW, "root", "longer than 10"),
    ],
    ids=[
        "wrong anchor",
        "leaf alone without its issuer",
        "expired",
        "not yet valid",
        "bad signature",
        "intermediate without cA",
        "pathLen violated",
        "anchor pathLen violated",
        "TN not encompassed",
        "SPC not encompassed",
        "empty chain",
        "too long",
    ],
)
def test_chain_failures(
    pki: Pki,
    build: Callable[[Pki], list[x509.Certificate]],
    at: int,
    anchor: str,
    detail: str,
) -> None:
    chain = build(pki)
    anchors = {
        "root": [pki.root],
        "other": [self_signed(ca=True, common_name="Test Root")],
        "chain": chain[-1:],
    }[anchor]
    with pytest.raises(StirError) as info:
        validate_chain(chain, anchors, at)
    assert info.value.status is SipStatus.UNSUPPORTED_CREDENTIAL
    assert info.value.check is Check.TRUST
    assert detail in info.value.detail


def raw_cert(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ext: x509.UnrecognizedExtension | None = None,
    critical: bool = False,
) -> x509.Certificate:
    """A self-signed cert built by hand, bypassing make_stir_cert's checks."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raw")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
    )
    if ext is not None:
        builder = builder.add_extension(ext, critical)
    return builder.sign(key, hashes.SHA256())


def test_unknown_critical_extension_rejected() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    cert = raw_cert(new_key(), ext, critical=True)
    with pytest.raises(StirError, match="critical"):
        validate_chain([cert], [cert], NOW)
    lenient = raw_cert(new_key(), ext, critical=False)
    validate_chain([lenient], [lenient], NOW)


@pytest.mark.parametrize(
    ("at", "detail"),
    [
        (NOW - 300, None),
        (NOW + 365 * DAY, None),
        (NOW - 301, "not yet valid"),
        (NOW + 365 * DAY + 1, "expired at"),
    ],
)
def test_check_validity(pki: Pki, at: int, detail: str | None) -> None:
    if detail is None:
        check_validity(pki.leaf, at)
        return
    with pytest.raises(StirError, match=detail) as info:
        check_validity(pki.leaf, at)
    assert info.value.check is Check.TRUST


# --- loading and keys -------------------------------------------------------------------------


def test_load_pem_chain_round_trip(pki: Pki) -> None:
    pem = b"".join(cert_to_pem(c) for c in (pki.leaf, pki.inter, pki.root))
    assert load_pem_chain(pem) == (pki.leaf, pki.inter, pki.root)
    assert load_pem_chain(b"junk before\n" + pem) == (pki.leaf, pki.inter, pki.root)
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    assert load_pem_chain(der) == (pki.leaf,)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x30\x03\x02\x01\x01",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "11 certs",
    ],
)
def test_load_pem_chain_rejects(pki: Pki, data: bytes | str) -> None:
    raw = cert_to_pem(pki.leaf) * 11 if isinstance(data, str) else data
    with pytest.raises(StirError) as info:
        load_pem_chain(raw)
    assert info.value.status is SipStatus.BAD_IDENTITY_INFO
    assert info.value.check is Check.CREDENTIAL


def test_load_pem_chain_accepts_ten(pki: Pki) -> None:
    assert len(load_pem_chain(cert_to_pem(pki.leaf) * 10)) == 10


def rsa_cert() -> x509.Certificate:
    return raw_cert(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_stir_cert(ec.generate_private_key(ec.SECP384R1()), now=NOW, tns=["1"]),
        rsa_cert,
    ],
    ids=["P-384", "RSA"],
)
def test_check_signing_key_rejects(make: Callable[[], x509.Certificate]) -> None:
    with pytest.raises(StirError) as info:
        check_signing_key(make())
    assert info.value.status is SipStatus.UNSUPPORTED_CREDENTIAL
    assert info.value.check is Check.TRUST


def test_check_signing_key_accepts_p256(pki: Pki) -> None:
    key = check_signing_key(pki.leaf)
    assert isinstance(key.curve, ec.SECP256R1)


def test_malformed_tnauthlist_extension_in_cert() -> None:
    cert = raw_cert(new_key(), x509.UnrecognizedExtension(TNAUTHLIST_OID, b"\x30\x00"))
    with pytest.raises(StirError) as info:
        authorizes([cert], "tn", "12155551212")
    assert info.value.status is SipStatus.UNSUPPORTED_CREDENTIAL
    with pytest.raises(StirError):
        validate_chain([cert], [cert], NOW)


# --- chain validation by cryptography.x509.verification: hostile chains -----------------------


def issued(
    key: ec.EllipticCurvePrivateKey,
    issuer_key: Key,
    issuer: x509.Certificate,
    *,
    ca: bool,
    extra: x509.UnrecognizedExtension,
    critical: bool,
) -> x509.Certificate:
    """A STI-like certificate built by hand with one extra extension (unknown to everyone)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand made")])
    usage = x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
        .add_extension(x509.BasicConstraints(ca, None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(aki, critical=False)
        .add_extension(extra, critical=critical)
        .sign(issuer_key, hashes.SHA256())
    )


def test_make_stir_cert_chain_validates_through_the_library(pki: Pki) -> None:
    """CA, intermediate with pathLen 0 and TNAuthList, leaf with TNAuthList: the path the
    library builds (leaf first, ending at the anchor) is the one stird then checks."""
    from stird.core.certs import _verified_path

    assert _verified_path([pki.leaf, pki.inter], [pki.root], NOW) == [pki.leaf, pki.inter, pki.root]
    assert _verified_path([pki.leaf, pki.inter], [pki.inter], NOW) == [pki.leaf, pki.inter]
    shuffled = [pki.leaf, pki.root, pki.inter]  # order of the extra certificates does not matter
    assert _verified_path(shuffled, [pki.root], NOW) == [pki.leaf, pki.inter, pki.root]
    validate_chain([pki.leaf, pki.inter], [pki.root], NOW, spc_tns=spc_db)


def chain_of(pki: Pki, cas: int) -> list[x509.Certificate]:
    """leaf + ``cas`` intermediates (no pathLen) under pki.root, leaf first, root last."""
    key, cert = pki.root_key, pki.root
    above = [pki.root]
    for i in range(cas):
        sub_key = new_key()
        cert = make_stir_cert(
            sub_key, now=NOW, ca=True, common_name=f"CA {i}", issuer_key=key, issuer_cert=cert
        )
        key = sub_key
        above.insert(0, cert)
    leaf = make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=key, issuer_cert=cert)
    return [leaf, *above]


def test_ten_certificates_are_the_bound(pki: Pki) -> None:
    validate_chain(chain_of(pki, 8), [pki.root], NOW)  # 10 certificates
    with pytest.raises(StirError, match="longer than 10") as info:
        validate_chain(chain_of(pki, 9), [pki.root], NOW)  # 11
    assert info.value.check is Check.TRUST


def expired_intermediate(pki: Pki) -> list[x509.Certificate]:
    key = new_key()
    inter = make_stir_cert(
        key, now=NOW, days=10, ca=True, issuer_key=pki.root_key, issuer_cert=pki.root
    )
    leaf = make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=key, issuer_cert=inter)
    return [leaf, inter]


def impostor_root(pki: Pki) -> list[x509.Certificate]:
    """A leaf naming the anchor's subject as issuer, signed by another key."""
    key = new_key()
    fake = make_stir_cert(key, now=NOW, ca=True, common_name="Test Root")
    return [make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=key, issuer_cert=fake)]


def unknown_critical_in_intermediate(pki: Pki) -> list[x509.Certificate]:
    key = new_key()
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    inter = issued(key, pki.root_key, pki.root, ca=True, extra=odd, critical=True)
    leaf = make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=key, issuer_cert=inter)
    return [leaf, inter]


def unknown_critical_in_leaf(pki: Pki) -> list[x509.Certificate]:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    return [issued(new_key(), pki.inter_key, pki.inter, ca=False, extra=odd, critical=True)]


def ca_as_leaf(pki: Pki) -> list[x509.Certificate]:
    cert = make_stir_cert(
        new_key(),
        now=NOW,
        ca=True,
        tns=["12155551212"],
        issuer_key=pki.inter_key,
        issuer_cert=pki.inter,
    )
    return [cert, pki.inter]


def p384_leaf(pki: Pki) -> list[x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = make_stir_cert(
        key, now=NOW, tns=["12155551212"], issuer_key=pki.inter_key, issuer_cert=pki.inter
    )
    return [leaf, pki.inter]


def unpinned_self_signed(pki: Pki) -> list[x509.Certificate]:
    return [self_signed(tns=["12155551212"])]


@pytest.mark.parametrize(
    ("build", "at", "anchor", "detail"),
    [
        (expired_intermediate, NOW + 20 * DAY, "root", "certificate 1: certificate expired"),
        (impostor_root, NOW, "root", "no path to a trust anchor"),
        (unknown_critical_in_intermediate, NOW, "root", "unsupported critical extension"),
        (unknown_critical_in_leaf, NOW, "inter", "unsupported critical extension"),
        (ca_as_leaf, NOW, "root", "not an end entity"),
        (p384_leaf, NOW, "root", "P-256"),
        (unpinned_self_signed, NOW, "root", "no path to a trust anchor"),
        (unpinned_self_signed, NOW, "same name", "not a CA"),  # the pinned leaf cannot issue
        (not_encompassed, NOW, "inter", "RFC 9060"),  # the pinned anchor's list limits too
        (lambda p: [p.leaf, p.inter], NOW, "none", "no path to a trust anchor"),
    ],
    ids=[
        "expired intermediate",
        "leaf signed by another key with the anchor's name",
        "unknown critical extension in an intermediate",
        "unknown critical extension in the leaf",
        "CA certificate as leaf",
        "P-384 leaf",
        "self-signed leaf not an anchor",
        "self-signed leaf with an anchor's name, other key",
        "TN outside a pinned intermediate's list",
        "no anchors",
    ],
)
def test_hostile_chains(
    pki: Pki,
    build: Callable[[Pki], list[x509.Certificate]],
    at: int,
    anchor: str,
    detail: str,
) -> None:
    chain = build(pki)
    anchors = {
        "root": [pki.root],
        "inter": [pki.inter],
        "same name": [make_stir_cert(new_key(), now=NOW, tns=["1"], common_name=_cn(chain[0]))],
        "none": [],
    }[anchor]
    with pytest.raises(StirError) as info:
        validate_chain(chain, anchors, at)
    assert info.value.status is SipStatus.UNSUPPORTED_CREDENTIAL
    assert info.value.check is Check.TRUST
    assert detail in info.value.detail


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


def test_pinned_self_signed_leaf_is_still_checked() -> None:
    """RFC 8862 §4.1: a pinned leaf is its own anchor, yet expiry and P-256 still apply."""
    leaf = self_signed(tns=["12155551212"])
    with pytest.raises(StirError, match="certificate 0: certificate expired") as info:
        validate_chain([leaf], [leaf], NOW + 366 * DAY)
    assert info.value.check is Check.TRUST
    p384 = make_stir_cert(ec.generate_private_key(ec.SECP384R1()), now=NOW, tns=["1"])
    with pytest.raises(StirError, match="P-256"):
        validate_chain([p384], [p384], NOW)


def test_pinned_leaf_with_an_intermediate_behind_it(pki: Pki) -> None:
    """A pinned CA-issued leaf is accepted alone; what follows it in the chain is ignored."""
    validate_chain([pki.leaf, pki.inter], [pki.leaf], NOW)
    validate_chain([pki.leaf], [pki.leaf], NOW)


def test_leaf_without_digital_signature_refused(pki: Pki) -> None:
    ku = x509.KeyUsage(False, True, False, False, False, False, False, False, False)
    key = new_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nr")]))
        .issuer_name(pki.inter.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
        .add_extension(ku, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.inter_key.public_key()),
            critical=False,
        )
        .sign(pki.inter_key, hashes.SHA256())
    )
    with pytest.raises(StirError, match="digitalSignature") as info:
        validate_chain([leaf, pki.inter], [pki.root], NOW)
    assert info.value.check is Check.TRUST


def hand_made(
    pki: Pki, key: Key, *, ca: bool, extensions: list[x509.ExtensionType]
) -> x509.Certificate:
    """Issued by pki.root (a CA) or pki.inter (an end entity) with only basicConstraints, AKI
    and ``extensions`` (critical, but EKU)."""
    issuer_key, issuer = (pki.root_key, pki.root) if ca else (pki.inter_key, pki.inter)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"made ca={ca}")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
        .add_extension(x509.BasicConstraints(ca, None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=not isinstance(ext, x509.ExtendedKeyUsage))
    return builder.sign(issuer_key, hashes.SHA256())


def usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(sign, False, False, False, False, cert_sign, False, False, False)


@pytest.mark.parametrize(
    ("extensions", "detail"),
    [
        ([usage(sign=True, cert_sign=True)], "end entity's keyUsage has keyCertSign"),
        ([x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH])], "clientAuth"),
    ],
    ids=["leaf with keyCertSign", "leaf with a serverAuth-only EKU"],
)
def test_library_end_entity_profile(
    pki: Pki, extensions: list[x509.ExtensionType], detail: str
) -> None:
    leaf = hand_made(pki, new_key(), ca=False, extensions=extensions)
    with pytest.raises(StirError, match=detail) as info:
        validate_chain([leaf, pki.inter], [pki.root], NOW)
    assert info.value.check is Check.TRUST


@pytest.mark.parametrize(
    ("extensions", "detail"),
    [([], "an issuer has no keyUsage"), ([usage(sign=True, cert_sign=False)], "keyCertSign")],
    ids=["intermediate without keyUsage", "intermediate without keyCertSign"],
)
def test_library_ca_profile(pki: Pki, extensions: list[x509.ExtensionType], detail: str) -> None:
    key = new_key()
    inter = hand_made(pki, key, ca=True, extensions=extensions)
    leaf = make_stir_cert(new_key(), now=NOW, tns=["1"], issuer_key=key, issuer_cert=inter)
    with pytest.raises(StirError, match=detail) as info:
        validate_chain([leaf, inter], [pki.root], NOW)
    assert info.value.check is Check.TRUST


def test_refusal_detail_carries_no_peer_text() -> None:
    """The library names the certificate it refused (subject included); the detail does not."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\r\nVia: injected")])
    key = new_key()
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - DAY, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + DAY, tz=dt.UTC))
        .add_extension(odd, critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(StirError, match="unsupported critical extension") as info:
        validate_chain([cert], [cert], NOW)
    assert "evil" not in info.value.detail
    assert info.value.detail.isprintable()
