"""The Redis :class:`~stird.services.ports.KeyValueStore`, shared by several stird instances.

Every operation goes through :class:`~stird.adapters.redis_client.RedisClient` (bounded
pool, timeouts, no retries, one deadline); any Redis error or timeout becomes
:class:`~stird.services.stores.StoreUnavailable` (StoreFull when Redis is at
``maxmemory`` under ``noeviction``).

:meth:`RedisStore.add` — the replay check's ``SET NX``, one per verified PASSporT — is
batched: the adds made during one event-loop tick leave together, in one
``pipeline(transaction=False)`` (one round trip, one connection, and about half the
client CPU per add with 50 at once; docs/PERFORMANCE.md "Workers"). Each keeps its own
answer and its own error, as if sent alone.
"""

from __future__ import annotations

import asyncio
import math
from typing import NamedTuple

from redis.exceptions import RedisError

from stird.adapters.closing import AsyncClosing
from stird.adapters.redis_client import DEFAULT_URL, RedisClient, store_error
from stird.services.stores import StoreUnavailable

#: Adds per pipeline; more queued in one tick go in several pipelines (on several pooled
#: connections), so one reply stays bounded.
MAX_BATCH = 128
_LOST = object()  # no reply for this add


def _px(ttl: float) -> int:
    """TTL in whole milliseconds, at least 1 (Redis rejects PX 0)."""
    return max(1, math.ceil(ttl * 1000))


class _Add(NamedTuple):
    key: str
    value: bytes
    px: int
    done: asyncio.Future[bool]


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
        self._queued: list[_Add] = []  # the adds of this tick, sent at its end
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._prefix + key))
        if value is None or isinstance(value, bytes):
            return value
        raise StoreUnavailable(f"redis: unexpected reply type {type(value).__name__}")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set(self._prefix + key, value, px=_px(ttl)))

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """``SET key value PX ttl NX``, sent with the other adds of this event-loop tick:
        the first one waits for the others to join (one turn of the loop), then sends
        them all in one pipeline (a task of its own, so that a caller cancelled meanwhile
        takes no one else's answer with it), or its own SET alone, as it would unbatched."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        mine = _Add(self._prefix + key, value, _px(ttl), done)
        self._queued.append(mine)
        if len(self._queued) > 1:
            return await done  # the first add of this tick sends it
        try:
            await asyncio.sleep(0)  # the other adds of this tick join
        except asyncio.CancelledError:
            done.cancel()
            self._flush()  # the others still go
            raise
        if self._queued == [mine]:  # alone: one plain SET NX
            self._queued = []
            return bool(await self._call(self._redis.set(mine.key, value, px=mine.px, nx=True)))
        self._flush()  # (close() may have sent them already)
        return await done

    def _flush(self) -> None:
        """Send what is queued, in pipelines of at most MAX_BATCH, each in a task."""
        queued, self._queued = self._queued, []
        for start in range(0, len(queued), MAX_BATCH):
            task = asyncio.create_task(self._send(queued[start : start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Add]) -> None:
        """One pipeline; every caller gets its reply, or its error (StoreFull for an OOM
        refusal, StoreUnavailable for the rest) — also when this task is cancelled while
        sending."""
        replies: list[object] = []
        try:
            pipe = self._redis.pipeline(transaction=False)
            for add in batch:
                pipe.set(add.key, add.value, px=add.px, nx=True)
            async with asyncio.timeout(self._client.timeout):
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            replies = [exc] * len(batch)
        finally:
            if len(replies) != len(batch):  # cancelled, or a broken reply
                replies = [_LOST] * len(batch)
            for add, reply in zip(batch, replies, strict=True):
                _answer(add.done, reply)

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
        """Send the adds still queued and wait for those in flight (each pipeline is
        bounded by ``timeout``), then close the pool."""
        self._flush()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.close()


def _answer(done: asyncio.Future[bool], reply: object) -> None:
    """Settle one caller's add: stored (True) or not (None), or the error."""
    if done.done():  # the caller gave up (cancelled)
        return
    if reply is _LOST:
        done.set_exception(StoreUnavailable("redis: no reply to the pipeline"))
    elif isinstance(reply, BaseException):
        error = store_error(reply)
        error.__cause__ = reply
        done.set_exception(error)
    else:
        done.set_result(bool(reply))
