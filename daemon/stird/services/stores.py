"""Errors shared by the key-value store adapters and the services that use them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stird.services.ports import KeyValueStore

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The shared key-value store could not be reached, timed out or answered an error.

    Services treat it as "no shared state right now" and carry on locally."""


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
        self._down_until = 0.0
        self.failures = 0

    def _use_shared(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self) -> None:
        self.failures += 1
        self._down_until = self._clock() + self._backoff
        log.warning("shared store unavailable; using the local store for %.0f s", self._backoff)

    async def get(self, key: str) -> bytes | None:
        if self._use_shared():
            try:
                return await self._shared.get(key)
            except StoreUnavailable:
                self._failed()
        return await self._local.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._local.set(key, value, ttl)
        if self._use_shared():
            try:
                await self._shared.set(key, value, ttl)
            except StoreUnavailable:
                self._failed()

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._use_shared():
            try:
                stored = await self._shared.add(key, value, ttl)
            except StoreUnavailable:
                self._failed()
            else:
                if stored:
                    await self._local.set(key, value, ttl)
                return stored
        return await self._local.add(key, value, ttl)

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
