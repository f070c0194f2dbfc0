"""Verifying PASSporTs that came out of band (RFC 8816 §8.2 steps 2–6).

Each retrieved full-form PASSporT becomes an Identity header value
``token;info=<x5u>;ppt=…`` and the call is verified by the ordinary
:class:`~stird.services.verification.VerificationService` with its own SIP facts, so
credentials, trust, freshness, signature, replay and the verdict are exactly those of an
in-band Identity header. Before that, PASSporTs are kept only when their ppt is supported
(step 2), their ``orig`` is the calling party of the signalling (step 3: the CPS holds
every recent call to this number), and — for ``msec`` — the call has an SDP to bind.

A CPS entry is not bound to this call, so out-of-band PASSporTs only ever add evidence:
the out-of-band verdict is used when it is valid, otherwise the call keeps its in-band
verdict (usually "no-identity").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from stird.core.errors import StirError
from stird.core.identity import IdentityHeader
from stird.core.passport import Ppt, SignedPassport, decode
from stird.core.tn import IdKind, PartyId, party_from_header, party_from_pai, party_from_uri
from stird.core.verdict import SipFacts, Verdict
from stird.core.verify import SUPPORTED_PPT
from stird.services.oob import OobRetriever, Outcome, RetrievePolicy, RetrieveResult
from stird.services.ports import Clock
from stird.services.verdicts import CallVerdict
from stird.services.verification import VerificationService

log = logging.getLogger(__name__)

MAX_HEADERS = 16  # as many Identity values as one API request may carry
_MIN_VERIFY_TIME = 0.05
_BAD_URI_CHARS = frozenset("<> \t\r\n")


def _party(parse: Callable[..., PartyId], text: str | None, region: str | None) -> PartyId | None:
    if not text:
        return None
    try:
        return parse(text, default_region=region)
    except StirError:
        return None


def called_party(facts: SipFacts, region: str | None) -> PartyId | None:
    """The called number: the Request-URI's TN, else To's."""
    for party in (_party(party_from_uri, (facts.ruri or "").strip(), region),
                  _party(party_from_header, facts.to, region)):  # fmt: skip
        if party is not None and party.kind is IdKind.TN:
            return party
    return None


def calling_parties(facts: SipFacts, region: str | None) -> tuple[PartyId, ...]:
    """From, then P-Asserted-Identity (RFC 8224 §8)."""
    parties = (_party(party_from_header, facts.from_, region),
               _party(party_from_pai, facts.pai, region))  # fmt: skip
    return tuple(p for p in parties if p is not None)


def _usable(sp: SignedPassport, callers: tuple[PartyId, ...], has_sdp: bool) -> str | None:
    """Why a retrieved PASSporT is left out, or None to keep it."""
    if sp.ppt not in SUPPORTED_PPT:
        return f"unsupported ppt {sp.ppt!r}"  # step 2
    if callers and sp.claims.orig not in callers:
        return "orig is not the calling party"  # step 3
    if sp.ppt == Ppt.MSEC and not has_sdp:
        return "msec without an SDP to bind"
    if not sp.header.x5u or _BAD_URI_CHARS & set(sp.header.x5u):
        return "unusable x5u"
    return None


def identity_values(tokens: Sequence[str], facts: SipFacts, region: str | None) -> tuple[str, ...]:
    """The Identity header values standing for the usable ``tokens``, freshest first."""
    callers = calling_parties(facts, region)
    kept: list[SignedPassport] = []
    for token in tokens:
        try:
            sp = decode(token)
        except StirError:
            continue
        why = _usable(sp, callers, bool(facts.sdp))
        if why is not None:
            log.debug("out-of-band PASSporT left out: %s", why)
            continue
        kept.append(sp)
    kept.sort(key=lambda sp: -sp.claims.iat)
    return tuple(
        IdentityHeader(digest=sp.full, info=sp.header.x5u, ppt=sp.ppt).format()
        for sp in kept[:MAX_HEADERS]
    )


@dataclass(frozen=True, slots=True)
class OobCheck:
    """What out-of-band verification did for one call (``retrieval`` None: not tried)."""

    verdict: CallVerdict
    retrieval: RetrieveResult | None = None
    candidates: int = 0  # PASSporTs that went into the out-of-band verification
    oob_verdict: Verdict | None = None


class OobVerification:
    """In-band verification with out-of-band retrieval per :class:`RetrievePolicy`."""

    def __init__(
        self, retriever: OobRetriever, region: str | None, *, clock: Clock = time.monotonic
    ) -> None:
        self.retriever, self.region, self._clock = retriever, region, clock

    @property
    def policy(self) -> RetrievePolicy:
        return self.retriever.policy.retrieve

    def wants(self, facts: SipFacts) -> bool:
        if self.policy is RetrievePolicy.NEVER:
            return False
        return self.policy is RetrievePolicy.ALWAYS or not facts.identity

    async def verify(
        self, verifier: VerificationService, facts: SipFacts, deadline: float | None = None
    ) -> OobCheck:
        """The call's verdict: in band, or out of band when that is valid and in band is
        not. Under ``always`` both run concurrently."""
        if not self.wants(facts):
            return OobCheck(await verifier.verify(facts, deadline=deadline))
        started = self._clock()
        limit = min(verifier.policy.deadline, deadline or verifier.policy.deadline)
        called = called_party(facts, self.region)
        retrieval = asyncio.ensure_future(self._retrieve(called, facts, limit))
        try:
            in_band = await verifier.verify(facts, deadline=limit)
            if in_band.verdict is Verdict.VALID:  # "always": nothing to add, no waiting
                return OobCheck(in_band)
            result = await retrieval
        finally:
            retrieval.cancel()
        if not result.passports:
            return OobCheck(in_band, result)
        values = identity_values(result.passports, facts, self.region)
        if not values:
            return OobCheck(in_band, result)
        left = max(_MIN_VERIFY_TIME, limit - (self._clock() - started))
        oob = await verifier.verify(replace(facts, identity=values), deadline=left)
        oob = replace(oob, out_of_band=True)
        chosen = oob if oob.verdict is Verdict.VALID else in_band
        if chosen is in_band:
            log.info("out-of-band PASSporTs for %s did not verify: %s",
                     called.value if called else "?", oob.detail)  # fmt: skip
        return OobCheck(chosen, result, len(values), oob.verdict)

    async def _retrieve(
        self, called: PartyId | None, facts: SipFacts, limit: float
    ) -> RetrieveResult:
        if called is None:
            return RetrieveResult(Outcome.SKIPPED, error="the called party is not a number")
        callers = [p.value for p in calling_parties(facts, self.region) if p.kind is IdKind.TN]
        calling = callers[0] if callers else None
        return await self.retriever.retrieve(called.value, calling, timeout=limit)


__all__ = ["OobCheck", "OobVerification", "called_party", "calling_parties", "identity_values"]
