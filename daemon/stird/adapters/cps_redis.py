"""The Redis :class:`~stird.services.ports.CpsStore`: several CPS servers share one store.

Layout (all under ``prefix``): per called number a sorted set ``t:{tn}:z`` (entry id →
expiry in ms), a hash ``t:{tn}:h`` (entry id → blob) and per pool a sorted set
``t:{tn}:p:{pool}``; per client a sorted set ``c:{client}`` ("tn id" → expiry) and per
client and number ``ct:{client}:{tn}``; across the store a sorted set ``g:z`` ("pool cost
tn id" → expiry) with byte counters ``g:b`` (all) and ``g:b:{pool}``, so the store is
bounded in entries and in bytes (:func:`~stird.adapters.cps_memory.entry_cost`) like the
in-memory one. Each operation is one Lua script, so purging aged-out entries, checking the
caps and inserting happen atomically across servers. Keys carry a PEXPIRE of the freshness
window, so Redis frees idle numbers by itself. Expiries use the servers' clocks (keep them
in NTP sync); needs a standalone Redis or one primary (the scripts touch keys of several
hash slots).

Connections, timeouts and errors are :class:`~stird.adapters.redis_client.RedisClient`'s,
shared with :class:`~stird.adapters.store_redis.RedisStore`: any failure becomes
:class:`~stird.services.stores.StoreUnavailable`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stird.adapters.closing import AsyncClosing
from stird.adapters.cps_memory import DEFAULT_MAX_BYTES, entry_cost
from stird.adapters.redis_client import DEFAULT_URL, RedisClient
from stird.services.ports import CpsAdmission, CpsCaps

_PURGE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
"""

# KEYS: tn_z tn_h client_z client_tn_z tn_pool_z g_z g_b g_pool_b
# ARGV: now_ms expiry_ms ttl_ms per_tn per_client per_client_tn tn max_entries max_bytes
#       pool_bytes(-1: none) pool prefix (id blob cost)...
_ADD = (
    _PURGE
    + """
local now = ARGV[1]
local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 1024)
for _, member in ipairs(old) do
  local pool, cost = string.match(member, '^(%S+) (%d+) ')
  if cost then
    redis.call('DECRBY', KEYS[7], cost)
    redis.call('DECRBY', ARGV[12] .. 'g:b:' .. pool, cost)
  end
end
if #old > 0 then redis.call('ZREM', KEYS[6], unpack(old)) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local n, size = 0, 0
for i = 13, #ARGV, 3 do
  n = n + 1
  size = size + tonumber(ARGV[i + 2])
end
if redis.call('ZCARD', KEYS[5]) + n > tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[3]) + n > tonumber(ARGV[5]) then return 2 end
if redis.call('ZCARD', KEYS[4]) + n > tonumber(ARGV[6]) then return 3 end
if redis.call('ZCARD', KEYS[6]) + n > tonumber(ARGV[8]) then return 4 end
if tonumber(redis.call('GET', KEYS[7]) or '0') + size > tonumber(ARGV[9]) then return 4 end
local pool_bytes = tonumber(ARGV[10])
if pool_bytes >= 0 and tonumber(redis.call('GET', KEYS[8]) or '0') + size > pool_bytes then
  return 4
end
for i = 13, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7] .. ' ' .. ARGV[i])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[i])
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[i])
  redis.call('ZADD', KEYS[6], ARGV[2],
             ARGV[11] .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[7] .. ' ' .. ARGV[i])
end
redis.call('INCRBY', KEYS[7], size)
redis.call('INCRBY', KEYS[8], size)
local ttl = tonumber(ARGV[3])
for i = 1, 5 do
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
             3: CpsAdmission.CLIENT_TN_FULL, 4: CpsAdmission.STORE_FULL}  # fmt: skip
MAX_LIST = 1000


def _ms(seconds: float) -> int:
    return math.floor(seconds * 1000)


class RedisCpsStore(AsyncClosing):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "stird:cps:",
        timeout: float = 0.5,
        max_connections: int = 16,
        max_entries: int = 100_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if any(c.isspace() for c in prefix):
            raise ValueError("the prefix must not hold white space")
        self._prefix, self._max, self.max_bytes = prefix, max_entries, max_bytes
        self._client = RedisClient(url, timeout=timeout, max_connections=max_connections)
        self._add = self._client.script(_ADD)
        self._list = self._client.script(_LIST)
        self._get = self._client.script(_GET)

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
        p = self._prefix
        pool = caps.pool
        keys = [*self._tn_keys(tn), f"{p}c:{client}", f"{p}ct:{client}:{tn}",
                f"{p}t:{tn}:p:{pool}", f"{p}g:z", f"{p}g:b", f"{p}g:b:{pool}"]  # fmt: skip
        pool_bytes = -1 if caps.pool_bytes is None else caps.pool_bytes
        args: list[Any] = [_ms(now), _ms(now + ttl), max(1, _ms(ttl)), caps.per_tn,
                           caps.per_client, caps.per_client_tn, tn, self._max, self.max_bytes,
                           pool_bytes, caps.pool, p]  # fmt: skip
        for entry_id, blob in items:
            args += [entry_id, blob, entry_cost(entry_id, blob)]
        code = int(await self._client.run(self._add, keys, args))
        return _REFUSALS.get(code, CpsAdmission.STORED)

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        flat = await self._client.run(self._list, self._tn_keys(tn), [_ms(now), MAX_LIST])
        return [(bytes(flat[i]).decode("ascii"), bytes(flat[i + 1]))
                for i in range(0, len(flat) - 1, 2)]  # fmt: skip

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None:
        blob = await self._client.run(self._get, self._tn_keys(tn), [_ms(now), entry_id])
        return None if blob is None else bytes(blob)

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.close()
