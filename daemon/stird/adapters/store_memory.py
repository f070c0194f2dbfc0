"""The in-process :class:`~stird.services.ports.KeyValueStore`: bounded, TTL by a clock.

Entries live in a dict; a heap ordered by expiry (with lazy deletion) finds the expired
entries and, when the store is full, the entry that would expire soonest — O(log n) per
operation. ``add`` is atomic because the event loop runs one coroutine at a time and no
method awaits.

One ``(expiry, key, value)`` tuple per entry is both the dict's value and the heap's item
(a heap item is live while the dict still maps its key to that very tuple): ~290 bytes
per replay-cache entry instead of ~370 with a separate record and sequence number.
"""

from __future__ import annotations

import heapq

from stird.services.ports import Clock, system_clock
from stird.services.stores import StoreFull

MIN_TTL = 0.001  # same floor as Redis PX (1 ms)
_COMPACT_SLACK = 64  # rebuild the heap once stale heap items outnumber live entries

_Entry = tuple[float, str, bytes]  # (expiry, key, value)


class MemoryStore:
    """A bounded key-value store with per-entry time to live (single process only).

    When full, a new key evicts the live entry that expires soonest — or, with
    ``evict=False`` (the replay cache, whose entries must outlive their window: an
    evicted entry is a replay accepted), raises :class:`StoreFull` and stores nothing."""

    def __init__(
        self, max_entries: int = 100_000, clock: Clock = system_clock, *, evict: bool = True
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._evict = evict
        self._clock = clock
        self._data: dict[str, _Entry] = {}  # key → (expiry, key, value)
        self._heap: list[_Entry] = []  # the same tuples by expiry; may hold stale ones

    def __len__(self) -> int:
        self._purge(self._clock())
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._data[key]
            return None
        return item[2]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._put(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        item = self._data.get(key)
        if item is not None and item[0] > self._clock():
            return False
        self._put(key, value, ttl)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def _put(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._purge(now)
        if key not in self._data and len(self._data) >= self._max:
            if not self._evict:
                raise StoreFull(f"{self._max} live entries")
            self._evict_one()
        item = (now + max(ttl, MIN_TTL), key, value)
        self._data[key] = item
        heapq.heappush(self._heap, item)
        if len(self._heap) > 2 * len(self._data) + _COMPACT_SLACK:
            self._compact()

    def _purge(self, now: float) -> None:
        """Drop every entry whose expiry has passed (amortised: each is popped once)."""
        heap, data = self._heap, self._data
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if data.get(item[1]) is item:
                del data[item[1]]

    def _evict_one(self) -> None:
        """Drop the live entry that expires soonest."""
        while self._heap:
            item = heapq.heappop(self._heap)
            if self._data.get(item[1]) is item:
                del self._data[item[1]]
                return

    def _compact(self) -> None:
        self._heap = list(self._data.values())
        heapq.heapify(self._heap)
