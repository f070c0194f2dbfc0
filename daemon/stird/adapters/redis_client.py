"""The one Redis connection wrapper behind every Redis store (key/value and CPS).

A bounded, blocking connection pool (under a burst requests wait within ``timeout`` for a
free connection instead of each opening its own: redis-py's default pool is unbounded),
socket and connect timeouts, no client-side retries, and one overall deadline per call.
Any Redis error, socket error or timeout becomes
:class:`~stird.services.stores.StoreUnavailable` with a short, safe message; a write
refused because Redis is at ``maxmemory`` (``noeviction``) becomes
:class:`~stird.services.stores.StoreFull`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from stird.adapters.closing import AsyncClosing
from stird.services.stores import StoreFull, StoreUnavailable

_T = TypeVar("_T")

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def store_error(exc: BaseException) -> StoreUnavailable:
    """What a Redis error, socket error or timeout means to a store's caller: StoreFull
    for a write refused at ``maxmemory`` (``noeviction``), else StoreUnavailable."""
    if isinstance(exc, ResponseError):
        # maxmemory reached under noeviction: not stored (redis-py 5+ strips "OOM " and
        # raises OutOfMemoryError; older ones kept the prefix on a ResponseError)
        if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM"):
            return StoreFull(f"redis: OOM {exc}")
        return StoreUnavailable(f"redis: ResponseError: {exc}")
    return StoreUnavailable(f"redis: {type(exc).__name__}: {exc}")


class RedisClient(AsyncClosing):
    """One pool of at most ``max_connections``; every call bounded by ``timeout``."""

    def __init__(
        self, url: str = DEFAULT_URL, *, timeout: float = 0.5, max_connections: int = 16
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.timeout = timeout
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.redis = aioredis.Redis.from_pool(pool)

    async def call(self, operation: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.timeout):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise store_error(exc) from exc

    def script(self, source: str) -> AsyncScript:
        return self.redis.register_script(source)

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        return await self.call(script(keys=keys, args=args))

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers PING."""
        await self.call(self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()
