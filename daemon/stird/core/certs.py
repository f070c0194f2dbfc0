"""STIR certificates: TNAuthList (RFC 8226), delegate chains (RFC 9060), self-signed (RFC 8862).

Pure: no I/O, no clock. Time is always an ``int`` of POSIX seconds handed in by the caller.
Every failure on peer input is a :class:`StirError`; the ASN.1 and X.509 libraries' own
exceptions never escape.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import verification as xv
from cryptography.x509.oid import NameOID

from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.tnauthlist import (
    TNAUTHLIST_OID,
    SpcLookup,
    TNAuthList,
    TnRange,
    encode_tnauthlist,
    parse_tnauthlist,
)

__all__ = [
    "ANONYMOUS_URI", "TNAUTHLIST_OID", "SpcLookup", "TNAuthList", "TnRange",
    "authorizes", "cert_to_pem", "check_authority", "check_signing_key", "check_validity",
    "encode_tnauthlist", "load_pem_chain", "make_anonymous_cert", "make_stir_cert",
    "parse_tnauthlist", "san_uris", "tnauthlist_of", "validate_chain",
]  # fmt: skip

ANONYMOUS_URI = "sip:anonymous@anonymous.invalid"
MAX_CHAIN = 10
CLOCK_SKEW = 300

_E = TypeVar("_E", bound=x509.ExtensionType)
Chain = Sequence[x509.Certificate]


def _malformed(detail: str) -> StirError:
    return StirError(SipStatus.UNSUPPORTED_CREDENTIAL, detail, check=Check.CREDENTIAL)


def _untrusted(detail: str) -> StirError:
    return StirError(SipStatus.UNSUPPORTED_CREDENTIAL, detail, check=Check.TRUST)


def _ext(cert: x509.Certificate, cls: type[_E]) -> _E | None:
    """The extension of type ``cls``; TNAuthList comes back as UnrecognizedExtension."""
    try:
        if cls is x509.UnrecognizedExtension:
            ext = cert.extensions.get_extension_for_oid(TNAUTHLIST_OID).value
        else:
            ext = cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise _malformed(f"malformed certificate extensions: {exc}") from None
    if not isinstance(ext, cls):
        raise _malformed(f"unexpected representation of {cls.__name__}")
    return ext


def tnauthlist_of(cert: x509.Certificate) -> TNAuthList | None:
    """The TNAuthList extension (RFC 8226 §9) of ``cert``, or None when absent."""
    ext = _ext(cert, x509.UnrecognizedExtension)
    return None if ext is None else parse_tnauthlist(ext.value)


def san_uris(cert: x509.Certificate) -> tuple[str, ...]:
    """subjectAltName uniformResourceIdentifier values (RFC 8226 §3, RFC 8862 §4.2)."""
    san = _ext(cert, x509.SubjectAlternativeName)
    return () if san is None else tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


def load_pem_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """PEM certificates, leaf first (RFC 9060 §7), or one DER certificate; at most 10."""
    status, check = SipStatus.BAD_IDENTITY_INFO, Check.CREDENTIAL
    if data.count(b"-----BEGIN CERTIFICATE-----") > MAX_CHAIN:
        raise StirError(status, f"more than {MAX_CHAIN} certificates", check=check)
    try:
        if b"-----BEGIN" in data:
            chain = tuple(x509.load_pem_x509_certificates(data))
        else:
            chain = (x509.load_der_x509_certificate(data),)
        for cert in chain:
            _parse_lazy_fields(cert)
    except _PARSE_ERRORS:
        raise StirError(status, "no usable certificate", check=check) from None
    return chain


#: What cryptography raises on malformed certificate content (found by fuzzing: it
#: parses names and extensions lazily, so these surface on first access, not at load).
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _parse_lazy_fields(cert: x509.Certificate) -> None:
    """Decode every field the checks will read, once, while errors can still be mapped."""
    _ = (cert.version, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string())
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    for extension in cert.extensions:
        _ = extension.value


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check_signing_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """RFC 8226 §4 / RFC 8225 §6: the key must be usable for ES256 (EC P-256)."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _untrusted("unsupported certificate public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _untrusted("certificate key is not EC P-256 (ES256)")
    return key


def check_validity(cert: x509.Certificate, at: int) -> None:
    """RFC 5280 §4.1.2.5 validity at POSIX time ``at``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < int(start.timestamp()):
        raise _untrusted(f"certificate not yet valid (valid from {start:%Y-%m-%dT%H:%M:%SZ})")
    if at > int(end.timestamp()):
        raise _untrusted(f"certificate expired at {end:%Y-%m-%dT%H:%M:%SZ}")


def _spki(cert: x509.Certificate) -> bytes | None:
    try:
        return _key_der(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None


def _key_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


# RFC 5280 path validation is cryptography's (x509.verification); these extension policies
# relax its CA/B Forum profile only where STI certificates differ (RFC 8226, ATIS-1000080):
# an end entity needs no subjectAltName (TNAuthList names it) and, self-signed (RFC 8862),
# no authorityKeyIdentifier. EKU may be absent (if present it must still be clientAuth).
# CA certificates keep the defaults: basicConstraints cA critical, keyUsage keyCertSign,
# pathLenConstraint. TNAuthList is non-critical and so ignored by the library; any
# critical extension the policy does not name is refused, as RFC 5280 §4.2 asks.
_EE_POLICY = (
    xv.ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.NON_CRITICAL, None)
)
_CA_POLICY = xv.ExtensionPolicy.webpki_defaults_ca()

#: The library's reasons (fragments of its messages) in our words; first match wins.
_REASONS = (
    ("not valid at validation time", ""),  # filled in by _validity_detail
    ("path length constraint", "pathLenConstraint exceeded"),
    ("cA must be asserted", "an issuer is not a CA (basicConstraints cA=false)"),
    ("cA must not be asserted", "certificate 0 is a CA certificate, not an end entity"),
    ("keyCertSign must be asserted", "an issuer's keyUsage lacks keyCertSign"),
    ("must not assert keyCertSign", "certificate 0: an end entity's keyUsage has keyCertSign"),
    ("2.5.29.15: Certificate is missing", "an issuer has no keyUsage"),
    ("required EKU not found", "certificate 0: extendedKeyUsage present without clientAuth"),
    ("critical extension", "unsupported critical extension"),
    ("signature does not match", "no path to a trust anchor: a signature does not verify"),
    ("no interior errors", "no path to a trust anchor"),
    ("exceeds max depth", f"certificate chain longer than {MAX_CHAIN}"),
)
_MALFORMED_REASONS = ("ASN.1", "duplicate extension", "malformed", "mismatch between")


def _library_reason(exc: Exception) -> str:
    """The library's message without the certificate repr, printable ASCII, bounded."""
    text = str(exc).removeprefix("validation failed: ").split(" (encountered processing", 1)[0]
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:160]


def _validity_detail(chain: Chain, anchors: Chain, at: int) -> str:
    """Which certificate is outside its validity period (the library does not say)."""
    named = [(f"certificate {i}", cert) for i, cert in enumerate(chain)]
    for name, cert in [*named, *(("trust anchor", a) for a in anchors)]:
        try:
            check_validity(cert, at)
        except StirError as exc:
            return f"{name}: {exc.detail}"
    return "a certificate is outside its validity period"


def _refusal(exc: Exception, chain: Chain, anchors: Chain, at: int) -> StirError:
    reason = _library_reason(exc)
    if any(fragment in reason for fragment in _MALFORMED_REASONS):
        return _malformed(f"malformed certificate: {reason}")
    for fragment, ours in _REASONS:
        if fragment in reason:
            detail = ours or _validity_detail(chain, anchors, at)
            return _untrusted(f"{detail} ({reason})")
    return _untrusted(f"certificate path refused: {reason}")


def _pinned_leaf(leaf: x509.Certificate, anchors: Chain) -> bool:
    """RFC 8862 §4.1: the leaf is an anchor (same DER, or self-signed with its subject+key)."""
    key = _spki(leaf)
    return any(
        leaf == anchor
        or (
            leaf.subject == anchor.subject
            and key is not None
            and key == _spki(anchor)
            and _signed_by(leaf, anchor)
        )
        for anchor in anchors
    )


def _verified_path(chain: Chain, anchors: Chain, at: int) -> list[x509.Certificate]:
    """RFC 5280 §6 by the library: the path leaf first, ending at the anchor it reached.

    A pinned leaf is its own anchor: the library then checks it alone (profile, validity).
    """
    leaf = chain[0]
    store = [leaf] if _pinned_leaf(leaf, anchors) else list(anchors)
    if not store:
        raise _untrusted("no path to a trust anchor (no anchors)")
    try:
        verifier = (
            xv.PolicyBuilder()
            .store(xv.Store(store))
            .time(dt.datetime.fromtimestamp(at, tz=dt.UTC))
            .max_chain_depth(MAX_CHAIN)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        return list(verifier.verify(leaf, list(chain[1:])).chain)
    except (xv.VerificationError, *_PARSE_ERRORS) as exc:
        raise _refusal(exc, chain, anchors, at) from None


def _check_delegation(path: Chain, spc_tns: SpcLookup | None) -> None:
    """RFC 9060 §4: each CA's TNAuthList encompasses the one below it on the verified path."""
    lists = [tnauthlist_of(cert) for cert in path]  # a malformed list spoils its certificate
    for depth in range(1, len(path)):
        parent, child = lists[depth], lists[depth - 1]
        if parent and child and not parent.encompasses(child, spc_tns):
            raise _untrusted(f"certificate {depth - 1}: TNAuthList not encompassed (RFC 9060 §4)")


def validate_chain(
    chain: Chain, anchors: Chain, at: int, *, spc_tns: SpcLookup | None = None
) -> None:
    """RFC 9060 §6 / RFC 5280 §6: leaf-first chain up to a pinned cert or an anchor.

    Path building, signatures, validity, basicConstraints, pathLen, keyUsage of issuers and
    critical extensions are cryptography's; STIR's own rules follow on the verified path:
    TNAuthList delegation, leaf keyUsage digitalSignature, leaf key EC P-256. A self-signed
    end-entity cert pinned as an anchor is accepted alone (RFC 8862 §4.1).
    """
    if not chain:
        raise _untrusted("empty certificate chain")
    if len(chain) > MAX_CHAIN:
        raise _untrusted(f"certificate chain longer than {MAX_CHAIN}")
    path = _verified_path(chain, anchors, at)
    _check_delegation(path, spc_tns)
    usage = _ext(path[0], x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise _untrusted("certificate 0: keyUsage lacks digitalSignature")
    check_signing_key(path[0])


def _uri_parts(uri: str) -> tuple[str, str, bool, str]:
    """(scheme, user, has '@', host) with scheme and host lowercased, params dropped."""
    scheme, _, rest = uri.partition(":")
    rest = re.split(r"[;?]", rest, maxsplit=1)[0]
    user, at_sign, host = rest.rpartition("@")
    return scheme.lower(), user, bool(at_sign), host.lower()


def _uri_matches(san: str, value: str) -> bool:
    """RFC 8224 §8: same identity, or a ``sip:host`` SAN giving domain authority (§8.4)."""
    s_scheme, s_user, s_at, s_host = _uri_parts(san)
    v_scheme, v_user, _, v_host = _uri_parts(value)
    if s_scheme != v_scheme or s_host != v_host or not s_host:
        return False
    return s_user == v_user or not s_at


def _tel_matches(san: str, tn: str) -> bool:
    scheme, _, number = san.partition(":")
    number = re.sub(r"[-.()]", "", number.split(";", 1)[0]).removeprefix("+")
    return scheme.lower() == "tel" and number == tn


def authorizes(chain: Chain, kind: str, value: str, spc_tns: SpcLookup | None = None) -> bool:
    """RFC 8226 §9 / RFC 8862 §4.1: does the leaf speak for ``kind``/``value``?

    For TNs every CA certificate's TNAuthList in ``chain`` limits the leaf's.
    """
    if not chain:
        return False
    leaf = chain[0]
    if kind == "uri":
        return any(_uri_matches(san, value) for san in san_uris(leaf))
    if kind != "tn":
        raise bad_request(f"unknown identity kind {kind!r}")
    leaf_tal = tnauthlist_of(leaf)
    if leaf_tal is not None:
        own = leaf_tal.covers_tn(value, spc_tns)
    else:
        own = any(_tel_matches(san, value) for san in san_uris(leaf))
    limits = (tnauthlist_of(cert) for cert in chain[1:])
    return own and all(tal is None or tal.covers_tn(value, spc_tns) for tal in limits)


def check_authority(chain: Chain, kind: str, value: str, spc_tns: SpcLookup | None = None) -> None:
    """RFC 8224 §6.2 step 3: 438 when the credential does not cover the identity."""
    if not authorizes(chain, kind, value, spc_tns):
        detail = f"certificate does not authorise {kind} {value}"
        raise StirError(SipStatus.INVALID_IDENTITY_HEADER, detail, check=Check.AUTHORITY)


def _default_cn(tal: TNAuthList, uris: Sequence[str]) -> str:
    if tal.tns:
        return f"STIR {tal.tns[0]}"
    if uris:
        return f"STIR {uris[0]}"
    if tal.ranges:
        return f"STIR {tal.ranges[0].start}+{tal.ranges[0].count}"
    if tal.spcs:
        return f"SHAKEN {tal.spcs[0]}"
    return "STIR CA"


def _aki(
    issuer_key: ec.EllipticCurvePrivateKey, issuer_cert: x509.Certificate | None
) -> x509.AuthorityKeyIdentifier:
    ski = None if issuer_cert is None else _ext(issuer_cert, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _extensions(
    key: ec.EllipticCurvePrivateKey, tal: TNAuthList, uris: Sequence[str], *, ca: bool
) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical): keyUsage, SKI, TNAuthList (RFC 8226 §9), SAN URIs."""
    # digitalSignature; keyCertSign and cRLSign for CAs (RFC 5280 §4.2.1.3)
    usage = x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)
    out: list[tuple[x509.ExtensionType, bool]] = [
        (usage, True),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
    ]
    if tal.spcs or tal.ranges or tal.tns:
        out.append((x509.UnrecognizedExtension(TNAUTHLIST_OID, encode_tnauthlist(tal)), False))
    if uris:
        names = [x509.UniformResourceIdentifier(uri) for uri in uris]
        out.append((x509.SubjectAlternativeName(names), False))
    return out


def make_stir_cert(
    key: ec.EllipticCurvePrivateKey,
    *,
    now: int,
    days: int = 365,
    tns: Sequence[str] = (),
    ranges: Sequence[TnRange] = (),
    spcs: Sequence[str] = (),
    uris: Sequence[str] = (),
    common_name: str | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    issuer_cert: x509.Certificate | None = None,
    ca: bool = False,
    path_length: int | None = None,
) -> x509.Certificate:
    """An RFC 8226 §4/§9 certificate; self-signed (RFC 8862 §4.1) when no issuer is given."""
    tal = TNAuthList(spcs=tuple(spcs), ranges=tuple(ranges), tns=tuple(tns))
    if not (tal.spcs or tal.ranges or tal.tns or uris or ca):
        raise bad_request("a STIR certificate needs TNs, ranges, SPCs or URIs")
    if (issuer_key is None) != (issuer_cert is None) or days <= 0:
        raise bad_request("issuer_key and issuer_cert go together; days must be positive")
    signer = key if issuer_key is None else issuer_key
    if issuer_cert is not None and _spki(issuer_cert) != _key_der(signer.public_key()):
        raise bad_request("issuer_key does not match issuer_cert")
    try:
        cn = (common_name or _default_cn(tal, uris))[:64]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if issuer_cert is None else issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.fromtimestamp(now - CLOCK_SKEW, tz=dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(now + days * 86400, tz=dt.UTC))
            .add_extension(x509.BasicConstraints(ca, path_length), critical=True)
            .add_extension(_aki(signer, issuer_cert), critical=False)
        )
        for ext, critical in _extensions(key, tal, uris, ca=ca):
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signer, hashes.SHA256())
    except (ValueError, TypeError) as exc:
        raise bad_request(f"cannot build certificate: {exc}") from None


def make_anonymous_cert(
    key: ec.EllipticCurvePrivateKey, *, now: int, days: int = 1
) -> x509.Certificate:
    """RFC 8862 §4.2: one-time self-signed cert for sip:anonymous@anonymous.invalid."""
    return make_stir_cert(key, now=now, days=days, uris=(ANONYMOUS_URI,), common_name="anonymous")
