"""The ATIS-style CPS profile used in SHAKEN deployments (DIGEST §5.2): paths, bodies and
the Bearer token, without I/O.

    POST /passports/{dest}/{orig}   {"passports": ["<PASSporT>", ...]}   store
    GET  /passports/{dest}/{orig}   → {"passports": ["<PASSporT>", ...]}   retrieve
    Authorization: Bearer <JWT>

The JWT (RFC 7519, ES256 with the SHAKEN credential, header ``{"alg","typ","x5u"}``)
carries ``iat``, ``exp`` (publish only), ``action`` ("publish" / "retrieve"), ``spc``,
``iss`` (= spc), ``aud`` (the CPS host), ``jti`` (a UUID), ``dest`` ``{"tn":[called]}``,
``orig`` ``{"tn":calling}`` and, to publish, ``passports`` = ``"sha256-" +
base64(SHA-256(JSON.stringify([passport, ...])))`` — standard base64 with padding.

Unlike RFC 8816 §6 these PASSporTs are not encrypted: the storer and the retriever
authenticate with their SHAKEN credentials instead. Some CPSs put the SPC in the path
(``/passports/{spc}/{dest}/{orig}``); a CPS URL that already holds ``/passports`` is
taken as the collection root (see :func:`passports_url`).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import jose
from stird.core.errors import bad_request

MAX_PASSPORTS = 32
MAX_PASSPORT_LENGTH = jose.MAX_TOKEN_LENGTH
_TN = re.compile(r"[0-9]{1,15}")


class Action(enum.StrEnum):
    PUBLISH = "publish"
    RETRIEVE = "retrieve"


def check_tn(tn: str) -> str:
    if not isinstance(tn, str) or not _TN.fullmatch(tn):
        raise bad_request("an ATIS CPS telephone number is 1 to 15 digits (no '+')")
    return tn


def passports_url(base: str, dest: str, orig: str) -> str:
    """``{base}/passports/{dest}/{orig}``, or ``{base}/{dest}/{orig}`` when ``base``
    already names the collection (e.g. ``https://cps.example/passports/1234``)."""
    root = base.rstrip("/")
    if "/passports" not in root.partition("://")[2]:
        root += "/passports"
    return f"{root}/{check_tn(dest)}/{check_tn(orig)}"


def passports_digest(passports: Sequence[str]) -> str:
    """``"sha256-" + base64(SHA-256(JSON.stringify(passports)))``; JSON.stringify and a
    compact json.dumps agree on the base64url/dot characters of JWS tokens."""
    text = json.dumps(list(passports), separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def passports_body(passports: Sequence[str]) -> bytes:
    return json.dumps({"passports": list(passports)}, separators=(",", ":")).encode("utf-8")


def parse_passports_body(body: bytes) -> tuple[str, ...]:
    """The PASSporTs of a ``{"passports": [...]}`` document; non-strings and overlong
    items are skipped, a malformed document raises StirError (400)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("ATIS CPS answer is not JSON") from None
    items = doc.get("passports") if isinstance(doc, dict) else None
    if not isinstance(items, list) or len(items) > MAX_PASSPORTS:
        raise bad_request(f'an ATIS CPS answer is {{"passports": [...]}} of at most '
                          f"{MAX_PASSPORTS}")  # fmt: skip
    return tuple(p for p in items if isinstance(p, str) and 0 < len(p) <= MAX_PASSPORT_LENGTH)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What one Bearer token authorises."""

    action: Action
    spc: str
    audience: str  # the CPS host
    dest: str
    orig: str
    passports: tuple[str, ...] = ()  # publish only


def auth_claims(request: AuthRequest, *, now: int, jti: str, lifetime: int) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iat": now,
        "action": request.action.value,
        "spc": request.spc,
        "iss": request.spc,
        "aud": request.audience,
        "jti": jti,
        "dest": {"tn": [check_tn(request.dest)]},
        "orig": {"tn": check_tn(request.orig)},
    }
    if request.action is Action.PUBLISH:
        claims["exp"] = now + lifetime
        claims["passports"] = passports_digest(request.passports)
    return claims


def auth_token(
    request: AuthRequest,
    key: ec.EllipticCurvePrivateKey,
    x5u: str,
    *,
    now: int,
    jti: str,
    lifetime: int = 60,
) -> str:
    """The ES256 JWT for ``Authorization: Bearer``."""
    header = {"alg": "ES256", "typ": "JWT", "x5u": x5u}
    claims = auth_claims(request, now=now, jti=jti, lifetime=lifetime)
    head = jose.b64u_encode(jose.canonical_json(header))
    body = jose.b64u_encode(jose.canonical_json(claims))
    signature = jose.es256_sign(key, f"{head}.{body}".encode("ascii"))
    return f"{head}.{body}.{jose.b64u_encode(signature)}"


def read_auth_token(
    token: str, key: ec.EllipticCurvePublicKey
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a Bearer token whose ES256 signature holds under ``key`` (a
    CPS checks it against the credential its ``x5u`` names); raises StirError."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not all(parts):
        raise bad_request("Bearer token must be a JWS compact serialisation")
    header = jose.strict_json_object(jose.b64u_decode(parts[0], "header"), "header")
    claims = jose.strict_json_object(jose.b64u_decode(parts[1], "claims"), "claims")
    if header.get("alg") != "ES256":
        raise bad_request("Bearer token must be ES256")
    signature = jose.b64u_decode(parts[2], "signature")
    jose.es256_verify(key, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    return header, claims


__all__ = [
    "Action", "AuthRequest", "auth_claims", "auth_token", "parse_passports_body",
    "passports_body", "passports_digest", "passports_url", "read_auth_token",
]  # fmt: skip
