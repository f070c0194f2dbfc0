"""JWS building blocks for PASSporT: base64url, canonical JSON, strict JSON, ES256.

RFC 8225 §6 (JWS compact serialisation), §9 (deterministic JSON), RFC 7518 §3.4
(ES256: the signature is the 64-octet R||S, not DER).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from stird.core.errors import Check, invalid_header

#: Upper bound on one token (a full-form PASSporT with a few SDP fingerprints is < 1 KiB;
#: Asterisk's tested limit for one Identity header is 1,900 characters).
MAX_TOKEN_LENGTH = 8192
#: JSON nesting bound (PASSporT claims nest three deep; `div-o` carries a token as a string).
MAX_JSON_DEPTH = 16

# base64url = 1*( ALPHA / DIGIT / "-" / "_" )   ; RFC 4648 §5, no padding (RFC 7515 §2)
_B64U = re.compile(r"[A-Za-z0-9_-]*")

ES256_SIGNATURE_LENGTH = 64


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def b64u_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    encoded = binascii.b2a_base64(data, newline=False).translate(_URLSAFE)
    return encoded.rstrip(b"=").decode("ascii")


def b64u_decode(text: str, what: str) -> bytes:
    """Strict base64url decoding; raises 438 naming ``what`` on bad input."""
    if not _B64U.fullmatch(text) or len(text) % 4 == 1:
        raise invalid_header(f"{what} is not base64url")
    try:
        padded = text.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(text) % 4)
        return binascii.a2b_base64(padded)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - guarded by the regex
        raise invalid_header(f"{what} is not base64url") from exc


# One encoder for every call: json.dumps() with options builds a new JSONEncoder each time.
_CANONICAL = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: Any) -> bytes:
    """RFC 8225 §9: members sorted by code point at every level, arrays kept in order,
    no whitespace, UTF-8. Non-ASCII is emitted as UTF-8 (see DIGEST §1.5)."""
    return _CANONICAL.encode(obj).encode("utf-8")


def canonical_json_plain(obj: Any) -> bytes:
    """:func:`canonical_json` of a value built only of str, int, bool, None, lists and
    str-keyed objects — every PASSporT stird builds itself — through orjson (~8× faster).

    For such values orjson's output is byte-identical: keys sorted by code point (UTF-8
    byte order is code point order), no whitespace, UTF-8, the same escapes (``\\"``,
    ``\\\\``, ``\\n``-style and ``\\u00XX`` for other controls; tested). Floats are
    the exception (orjson writes ``1e16`` and NaN as ``null``), so callers must not pass
    them; what orjson refuses (ints beyond 64 bits, non-str keys, lone surrogates) goes
    to the reference encoder, which decides as before."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return canonical_json(obj)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise invalid_header(f"duplicate JSON member {key!r} (RFC 8225 §9)")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise invalid_header(f"JSON constant {name} is not allowed")


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# One decoder for every call: json.loads() with hooks builds a new JSONDecoder each time.
_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object: UTF-8, bounded depth, no duplicate members, no NaN."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_header(f"{what} is not UTF-8") from exc
    # Nesting needs an opening bracket per level: count them (C speed) before scanning.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise invalid_header(f"{what} nests deeper than {MAX_JSON_DEPTH}")
    try:
        if text.startswith("\ufeff"):  # what json.loads() says before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _STRICT.decode(text)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise invalid_header(f"{what} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise invalid_header(f"{what} is not a JSON object")
    return obj


_VERIFYING = ec.ECDSA(hashes.SHA256())  # shared: the algorithm objects hold no state
#: Randomised ECDSA (a fresh nonce per signature), not RFC 6979: two real calls with the
#: same claims in the same second (redial, trunk failover) must not carry byte-identical
#: PASSporTs, or the second would be refused as a replay of the first (issue #16).
_SIGNING = ec.ECDSA(hashes.SHA256())

#: The order of the P-256 group (SEC 2 §2.4.2; FIPS 186-4 D.1.2.3).
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def signature_id(signing_input: bytes, signature: bytes) -> bytes:
    """A digest that every valid form of one ES256 signature over ``signing_input``
    shares: SHA-256 over the signed bytes, r and the low s (min(s, n − s)), 128 bits.

    ECDSA is malleable: when (r, s) verifies, so does (r, n − s) — anyone who has seen
    one signature can make the other without the key. Keying the replay cache on this
    digest (RFC 8224 §12.1) makes a malleated copy the same PASSporT as its original;
    the R||S encoding itself is fixed-width, so there is no other encoding to vary. The
    signed bytes are part of it so that nobody can make another message (under a key
    made up for the purpose) collide with a real call's entry."""
    half = len(signature) // 2
    r = signature[:half]
    s = int.from_bytes(signature[half:], "big")
    low = min(s, P256_N - s) if 0 < s < P256_N else s
    digest = hashlib.sha256(signing_input)
    digest.update(r + low.to_bytes(half, "big"))
    return digest.digest()[:16]


def _octets(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> int:
    return (key.curve.key_size + 7) // 8


def _der_to_raw(der: bytes, size: int) -> bytes:
    """OpenSSL's ECDSA-Sig-Value to R||S (RFC 7518 §3.4) by slicing.

    ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }   ; RFC 3279 §2.2.3
    For P-256 every length fits DER's short form (SEQUENCE ≤ 70 octets), so the layout is
    30 L 02 Lr r 02 Ls s; r and s are unsigned, so a leading 00 is dropped and a short
    one left-padded. Anything else (never seen from OpenSSL) takes the general decoder."""
    r_len = der[3]
    s_at = 4 + r_len
    if der[0] != 0x30 or der[2] != 0x02 or der[s_at] != 0x02 or der[1] >= 0x80:
        r, s = decode_dss_signature(der)
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    r_octets = der[4:s_at].lstrip(b"\0")
    s_octets = der[s_at + 2 : s_at + 2 + der[s_at + 1]].lstrip(b"\0")
    return r_octets.rjust(size, b"\0") + s_octets.rjust(size, b"\0")


def es256_sign(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    """ES256 over ``signing_input``; returns R||S (RFC 7518 §3.4)."""
    raw = _der_to_raw(key.sign(signing_input, _SIGNING), ES256_SIGNATURE_LENGTH // 2)
    if len(raw) != ES256_SIGNATURE_LENGTH:  # not a P-256 key: credentials are checked at load
        raise ValueError("ES256 needs an EC P-256 key (RFC 7518 §3.4)")
    return raw


def es256_verify(key: ec.EllipticCurvePublicKey, signing_input: bytes, signature: bytes) -> None:
    """Verify an ES256 R||S signature; raises 438 (check=signature) when it does not hold."""
    if len(signature) != ES256_SIGNATURE_LENGTH:
        raise invalid_header(
            f"ES256 signature must be 64 octets, got {len(signature)}", Check.SIGNATURE
        )
    size = _octets(key)
    if len(signature) != 2 * size:
        raise invalid_header("signature does not verify", Check.SIGNATURE)
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signing_input, _VERIFYING)
    except InvalidSignature:
        raise invalid_header("signature does not verify", Check.SIGNATURE) from None
