"""The load shedder: lag measured from a real event loop, refusals counted per interface."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from stird.adapters.overload import LoadShedder, Overloaded


def shed(registry: CollectorRegistry, interface: str) -> float:
    value = registry.get_sample_value("stird_overload_shed_total", {"interface": interface})
    return value or 0.0


def test_refuses_only_while_the_lag_exceeds_the_bound() -> None:
    registry = CollectorRegistry()
    shedder = LoadShedder(0.25, registry=registry)
    shedder.check()  # nothing measured yet: admitted
    shedder.observe(0.25)
    shedder.check()  # at the bound: admitted
    shedder.observe(0.4)
    with pytest.raises(Overloaded, match="400 ms late") as info:
        shedder.check("agi")
    assert info.value.lag == pytest.approx(0.4)
    with pytest.raises(Overloaded):
        shedder.check()
    assert (shed(registry, "agi"), shed(registry, "api")) == (1, 1)
    assert registry.get_sample_value("stird_event_loop_lag_seconds") == pytest.approx(0.4)
    shedder.observe(0.01)
    shedder.check()
    assert (shed(registry, "agi"), shed(registry, "api")) == (1, 1)


def test_zero_bound_never_refuses() -> None:
    shedder = LoadShedder(0, registry=CollectorRegistry())
    shedder.observe(30.0)
    shedder.check()
    assert not shedder.shedding


async def test_measures_a_blocked_loop_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stird.adapters.overload")
    shedder = LoadShedder(0.1, interval=0.01, registry=CollectorRegistry())
    task = asyncio.create_task(shedder.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the loop is stuck: what a burst of work does to it
        for _ in range(20):  # the watcher's timer is overdue: it runs within a few turns
            await asyncio.sleep(0)
            if shedder.shedding:
                break
        assert shedder.shedding and shedder.lag >= 0.2
        with pytest.raises(Overloaded):
            shedder.check()
        for _ in range(200):  # generous: a busy CI core may run the watcher late again
            await asyncio.sleep(0.01)
            if not shedder.shedding:
                break
        shedder.check()  # on time again: admitted
    finally:
        task.cancel()
    messages = [r.getMessage() for r in caplog.records if r.name == "stird.adapters.overload"]
    assert len(messages) == 2 and "refusing new sign/verify work" in messages[0]
    assert "admitting work" in messages[1]
