"""PASSporT (RFC 8225) with the `shaken` (RFC 8588), `msec` (RFC 8862) and `div`
(RFC 8946) extensions: typed header and claims, signing, decoding, verification.

A PASSporT is a JWS whose header and payload are serialised canonically (RFC 8225 §9),
so the full form (``header.payload.signature``) and the compact form (``..signature``,
RFC 8225 §7) carry the same signature.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import jose
from stird.core.errors import Check, bad_request, invalid_header, invalid_passport
from stird.core.sdp import Fingerprint, mky_claim, parse_mky
from stird.core.tn import IdKind, PartyId


class Ppt(enum.StrEnum):
    """PASSporT extension types (`ppt`, RFC 8225 §8.1; IANA PASSporT Extensions)."""

    SHAKEN = "shaken"  # RFC 8588
    MSEC = "msec"  # RFC 8862 §9
    DIV = "div"  # RFC 8946 §3
    DIV_O = "div-o"  # RFC 8946 §5


class Attest(enum.StrEnum):
    """RFC 8588 §4 attestation levels."""

    A = "A"  # full
    B = "B"  # partial
    C = "C"  # gateway


ES256 = "ES256"
PASSPORT_TYP = "passport"
#: Claims stird understands; everything else is kept verbatim in ``Claims.extra``.
_KNOWN_CLAIMS = frozenset({"orig", "dest", "iat", "mky", "attest", "origid", "div", "opt"})
#: NumericDate as a JSON integer, or (on input only) a decimal string as in RFC 8225 §7.1.
_IAT_STRING = re.compile(r"[0-9]{1,12}")
_MAX_DEST = 16
_ATTEST_LEVELS = frozenset(Attest)


@dataclass(frozen=True, slots=True)
class PassportHeader:
    """The protected JOSE header (RFC 8225 §4, §8.1)."""

    x5u: str
    ppt: str | None = None
    alg: str = ES256
    typ: str = PASSPORT_TYP

    def to_json(self) -> dict[str, str]:
        obj = {"alg": self.alg, "typ": self.typ, "x5u": self.x5u}
        if self.ppt is not None:
            obj["ppt"] = self.ppt
        return obj


@dataclass(frozen=True, slots=True)
class Dest:
    """`dest`: an object of arrays (RFC 8225 §5.2.1), each array sorted."""

    tn: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()

    @classmethod
    def of(cls, parties: tuple[PartyId, ...] | list[PartyId]) -> Dest:
        if len(parties) == 1:  # the usual call: one callee, nothing to sort or merge
            only = parties[0]
            return cls((only.value,), ()) if only.kind is IdKind.TN else cls((), (only.value,))
        tns = sorted({p.value for p in parties if p.kind is IdKind.TN})
        uris = sorted({p.value for p in parties if p.kind is IdKind.URI})
        return cls(tuple(tns), tuple(uris))

    def parties(self) -> tuple[PartyId, ...]:
        return tuple(PartyId(IdKind.TN, t) for t in self.tn) + tuple(
            PartyId(IdKind.URI, u) for u in self.uri
        )

    def to_json(self) -> dict[str, list[str]]:
        obj: dict[str, list[str]] = {}
        if self.tn:
            obj["tn"] = list(self.tn)
        if self.uri:
            obj["uri"] = list(self.uri)
        return obj


_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})  # read-only: one shared empty mapping


@dataclass(frozen=True, slots=True)
class Claims:
    """PASSporT payload. Field names are the claim names."""

    orig: PartyId
    dest: Dest
    iat: int
    mky: tuple[Fingerprint, ...] | None = None
    attest: str | None = None
    origid: str | None = None
    div: PartyId | None = None
    opt: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = dict(self.extra) if self.extra else {}
        obj["orig"] = self.orig.claim()
        obj["dest"] = self.dest.to_json()
        obj["iat"] = self.iat
        if self.attest is not None:
            obj["attest"] = self.attest
        if self.origid is not None:
            obj["origid"] = self.origid
        if self.opt is not None:
            obj["opt"] = self.opt
        if self.mky is not None:
            obj["mky"] = mky_claim(self.mky)
        if self.div is not None:
            obj["div"] = self.div.claim()
        return obj


@dataclass(frozen=True, slots=True)
class SignedPassport:
    """A PASSporT as signed or as received: the parsed parts and the exact signed bytes."""

    header: PassportHeader
    claims: Claims
    signing_input: bytes  # ASCII(B64U(header) "." B64U(payload)), as signed
    signature: bytes  # ES256 R||S

    @property
    def full(self) -> str:
        """Full form (RFC 8225 §7): the JWS compact serialisation."""
        return f"{self.signing_input.decode('ascii')}.{jose.b64u_encode(self.signature)}"

    @property
    def compact(self) -> str:
        """Compact form (RFC 8225 §7): header and payload omitted."""
        return f"..{jose.b64u_encode(self.signature)}"

    @property
    def ppt(self) -> str | None:
        return self.header.ppt

    def verify(self, key: ec.EllipticCurvePublicKey) -> None:
        """Check the ES256 signature (RFC 8225 §6); raises 438 check=signature."""
        if self.header.alg != ES256:
            raise invalid_header(f"unsupported alg {self.header.alg!r}", Check.SIGNATURE)
        jose.es256_verify(key, self.signing_input, self.signature)


def _encode_header(header: PassportHeader) -> str:
    return jose.b64u_encode(jose.canonical_json(header.to_json()))


#: B64U(canonical header) of our own signing headers: a credential signs with a handful
#: (x5u × ppt), so each is serialised once. Only :func:`sign` uses it: headers rebuilt
#: from received signalling stay out of the cache.
_own_header = functools.lru_cache(maxsize=64)(_encode_header)


def _join(head: str, claims: Claims) -> bytes:
    # no float can be among the claims stird types itself; received extras go the
    # reference way
    encode = jose.canonical_json if claims.extra else jose.canonical_json_plain
    body = jose.b64u_encode(encode(claims.to_json()))
    return f"{head}.{body}".encode("ascii")


def signing_input(header: PassportHeader, claims: Claims) -> bytes:
    """RFC 8225 §6: B64U(canonical header) "." B64U(canonical payload)."""
    return _join(_encode_header(header), claims)


def sign(header: PassportHeader, claims: Claims, key: ec.EllipticCurvePrivateKey) -> SignedPassport:
    """Sign a PASSporT with ES256 (RFC 8225 §6) after checking it is well formed."""
    check_for_signing(header, claims)
    data = _join(_own_header(header), claims)
    return SignedPassport(header, claims, data, jose.es256_sign(key, data))


def check_for_signing(header: PassportHeader, claims: Claims) -> None:
    """Refuse PASSporTs that a verifier following the RFCs would reject."""
    if header.alg != ES256:
        raise bad_request(f"only ES256 is supported, not {header.alg!r}")
    if not claims.dest.tn and not claims.dest.uri:
        raise bad_request("dest needs at least one identity (RFC 8225 §5.2.1)")
    if header.ppt == Ppt.SHAKEN and claims.attest not in _ATTEST_LEVELS:
        raise bad_request("shaken needs attest A, B or C (RFC 8588 §4)")
    if header.ppt == Ppt.MSEC and not claims.mky:
        raise bad_request("msec needs an SDP with a=fingerprint lines (RFC 8862 §4)")


def with_signature(header: PassportHeader, claims: Claims, signature: bytes) -> SignedPassport:
    """Rebuild a compact-form PASSporT from signalling (RFC 8224 §4.1, RFC 8225 §7)."""
    return SignedPassport(header, claims, signing_input(header, claims), signature)


def decode(token: str) -> SignedPassport:
    """Parse a full-form PASSporT without verifying it (for verification and diagnostics).

    Raises only :class:`~stird.core.errors.StirError` (438) on any input.
    """
    raw_header, raw_claims = decode_json(token)
    head, body, sig = token.split(".")
    header = header_from_json(raw_header)
    claims = claims_from_json(raw_claims)
    signature = jose.b64u_decode(sig, "signature")
    return SignedPassport(header, claims, f"{head}.{body}".encode("ascii"), signature)


def decode_json(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload objects of a full-form token exactly as received."""
    if len(token) > jose.MAX_TOKEN_LENGTH:
        raise invalid_header(f"PASSporT longer than {jose.MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise invalid_header("a full-form PASSporT has three non-empty dot-separated parts")
    raw_header = jose.strict_json_object(jose.b64u_decode(parts[0], "header"), "header")
    raw_claims = jose.strict_json_object(jose.b64u_decode(parts[1], "payload"), "payload")
    return raw_header, raw_claims


def _string(obj: Mapping[str, Any], name: str) -> str | None:
    return None if obj.get(name) is None else _required(obj, name)


def _required(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise invalid_passport(f"{name!r} must be a non-empty string")
    return value


def header_from_json(obj: Mapping[str, Any]) -> PassportHeader:
    """RFC 8225 §4: `typ` MUST be "passport"; `alg` and `x5u` are required by RFC 8224."""
    typ = _required(obj, "typ")
    if typ != PASSPORT_TYP:
        raise invalid_passport(f"typ must be 'passport', not {typ!r}")
    return PassportHeader(
        x5u=_required(obj, "x5u"), ppt=_string(obj, "ppt"), alg=_required(obj, "alg")
    )


def parse_iat(value: object) -> int:
    """RFC 8225 §5.1.1 NumericDate; a decimal string is accepted on input (RFC examples)."""
    if isinstance(value, bool):
        raise invalid_passport("iat must be a NumericDate")
    if isinstance(value, int) and 0 <= value < 10**12:
        return value
    if isinstance(value, str) and _IAT_STRING.fullmatch(value):
        return int(value)
    raise invalid_passport("iat must be a NumericDate")


def parse_dest(value: object) -> Dest:
    """`dest`: object with `tn` and/or `uri` arrays of strings (RFC 8225 §5.2.1).

    A bare string is accepted as a one-element array (RFC 8946 §5 prints one)."""
    if not isinstance(value, dict) or not value or set(value) - {"tn", "uri"}:
        raise invalid_passport("dest must be an object with 'tn' and/or 'uri' arrays")
    lists: dict[str, tuple[str, ...]] = {}
    for name, items in value.items():
        seq = [items] if isinstance(items, str) else items
        if not isinstance(seq, list) or not 0 < len(seq) <= _MAX_DEST:
            raise invalid_passport(f"dest {name!r} must be a non-empty array")
        if not all(isinstance(v, str) and v for v in seq):
            raise invalid_passport(f"dest {name!r} must hold strings")
        lists[name] = tuple(seq)
    return Dest(lists.get("tn", ()), lists.get("uri", ()))


def claims_from_json(obj: Mapping[str, Any]) -> Claims:
    """Typed claims from a payload object; unknown claims are kept in ``extra``."""
    for name in ("orig", "dest", "iat"):
        if name not in obj:
            raise invalid_passport(f"missing required claim {name!r} (RFC 8225 §5)")
    mky = parse_mky(obj["mky"]) if "mky" in obj else None
    div = PartyId.from_claim(obj["div"]) if "div" in obj else None
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_CLAIMS}
    return Claims(
        orig=PartyId.from_claim(obj["orig"]),
        dest=parse_dest(obj["dest"]),
        iat=parse_iat(obj["iat"]),
        mky=mky,
        attest=_string(obj, "attest"),
        origid=_string(obj, "origid"),
        div=div,
        opt=_string(obj, "opt"),
        extra=MappingProxyType(extra),
    )
