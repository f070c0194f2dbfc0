"""The in-process :class:`~stird.services.ports.CpsStore`: bounded, one process only.

Entries sit in per-number dicts; a heap ordered by expiry purges them as time passes, so
counts are always counts of live entries. Caps are checked and the entries inserted
without awaiting, so the check is atomic on the event loop.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from stird.services.ports import CpsAdmission, CpsCaps

_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class _Stored:
    blob: bytes
    expiry: float
    client: str


class MemoryCpsStore:
    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._by_tn: dict[str, dict[str, _Stored]] = {}
        self._heap: list[tuple[float, str, str]] = []  # (expiry, tn, id)
        self._per_client: Counter[str] = Counter()
        self._per_client_tn: Counter[tuple[str, str]] = Counter()
        self._count = 0

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
            self._decrement(self._per_client, stored.client)
            self._decrement(self._per_client_tn, (stored.client, tn))
            if not entries:
                del self._by_tn[tn]

    @staticmethod
    def _decrement(counter: Counter[_K], key: _K) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def _admission(self, tn: str, client: str, n: int, caps: CpsCaps) -> CpsAdmission:
        if len(self._by_tn.get(tn, ())) + n > caps.per_tn:
            return CpsAdmission.TN_FULL
        if self._per_client[client] + n > caps.per_client:
            return CpsAdmission.CLIENT_FULL
        if self._per_client_tn[(client, tn)] + n > caps.per_client_tn:
            return CpsAdmission.CLIENT_TN_FULL
        if self._count + n > self._max:
            return CpsAdmission.STORE_FULL
        return CpsAdmission.STORED

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
        admission = self._admission(tn, client, len(items), caps)
        if admission is not CpsAdmission.STORED:
            return admission
        entries, expiry = self._by_tn.setdefault(tn, {}), now + ttl
        for entry_id, blob in items:
            if entry_id in entries:
                continue
            entries[entry_id] = _Stored(blob, expiry, client)
            heapq.heappush(self._heap, (expiry, tn, entry_id))
            self._count += 1
            self._per_client[client] += 1
            self._per_client_tn[(client, tn)] += 1
        return admission

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        self._purge(now)
        return [(entry_id, s.blob) for entry_id, s in self._by_tn.get(tn, {}).items()]

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None:
        self._purge(now)
        stored = self._by_tn.get(tn, {}).get(entry_id)
        return None if stored is None else stored.blob
