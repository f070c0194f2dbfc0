"""Inputs and outputs of verification: SIP facts, credentials, policy, verdicts."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from stird.core.errors import SipStatus, StirError
from stird.core.tn import PartyId


class Verdict(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    NO_IDENTITY = "no-identity"
    UNSUPPORTED = "unsupported"  # only Identity headers with a ppt stird does not support


class Trust(enum.StrEnum):
    """How the credential behind a valid PASSporT came to be trusted (the trust model).

    ``ANCHOR``: the chain ends at a configured trust anchor (or is stird's own credential)
    — the certificate authority vouches that the signer holds the identities it covers
    (RFC 8226 §9). ``PIN`` and ``TOFU``: a self-signed certificate accepted because its
    SHA-256 is configured or was first seen for this caller — continuity, not ownership
    of a number, and only for ``msec`` (RFC 8862 §4.1–4.2)."""

    ANCHOR = "anchor"
    PIN = "pin"
    TOFU = "tofu"


#: Best first: a request is as trusted as its best valid PASSporT.
TRUST_ORDER = (Trust.ANCHOR, Trust.PIN, Trust.TOFU)


class Form(enum.StrEnum):
    FULL = "full"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class SipFacts:
    """What the PBX tells stird about one request (header field values, unparsed)."""

    identity: tuple[str, ...] = ()
    from_: str | None = None
    pai: str | None = None
    to: str | None = None
    ruri: str | None = None
    date: str | None = None
    sdp: str | None = None
    call_id: str | None = None
    dialog_forming: bool = True
    #: The PBX cannot show the SDP (Asterisk without its HEP copy): an msec PASSporT is
    #: verified without its ``mky`` binding, and the verdict says ``"mky": "unchecked"``.
    sdp_unavailable: bool = False


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate chain (leaf first) obtained for an ``info`` URI.

    ``trust`` is set when the credential is trusted before any path validation:
    ``ANCHOR`` for stird's own certificates (configured, never fetched), ``PIN``/``TOFU``
    for self-signed SIPBRANDY credentials (RFC 8862 §4.1), which speak for ``msec``
    PASSporTs only. None: the chain must lead to a configured trust anchor."""

    chain: tuple[x509.Certificate, ...]
    trust: Trust | None = None


#: info URI → the credential, or the error met while obtaining it (436/437).
CredentialLookup = Mapping[str, Credential | StirError]


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """Knobs of the verification service (RFC 8224 §6.2, RFC 8862 §4)."""

    anchors: tuple[x509.Certificate, ...] = ()
    max_age: int = 60  # RFC 8224 §12.1 freshness, seconds
    max_skew: int = 10  # how far in the future iat and Date may lie
    require_identity: bool = False  # 428 when no usable Identity header arrives
    default_region: str | None = None  # for national numbers in From/To
    use_pai: bool = True  # orig may match P-Asserted-Identity (RFC 8224 §8)
    spc_tns: Callable[[str, str], bool] | None = None  # external SPC → TN data (RFC 8226 §9)
    shaken_spc_authorizes: bool = True  # SHAKEN certificates name only an SPC (ATIS-1000080)


@dataclass(frozen=True, slots=True)
class PassportCheck:
    """The outcome for one Identity header."""

    index: int
    supported: bool
    form: Form | None = None
    ppt: str | None = None
    info: str | None = None
    orig: PartyId | None = None
    dest: tuple[PartyId, ...] = ()
    iat: int | None = None
    attest: str | None = None
    origid: str | None = None
    div: PartyId | None = None  # RFC 8946: the identity the call was diverted from
    signer: str | None = None
    compact: str | None = None  # "..sig", the RFC 9410 ppi of this header
    trust: Trust | None = None  # how the credential was trusted (valid checks only)
    replay_id: bytes | None = None  # the signature's malleability-free digest (valid only)
    error: StirError | None = None

    @property
    def valid(self) -> bool:
        return self.supported and self.error is None

    def to_json(self) -> dict[str, Any]:
        err = self.error
        return {
            "index": self.index,
            "valid": self.valid,
            "supported": self.supported,
            "form": self.form,
            "ppt": self.ppt,
            "info": self.info,
            "orig": self.orig.claim() if self.orig else None,
            "dest": [p.claim() for p in self.dest],
            "iat": self.iat,
            "attest": self.attest,
            "origid": self.origid,
            "div": self.div.claim() if self.div else None,
            "signer": self.signer,
            "trust": self.trust.value if self.trust else None,
            "failed_check": err.check.value if err else None,
            "code": err.code if err else None,
            "reason": err.reason if err else None,
            "detail": err.detail if err else None,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """The verdict on one request (RFC 8224 §6.2.1 combined over all headers)."""

    verdict: Verdict
    status: SipStatus | None
    detail: str | None
    passports: tuple[PassportCheck, ...]
    attest: str | None = None
    mky_unchecked: bool = False  # a valid msec PASSporT's mky was not checked (no SDP)

    @property
    def trust(self) -> Trust | None:
        """The best trust among the valid PASSporTs (None when none is valid)."""
        found = {p.trust for p in self.passports if p.valid}
        return next((t for t in TRUST_ORDER if t in found), None)

    @property
    def code(self) -> int | None:
        return self.status.code if self.status else None

    @property
    def reason(self) -> str | None:
        return self.status.reason if self.status else None

    @property
    def failed(self) -> tuple[PassportCheck, ...]:
        return tuple(p for p in self.passports if p.supported and p.error is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "code": self.code,
            "reason": self.reason,
            "detail": self.detail,
            "attest": self.attest,
            "trust": self.trust.value if self.trust else None,
            "passports": [p.to_json() for p in self.passports],
        }
