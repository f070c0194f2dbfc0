"""The shared-memory store: MemoryStore(evict=False)'s semantics, across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_shm import ShmStore
from stird.services.stores import StoreFull
from tests.adapters.test_stores import FakeClock

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "add", "get", "delete", "tick"]),
        st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]),
        st.integers(0, 6),
    ),
    max_size=80,
)


async def _outcome(call: object) -> object:
    try:
        return await call  # type: ignore[misc]
    except StoreFull:
        return "full"


@settings(max_examples=300, deadline=None)
@given(_OPS, st.integers(1, 5))
def test_matches_the_non_evicting_memory_store(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]], capacity: int
) -> None:
    """Same answers, same StoreFull, same live count as MemoryStore(evict=False) on the same
    clock, whatever the sequence (collisions, expiry, deletes shifting chains back)."""
    clock = FakeClock()
    model = MemoryStore(capacity, clock=clock, evict=False)
    path = tmp_path_factory.mktemp("shm") / "table"
    shm = ShmStore.create(path, capacity, value_size=8, clock=clock)

    async def run() -> None:
        for op, key, n in ops:
            value = f"{key}{n}".encode()
            if op == "tick":
                clock.now += n
                continue
            if op == "get":
                assert await shm.get(key) == await model.get(key)
            elif op == "delete":
                await shm.delete(key)
                await model.delete(key)
            else:
                want = await _outcome(getattr(model, op)(key, value, n))
                assert await _outcome(getattr(shm, op)(key, value, n)) == want, (op, key)
            assert len(shm) == len(model)
        for key in "abcdefg":
            assert await shm.get(key) == await model.get(key)

    try:
        asyncio.run(run())
    finally:
        shm.close()


async def test_never_evicts_a_live_entry_and_expiry_makes_room(tmp_path: Path) -> None:
    clock = FakeClock()
    shm = ShmStore.create(tmp_path / "t", 100, clock=clock)
    for i in range(100):
        assert await shm.add(f"k{i}", b"v", 10)
    with pytest.raises(StoreFull):
        await shm.add("one-more", b"v", 10)
    assert all([await shm.get(f"k{i}") == b"v" for i in range(100)])
    assert await shm.add("k5", b"w", 10) is False  # a known key needs no room
    clock.now += 11
    assert await shm.add("one-more", b"v", 10)
    shm.close()


async def test_evicting_table_keeps_the_new_entry(tmp_path: Path) -> None:
    clock = FakeClock()
    shm = ShmStore.create(tmp_path / "t", 10, evict=True, clock=clock)
    for i in range(50):
        await shm.set(f"k{i}", b"v", 100 + i)
        assert await shm.get(f"k{i}") == b"v"
    assert len(shm) == 10
    shm.close()


async def test_a_value_too_long_is_no_room(tmp_path: Path) -> None:
    shm = ShmStore.create(tmp_path / "t", 10, value_size=4)
    with pytest.raises(StoreFull):
        await shm.set("k", b"12345", 10)
    assert await shm.get("k") is None
    shm.close()


async def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t").write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not a stird shared table"):
        ShmStore.attach(tmp_path / "t")


def _adder(path: Path, start: int, results: multiprocessing.Queue[list[bool]]) -> None:
    shm = ShmStore.attach(path)
    results.put([asyncio.run(shm.add(f"k{i}", b"%d" % os.getpid(), 60)) for i in range(start, 400)])


def test_processes_share_one_table_and_add_is_atomic(tmp_path: Path) -> None:
    """Four processes add overlapping keys: each key is taken exactly once (a replay seen by
    one worker is a replay for every other)."""
    path = tmp_path / "t"
    ShmStore.create(path, 1000).close()
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[list[bool]] = ctx.Queue()
    procs = [ctx.Process(target=_adder, args=(path, 0, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    taken = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert [sum(column) for column in zip(*taken, strict=True)] == [1] * 400
    assert len(ShmStore.attach(path)) == 400
