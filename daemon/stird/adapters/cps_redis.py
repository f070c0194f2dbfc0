"""The Redis :class:`~stird.services.ports.CpsStore`: several CPS servers share one store.

Layout (all under ``prefix``): per called number a sorted set ``t:{tn}:z`` (entry id →
expiry in ms) and a hash ``t:{tn}:h`` (entry id → blob); per client a sorted set
``c:{client}`` ("tn id" → expiry) and per client and number ``ct:{client}:{tn}``. Each
operation is one Lua script, so purging aged-out entries, checking the caps and inserting
happen atomically across servers. Keys carry a PEXPIRE of the freshness window, so Redis
frees idle numbers by itself. Expiries use the servers' clocks (keep them in NTP sync);
needs a standalone Redis or one primary (the scripts touch keys of several hash slots).

Like :class:`~stird.adapters.store_redis.RedisStore`, every call is bounded by
``timeout`` and any failure becomes :class:`~stird.services.stores.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from stird.services.ports import CpsAdmission, CpsCaps
from stird.services.stores import StoreUnavailable

_PURGE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
"""

# KEYS: tn_z tn_h client_z client_tn_z
# ARGV: now_ms expiry_ms ttl_ms per_tn per_client per_client_tn tn (id blob)...
_ADD = (
    _PURGE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
local n = (#ARGV - 7) / 2
if redis.call('ZCARD', KEYS[1]) + n > tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[3]) + n > tonumber(ARGV[5]) then return 2 end
if redis.call('ZCARD', KEYS[4]) + n > tonumber(ARGV[6]) then return 3 end
for i = 8, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7] .. ' ' .. ARGV[i])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[i])
end
local ttl = tonumber(ARGV[3])
for i = 1, 4 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 0
"""
)

# KEYS: tn_z tn_h   ARGV: now_ms limit   → id, blob, id, blob...
_LIST = (
    _PURGE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
if #ids == 0 then return {} end
local blobs = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  if blobs[i] then
    out[#out + 1] = id
    out[#out + 1] = blobs[i]
  end
end
return out
"""
)

# KEYS: tn_z tn_h   ARGV: now_ms id
_GET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not score or tonumber(score) <= tonumber(ARGV[1]) then return false end
return redis.call('HGET', KEYS[2], ARGV[2])
"""

_REFUSALS = {1: CpsAdmission.TN_FULL, 2: CpsAdmission.CLIENT_FULL,
             3: CpsAdmission.CLIENT_TN_FULL}  # fmt: skip
MAX_LIST = 1000


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


class RedisCpsStore:
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "stird:cps:",
        timeout: float = 0.5,
    ) -> None:
        self._prefix, self._timeout = prefix, timeout
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._add = self._redis.register_script(_ADD)
        self._list = self._redis.register_script(_LIST)
        self._get = self._redis.register_script(_GET)

    async def _call(self, operation: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    def _tn_keys(self, tn: str) -> list[str]:
        return [f"{self._prefix}t:{tn}:z", f"{self._prefix}t:{tn}:h"]

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
        keys = [*self._tn_keys(tn), f"{self._prefix}c:{client}",
                f"{self._prefix}ct:{client}:{tn}"]  # fmt: skip
        args: list[Any] = [_ms(now), _ms(now + ttl), max(1, _ms(ttl)),
                           caps.per_tn, caps.per_client, caps.per_client_tn, tn]  # fmt: skip
        for entry_id, blob in items:
            args += [entry_id, blob]
        code = int(await self._call(self._add(keys=keys, args=args)))
        return _REFUSALS.get(code, CpsAdmission.STORED)

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        flat = await self._call(self._list(keys=self._tn_keys(tn), args=[_ms(now), MAX_LIST]))
        return [(bytes(flat[i]).decode("ascii"), bytes(flat[i + 1]))
                for i in range(0, len(flat) - 1, 2)]  # fmt: skip

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None:
        blob = await self._call(self._get(keys=self._tn_keys(tn), args=[_ms(now), entry_id]))
        return None if blob is None else bytes(blob)

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
