"""The SQLite CPS store the worker processes share: caps hold across processes, entries
one process adds are read by another, and SQLite failures are store errors, not crashes.
(Its semantics against the other backends: tests/services/test_cps.py, parametrized.)"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.cps_sqlite import SqliteCpsStore
from stird.services.ports import CpsAdmission, CpsCaps
from stird.services.stores import StoreFull, StoreUnavailable

TN = "12025550101"
NOW = 1_700_000_000.0
CAPS = CpsCaps(per_tn=50, per_client=1000, per_client_tn=1000)
BLOB = b"\x01" * 200


def _worker(path: str, name: str, start: Barrier, read: Barrier, out: Any) -> None:
    """One process: 40 single adds as fast as it can, then what it can read."""

    async def run() -> None:
        store = SqliteCpsStore(Path(path), timeout=5.0)
        start.wait(30)
        stored, refused = [], 0
        for i in range(40):
            entry_id = f"{name}{i:021d}"
            result = await store.add(TN, [(entry_id, BLOB)], client=f"{name}{i}", now=NOW,
                                     ttl=60, caps=CAPS)  # fmt: skip
            if result is CpsAdmission.STORED:
                stored.append(entry_id)
            else:
                refused += 1 if result is CpsAdmission.TN_FULL else 1000
        read.wait(30)
        seen = sorted(entry_id for entry_id, _ in await store.entries(TN, NOW + 1))
        out.put((name, stored, refused, seen))
        await store.close()

    asyncio.run(run())


def test_two_processes_never_pass_a_cap_together(tmp_path: Path) -> None:
    path = tmp_path / "cps.sqlite"
    SqliteCpsStore.create(path)
    ctx = multiprocessing.get_context("spawn")
    start, read, out = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), name, start, read, out))
             for name in "ab"]  # fmt: skip
    for proc in procs:
        proc.start()
    results = {name: (stored, refused, seen)
               for name, stored, refused, seen in (out.get(timeout=60) for _ in procs)}  # fmt: skip
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    stored = results["a"][0] + results["b"][0]
    assert len(stored) == CAPS.per_tn  # 80 tried, exactly the cap stored
    assert results["a"][1] + results["b"][1] == 80 - CAPS.per_tn  # all refusals TN_FULL
    assert results["a"][2] == results["b"][2] == sorted(stored)  # each reads the other's
    assert len(SqliteCpsStore(path)) == CAPS.per_tn


async def test_a_lock_held_too_long_is_unavailable_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "cps.sqlite"
    SqliteCpsStore.create(path)
    store = SqliteCpsStore(path, timeout=0.05)
    assert await store.add(TN, [("a" * 22, BLOB)], client="c", now=NOW, ttl=60,
                           caps=CAPS) is CpsAdmission.STORED  # fmt: skip
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a stuck worker holding the write lock
    try:
        with pytest.raises(StoreUnavailable):
            await store.add(TN, [("b" * 22, BLOB)], client="c", now=NOW, ttl=60, caps=CAPS)
        assert await store.entry(TN, "a" * 22, NOW) == BLOB  # WAL: readers never wait
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.add(TN, [("b" * 22, BLOB)], client="c", now=NOW, ttl=60,
                           caps=CAPS) is CpsAdmission.STORED  # fmt: skip
    assert len(await store.entries(TN, NOW)) == 2


async def test_a_full_disk_is_store_full_and_nothing_half_stored(tmp_path: Path) -> None:
    path = tmp_path / "cps.sqlite"
    SqliteCpsStore.create(path)
    store = SqliteCpsStore(path)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages + 2}")  # the tmpfs is full
    batch = [(f"{i:022d}", b"\x02" * 3000) for i in range(8)]
    with pytest.raises(StoreFull):
        await store.add(TN, batch, client="c", now=NOW, ttl=60, caps=CAPS)
    assert await store.entries(TN, NOW) == [] and len(store) == 0
    assert await store.add(TN, batch[:1], client="c", now=NOW, ttl=60,
                           caps=CAPS) is CpsAdmission.STORED  # fmt: skip


async def test_a_damaged_or_missing_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "cps.sqlite"
    with pytest.raises(FileNotFoundError):
        SqliteCpsStore(path)  # never a fresh empty store where the shared one should be
    SqliteCpsStore.create(path)
    store = SqliteCpsStore(path)
    other = sqlite3.connect(path)
    other.execute("DROP TABLE cps_entries")
    other.close()
    for call in (
        store.add(TN, [("a" * 22, BLOB)], client="c", now=NOW, ttl=60, caps=CAPS),
        store.entries(TN, NOW),
        store.entry(TN, "a" * 22, NOW),
    ):
        with pytest.raises(StoreUnavailable):
            await call
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 300)
    with pytest.raises(StoreUnavailable):
        SqliteCpsStore(garbage)


async def test_expired_entries_leave_the_file_and_free_the_caps(tmp_path: Path) -> None:
    path = tmp_path / "cps.sqlite"
    SqliteCpsStore.create(path)
    store = SqliteCpsStore(path, max_entries=3)
    for i in range(3):
        assert await store.add(TN, [(f"{i:022d}", BLOB)], client=f"c{i}", now=NOW, ttl=10,
                               caps=CAPS) is CpsAdmission.STORED  # fmt: skip
    assert await store.add(TN, [("x" * 22, BLOB)], client="d", now=NOW + 5, ttl=10,
                           caps=CAPS) is CpsAdmission.STORE_FULL  # fmt: skip
    assert await store.entries(TN, NOW + 10) == []  # aged out, even before a purge
    assert await store.add(TN, [("x" * 22, BLOB)], client="d", now=NOW + 10, ttl=10,
                           caps=CAPS) is CpsAdmission.STORED  # fmt: skip
    assert len(store) == 1 and store.stored_bytes == 256 + 22 + len(BLOB)
