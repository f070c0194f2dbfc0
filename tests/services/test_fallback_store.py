"""Redis down mid-run: the local store takes over, failures are counted, and the
shared store is used again after the back-off."""

from __future__ import annotations

from stird.adapters.store_memory import MemoryStore
from stird.services.stores import FallbackStore, StoreUnavailable


class Flaky:
    def __init__(self) -> None:
        self.down = False
        self.data: dict[str, bytes] = {}

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        self.data[key] = value

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        self._check()
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str) -> None:
        self._check()
        self.data.pop(key, None)


async def test_falls_back_and_recovers() -> None:
    now = [0.0]
    shared = Flaky()
    store = FallbackStore(
        shared, MemoryStore(clock=lambda: now[0]), backoff=5, clock=lambda: now[0]
    )
    assert await store.add("a", b"1", 60) is True
    assert await store.add("a", b"2", 60) is False  # answered by the shared store
    shared.down = True
    assert await store.get("a") == b"1"  # the local copy
    assert store.failures == 1
    assert await store.add("b", b"1", 60) is True  # locally, no new attempt during back-off
    assert store.failures == 1
    shared.down = False
    now[0] = 6.0
    assert await store.add("b", b"x", 60) is True  # shared again; it never saw "b"
    assert shared.data["b"] == b"x"
