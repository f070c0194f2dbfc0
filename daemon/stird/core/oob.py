"""Out-of-band PASSporTs encrypted for the called number (RFC 8816 §6, §8.1 step 4).

HPKE (RFC 9180) in base mode through ``cryptography.hazmat.primitives.hpke``; one
ciphertext per key of the called number (RFC 8816 §8.1 step 4); the PASSporT is padded
to a length bucket because HPKE does not hide the plaintext length (RFC 9180 §9.7.6).

Suites (RFC 9180 §7 identifiers; the suite is chosen by the recipient's key):

    x25519           DHKEM(X25519, HKDF-SHA256) 0x0020 / HKDF-SHA256 0x0001 / AES-128-GCM 0x0001
    mlkem768-x25519  MLKEM768-X25519 (X-Wing) 0x647A / HKDF-SHA256 0x0001 / AES-256-GCM 0x0002

Wire format of one encrypted entry (stird-oob v1; RFC 9180 §10 leaves it to applications):

    entry    = version kem-id kdf-id aead-id enc ct
    version  = %x01                        ; 1 octet
    kem-id   = 2OCTET                      ; big-endian RFC 9180 identifiers, as above
    kdf-id   = 2OCTET
    aead-id  = 2OCTET
    enc      = Nenc OCTET                  ; 32 (x25519) or 1120 (mlkem768-x25519)
    ct       = (bucket + 16) OCTET         ; AES-GCM output, tag last (RFC 9180 §10)
    bucket   = 1024 / 2048 / 4096 / 8192   ; padded plaintext length

    plaintext = passport *%x00             ; full-form PASSporT (ASCII, never NUL) + zeros
    info      = "stird-oob-v1 " dest-tn    ; ASCII; binds the called number (RFC 9180 §8.1)
    aad       = ""                          (single-shot base mode, RFC 9180 §6.1)

For transport (the ``application/passport`` body of RFC 8816 §9) an entry is base64url
without padding (RFC 4648 §5). No key identifier is carried [design]: a clear key id would
let anyone holding the public key directory tell real entries from dummies and see which
party (carrier, enterprise...) a call is for, defeating RFC 8816 §6.2. The recipient tries
its keys of the entry's suite (an AEAD failure means "not for this key").

Dummies (RFC 8816 §6.2, DIGEST §6.1 [design]) are real seals to a throwaway key over random
padded plaintext: same header, a genuine ``enc``, the same bucket sizes.

Pure: no I/O, no clock; randomness comes in as ``rng`` (or from HPKE's own ephemeral key).
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from stird.core import jose, passport
from stird.core.errors import StirError, bad_request, invalid_passport

#: ``rng(n)`` returns ``n`` random octets (``secrets.token_bytes`` in production).
Random = Callable[[int], bytes]

VERSION = 1
INFO_LABEL = b"stird-oob-v1 "
BUCKETS = (1024, 2048, 4096, 8192)
TAG_LENGTH = 16  # AES-GCM Nt (RFC 9180 Table 5)
_HEADER = struct.Struct(">BHHH")  # version, kem_id, kdf_id, aead_id
_TN = re.compile(r"[0-9]{1,15}")
_X25519_LENGTH = 32
_MLKEM768_PUBLIC, _MLKEM768_SEED = 1184, 64


class OobSuite(enum.StrEnum):
    """An HPKE suite stird seals with; the value is the name used in config and keygen."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"


DEFAULT_SUITE = OobSuite.X25519


@dataclass(frozen=True, slots=True)
class _SuiteInfo:
    ids: tuple[int, int, int]  # kem_id, kdf_id, aead_id (RFC 9180 §7)
    hpke: hpke.Suite
    enc_length: int
    public_length: int
    secret_length: int


_SUITES: Mapping[OobSuite, _SuiteInfo] = {
    OobSuite.X25519: _SuiteInfo(
        (0x0020, 0x0001, 0x0001),
        hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM),
        hpke.KEM.X25519.enc_length(),
        _X25519_LENGTH,
        _X25519_LENGTH,
    ),
    OobSuite.MLKEM768_X25519: _SuiteInfo(
        (0x647A, 0x0001, 0x0002),
        hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
        hpke.KEM.MLKEM768_X25519.enc_length(),
        _MLKEM768_PUBLIC + _X25519_LENGTH,
        _MLKEM768_SEED + _X25519_LENGTH,
    ),
}
_BY_IDS = {info.ids: suite for suite, info in _SUITES.items()}

PublicObject = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
PrivateObject = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


def check_tn(tn: str) -> str:
    """A called number as the CPS indexes it: E.164 digits, no ``+``, 1–15 of them."""
    if not isinstance(tn, str) or not _TN.fullmatch(tn):
        raise bad_request("a CPS telephone number is 1 to 15 digits (E.164, no '+')")
    return tn


def info_for(dest_tn: str) -> bytes:
    """The HPKE ``info`` binding an entry to its called number (RFC 9180 §5.1, §8.1)."""
    return INFO_LABEL + check_tn(dest_tn).encode("ascii")


def _public_object(suite: OobSuite, raw: bytes) -> PublicObject:
    if len(raw) != _SUITES[suite].public_length:
        raise bad_request(f"{suite} public key must be {_SUITES[suite].public_length} octets")
    try:
        if suite is OobSuite.X25519:
            return x25519.X25519PublicKey.from_public_bytes(raw)
        pq = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC])
        classic = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC:])
        return hpke.MLKEM768X25519PublicKey(pq, classic)
    except ValueError as exc:
        raise bad_request(f"unusable {suite} public key: {exc}") from None


def _private_object(suite: OobSuite, secret: bytes) -> tuple[PrivateObject, bytes]:
    """The cryptography key and the raw public key (X-Wing order: ML-KEM then X25519)."""
    if len(secret) != _SUITES[suite].secret_length:
        raise bad_request(f"{suite} private key must be {_SUITES[suite].secret_length} octets")
    try:
        classic = x25519.X25519PrivateKey.from_private_bytes(secret[-_X25519_LENGTH:])
        classic_public = classic.public_key().public_bytes_raw()
        if suite is OobSuite.X25519:
            return classic, classic_public
        pq = mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:_MLKEM768_SEED])
        public = pq.public_key().public_bytes_raw() + classic_public
        return hpke.MLKEM768X25519PrivateKey(pq, classic), public
    except ValueError as exc:
        raise bad_request(f"unusable {suite} private key: {exc}") from None


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members."""
    members = ("crv", "kty", "x") if jwk.get("kty") == "OKP" else ("alg", "kty", "pub")
    digest = hashlib.sha256(jose.canonical_json({m: jwk.get(m) for m in members})).digest()
    return jose.b64u_encode(digest)


@dataclass(frozen=True, slots=True)
class RecipientKey:
    """A public encryption key of a called number; ``public`` is the raw encoding
    (X25519: 32 octets; MLKEM768-X25519: ML-KEM-768 key (1184) then X25519 key (32))."""

    suite: OobSuite
    public: bytes
    kid: str = ""
    _object: PublicObject = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_object", _public_object(self.suite, self.public))
        if not self.kid:
            object.__setattr__(self, "kid", thumbprint(self.jwk(with_kid=False)))

    def jwk(self, *, with_kid: bool = True) -> dict[str, str]:
        """The public JWK (see :func:`key_from_jwk` for the members)."""
        if self.suite is OobSuite.X25519:
            out = {"kty": "OKP", "crv": "X25519", "x": jose.b64u_encode(self.public)}
        else:
            out = {"kty": "AKP", "alg": HYBRID_ALG, "pub": jose.b64u_encode(self.public)}
        out["use"] = "enc"
        if with_kid:
            out["kid"] = self.kid
        return out


@dataclass(frozen=True, slots=True)
class DecryptionKey:
    """A private encryption key; ``secret`` is X25519's 32 octets, or for the hybrid the
    ML-KEM-768 seed d||z (64) then the X25519 private key (32)."""

    suite: OobSuite
    secret: bytes = field(repr=False)
    kid: str = ""
    _object: PrivateObject = field(init=False, repr=False, compare=False)
    _public: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key, public = _private_object(self.suite, self.secret)
        object.__setattr__(self, "_object", key)
        object.__setattr__(self, "_public", public)
        if not self.kid:
            object.__setattr__(self, "kid", self.public_key().kid)

    @classmethod
    def generate(cls, suite: OobSuite, rng: Random, kid: str = "") -> DecryptionKey:
        return cls(suite, rng(_SUITES[suite].secret_length), kid)

    def public_key(self) -> RecipientKey:
        return RecipientKey(self.suite, self._public, self.kid)

    def private_jwk(self) -> dict[str, str]:
        """The public JWK plus ``d`` (RFC 8037 §2) or, for the hybrid, ``priv``."""
        out = self.public_key().jwk()
        out["d" if self.suite is OobSuite.X25519 else "priv"] = jose.b64u_encode(self.secret)
        return out


# JWK members [design]: X25519 keys are RFC 8037 OKP keys. The hybrid has no registered
# JOSE form yet; stird labels it with the "AKP" key type (draft-ietf-cose-dilithium's
# algorithm key pair) and alg "MLKEM768-X25519", "pub" = base64url(ML-KEM-768 || X25519).
HYBRID_ALG = "MLKEM768-X25519"
_PRIVATE_MEMBERS = ("d", "priv")


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise bad_request(f"JWK member {name!r} missing or not a string")
    try:
        return jose.b64u_decode(value, f"JWK {name}")
    except StirError:
        raise bad_request(f"JWK member {name!r} is not base64url") from None


def _suite_of(jwk: Mapping[str, Any]) -> OobSuite:
    if not isinstance(jwk, Mapping):
        raise bad_request("a JWK is a JSON object")
    if jwk.get("use", "enc") != "enc":
        raise bad_request("encryption JWKs must have use 'enc' (RFC 7517 §4.2)")
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "X25519":
        return OobSuite.X25519
    if jwk.get("kty") == "AKP" and jwk.get("alg") == HYBRID_ALG:
        return OobSuite.MLKEM768_X25519
    raise bad_request("unsupported JWK: want OKP/X25519 or AKP/MLKEM768-X25519")


def _kid(jwk: Mapping[str, Any]) -> str:
    kid = jwk.get("kid", "")
    if not isinstance(kid, str) or len(kid) > 128:
        raise bad_request("JWK kid must be a string of at most 128 characters")
    return kid


def key_from_jwk(jwk: Mapping[str, Any]) -> RecipientKey:
    """A public JWK (``{"kty":"OKP","crv":"X25519","x":…}`` or
    ``{"kty":"AKP","alg":"MLKEM768-X25519","pub":…}``); private members are refused."""
    suite = _suite_of(jwk)
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise bad_request("a published JWK must not carry private key material")
    raw = _member(jwk, "x" if suite is OobSuite.X25519 else "pub")
    return RecipientKey(suite, raw, _kid(jwk))


def private_key_from_jwk(jwk: Mapping[str, Any]) -> DecryptionKey:
    """A private JWK as written by ``stird keygen``; the public member must match."""
    suite = _suite_of(jwk)
    is_x25519 = suite is OobSuite.X25519
    key = DecryptionKey(suite, _member(jwk, "d" if is_x25519 else "priv"), _kid(jwk))
    if _member(jwk, "x" if is_x25519 else "pub") != key.public_key().public:
        raise bad_request("private JWK: the public member does not match the private key")
    return key


@dataclass(frozen=True, slots=True)
class SealedEntry:
    """One encrypted PASSporT as stored at the CPS (see the wire format above)."""

    suite: OobSuite
    enc: bytes
    ct: bytes

    @property
    def bucket(self) -> int:
        return len(self.ct) - TAG_LENGTH

    def to_bytes(self) -> bytes:
        return _HEADER.pack(VERSION, *_SUITES[self.suite].ids) + self.enc + self.ct

    @property
    def text(self) -> str:
        """base64url, the ``application/passport`` body."""
        return jose.b64u_encode(self.to_bytes())


MAX_ENTRY_BYTES = _HEADER.size + max(s.enc_length for s in _SUITES.values()) + BUCKETS[-1] + 16
MAX_ENTRY_TEXT = -(-MAX_ENTRY_BYTES * 4 // 3)


def entry_from_bytes(raw: bytes) -> SealedEntry:
    """Parse the binary form; raises only :class:`StirError` (400)."""
    if len(raw) < _HEADER.size:
        raise bad_request("encrypted entry too short")
    version, *ids = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise bad_request(f"unsupported encrypted entry version {version}")
    suite = _BY_IDS.get((ids[0], ids[1], ids[2]))
    if suite is None:
        raise bad_request("unsupported HPKE suite in encrypted entry")
    enc_end = _HEADER.size + _SUITES[suite].enc_length
    enc, ct = raw[_HEADER.size : enc_end], raw[enc_end:]
    if len(ct) - TAG_LENGTH not in BUCKETS:
        raise bad_request("encrypted entry has no valid padded length")
    return SealedEntry(suite, enc, ct)


def decode_entry(text: str) -> SealedEntry:
    """Parse the base64url form (ASCII whitespace, e.g. line folding, is ignored)."""
    if not isinstance(text, str):
        raise bad_request("encrypted entry must be text")
    compact = "".join(text.split())
    if len(compact) > MAX_ENTRY_TEXT:
        raise bad_request("encrypted entry too long")
    try:
        raw = jose.b64u_decode(compact, "encrypted entry")
    except StirError:
        raise bad_request("encrypted entry is not base64url") from None
    return entry_from_bytes(raw)


def bucket_for(length: int) -> int:
    """The smallest padding bucket holding ``length`` octets."""
    for bucket in BUCKETS:
        if length <= bucket:
            return bucket
    raise bad_request(f"PASSporT longer than {BUCKETS[-1]} octets cannot be sealed")


def _pad(data: bytes, bucket: int) -> bytes:
    return data + b"\x00" * (bucket - len(data))


def _seal_one(plaintext: bytes, key: RecipientKey, info: bytes) -> SealedEntry:
    suite = _SUITES[key.suite]
    out = suite.hpke.encrypt(plaintext, key._object, info=info)
    return SealedEntry(key.suite, out[: suite.enc_length], out[suite.enc_length :])


def seal(
    token: str, recipients: Sequence[RecipientKey], dest_tn: str, *, bucket: int | None = None
) -> tuple[SealedEntry, ...]:
    """Encrypt a full-form PASSporT once per key of the called number (RFC 8816 §8.1 step 4;
    the CPS copy MUST be full form). ``bucket`` forces a larger padding bucket."""
    passport.decode_json(token)  # full form: three non-empty parts, JSON header and payload
    data = token.encode("ascii")
    size = bucket_for(len(data)) if bucket is None else bucket
    if size not in BUCKETS or len(data) > size:
        raise bad_request(f"bucket must be one of {BUCKETS} and hold the PASSporT")
    info = info_for(dest_tn)
    return tuple(_seal_one(_pad(data, size), key, info) for key in recipients)


def _unpad(plaintext: bytes) -> str:
    data = plaintext.rstrip(b"\x00")
    if not data or not data.isascii():
        raise invalid_passport("decrypted out-of-band entry is not a padded PASSporT")
    return data.decode("ascii")


def open_entry(entry: SealedEntry | str, keys: Sequence[DecryptionKey], dest_tn: str) -> str | None:
    """The PASSporT of an entry sealed to one of ``keys`` for ``dest_tn``; None when none of
    the keys opens it — normal for dummies and other parties' entries (RFC 8816 §6.2, §8.2
    step 1). Raises :class:`StirError` for a malformed entry or a decrypted non-PASSporT."""
    sealed = decode_entry(entry) if isinstance(entry, str) else entry
    info, suite = info_for(dest_tn), _SUITES[sealed.suite]
    for key in keys:
        if key.suite is not sealed.suite:
            continue
        try:
            plaintext = suite.hpke.decrypt(sealed.enc + sealed.ct, key._object, info=info)
        except (InvalidTag, ValueError):
            continue
        return _unpad(plaintext)
    return None


def dummy(bucket: int, rng: Random, suite: OobSuite = DEFAULT_SUITE) -> SealedEntry:
    """A decoy indistinguishable in size and form from a real entry of ``suite`` and
    ``bucket`` (RFC 8816 §6.2): a real seal to a throwaway key over random padded data."""
    if bucket not in BUCKETS:
        raise bad_request(f"bucket must be one of {BUCKETS}")
    throwaway = DecryptionKey.generate(suite, rng, kid="dummy").public_key()
    length = bucket // 2 + int.from_bytes(rng(2), "big") % (bucket // 2)
    filler = jose.b64u_encode(rng(length))[:length].encode("ascii")
    return _seal_one(_pad(filler, bucket), throwaway, INFO_LABEL + b"dummy")


def suite_ids(suite: OobSuite) -> tuple[int, int, int]:
    """RFC 9180 (kem_id, kdf_id, aead_id) of a suite."""
    return _SUITES[suite].ids
