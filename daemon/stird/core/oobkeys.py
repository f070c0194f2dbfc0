"""Signed publications of a called number's encryption keys (RFC 8816 §11, §6.1).

RFC 8816 §11 leaves key lookup open and suggests tying the encryption key to the STIR
credential. stird's form [design]: a JWS (RFC 7515 compact serialisation, ES256 as in
RFC 8225 §6) whose signer's STIR certificate (RFC 8226) covers every TN published:

    header  = {"alg":"ES256", "typ":"stir-oob-keys", "x5c":[B64(DER), ...]}   ; or "x5u":URL
    payload = {"iat":INT, "exp":INT, "tns":["12025550100", ...], "keys":[JWK, ...]}

``x5c`` is standard base64 DER, leaf first (RFC 7515 §4.1.6); ``x5u`` names a PEM chain
fetched like a PASSporT's (RFC 8224 §6.2 step 3). JWKs are those of
:func:`stird.core.oob.key_from_jwk`. A later publication (by ``iat``) from the same
credential replaces the earlier one (an empty ``keys`` withdraws them); publications by
different credentials (carrier, enterprise... — RFC 8816 §6.1) add up.

Pure: time comes in as ``now``; fetching an ``x5u`` chain is the caller's job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs, jose, oob
from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.tnauthlist import SpcLookup

TYP = "stir-oob-keys"
MAX_TOKEN = 256 * 1024
MAX_TNS = 1000
MAX_KEYS = 8
MAX_CHAIN = 10


@dataclass(frozen=True, slots=True)
class KeyPublication:
    """A publication, parsed. ``publisher`` identifies the signing credential (SHA-256 of
    the leaf's public key, hex); ``chain`` is empty until fetched when only ``x5u`` is set."""

    token: str
    tns: tuple[str, ...]
    keys: tuple[oob.RecipientKey, ...]
    iat: int
    exp: int
    chain: tuple[x509.Certificate, ...]
    x5u: str | None

    @property
    def publisher(self) -> str:
        if not self.chain:
            raise bad_request("publication chain not loaded")
        return publisher_id(self.chain[0])


def publisher_id(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of the certificate's SubjectPublicKeyInfo; 400 if the key is unusable
    (found by fuzzing: cryptography decodes the key lazily and raises its own errors)."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise bad_request("publication certificate has an unusable public key") from None
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def build_publication(
    keys: Sequence[oob.RecipientKey],
    tns: Sequence[str],
    *,
    signing_key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    now: int,
    lifetime: int = 30 * 86400,
    x5u: str | None = None,
) -> str:
    """Sign a publication of ``keys`` for ``tns``; the chain goes in ``x5c`` unless
    ``x5u`` is given."""
    header: dict[str, Any] = {"alg": "ES256", "typ": TYP}
    if x5u is not None:
        header["x5u"] = x5u
    else:
        header["x5c"] = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                         for c in chain]  # fmt: skip
    payload = {
        "iat": now,
        "exp": now + lifetime,
        "tns": [oob.check_tn(tn) for tn in tns],
        "keys": [key.jwk() for key in keys],
    }
    head = jose.b64u_encode(jose.canonical_json(header))
    body = jose.b64u_encode(jose.canonical_json(payload))
    signing_input = f"{head}.{body}".encode("ascii")
    signature = jose.es256_sign(signing_key, signing_input)
    return f"{head}.{body}.{jose.b64u_encode(signature)}"


def _forbidden(detail: str, check: Check) -> StirError:
    return StirError(SipStatus.FORBIDDEN, detail, check=check)


def _int(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 40:
        raise bad_request(f"publication {name} must be a NumericDate (integer seconds)")
    return value


def _list(payload: dict[str, Any], name: str, least: int, most: int) -> list[Any]:
    value = payload.get(name)
    if not isinstance(value, list) or not least <= len(value) <= most:
        raise bad_request(f"publication {name} must be a list of {least} to {most} items")
    return value


def read_x5c(header: dict[str, Any]) -> tuple[x509.Certificate, ...]:
    value = header.get("x5c")
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CHAIN:
        raise bad_request(f"x5c must list 1 to {MAX_CHAIN} certificates")
    chain: list[x509.Certificate] = []
    for item in value:
        try:
            der = base64.b64decode(str(item), validate=True)
            if der.startswith(b"-----BEGIN"):
                raise ValueError("PEM in x5c")
            chain.extend(certs.load_pem_chain(der))
        except (binascii.Error, ValueError, StirError):
            raise bad_request("x5c holds a value that is not a base64 DER certificate") from None
    return tuple(chain)


def _header(raw: dict[str, Any]) -> tuple[tuple[x509.Certificate, ...], str | None]:
    if raw.get("alg") != "ES256":
        raise bad_request("key publications are signed with ES256")
    if raw.get("typ") != TYP:
        raise bad_request(f"key publication typ must be {TYP!r}")
    x5u = raw.get("x5u")
    if x5u is not None and not (isinstance(x5u, str) and 0 < len(x5u) <= 2048):
        raise bad_request("x5u must be a URL")
    chain = read_x5c(raw)
    if not chain and x5u is None:
        raise bad_request("a key publication names its credential in x5c or x5u")
    return chain, x5u


def read_publication(token: str) -> KeyPublication:
    """Parse a publication without checking it; raises only :class:`StirError` (400)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise bad_request(f"key publication must be a JWS of at most {MAX_TOKEN} characters")
    try:
        token = token.strip()
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise bad_request("key publication must be a JWS compact serialisation")
        header = jose.strict_json_object(jose.b64u_decode(parts[0], "header"), "header")
        payload = jose.strict_json_object(jose.b64u_decode(parts[1], "payload"), "payload")
    except StirError as exc:
        raise bad_request(f"key publication: {exc.detail}") from None
    chain, x5u = _header(header)
    tns = tuple(oob.check_tn(tn) for tn in _list(payload, "tns", 1, MAX_TNS))
    keys = tuple(oob.key_from_jwk(jwk) for jwk in _list(payload, "keys", 0, MAX_KEYS))
    iat, exp = _int(payload, "iat"), _int(payload, "exp")
    return KeyPublication(token, tns, keys, iat, exp, chain, x5u)


@dataclass(frozen=True, slots=True)
class PublicationPolicy:
    """Whom publications are accepted from. ``pins`` are credentials trusted as they are
    (development credential, RFC 8862 §4.1-style self-signed certificates)."""

    anchors: tuple[x509.Certificate, ...] = ()
    pins: tuple[x509.Certificate, ...] = ()
    max_lifetime: int = 90 * 86400
    max_skew: int = 300
    spc_tns: SpcLookup | None = None


def check_publisher_trust(
    chain: Sequence[x509.Certificate], policy: PublicationPolicy, now: int
) -> None:
    certs.check_signing_key(chain[0])
    if chain[0] in policy.pins:
        certs.check_validity(chain[0], now)
        return
    if not policy.anchors:
        raise StirError(
            SipStatus.UNSUPPORTED_CREDENTIAL, "no trust anchors configured", check=Check.TRUST
        )
    certs.validate_chain(chain, policy.anchors, now, spc_tns=policy.spc_tns)


def verify_publication(pub: KeyPublication, policy: PublicationPolicy, now: int) -> KeyPublication:
    """Check signature, credential and authority over every TN; returns ``pub`` with
    ``exp`` capped by the policy and the leaf's notAfter. ``pub.chain`` must be loaded."""
    if not pub.chain:
        raise bad_request("publication chain not loaded")
    check_publisher_trust(pub.chain, policy, now)
    head, body, sig = pub.token.split(".")
    signature = jose.b64u_decode(sig, "signature")
    jose.es256_verify(certs.check_signing_key(pub.chain[0]), f"{head}.{body}".encode(), signature)
    uncovered = [tn for tn in pub.tns
                 if not certs.authorizes(pub.chain, "tn", tn, policy.spc_tns)]  # fmt: skip
    if uncovered:
        detail = f"credential does not cover TN {uncovered[0]} (RFC 8226 TNAuthList)"
        raise _forbidden(detail, Check.AUTHORITY)
    if pub.iat > now + policy.max_skew:
        raise bad_request("publication iat lies in the future")
    not_after = int(pub.chain[0].not_valid_after_utc.timestamp())
    exp = min(pub.exp, pub.iat + policy.max_lifetime, not_after)
    if exp <= now:
        raise _forbidden("publication expired", Check.FRESHNESS)
    return KeyPublication(pub.token, pub.tns, pub.keys, pub.iat, exp, tuple(pub.chain), pub.x5u)
