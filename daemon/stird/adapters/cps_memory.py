"""The in-process :class:`~stird.services.ports.CpsStore`: bounded, one process only.

Entries sit in per-number dicts; a heap ordered by expiry purges them as time passes, so
counts are always counts of live entries. The store is bounded in entries AND in bytes
(:func:`entry_cost`: the blob, its id and a fixed overhead per entry); each pool (anonymous,
signed) is counted apart per number and in bytes. Caps are checked and the entries inserted
without awaiting, so the check is atomic on the event loop.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from stird.services.ports import CpsAdmission, CpsCaps, cps_admission

_K = TypeVar("_K")

ENTRY_OVERHEAD = 256  # bytes of bookkeeping per entry (dict slots, heap item, counters)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def entry_cost(entry_id: str, blob: bytes) -> int:
    """The bytes an entry is accounted for (deterministic, shared with the Redis store)."""
    return ENTRY_OVERHEAD + len(entry_id) + len(blob)


@dataclass(frozen=True, slots=True)
class _Stored:
    blob: bytes
    expiry: float
    client: str
    pool: str
    cost: int


@dataclass(frozen=True, slots=True)
class _Usage:
    """:class:`~stird.services.ports.CpsUsage` of a memory store, for one request."""

    store: MemoryCpsStore
    number: str
    owner: str  # the client
    pool: str

    def tn_pool(self) -> int:
        return self.store._per_tn_pool[(self.number, self.pool)]

    def client(self) -> int:
        return self.store._per_client[self.owner]

    def client_tn(self) -> int:
        return self.store._per_client_tn[(self.owner, self.number)]

    def totals(self) -> tuple[int, int]:
        return len(self.store), self.store.bytes

    def pool_bytes(self) -> int:
        return self.store._pool_bytes[self.pool]


class MemoryCpsStore:
    def __init__(self, max_entries: int = 100_000, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self._max, self.max_bytes = max_entries, max_bytes
        self._by_tn: dict[str, dict[str, _Stored]] = {}
        self._heap: list[tuple[float, str, str]] = []  # (expiry, tn, id)
        self._per_client: Counter[str] = Counter()
        self._per_client_tn: Counter[tuple[str, str]] = Counter()
        self._per_tn_pool: Counter[tuple[str, str]] = Counter()
        self._pool_bytes: Counter[str] = Counter()
        self._count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self._count

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, tn, entry_id = heapq.heappop(self._heap)
            entries = self._by_tn.get(tn, {})
            stored = entries.pop(entry_id, None)
            if stored is None:
                continue
            self._count -= 1
            self.bytes -= stored.cost
            self._decrement(self._pool_bytes, stored.pool, stored.cost)
            self._decrement(self._per_client, stored.client)
            self._decrement(self._per_client_tn, (stored.client, tn))
            self._decrement(self._per_tn_pool, (tn, stored.pool))
            if not entries:
                del self._by_tn[tn]

    @staticmethod
    def _decrement(counter: Counter[_K], key: _K, by: int = 1) -> None:
        counter[key] -= by
        if counter[key] <= 0:
            del counter[key]

    def _admission(self, tn: str, client: str, n: int, size: int, caps: CpsCaps) -> CpsAdmission:
        usage = _Usage(self, tn, client, caps.pool)
        return cps_admission(usage, n, size, caps, max_entries=self._max, max_bytes=self.max_bytes)

    async def add(
        self,
        tn: str,
        items: Sequence[tuple[str, bytes]],
        *,
        client: str,
        now: float,
        ttl: float,
        caps: CpsCaps,
    ) -> CpsAdmission:
        self._purge(now)
        entries = self._by_tn.get(tn, {})
        fresh = {entry_id: blob for entry_id, blob in items if entry_id not in entries}
        size = sum(entry_cost(entry_id, blob) for entry_id, blob in fresh.items())
        admission = self._admission(tn, client, len(fresh), size, caps)
        if admission is not CpsAdmission.STORED:
            return admission
        entries, expiry = self._by_tn.setdefault(tn, {}), now + ttl
        for entry_id, blob in fresh.items():
            cost = entry_cost(entry_id, blob)
            entries[entry_id] = _Stored(blob, expiry, client, caps.pool, cost)
            heapq.heappush(self._heap, (expiry, tn, entry_id))
            self._count += 1
            self.bytes += cost
            self._pool_bytes[caps.pool] += cost
            self._per_client[client] += 1
            self._per_client_tn[(client, tn)] += 1
            self._per_tn_pool[(tn, caps.pool)] += 1
        return admission

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        self._purge(now)
        return [(entry_id, s.blob) for entry_id, s in self._by_tn.get(tn, {}).items()]

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None:
        self._purge(now)
        stored = self._by_tn.get(tn, {}).get(entry_id)
        return None if stored is None else stored.blob
