"""The background-task supervisor: a failing task is logged with its traceback, counted,
restarted with a doubling (capped) backoff, and named as degraded while it keeps failing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stird.adapters.supervisor import Supervisor


async def until(predicate: object, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_failing_task_is_logged_counted_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    restarts: list[str] = []
    runs = 0
    recovered = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"crash {runs}")
        recovered.set()
        await asyncio.Event().wait()  # then runs for good

    supervisor = Supervisor(on_restart=restarts.append, base=0.001, cap=0.01)
    supervisor.supervise("flaky", flaky)
    async with asyncio.timeout(5):
        await recovered.wait()
    assert restarts == ["flaky", "flaky"] and runs == 3
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2 and all(r.exc_info for r in failures)
    assert "crash 2" in caplog.text
    assert supervisor.health()["flaky"] == {"restarts": 2, "failures_in_a_row": 2,
                                            "last_error": "ValueError: crash 2"}  # fmt: skip
    await supervisor.close()
    assert supervisor.tasks == {}


async def test_a_returning_task_is_restarted_too() -> None:
    runs = 0

    async def returns() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(base=0.001, cap=0.001)
    supervisor.supervise("returns", returns)
    await until(lambda: runs >= 3)
    assert supervisor.health()["returns"]["last_error"] == "returned"
    await supervisor.close()


async def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("stird.adapters.supervisor.asyncio.sleep", sleep)

    async def crash() -> None:
        raise RuntimeError("again")

    supervisor = Supervisor(base=1.0, cap=8.0)
    supervisor.supervise("crash", crash)
    for _ in range(1000):
        if len(delays) >= 6:
            break
        await real_sleep(0)
    await supervisor.close()
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_degraded_while_failing_then_healthy_after_a_long_run() -> None:
    now = [0.0]
    crash = [True]
    ran = asyncio.Event()

    async def task() -> None:
        ran.set()
        if crash[0]:
            raise RuntimeError("down")
        await asyncio.Event().wait()

    supervisor = Supervisor(base=0.001, cap=0.001, degraded_after=3, healthy_after=60,
                            clock=lambda: now[0])  # fmt: skip
    supervisor.supervise("watch", task)
    await until(lambda: supervisor.tasks["watch"].failures >= 3)
    assert supervisor.degraded() == ["watch"]
    crash[0] = False
    ran.clear()
    await asyncio.wait_for(ran.wait(), 5)  # a run that does not crash
    assert supervisor.degraded() == ["watch"]  # not yet proven
    now[0] += 61  # it has run for a minute
    assert supervisor.degraded() == []
    await supervisor.close()


async def test_one_name_one_task() -> None:
    supervisor = Supervisor()

    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.supervise("idle", idle)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.supervise("idle", idle)
    await supervisor.close()
    with pytest.raises(ValueError, match="backoff"):
        Supervisor(base=0)
