"""msec dialog tracking shared by worker processes (SQLite): dialogs recorded through one
process are ended by another's timer, each exactly once; the store is bounded, and a
failing store never crashes the policy. (The state machine over this store:
tests/services/test_dialogs.py, parametrized.)"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from dataclasses import dataclass, field, replace
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.dialogs_sqlite import LEASE, SqliteDialogStore
from stird.services.dialogs import Decision, DialogHandle, DialogPolicy, Outcome, Phase

N = 200


@dataclass
class Ender:
    ended: list[DialogHandle] = field(default_factory=list)

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        self.ended.append(handle)
        return True


@dataclass(frozen=True)
class Fixed:
    now: float

    def __call__(self) -> float:
        return self.now


def _ticker(path: str, start: Barrier, out: Any) -> None:
    """One worker's timer task, 5 s after the other worker answered the calls."""
    ender = Ender()
    policy = DialogPolicy(ender, window=5.0, clock=Fixed(1010.0), store=SqliteDialogStore(
        Path(path), timeout=5.0))  # fmt: skip
    start.wait(30)
    failed = 0
    for _ in range(5):
        failed += asyncio.run(policy.tick())
    out.put((failed, [h.asterisk_channel for h in ender.ended]))


def test_a_dialog_recorded_by_one_worker_is_ended_by_another_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dialogs.sqlite"
    SqliteDialogStore.create(path)
    recorder = DialogPolicy(Ender(), window=5.0, clock=Fixed(1000.0),
                            store=SqliteDialogStore(path))  # fmt: skip
    for i in range(N):
        recorder.offered(f"call-{i}", DialogHandle(kamailio=(i, i + 1), asterisk_channel=f"c{i}"))
        recorder.answered(f"call-{i}")
    assert recorder.phase("call-7") is Phase.ANSWERED
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_ticker, args=(str(path), start, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    ended = results[0][1] + results[1][1]
    assert sorted(ended) == sorted(f"c{i}" for i in range(N))  # all, none twice
    assert results[0][0] + results[1][0] == N
    assert len(recorder) == 0  # mandatory: ended dialogs leave the shared table


async def test_the_shared_table_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.sqlite"
    SqliteDialogStore.create(path)
    one, two = SqliteDialogStore(path, max_dialogs=50), SqliteDialogStore(path, max_dialogs=50)
    a = DialogPolicy(Ender(), clock=Fixed(1.0), store=one)
    b = DialogPolicy(Ender(), clock=Fixed(1.0), store=two)
    for i in range(300):  # a flood of INVITEs through both workers
        (a if i % 2 else b).offered(f"flood-{i}", DialogHandle(asterisk_channel="x"))
    assert len(one) == 50 and a.phase("flood-299") is Phase.OFFERED
    assert a.phase("flood-0") is None  # the oldest went


async def test_a_failing_store_never_crashes_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.sqlite"
    SqliteDialogStore.create(path)
    policy = DialogPolicy(Ender(), clock=Fixed(1.0), store=SqliteDialogStore(path, timeout=0.05))
    policy.offered("c1", DialogHandle(asterisk_channel="x"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker stuck holding the lock
    policy.offered("c2", DialogHandle(asterisk_channel="y"))  # not tracked, logged
    other.execute("ROLLBACK")
    assert policy.phase("c2") is None and policy.phase("c1") is Phase.OFFERED
    other.execute("DROP TABLE dialogs")  # a damaged file
    other.close()
    policy.offered("c3", DialogHandle(asterisk_channel="z"))
    policy.answered("c1")
    policy.ended("c1")
    assert policy.phase("c1") is None
    assert await policy.backwards("c1", valid=False) is Decision.CONTINUE
    assert await policy.refused("c1", 438) is Decision.CONTINUE
    from stird.services.stores import StoreUnavailable

    with pytest.raises(StoreUnavailable):  # the timer task: logged, restarted (supervisor)
        await policy.tick()


async def test_a_dialog_claimed_by_a_worker_that_died_is_ended_by_another(
    tmp_path: Path,
) -> None:
    """A worker claims an overdue dialog (or fails it) and is killed before it ends the
    call: the claim is a lease, so another worker ends the call after LEASE, not never."""
    path = tmp_path / "dialogs.sqlite"
    SqliteDialogStore.create(path)
    recorder = DialogPolicy(Ender(), window=5.0, clock=Fixed(1000.0),
                            store=SqliteDialogStore(path))  # fmt: skip
    for call in ("claimed", "failed"):
        recorder.offered(call, DialogHandle(asterisk_channel=call))
        recorder.answered(call)
    dead = SqliteDialogStore(path)
    claimed = dead.claim_due(1006.0)  # the dying worker's tick: it claims both...
    assert sorted(d.call_id for d in claimed) == ["claimed", "failed"]
    failed = next(d for d in claimed if d.call_id == "failed")  # ...fails one, then dies
    assert dead.update(replace(failed, phase=Phase.FAILED, pending=Outcome.TIMED_OUT),
                       expect=Phase.ANSWERED)  # fmt: skip
    ender = Ender()
    survivor = DialogPolicy(ender, window=5.0, clock=Fixed(1006.0 + LEASE - 1),
                            store=SqliteDialogStore(path))  # fmt: skip
    assert await survivor.tick() == 0 and ender.ended == []  # the lease still runs
    survivor = DialogPolicy(ender, window=5.0, clock=Fixed(1006.0 + LEASE),
                            store=SqliteDialogStore(path))  # fmt: skip
    await survivor.tick()
    assert sorted(h.asterisk_channel or "" for h in ender.ended) == ["claimed", "failed"]
    assert len(recorder) == 0
    await survivor.tick()
    assert len(ender.ended) == 2  # once each
