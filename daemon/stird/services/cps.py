"""The Call Placement Service (RFC 8816 §6, §7.5, §9): store and retrieve encrypted
PASSporTs by called number.

Anyone may store (§6.1: the entries are encrypted; no credential is asked in this
version); flood control counts live entries per number, per client and per client and
number (§7.5) atomically in the :class:`~stird.services.ports.CpsStore`. Entries age out
after the freshness window (60 s by default, §7.5). Every retrieval returns the live
entries plus at least one fresh dummy of the same size and form, shuffled (§6.2); dummies
mirror the suite and padding bucket of a real entry, or of the number's published keys.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from stird.core import cps, oob
from stird.core.errors import StirError, bad_request
from stird.core.oob import OobSuite, SealedEntry
from stird.services.ports import Clock, CpsAdmission, CpsCaps, CpsStore, system_clock
from stird.services.stores import StoreUnavailable

log = logging.getLogger(__name__)

#: ``suites(tn)``: the suites of the keys published for ``tn`` (e.g. KeyDirectory.suites).
SuiteLookup = Callable[[str], Awaitable[frozenset[OobSuite]]]


@dataclass(frozen=True, slots=True)
class CpsPolicy:
    ttl: float = 60.0  # RFC 8816 §7.5: no longer than the iat freshness window
    caps: CpsCaps = field(default_factory=CpsCaps)
    max_batch: int = cps.MAX_BATCH
    min_dummies: int = 1  # RFC 8816 §6.2: at least one per retrieval
    max_dummies: int = 3


class CpsRefused(Exception):
    """A storage request over a cap (429) or into a full store (503)."""

    def __init__(self, admission: CpsAdmission) -> None:
        super().__init__(admission.value)
        self.admission = admission


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
        clock: Clock = system_clock,
        rng: random.Random | None = None,
    ) -> None:
        self._store, self.policy = store, policy or CpsPolicy()
        if self.policy.min_dummies < 1 or self.policy.max_dummies < self.policy.min_dummies:
            raise ValueError("need 1 <= min_dummies <= max_dummies (RFC 8816 §6.2)")
        self._suites, self._clock = suites, clock
        self._rng = rng or random.SystemRandom()
        self.stored = 0
        self.refused = 0

    def _bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    async def store(self, tn: str, entries: Sequence[SealedEntry], client: str) -> tuple[str, ...]:
        """Store ``entries`` for ``tn`` (all or none); returns their ids. Raises
        :class:`CpsRefused` over a cap, StoreUnavailable when the backend fails."""
        tn = cps.parse_tn(tn)
        if not 1 <= len(entries) <= self.policy.max_batch:
            raise bad_request(f"store 1 to {self.policy.max_batch} entries at once")
        items = [(cps.new_entry_id(self._bytes), e.to_bytes()) for e in entries]
        admission = await self._store.add(
            tn, items, client=client, now=self._clock(), ttl=self.policy.ttl,
            caps=self.policy.caps,
        )  # fmt: skip
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
        return out

    async def retrieve(self, tn: str) -> list[CpsItem]:
        """Live entries for ``tn`` plus fresh dummies, in random order (RFC 8816 §6.2)."""
        tn = cps.parse_tn(tn)
        real = await self._real(tn)
        count = self._rng.randint(self.policy.min_dummies, self.policy.max_dummies)
        items = real + await self._dummies(tn, real, count)
        self._rng.shuffle(items)
        return items

    async def get(self, tn: str, entry_id: str) -> SealedEntry:
        """One entry; an unknown or aged-out id yields a fresh dummy (ids cannot be probed)."""
        tn, entry_id = cps.parse_tn(tn), cps.parse_entry_id(entry_id)
        blob = await self._store.entry(tn, entry_id, self._clock())
        if blob is not None:
            try:
                return oob.entry_from_bytes(blob)
            except StirError:
                log.warning("replacing a malformed stored CPS entry for %s", tn)
        return (await self._dummies(tn, (), 1))[0].entry
