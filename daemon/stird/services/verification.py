"""The verification service (RFC 8224 §6.2) for one call's SIP facts.

Runs the offline checks first (:func:`stird.core.verify.prepare`) and obtains only the
credentials of the PASSporTs that passed them (concurrently, under one deadline); applies
explicit pins and trust on first use to self-signed credentials (RFC 8862 §4.1: they speak
for ``msec`` only, which the core enforces); finishes the decision in the core; refuses
replayed PASSporTs (RFC 8224 §12.1); and turns the outcome into a :class:`CallVerdict`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from stird.core.certs import ANONYMOUS_URI
from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.passport import Ppt
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import Credential, PassportCheck, SipFacts, Trust, Verdict
from stird.core.verify import Prepared, decide, finish, link_diversions, prepare
from stird.services.ports import Clock, CredentialProvider, KeyValueStore, system_clock
from stird.services.stores import StoreFull, StoreUnavailable
from stird.services.verdicts import (
    CallVerdict,
    ReplayOverflow,
    ReplayStatus,
    ServicePolicy,
    to_call_verdict,
)

log = logging.getLogger(__name__)

Lookup = dict[str, Credential | StirError]
#: TOFU candidates: info URL → the (pin key, certificate fingerprint) pairs to record.
Candidates = dict[str, list[tuple[str, str]]]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lower-case hex (the pin format)."""
    return cert.fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=256)  # one per credential seen: a pure function of the DER
def _self_signed(cert: x509.Certificate) -> bool:
    """Issued by itself (its own signature verifies): ~80 us of ECDSA, asked of the same
    cached credential by every request that carries it."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def replay_key(replay_id: bytes) -> str:
    """The replay-cache key of a PASSporT: its signature's malleability-free digest
    (:func:`stird.core.jose.signature_id`, 128 bits), base64url (29 characters).

    Short because the in-memory cache holds up to a peak rate × window of them; entries
    live only for the freshness window, so the format can change between releases."""
    return "replay:" + base64.urlsafe_b64encode(replay_id).decode()[:22]


def replay_value(call_id: str) -> bytes:
    """What the replay cache remembers of a Call-ID: 128 bits of its SHA-256 (a fixed
    16 bytes per entry, however long the peer's Call-ID)."""
    return hashlib.sha256(call_id.encode()).digest()[:16]


@dataclass
class ReplayStats:
    """Counters for metrics: PASSporTs checked, replays refused, checks skipped by reason."""

    checked: int = 0
    replayed: int = 0
    unchecked: dict[str, int] | None = None

    def skip(self, reason: str, count: int = 1) -> None:
        if self.unchecked is None:
            self.unchecked = {}
        self.unchecked[reason] = self.unchecked.get(reason, 0) + count


class VerificationService:
    """Verify inbound requests; pins live in ``store``, replay entries in ``replay_store``
    (a store that never evicts a live entry; ``store`` when not given)."""

    def __init__(
        self,
        credentials: CredentialProvider,
        store: KeyValueStore,
        policy: ServicePolicy,
        *,
        clock: Clock = system_clock,
        replay_store: KeyValueStore | None = None,
        replay_stats: ReplayStats | None = None,
    ) -> None:
        self._credentials = credentials
        self._store = store
        self._replay_store = replay_store if replay_store is not None else store
        self.policy = policy
        self._clock = clock
        self.replay_stats = replay_stats if replay_stats is not None else ReplayStats()
        self._full_logged = False

    async def verify(self, facts: SipFacts, *, deadline: float | None = None) -> CallVerdict:
        """Verify one request; ``deadline`` (seconds) can only shorten the policy's."""
        if self.policy.require_call_id and not facts.call_id:
            raise bad_request("call_id is required ([verify] require_call_id)")
        now = int(self._clock())
        limit = min(self.policy.deadline, deadline or self.policy.deadline)
        prepared = prepare(facts, self.policy.verify, now)
        lookup = await self._obtain(prepared.uris, limit)
        tofu = await self._apply_pins(prepared, lookup)
        result = finish(prepared, lookup, self.policy.verify)
        replay: ReplayStatus | None = None
        if result.verdict is Verdict.VALID or result.failed:
            checks, replay = await self._refuse_replays(result.passports, facts)
            result = decide(link_diversions(checks), facts, self.policy.verify)
        if result.verdict is Verdict.VALID and tofu:
            await self._remember(tofu, result.passports)
        return to_call_verdict(
            result, self.policy, dialog_forming=facts.dialog_forming, replay=replay
        )

    async def _one(self, url: str) -> Credential | StirError:
        try:
            return await self._credentials.credential(url)
        except StirError as exc:
            return exc

    async def _obtain(self, urls: tuple[str, ...], deadline: float) -> Lookup:
        """RFC 8224 §6.2 step 3 for every header at once, bounded by the deadline. A fetch
        cut short here goes on in the cache (single flight), so the next call profits."""
        tasks = {url: asyncio.ensure_future(self._one(url)) for url in urls}
        if not tasks:
            return {}
        await asyncio.wait(tasks.values(), timeout=deadline)
        lookup: Lookup = {}
        for url, task in tasks.items():
            if task.done():
                lookup[url] = task.result()
            else:
                task.cancel()
                lookup[url] = StirError(
                    SipStatus.BAD_IDENTITY_INFO,
                    f"credential not obtained within {deadline:.2f} s",
                    check=Check.CREDENTIAL,
                )
        return lookup

    async def _apply_pins(self, prepared: Prepared, lookup: Lookup) -> Candidates:
        """Mark self-signed credentials trusted by an explicit pin (``PIN``) or on first
        use (``TOFU``); the core accepts either for ``msec`` only.

        A first use is judged per identity the credential signs for — the PASSporTs'
        ``orig``, whether it matches From or P-Asserted-Identity — so a pinned number
        cannot be claimed through another header. Anonymous callers (RFC 8862 §4.2:
        one-time certificates) are never pinned. When the pin store cannot be read,
        nothing is trusted on first use (fail closed). Returns the TOFU pins to record
        once their PASSporT verifies."""
        candidates: Candidates = {}
        for url, found in lookup.items():
            if isinstance(found, StirError) or found.trust is not None:
                continue
            if not _self_signed(found.chain[0]):
                continue
            print_ = fingerprint(found.chain[0])
            if print_ in self.policy.pins:
                lookup[url] = replace(found, trust=Trust.PIN)
            elif self.policy.tofu:
                fresh = await self._first_use(prepared.origs(url), print_)
                if fresh is not None:
                    lookup[url] = replace(found, trust=Trust.TOFU)
                    candidates[url] = fresh
        return candidates

    async def _first_use(
        self, origs: tuple[PartyId, ...], print_: str
    ) -> list[tuple[str, str]] | None:
        """The pins to record when ``print_`` may be trusted on first use for every one
        of ``origs`` (known pins must match); None when it may not."""
        fresh: list[tuple[str, str]] = []
        for orig in origs:
            if orig.kind is IdKind.URI and orig.value.lower() == ANONYMOUS_URI:
                continue  # one-time credentials: nothing to be continuous with
            key = "pin:" + _key(f"{orig.kind}:{orig.value}")
            try:
                known = await self._store.get(key)
            except StoreUnavailable:
                return None
            if known is None:
                fresh.append((key, print_))
            elif known != print_.encode():
                return None
        return fresh if origs else None

    async def _remember(self, tofu: Candidates, checks: tuple[PassportCheck, ...]) -> None:
        """Pin the credential of each valid msec PASSporT that was trusted on first use."""
        for check in checks:
            if not (check.valid and check.ppt == Ppt.MSEC and check.trust is Trust.TOFU):
                continue
            for key, print_ in tofu.get(check.info or "", ()):
                await self._add(self._store, key, print_.encode(), 365 * 86400.0)

    async def _refuse_replays(
        self, checks: tuple[PassportCheck, ...], facts: SipFacts
    ) -> tuple[list[PassportCheck], ReplayStatus | None]:
        """RFC 8224 §12.1: a PASSporT seen for another Call-ID inside the window is refused;
        the same Call-ID again (a retry after 401/407, a retransmission) is not."""
        to_check = [c for c in checks if c.valid and c.replay_id is not None]
        if not to_check:
            return list(checks), None
        reason = "disabled" if not self.policy.replay else None
        if reason is None and not facts.call_id:
            reason = "no-call-id"
        if reason is not None:
            self.replay_stats.skip(reason, len(to_check))
            return list(checks), ReplayStatus(False, reason)
        call_id = replay_value(facts.call_id or "")
        out: list[PassportCheck] = []
        status = ReplayStatus(True)
        for check in checks:
            checked, outcome = await self._replay_check(check, call_id)
            out.append(checked)
            if outcome is not None:
                status = outcome
        return out, status

    async def _replay_check(
        self, check: PassportCheck, call_id: bytes
    ) -> tuple[PassportCheck, ReplayStatus | None]:
        if not check.valid or check.replay_id is None:
            return check, None
        window = float(self.policy.verify.max_age + self.policy.verify.max_skew)
        key = replay_key(check.replay_id)
        try:
            if await self._replay_store.add(key, call_id, window):
                self.replay_stats.checked += 1
                self._full_logged = False  # a later overflow is logged again
                return check, None
            seen = await self._replay_store.get(key)
        except StoreFull:
            return check, self._unchecked("store-full")
        except StoreUnavailable:
            return check, self._unchecked("store-unavailable")
        self.replay_stats.checked += 1
        if seen in (None, call_id):
            return check, None
        self.replay_stats.replayed += 1
        error = StirError(
            SipStatus.INVALID_IDENTITY_HEADER,
            "PASSporT replayed from another call (RFC 8224 §12.1)",
            check=Check.REPLAY,
        )
        return replace(check, error=error), None

    def _unchecked(self, reason: str) -> ReplayStatus:
        """The replay cache cannot take the entry: refuse the request (503, the PBX applies
        its fail policy) or let it through marked unchecked, as configured."""
        self.replay_stats.skip(reason)
        if not self._full_logged:
            self._full_logged = True
            log.error(
                "replay cache cannot record PASSporTs (%s): %s until it can "
                "([verify] replay_overflow = %s)",
                reason,
                "refusing verification with 503"
                if self.policy.replay_overflow is ReplayOverflow.REFUSE
                else "verdicts say replay unchecked",
                self.policy.replay_overflow.value,
            )
        if self.policy.replay_overflow is ReplayOverflow.REFUSE:
            raise StirError(
                SipStatus.SERVICE_UNAVAILABLE,
                f"replay cache cannot record PASSporTs ({reason}); not verifying",
                check=Check.CAPACITY,
            )
        return ReplayStatus(False, reason)

    @staticmethod
    async def _add(store: KeyValueStore, key: str, value: bytes, ttl: float) -> bool:
        try:
            return await store.add(key, value, ttl)
        except (StoreUnavailable, StoreFull):
            return False  # a pin not recorded: the next call is a first use again
