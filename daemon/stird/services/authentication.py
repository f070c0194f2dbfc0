"""The authentication service (RFC 8224 §6.1): choose the credential for the caller,
check the Date, and build the Identity headers the PBX adds.

By default an `msec` PASSporT (RFC 8862) binding the SDP fingerprints, plus a second
`shaken` header for telephone-number callers, because every open-source SHAKEN verifier
rejects a ppt it does not know (RFC 8224 §6.2 step 1 makes them ignore it at best).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.identity import IdentityHeader
from stird.core.passport import Ppt, SignedPassport
from stird.core.sdp import parse_sdp_keys
from stird.core.sign import SignRequest, sign_request
from stird.core.sipdate import format_sip_date, parse_sip_date
from stird.core.tn import IdKind, PartyId
from stird.services.ports import Clock, system_clock


@dataclass(frozen=True, slots=True)
class SigningCredential:
    """A private key, its certificate chain, where verifiers fetch it, and whom it signs for.

    With no selectors (``tns``, ``ranges``, ``prefixes``, ``domains``) it signs for
    whatever its certificate authorises (TNAuthList or SAN URI, RFC 8226)."""

    name: str
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    x5u: str
    attest: str = "A"
    tns: frozenset[str] = frozenset()
    ranges: tuple[certs.TnRange, ...] = ()
    prefixes: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()

    @property
    def has_selectors(self) -> bool:
        return bool(self.tns or self.ranges or self.prefixes or self.domains)

    def covers(self, party: PartyId) -> bool:
        if not self.has_selectors:
            return certs.authorizes(self.chain, party.kind.value, party.value)
        if party.kind is IdKind.TN:
            value = party.value
            return (
                value in self.tns
                or any(r.contains(value) for r in self.ranges)
                or any(value.startswith(p) for p in self.prefixes)
            )
        host = party.value.rpartition("@")[2].lower()
        return any(host == d or host.endswith("." + d) for d in self.domains)


class Uncovered(enum.StrEnum):
    """What to do for a caller no credential covers (RFC 8224 §6.1 step 1)."""

    REFUSE = "refuse"  # an error: the PBX applies its fail policy
    UNSIGNED = "unsigned"  # no Identity header: forward normally
    SIGN = "sign"  # sign with the first credential at ``uncovered_attest`` (gateway)


@dataclass(frozen=True, slots=True)
class SignPolicy:
    ppt: Ppt | None = Ppt.MSEC
    add_shaken: bool = True
    compact: bool = False
    uncovered: Uncovered = Uncovered.REFUSE
    uncovered_attest: str = "C"
    max_date_skew: int = 60  # RFC 8224 §6.1 step 3: refuse a Date further off than this


@dataclass(frozen=True, slots=True)
class SignInput:
    orig: PartyId
    dest: tuple[PartyId, ...]
    sdp: str | None = None
    date: str | None = None
    ppt: Ppt | None = None
    ppt_given: bool = False  # False: use the policy's default ppt
    attest: str | None = None
    call_id: str | None = None
    add_shaken: bool | None = None  # None: the policy's add_shaken (one PASSporT: False)


@dataclass(frozen=True, slots=True)
class SignOutput:
    identity: tuple[str, ...]
    date: str
    passports: tuple[SignedPassport, ...] = ()
    credential: str | None = None
    iat: int = 0
    headers: tuple[IdentityHeader, ...] = field(default=(), repr=False)

    @property
    def passport(self) -> str | None:
        return self.passports[0].full if self.passports else None


def _not_authoritative(party: PartyId) -> StirError:
    return StirError(
        SipStatus.FORBIDDEN, f"no signing credential covers {party.value}", check=Check.AUTHORITY
    )


def _check_usable(cred: SigningCredential, now: int) -> None:
    """Refuse to sign with a certificate outside its validity (RFC 5280 §4.1.2.5): every
    verifier would reject the PASSporT, so the PBX hears it now, with the remedy."""
    leaf = cred.chain[0]
    end, start = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if now > int(end.timestamp()):
        raise StirError(
            SipStatus.FORBIDDEN,
            f"signing credential {cred.name} expired at {end:%Y-%m-%dT%H:%M:%SZ}: renew its "
            "certificate and reload stird (SIGHUP)",
            check=Check.CREDENTIAL,
        )
    if now < int(start.timestamp()):
        raise StirError(
            SipStatus.FORBIDDEN,
            f"signing credential {cred.name} is not valid before {start:%Y-%m-%dT%H:%M:%SZ}",
            check=Check.CREDENTIAL,
        )


class AuthenticationService:
    """Signs requests with the configured credentials."""

    def __init__(
        self,
        credentials: Sequence[SigningCredential],
        policy: SignPolicy = SignPolicy(),
        *,
        clock: Clock = system_clock,
    ) -> None:
        self.credentials = tuple(credentials)
        self.policy = policy
        self._clock = clock

    def choose(self, orig: PartyId) -> tuple[SigningCredential, str | None] | None:
        """The credential for ``orig`` and the attestation override, or None."""
        for cred in self.credentials:
            if cred.covers(orig):
                return cred, None
        if self.policy.uncovered is Uncovered.SIGN and self.credentials:
            return self.credentials[0], self.policy.uncovered_attest
        if self.policy.uncovered is Uncovered.UNSIGNED:
            return None
        raise _not_authoritative(orig)

    def _iat(self, date: str | None, now: int) -> tuple[int, str]:
        """RFC 8224 §4.1 item 3 and §6.1 step 3: iat from Date, Date near our clock."""
        if date is None:
            return now, format_sip_date(now)
        iat = parse_sip_date(date)
        if abs(iat - now) > self.policy.max_date_skew:
            raise StirError(
                SipStatus.STALE_DATE, f"Date is {now - iat} s off our clock", check=Check.FRESHNESS
            )
        return iat, date

    def _types(self, request: SignInput) -> list[Ppt | None]:
        """msec needs fingerprints; TN callers also get shaken when configured."""
        wanted = request.ppt if request.ppt_given else self.policy.ppt
        is_tn = request.orig.kind is IdKind.TN
        if wanted == Ppt.MSEC:
            keys = parse_sdp_keys(request.sdp) if request.sdp else None
            if keys is None or not keys.all_lines():
                if request.ppt_given:
                    raise bad_request("msec needs an SDP with a=fingerprint (RFC 8862 §4)")
                return [Ppt.SHAKEN] if is_tn else [None]
            add = self.policy.add_shaken if request.add_shaken is None else request.add_shaken
            return [Ppt.MSEC, Ppt.SHAKEN] if is_tn and add else [Ppt.MSEC]
        if wanted == Ppt.SHAKEN and not is_tn:
            raise bad_request("shaken signs telephone numbers only (RFC 8588)")
        return [wanted]

    def sign(self, request: SignInput) -> SignOutput:
        """RFC 8224 §6.1 steps 1, 3 and 4 for one request."""
        now = int(self._clock())
        if not request.dest:
            raise bad_request("dest needs at least one identity")
        iat, date = self._iat(request.date, now)
        chosen = self.choose(request.orig)
        if chosen is None:
            return SignOutput(identity=(), date=date, iat=iat)
        cred, attest_override = chosen
        _check_usable(cred, now)
        out = [self._one(request, cred, ppt, iat, attest_override) for ppt in self._types(request)]
        return SignOutput(
            identity=tuple(h.format() for _, h in out),
            date=date,
            passports=tuple(p for p, _ in out),
            credential=cred.name,
            iat=iat,
            headers=tuple(h for _, h in out),
        )

    def _one(
        self,
        request: SignInput,
        cred: SigningCredential,
        ppt: Ppt | None,
        iat: int,
        attest_override: str | None,
    ) -> tuple[SignedPassport, IdentityHeader]:
        shaken = ppt == Ppt.SHAKEN
        attest = attest_override or request.attest or cred.attest
        core_request = SignRequest(
            orig=request.orig,
            dest=request.dest,
            iat=iat,
            ppt=ppt,
            attest=attest if shaken else None,
            origid=str(uuid.uuid4()) if shaken else None,  # RFC 8588 §10: unique per call
            sdp=request.sdp if ppt in (Ppt.MSEC, None) else None,  # mky: RFC 8224 §4.1
            compact=self.policy.compact and ppt in (None, Ppt.MSEC),
        )
        return sign_request(core_request, cred.key, cred.x5u)
