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


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate chain (leaf first) obtained for an ``info`` URI.

    ``pinned`` marks a credential trusted as it is — stird's own certificates, RFC 8862
    §4.1 pins and trust-on-first-use — so it needs no path to an anchor."""

    chain: tuple[x509.Certificate, ...]
    pinned: bool = False


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
            "passports": [p.to_json() for p in self.passports],
        }
