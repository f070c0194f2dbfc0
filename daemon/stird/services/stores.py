"""Errors shared by the key-value store adapters and the services that use them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from stird.services.ports import KeyValueStore

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The shared key-value store could not be reached, timed out or answered an error.

    Services treat it as "no shared state right now" and carry on locally."""


class StoreFull(StoreUnavailable):
    """A bounded store that never evicts a live entry (the replay cache, or Redis under
    ``noeviction``) is at its bound: nothing was stored. A kind of StoreUnavailable, so
    every caller that copes with a missing store copes with a full one; the replay check
    tells the two apart (RFC 8224 §12.1 checking cannot be done for this request)."""


@dataclass
class _Health:
    down_until: float = 0.0
    failures: int = 0


class FallbackStore:
    """A shared store (Redis) with a local one behind it: when the shared store fails,
    work goes on locally (counted in ``failures``) and the shared store is tried again
    after ``backoff`` seconds. Several instances then stop sharing replay and pin state
    until Redis is back — the signatures themselves are still checked."""

    def __init__(
        self,
        shared: KeyValueStore,
        local: KeyValueStore,
        *,
        backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared, self._local = shared, local
        self._backoff, self._clock = backoff, clock
        self._health = _Health()

    @property
    def shared(self) -> KeyValueStore:
        return self._shared

    @property
    def failures(self) -> int:
        return self._health.failures

    def beside(self, local: KeyValueStore) -> FallbackStore:
        """The same shared store (and its health: one outage, one backoff, one count)
        with another local store behind it — e.g. the replay cache's non-evicting one."""
        sibling = FallbackStore(self._shared, local, backoff=self._backoff, clock=self._clock)
        sibling._health = self._health
        return sibling

    def _use_shared(self) -> bool:
        return self._clock() >= self._health.down_until

    def _failed(self) -> None:
        self._health.failures += 1
        self._health.down_until = self._clock() + self._backoff
        log.warning("shared store unavailable; using the local store for %.0f s", self._backoff)

    async def get(self, key: str) -> bytes | None:
        if self._use_shared():
            try:
                return await self._shared.get(key)
            except StoreUnavailable:
                self._failed()
        return await self._local.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._mirror(key, value, ttl)
        if self._use_shared():
            try:
                await self._shared.set(key, value, ttl)
            except StoreUnavailable:
                self._failed()

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._use_shared():
            try:
                stored = await self._shared.add(key, value, ttl)
            except StoreFull:
                raise  # the shared store is up but full: a local entry would not be shared
            except StoreUnavailable:
                self._failed()
            else:
                if stored:
                    await self._mirror(key, value, ttl)
                return stored
        return await self._local.add(key, value, ttl)

    async def _mirror(self, key: str, value: bytes, ttl: float) -> None:
        """Keep a local copy of what the shared store took, for when it goes away; a full
        local store only loses the copy (the shared store holds the entry)."""
        with contextlib.suppress(StoreFull):
            await self._local.set(key, value, ttl)

    async def delete(self, key: str) -> None:
        await self._local.delete(key)
        if self._use_shared():
            try:
                await self._shared.delete(key)
            except StoreUnavailable:
                self._failed()

    async def close(self) -> None:
        closer = getattr(self._shared, "close", None)
        if closer is not None:
            await closer()
