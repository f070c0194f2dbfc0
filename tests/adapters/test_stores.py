"""KeyValueStore contract, run against the memory store (fake clock) and real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.client import Pipeline

from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import MAX_BATCH, RedisStore
from stird.adapters.store_shm import ShmStore
from stird.adapters.store_sqlite import SqliteStore
from stird.services.ports import KeyValueStore
from stird.services.stores import StoreFull, StoreUnavailable
from tests.fixtures_redis import free_port


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Kit:
    store: KeyValueStore
    advance: Callable[[float], Awaitable[None]]  # let this many seconds pass


@pytest.fixture(params=["memory", "shm", "sqlite", "redis"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param in ("memory", "shm", "sqlite"):
        clock = FakeClock()

        async def tick(seconds: float) -> None:
            clock.now += seconds

        if request.param == "memory":
            yield Kit(MemoryStore(clock=clock), tick)
            return
        if request.param == "sqlite":
            SqliteStore.create(tmp_path / "kv.sqlite")
            lite = SqliteStore(tmp_path / "kv.sqlite", clock=clock)
            yield Kit(lite, tick)
            await lite.close()
            return
        shm = ShmStore.create(tmp_path / "kv", 1000, value_size=2048, clock=clock)
        yield Kit(shm, tick)
        shm.close()
    else:
        url: str = request.getfixturevalue("redis_url")
        async with RedisStore(url, prefix=f"kit:{uuid.uuid4().hex}:", timeout=2.0) as store:
            yield Kit(store, asyncio.sleep)


async def test_get_missing(kit: Kit) -> None:
    assert await kit.store.get("nope") is None


async def test_set_get_overwrite(kit: Kit) -> None:
    await kit.store.set("k", b"one", 10)
    assert await kit.store.get("k") == b"one"
    await kit.store.set("k", b"two", 10)
    assert await kit.store.get("k") == b"two"


async def test_binary_values_round_trip(kit: Kit) -> None:
    value = bytes(range(256)) * 4
    await kit.store.set("bin", value, 10)
    assert await kit.store.get("bin") == value


async def test_add_only_when_absent(kit: Kit) -> None:
    assert await kit.store.add("k", b"first", 10) is True
    assert await kit.store.add("k", b"second", 10) is False
    assert await kit.store.get("k") == b"first"


async def test_add_is_atomic_under_concurrency(kit: Kit) -> None:
    results = await asyncio.gather(*(kit.store.add("race", b"%d" % i, 10) for i in range(50)))
    assert results.count(True) == 1


async def test_delete(kit: Kit) -> None:
    await kit.store.set("k", b"v", 10)
    await kit.store.delete("k")
    assert await kit.store.get("k") is None
    await kit.store.delete("k")  # deleting a missing key is fine
    assert await kit.store.add("k", b"again", 10) is True


async def test_ttl_expiry(kit: Kit) -> None:
    await kit.store.set("short", b"v", 0.1)
    await kit.store.set("long", b"v", 10)
    assert await kit.store.get("short") == b"v"
    await kit.advance(0.25)
    assert await kit.store.get("short") is None
    assert await kit.store.get("long") == b"v"


async def test_add_succeeds_after_expiry(kit: Kit) -> None:
    assert await kit.store.add("k", b"old", 0.1) is True
    await kit.advance(0.25)
    assert await kit.store.add("k", b"new", 10) is True
    assert await kit.store.get("k") == b"new"


async def test_set_renews_ttl(kit: Kit) -> None:
    await kit.store.set("k", b"v", 0.1)
    await kit.store.set("k", b"v2", 10)
    await kit.advance(0.25)
    assert await kit.store.get("k") == b"v2"


async def test_tiny_ttl_is_floored_not_rejected(kit: Kit) -> None:
    await kit.store.set("k", b"v", 0)
    await kit.store.set("k2", b"v", 0.00001)
    assert await kit.store.add("k3", b"v", -5) is True
    await kit.advance(0.05)
    assert await kit.store.get("k") is None
    assert await kit.store.get("k3") is None


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_bounded_evicts_soonest_expiring(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store: MemoryStore | SqliteStore
    if backend == "memory":
        store = MemoryStore(max_entries=3, clock=clock)
    else:
        SqliteStore.create(tmp_path / "kv.sqlite")
        store = SqliteStore(tmp_path / "kv.sqlite", max_entries=3, max_value=64, clock=clock)
    for key, ttl in (("a", 100), ("b", 10), ("c", 50), ("d", 70)):
        await store.set(key, key.encode(), ttl)
    await store.set("a", b"again", 100)  # an overwrite at capacity evicts nothing
    assert len(store) == 3 and await store.get("b") is None
    assert {k for k in "acd" if await store.get(k) is not None} == {"a", "c", "d"}
    if isinstance(store, SqliteStore):
        with pytest.raises(StoreFull):
            await store.set("big", b"x" * 65, 10)


async def test_sqlite_store_bounds_the_bytes_of_its_values(tmp_path: Path) -> None:
    """The shared file lives in tmpfs: many large values (a flood of publications, each
    under the value bound) push out the soonest-expiring others, never past max_bytes."""
    clock = FakeClock()
    SqliteStore.create(tmp_path / "kv.sqlite")
    store = SqliteStore(tmp_path / "kv.sqlite", max_value=1000, max_bytes=4000, clock=clock)
    await store.set("long", b"L" * 1000, 1000)
    for n in range(20):
        await store.set(f"k{n}", b"x" * 1000, 10 + n)
    assert len(store) == 4
    assert await store.get("long") is not None  # expires last: kept
    assert [n for n in range(20) if await store.get(f"k{n}") is not None] == [17, 18, 19]
    await store.set("long", b"L" * 1000, 1000)  # a same-size overwrite evicts nothing
    assert len(store) == 4
    with pytest.raises(ValueError, match="max_bytes"):
        SqliteStore(tmp_path / "kv.sqlite", max_value=1000, max_bytes=999)


# -- memory store ----------------------------------------------------------------------


async def test_memory_bounded_evicts_soonest_expiring() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=3, clock=clock)
    await store.set("a", b"a", 100)
    await store.set("b", b"b", 10)
    await store.set("c", b"c", 50)
    await store.set("d", b"d", 70)
    assert len(store) == 3
    assert await store.get("b") is None
    assert {k for k in "acd" if await store.get(k) is not None} == {"a", "c", "d"}


async def test_memory_overwrite_at_capacity_does_not_evict() -> None:
    store = MemoryStore(max_entries=2, clock=FakeClock())
    await store.set("a", b"1", 10)
    await store.set("b", b"1", 20)
    await store.set("a", b"2", 30)
    assert len(store) == 2
    assert await store.get("b") == b"1"


async def test_memory_expired_entries_do_not_count() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=10, clock=clock)
    for i in range(10):
        await store.set(f"k{i}", b"v", 5)
    clock.now += 6
    assert len(store) == 0
    for i in range(10):
        assert await store.add(f"n{i}", b"v", 5)
    assert len(store) == 10


async def test_memory_stays_bounded_under_churn() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=100, clock=clock)
    for i in range(5_000):
        await store.set(f"k{i % 300}", b"v", 1 + i % 17)
        clock.now += 0.001
    assert len(store) <= 100
    assert len(store._heap) <= 2 * 100 + 64 + 1  # stale heap items are compacted away


async def test_memory_rewrite_with_the_same_expiry_leaves_one_live_entry() -> None:
    """A stale heap item equal in (expiry, key) to the live one is skipped, not evicted."""
    store = MemoryStore(max_entries=2, clock=FakeClock())
    await store.set("k", b"1", 10)
    await store.set("k", b"2", 10)  # same expiry: the heap now holds a stale twin
    await store.set("j", b"j", 20)
    assert (await store.get("k"), len(store)) == (b"2", 2)
    await store.set("m", b"m", 30)  # full: the soonest-expiring live entry goes
    assert (await store.get("k"), await store.get("j"), await store.get("m")) == (
        None,
        b"j",
        b"m",
    )


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "add", "get", "delete", "tick"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_OPS)
def test_memory_matches_a_dict_model(ops: list[tuple[str, str, int]]) -> None:
    """Unbounded, the store behaves as a dict of (value, expiry) read on the same clock."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    model: dict[str, tuple[bytes, float]] = {}

    def alive(key: str) -> bytes | None:
        item = model.get(key)
        return item[0] if item is not None and item[1] > clock.now else None

    async def run() -> None:
        for op, key, n in ops:
            value = f"{key}{n}".encode()
            if op == "tick":
                clock.now += n
            elif op == "set":
                await store.set(key, value, n)
                model[key] = (value, clock.now + max(n, 0.001))
            elif op == "add":
                fresh = alive(key) is None
                assert await store.add(key, value, n) is fresh
                if fresh:
                    model[key] = (value, clock.now + max(n, 0.001))
            elif op == "delete":
                await store.delete(key)
                model.pop(key, None)
            assert await store.get(key) == alive(key)
        assert len(store) == sum(alive(k) is not None for k in model)

    asyncio.run(run())


async def test_memory_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=0)


# -- Redis store -----------------------------------------------------------------------


async def test_redis_ping_and_context_manager(redis_url: str) -> None:
    async with RedisStore(redis_url, prefix="ctx:") as store:
        await store.ping()
        await store.set("k", b"v", 1)
        assert await store.get("k") == b"v"


async def test_redis_prefixes_isolate(redis_url: str, redis_store: RedisStore) -> None:
    async with RedisStore(redis_url, prefix="other:") as other:
        await redis_store.set("same-name", b"one", 5)
        assert await other.get("same-name") is None
        assert await other.add("same-name", b"two", 5) is True
        assert await redis_store.get("same-name") == b"one"
        await other.delete("same-name")


async def _all_ops_fail(store: RedisStore, within: float) -> None:
    ops: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get("k"),
        lambda: store.set("k", b"v", 1),
        lambda: store.add("k", b"v", 1),
        lambda: _batched_adds(store),
        lambda: store.delete("k"),
        store.ping,
    ]
    for op in ops:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="redis"):
            await op()
        assert time.monotonic() - start < within


async def _batched_adds(store: RedisStore) -> None:
    """Ten adds in one tick (one pipeline): each caller gets its own StoreUnavailable."""
    results = await asyncio.gather(
        *(store.add(f"b{i}", b"v", 1) for i in range(10)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, StoreUnavailable)]
    assert len(errors) == 10 and len({id(e) for e in errors}) == 10, results
    raise errors[0]


async def test_redis_down_raises_store_unavailable() -> None:
    async with RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2) as store:
        await _all_ops_fail(store, within=0.5)


async def test_redis_silent_server_times_out() -> None:
    """A peer that accepts but never answers: the timeout bounds every call."""
    conns: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.15) as store:
            await _all_ops_fail(store, within=0.5)
    finally:
        for writer in conns:
            writer.close()
        server.close()
        await server.wait_closed()


async def _connected_clients(url: str) -> int:
    async with redis.asyncio.Redis.from_url(url) as probe:
        info = await probe.info("clients")
        return int(info["connected_clients"]) - 1  # not counting the probe itself


async def test_redis_burst_shares_a_bounded_pool(redis_url: str) -> None:
    """200 concurrent operations on one store use at most ``max_connections``
    connections and all succeed (redis-py's default pool would open 200)."""
    before = await _connected_clients(redis_url)
    prefix = f"burst:{uuid.uuid4().hex}:"
    async with RedisStore(redis_url, prefix=prefix, timeout=2.0, max_connections=3) as store:
        added = await asyncio.gather(*(store.add(f"k{i}", b"v", 5) for i in range(200)))
        assert all(added)
        assert await _connected_clients(redis_url) - before <= 3
        assert await store.get("k199") == b"v"


async def _set_calls(url: str) -> int:
    async with redis.asyncio.Redis.from_url(url) as probe:
        stats = await probe.info("commandstats")
        return int(stats.get("cmdstat_set", {}).get("calls", 0))


async def test_redis_concurrent_adds_go_in_one_round_trip(
    redis_url: str, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay SET NX of 50 concurrent verifications leave in one pipeline (one round
    trip), each caller still getting its own answer: a key added twice in the batch is
    stored once, a key already there is not overwritten."""
    executed: list[int] = []
    execute = Pipeline.execute

    async def counted(self: Pipeline, raise_on_error: bool = True) -> list[object]:
        executed.append(len(self.command_stack))
        return await execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counted)
    await redis_store.set("old", b"kept", 10)
    before = await _set_calls(redis_url)
    keys = [f"k{i}" for i in range(47)] + ["twice", "twice", "old"]
    results = await asyncio.gather(*(redis_store.add(k, b"new", 10) for k in keys))
    assert await _set_calls(redis_url) - before == 50  # every SET reached Redis...
    assert executed == [50]  # ...in one pipeline
    assert results == [True] * 48 + [False, False]
    assert await redis_store.get("old") == b"kept"
    # alone in its tick: an add is one plain SET NX
    assert await redis_store.add("alone", b"v", 10) is True
    assert await redis_store.add("alone", b"v", 10) is False
    assert executed == [50]


async def test_redis_batches_are_bounded(redis_store: RedisStore) -> None:
    """More adds in one tick than MAX_BATCH go in several pipelines, all answered."""
    count = 2 * MAX_BATCH + 3
    results = await asyncio.gather(*(redis_store.add(f"n{i}", b"v", 10) for i in range(count)))
    assert results == [True] * count


async def test_redis_full_refuses_each_batched_add(redis_url: str, redis_store: RedisStore) -> None:
    """Redis at maxmemory under noeviction refuses the writes: StoreFull for every caller of
    a batch, and for one alone."""
    async with redis.asyncio.Redis.from_url(redis_url) as admin:
        await admin.config_set("maxmemory", "1")
        try:
            results = await asyncio.gather(
                *(redis_store.add(f"f{i}", b"v", 10) for i in range(5)), return_exceptions=True
            )
            with pytest.raises(StoreFull, match="OOM"):
                await redis_store.add("alone", b"v", 10)
        finally:
            await admin.config_set("maxmemory", "0")
    assert all(isinstance(r, StoreFull) for r in results), results
    assert await redis_store.add("f0", b"v", 10) is True  # nothing was stored


async def test_redis_a_cancelled_add_leaves_its_batch_alone(redis_store: RedisStore) -> None:
    """The first add of a tick gathers the others; cancelled (its caller hung up) while
    they join, it still lets them go, and each gets its own answer."""
    tasks = [asyncio.create_task(redis_store.add(f"c{i}", b"v", 10)) for i in range(10)]
    await asyncio.sleep(0)  # all queued; the first is waiting for the others to join
    tasks[0].cancel()
    results = await asyncio.gather(*tasks[1:])
    assert results == [True] * 9
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]


async def test_redis_close_sends_the_queued_adds(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix=f"close:{uuid.uuid4().hex}:", timeout=2.0)
    adds = [asyncio.create_task(store.add(f"k{i}", b"v", 10)) for i in range(5)]
    await asyncio.sleep(0)  # queued, not sent yet
    await store.close()  # sends them, waits for the answers
    assert await asyncio.wait_for(asyncio.gather(*adds), 5) == [True] * 5


async def test_redis_eviction_policy_is_read(redis_store: RedisStore) -> None:
    """The daemon warns unless the shared Redis never evicts (a dropped replay entry is a
    replay accepted); the store reads the policy."""
    assert await redis_store.eviction_policy() == "noeviction"


async def test_memory_store_without_eviction_refuses_when_full() -> None:
    now = [0.0]
    store = MemoryStore(2, clock=lambda: now[0], evict=False)
    assert await store.add("a", b"1", 10) and await store.add("b", b"1", 10)
    with pytest.raises(StoreFull):
        await store.add("c", b"1", 10)
    assert await store.get("a") == b"1"  # nothing live was evicted
    now[0] = 11.0
    assert await store.add("c", b"1", 10)  # expired entries make room
