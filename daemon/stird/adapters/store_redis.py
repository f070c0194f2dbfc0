"""The Redis :class:`~stird.services.ports.KeyValueStore`, shared by several stird instances.

Every operation goes through :class:`~stird.adapters.redis_client.RedisClient` (bounded
pool, timeouts, no retries, one deadline); any Redis error or timeout becomes
:class:`~stird.services.stores.StoreUnavailable`.
"""

from __future__ import annotations

import math

from stird.adapters.closing import AsyncClosing
from stird.adapters.redis_client import DEFAULT_URL, RedisClient
from stird.services.stores import StoreUnavailable


def _px(ttl: float) -> int:
    """TTL in whole milliseconds, at least 1 (Redis rejects PX 0)."""
    return max(1, math.ceil(ttl * 1000))


class RedisStore(AsyncClosing):
    """Keys are namespaced by ``prefix``; values are bytes; TTLs use ``SET … PX``.

    At most ``max_connections`` connections: under a burst, requests wait (within
    ``timeout``) for a free one instead of each opening its own, so a flood of calls
    cannot turn into a flood of Redis connections (redis-py's default pool is unbounded).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "stird:",
        timeout: float = 0.5,
        max_connections: int = 16,
    ) -> None:
        self._prefix = prefix
        self._client = RedisClient(url, timeout=timeout, max_connections=max_connections)
        self._redis, self._call = self._client.redis, self._client.call

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._prefix + key))
        if value is None or isinstance(value, bytes):
            return value
        raise StoreUnavailable(f"redis: unexpected reply type {type(value).__name__}")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set(self._prefix + key, value, px=_px(ttl)))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        stored = await self._call(self._redis.set(self._prefix + key, value, px=_px(ttl), nx=True))
        return bool(stored)

    async def delete(self, key: str) -> None:
        await self._call(self._redis.delete(self._prefix + key))

    async def eviction_policy(self) -> str | None:
        """The server's ``maxmemory-policy`` (None when CONFIG is not allowed). Under any
        policy but ``noeviction`` Redis may drop a live replay entry when memory runs out —
        a replay accepted; under ``noeviction`` a full Redis refuses the write (StoreFull)."""
        try:
            found = await self._call(self._redis.config_get("maxmemory-policy"))
        except StoreUnavailable:
            return None
        value = found.get("maxmemory-policy") if isinstance(found, dict) else None
        return value.decode() if isinstance(value, bytes) else value

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers PING."""
        await self._client.ping()

    async def close(self) -> None:
        await self._client.close()
