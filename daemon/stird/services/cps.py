"""The Call Placement Service (RFC 8816 §6, §7.5, §9): store and retrieve encrypted
PASSporTs by called number.

Anyone may store (§6.1: the entries are encrypted); flood control counts live entries per
number, per client and per client and number (§7.5) atomically in the
:class:`~stird.services.ports.CpsStore`. A store signed by a trusted STIR credential
(:func:`stird.core.cps.check_store_token`, the trust of key publications) is counted in a
pool of its own per number, under the signer's identity: no crowd of anonymous addresses
can lock a number's legitimate publisher out, and anonymous storers together hold at most
``caps.pool_bytes`` of the store. Entries age out after the freshness window (60 s by
default, §7.5). Every retrieval returns the live entries plus at least one fresh dummy of
the same size and form, shuffled (§6.2); dummies mirror the suite and padding bucket of a
real entry, or of the number's published keys. Each dummy is a real HPKE seal, so dummies
draw on a budget of seals per second: past it retrievals are refused (503) rather than
served with fewer decoys.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from stird.core import cps, oob
from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.oob import OobSuite, SealedEntry
from stird.core.oobkeys import PublicationPolicy
from stird.services.ports import (
    Clock,
    CpsAdmission,
    CpsCaps,
    CpsStore,
    KeyValueStore,
    system_clock,
)
from stird.services.stores import StoreUnavailable

log = logging.getLogger(__name__)

#: ``suites(tn)``: the suites of the keys published for ``tn`` (e.g. KeyDirectory.suites).
SuiteLookup = Callable[[str], Awaitable[frozenset[OobSuite]]]


ANONYMOUS_BYTES = 48 * 1024 * 1024  # of the stores' 64 MiB: the rest is for signed stores


def _anonymous_caps() -> CpsCaps:
    return CpsCaps(pool_bytes=ANONYMOUS_BYTES)


def _signed_caps() -> CpsCaps:
    # one carrier legitimately sends a call centre many calls a minute
    return CpsCaps(per_tn=100, per_client=10_000, per_client_tn=100, pool="signed")


@dataclass(frozen=True, slots=True)
class CpsPolicy:
    ttl: float = 60.0  # RFC 8816 §7.5: no longer than the iat freshness window
    caps: CpsCaps = field(default_factory=_anonymous_caps)  # anonymous storers
    signed_caps: CpsCaps = field(default_factory=_signed_caps)  # per signing credential
    max_batch: int = cps.MAX_BATCH
    min_dummies: int = 1  # RFC 8816 §6.2: at least one per retrieval
    max_dummies: int = 3
    seals_per_second: float = 1000.0  # decoy HPKE seals (~0.13 ms each with X25519)
    seal_burst: float = 200.0


class CpsRefused(Exception):
    """A storage request over a cap (429) or into a full store (503)."""

    def __init__(self, admission: CpsAdmission) -> None:
        super().__init__(admission.value)
        self.admission = admission


class CpsBusy(Exception):
    """The CPS's own budget is spent (decoy seals, request rate, a late event loop):
    answer 429/503 with ``Retry-After: retry_after``."""

    def __init__(self, reason: str, retry_after: float, status: int = 503) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True, slots=True)
class CpsItem:
    id: str
    entry: SealedEntry


class CpsService:
    def __init__(
        self,
        store: CpsStore,
        policy: CpsPolicy | None = None,
        *,
        suites: SuiteLookup | None = None,
        signers: PublicationPolicy | None = None,
        replays: KeyValueStore | None = None,
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        self._store, self.policy = store, policy or CpsPolicy()
        if self.policy.min_dummies < 1 or self.policy.max_dummies < self.policy.min_dummies:
            raise ValueError("need 1 <= min_dummies <= max_dummies (RFC 8816 §6.2)")
        self._suites, self._signers, self._clock = suites, signers, clock
        self._rng = rng or random.SystemRandom()
        self._seals = cps.RateTable(self.policy.seals_per_second, self.policy.seal_burst, 1)
        if signers is not None and replays is None:
            raise ValueError("signed stores need a replay store for their jtis")
        self._replays = replays
        self.stored = 0
        self.refused = 0
        self.busy = 0  # retrievals refused for want of seal budget
        self.seals = 0  # decoy seals made

    async def authenticate(self, token: str, tn: str, body: bytes) -> str:
        """The signer of a signed store (its credential's key hash); raises StirError (400
        malformed, 403 untrusted, stale, replayed or not for this number and body; 503
        when the replay store cannot say whether the token was seen)."""
        if self._signers is None or self._replays is None:
            raise StirError(SipStatus.FORBIDDEN, "this CPS accepts no signed stores",
                            check=Check.TRUST)  # fmt: skip
        now = self._clock()
        signed = cps.check_store_token(token, cps.parse_tn(tn), body, self._signers, int(now))
        await self._remember_jti(self._replays, signed, now)
        return signed.signer

    @staticmethod
    async def _remember_jti(replays: KeyValueStore, signed: cps.StoreSigner, now: float) -> None:
        """Each (signer, jti) once while its token is fresh, in the store every CPS worker
        and instance shares (the daemon's replay cache): a token replayed on another worker
        or another host is refused like one replayed here. Fails closed (503)."""
        digest = hashlib.sha256(f"{signed.signer}\0{signed.jti}".encode()).hexdigest()
        ttl = signed.iat + 2 * cps.STORE_TOKEN_SKEW + 1 - now
        try:
            fresh = await replays.add(f"cps-jti:{digest}", b"1", max(ttl, 1.0))
        except StoreUnavailable as exc:
            raise StirError(SipStatus.SERVICE_UNAVAILABLE, "store token replay check unavailable",
                            check=Check.FRESHNESS) from exc  # fmt: skip
        if not fresh:
            raise StirError(SipStatus.FORBIDDEN, "store token replayed", check=Check.FRESHNESS)

    def _bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    async def store(
        self, tn: str, entries: Sequence[SealedEntry], client: str, signer: str | None = None
    ) -> tuple[str, ...]:
        """Store ``entries`` for ``tn`` (all or none); returns their ids. ``signer`` (from
        :meth:`authenticate`) stores in the signed pool under its own quota, else
        ``client`` (an address) in the anonymous one. Raises :class:`CpsRefused` over a
        cap, StoreUnavailable when the backend fails."""
        tn = cps.parse_tn(tn)
        if not 1 <= len(entries) <= self.policy.max_batch:
            raise bad_request(f"store 1 to {self.policy.max_batch} entries at once")
        items = [(cps.new_entry_id(self._bytes), e.to_bytes()) for e in entries]
        if signer is not None:
            client, caps = f"signer:{signer}", self.policy.signed_caps
        else:
            client, caps = f"addr:{client}", self.policy.caps
        admission = await self._store.add(
            tn, items, client=client, now=self._clock(), ttl=self.policy.ttl, caps=caps
        )
        if admission is not CpsAdmission.STORED:
            self.refused += 1
            log.info("CPS refused %d entr(ies) for %s from %s: %s",
                     len(items), tn, client, admission.value)  # fmt: skip
            raise CpsRefused(admission)
        self.stored += len(items)
        return tuple(entry_id for entry_id, _ in items)

    async def _real(self, tn: str) -> list[CpsItem]:
        out = []
        for entry_id, blob in await self._store.entries(tn, self._clock()):
            try:
                out.append(CpsItem(entry_id, oob.entry_from_bytes(blob)))
            except StirError:
                log.warning("skipping a malformed stored CPS entry for %s", tn)
        return out

    async def _known_suites(self, tn: str) -> list[OobSuite]:
        """Suites of the keys published for ``tn``; a directory failure must not cost the
        retrieval, so it falls back to the default suite."""
        if self._suites is None:
            return []
        try:
            return sorted(await self._suites(tn))
        except (StirError, StoreUnavailable) as exc:
            log.warning("key directory unavailable for dummy profiles: %s", exc)
            return []

    def _budget(self, count: int) -> None:
        """Take ``count`` decoy seals from the budget, or refuse the retrieval (503)."""
        wait = self._seals.take("seals", self._clock(), count)
        if wait:
            self.busy += 1
            raise CpsBusy("decoy budget spent: try again later", wait)
        self.seals += count

    async def _dummies(self, tn: str, real: Sequence[CpsItem], count: int) -> list[CpsItem]:
        """Dummies imitating (suite, bucket) of random real entries, else the TN's keys."""
        known = [] if real else await self._known_suites(tn)
        out = []
        for _ in range(count):
            if real:
                model = self._rng.choice(real).entry
                suite, bucket = model.suite, model.bucket
            else:
                suite = self._rng.choice(known) if known else oob.DEFAULT_SUITE
                bucket = oob.BUCKETS[0]
            entry = oob.dummy(bucket, self._bytes, suite)
            out.append(CpsItem(cps.new_entry_id(self._bytes), entry))
            # each seal is ~0.13 ms of CPU: let sign/verify run between them, so that a
            # burst of flood retrievals ready in one loop pass does not delay them all
            await asyncio.sleep(0)
        return out

    async def retrieve(self, tn: str) -> list[CpsItem]:
        """Live entries for ``tn`` plus fresh dummies, in random order (RFC 8816 §6.2)."""
        tn = cps.parse_tn(tn)
        count = self._rng.randint(self.policy.min_dummies, self.policy.max_dummies)
        self._budget(count)
        real = await self._real(tn)
        items = real + await self._dummies(tn, real, count)
        self._rng.shuffle(items)
        return items

    async def get(self, tn: str, entry_id: str) -> SealedEntry:
        """One entry; an unknown or aged-out id yields a fresh dummy (ids cannot be probed)."""
        tn, entry_id = cps.parse_tn(tn), cps.parse_entry_id(entry_id)
        self._budget(1)  # whether or not the id is known: a refusal must not tell
        blob = await self._store.entry(tn, entry_id, self._clock())
        if blob is not None:
            try:
                return oob.entry_from_bytes(blob)
            except StirError:
                log.warning("replacing a malformed stored CPS entry for %s", tn)
        return (await self._dummies(tn, (), 1))[0].entry
