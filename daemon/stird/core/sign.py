"""The authentication service's construction step (RFC 8224 §4.1, §6.1 step 4).

Given the caller, the callees, the time and the SDP offer, build the PASSporT of the
requested type and the Identity header that carries it. Authority and the Date checks
of §6.1 steps 1–3 are the caller's business (services layer); this is the pure part.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from stird.core.errors import bad_request
from stird.core.identity import IdentityHeader
from stird.core.passport import ES256, Claims, Dest, PassportHeader, Ppt, SignedPassport, sign
from stird.core.sdp import parse_sdp_keys
from stird.core.tn import PartyId


@dataclass(frozen=True, slots=True)
class SignRequest:
    """What to sign. ``ppt`` None is a baseline PASSporT."""

    orig: PartyId
    dest: tuple[PartyId, ...]
    iat: int
    ppt: Ppt | None = Ppt.MSEC
    attest: str | None = None  # shaken
    origid: str | None = None  # shaken
    sdp: str | None = None
    compact: bool = False


def build(request: SignRequest, x5u: str) -> tuple[PassportHeader, Claims]:
    """Header and claims per RFC 8224 §4.1 (mky whenever the SDP has fingerprints)."""
    if not request.dest:
        raise bad_request("at least one dest is required")
    keys = parse_sdp_keys(request.sdp) if request.sdp else None
    if keys is not None and keys.has_k_line and request.ppt == Ppt.MSEC:
        raise bad_request("SDP k= lines must not be used with msec (RFC 8862 §3)")
    fingerprints = keys.all_lines() if keys else ()
    shaken = request.ppt == Ppt.SHAKEN
    if not shaken and (request.attest or request.origid):
        raise bad_request("attest and origid belong to shaken PASSporTs (RFC 8588)")
    claims = Claims(
        orig=request.orig,
        dest=Dest.of(request.dest),
        iat=request.iat,
        mky=fingerprints or None,
        attest=request.attest if shaken else None,
        origid=request.origid if shaken else None,
    )
    return _header(x5u, request.ppt), claims


@functools.lru_cache(maxsize=64)  # one per credential and ppt: built once, not per call
def _header(x5u: str, ppt: str | None) -> PassportHeader:
    return PassportHeader(x5u=x5u, ppt=ppt)


def sign_request(
    request: SignRequest, key: ec.EllipticCurvePrivateKey, x5u: str
) -> tuple[SignedPassport, IdentityHeader]:
    """Sign and wrap in an Identity header (full form unless ``compact``)."""
    if request.compact and request.ppt not in (None, Ppt.MSEC):
        raise bad_request(f"compact form cannot carry ppt {request.ppt} (RFC 8224 §9)")
    header, claims = build(request, x5u)
    signed = sign(header, claims, key)
    digest = signed.compact if request.compact else signed.full
    return signed, IdentityHeader(digest=digest, info=x5u, alg=ES256, ppt=request.ppt)
