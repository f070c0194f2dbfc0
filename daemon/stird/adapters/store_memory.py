"""The in-process :class:`~stird.services.ports.KeyValueStore`: bounded, TTL by a clock.

Entries live in a dict; a heap ordered by expiry (with lazy deletion) finds the expired
entries and, when the store is full, the entry that would expire soonest — O(log n) per
operation. ``add`` is atomic because the event loop runs one coroutine at a time and no
method awaits.
"""

from __future__ import annotations

import heapq
import itertools

from stird.services.ports import Clock, system_clock

MIN_TTL = 0.001  # same floor as Redis PX (1 ms)
_COMPACT_SLACK = 64  # rebuild the heap once stale heap items outnumber live entries


class MemoryStore:
    """A bounded key-value store with per-entry time to live (single process only)."""

    def __init__(self, max_entries: int = 100_000, clock: Clock = system_clock) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        self._data: dict[str, tuple[bytes, float, int]] = {}  # key → (value, expiry, seq)
        self._heap: list[tuple[float, int, str]] = []  # (expiry, seq, key), may hold stale items
        self._seq = itertools.count()

    def __len__(self) -> int:
        self._purge(self._clock())
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._data[key]
            return None
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._put(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        item = self._data.get(key)
        if item is not None and item[1] > self._clock():
            return False
        self._put(key, value, ttl)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def _put(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._purge(now)
        if key not in self._data and len(self._data) >= self._max:
            self._evict_one()
        expiry, seq = now + max(ttl, MIN_TTL), next(self._seq)
        self._data[key] = (value, expiry, seq)
        heapq.heappush(self._heap, (expiry, seq, key))
        if len(self._heap) > 2 * len(self._data) + _COMPACT_SLACK:
            self._compact()

    def _live(self, seq: int, key: str) -> bool:
        item = self._data.get(key)
        return item is not None and item[2] == seq

    def _purge(self, now: float) -> None:
        """Drop every entry whose expiry has passed (amortised: each is popped once)."""
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            if self._live(seq, key):
                del self._data[key]

    def _evict_one(self) -> None:
        """Drop the live entry that expires soonest."""
        while self._heap:
            _, seq, key = heapq.heappop(self._heap)
            if self._live(seq, key):
                del self._data[key]
                return

    def _compact(self) -> None:
        self._heap = [(exp, seq, key) for key, (_, exp, seq) in self._data.items()]
        heapq.heapify(self._heap)
