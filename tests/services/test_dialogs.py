"""The msec dialog policy state machine (RFC 8862 §4.3–4.4) with an injected clock, over
both dialog stores (this process's memory, the SQLite table the workers share)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.dialogs_sqlite import SqliteDialogStore
from stird.services.dialogs import (
    Decision,
    DialogHandle,
    DialogPolicy,
    DialogRecord,
    DialogStore,
    MemoryDialogStore,
    MsecPolicy,
    Outcome,
    Phase,
)

H = DialogHandle(kamailio=(2792, 2011))


@dataclass
class FakeEnder:
    ended: list[tuple[DialogHandle, str]] = field(default_factory=list)
    works: bool = True

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        if not self.works:
            raise ConnectionError("kamailio gone")
        self.ended.append((handle, reason))
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[[int], DialogStore]
_stores: list[StoreFactory] = []


@pytest.fixture(autouse=True, params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test runs over each store; ``make`` takes the current one."""
    numbers = itertools.count()

    def sqlite(max_dialogs: int) -> DialogStore:
        path = tmp_path / f"dialogs{next(numbers)}.sqlite"
        SqliteDialogStore.create(path)
        return SqliteDialogStore(path, max_dialogs)

    _stores.append(MemoryDialogStore if request.param == "memory" else sqlite)
    yield str(request.param)
    _stores.pop()


def make(
    policy: MsecPolicy = MsecPolicy.MANDATORY, max_dialogs: int = 10_000, **kw: object
) -> tuple[DialogPolicy, FakeEnder, Clock, list[Outcome]]:
    ender, clock, outcomes = FakeEnder(), Clock(), []
    dp = DialogPolicy(ender, policy=policy, window=5.0, clock=clock, store=_stores[-1](max_dialogs),
                      on_outcome=lambda c, o, p: outcomes.append(o), **kw)  # type: ignore[arg-type]  # fmt: skip
    return dp, ender, clock, outcomes


async def test_valid_backwards_request_confirms() -> None:
    dp, ender, clock, outcomes = make()
    dp.offered("c1", H)
    dp.answered("c1")
    assert await dp.backwards("c1", valid=True) is Decision.CONTINUE
    clock.now += 60
    assert await dp.tick() == 0
    assert (dp.phase("c1"), ender.ended, outcomes) == (Phase.CONFIRMED, [], [Outcome.CONFIRMED])


async def test_mandatory_ends_a_dialog_without_backwards_request() -> None:
    dp, ender, clock, outcomes = make()
    dp.offered("c1", H)
    dp.answered("c1")
    clock.now += 4.9
    assert await dp.tick() == 0
    clock.now += 0.2
    assert await dp.tick() == 1
    assert ender.ended == [(H, 'STIR;cause=438;text="msec: timed-out"')]
    assert outcomes == [Outcome.TIMED_OUT] and len(dp) == 0


async def test_opportunistic_only_records() -> None:
    dp, ender, clock, outcomes = make(MsecPolicy.OPPORTUNISTIC)
    dp.offered("c1", H)
    dp.answered("c1")
    clock.now += 10
    await dp.tick()
    assert ender.ended == [] and outcomes == [Outcome.TIMED_OUT]
    assert dp.phase("c1") is Phase.FAILED


async def test_invalid_backwards_request_ends_at_once_under_mandatory() -> None:
    dp, ender, _, outcomes = make()
    dp.offered("c1", H)
    dp.answered("c1")
    assert await dp.backwards("c1", valid=False) is Decision.END
    assert len(ender.ended) == 1 and outcomes == [Outcome.INVALID]


@pytest.mark.parametrize("code", [428, 436, 437, 438])
async def test_one_retry_then_policy(code: int) -> None:
    dp, ender, _, _ = make()
    dp.offered("c1", H)
    dp.answered("c1")
    assert await dp.refused("c1", code) is Decision.RETRY
    assert await dp.refused("c1", code) is Decision.END
    assert len(ender.ended) == 1


async def test_other_codes_and_unknown_dialogs_are_ignored() -> None:
    dp, ender, _, _ = make()
    dp.offered("c1", H)
    assert await dp.refused("c1", 486) is Decision.CONTINUE
    assert await dp.refused("nope", 438) is Decision.CONTINUE
    assert await dp.backwards("nope", valid=False) is Decision.CONTINUE
    assert ender.ended == []


async def test_ended_dialogs_leave_no_state_and_no_timer_action() -> None:
    dp, ender, clock, _ = make()
    dp.offered("c1", H)
    dp.answered("c1")
    dp.ended("c1")
    clock.now += 60
    assert await dp.tick() == 0 and ender.ended == [] and len(dp) == 0


async def test_memory_is_bounded_and_old_dialogs_expire() -> None:
    dp, _, clock, _ = make(max_dialogs=3, max_age=100.0)
    for i in range(5):
        dp.offered(f"c{i}", H)
    assert len(dp) == 3 and dp.phase("c0") is None
    clock.now += 101
    await dp.tick()
    assert len(dp) == 0


async def test_a_broken_pbx_link_does_not_break_the_policy() -> None:
    dp, ender, clock, outcomes = make()
    ender.works = False
    dp.offered("c1", H)
    dp.answered("c1")
    clock.now += 6
    assert await dp.tick() == 1
    assert outcomes == [Outcome.TIMED_OUT] and len(dp) == 0


async def test_answer_without_offer_and_repeated_answers_are_harmless() -> None:
    dp, _, clock, _ = make()
    dp.answered("ghost")
    dp.offered("c1", H)
    dp.answered("c1")
    clock.now += 3
    dp.answered("c1")  # a retransmitted 2xx does not push the deadline
    clock.now += 2.5
    assert await dp.tick() == 1


async def test_invalid_proof_on_the_early_dialog_ends_it_at_the_answer() -> None:
    """An early dialog cannot be ended with BYE (Kamailio: "terminating non-confirmed
    dialogs not supported"): the decision stands and is carried out at the 2xx."""
    dp, ender, clock, outcomes = make()
    dp.offered("c1", H)
    assert await dp.backwards("c1", valid=False) is Decision.END  # after PRACK, before 2xx
    assert ender.ended == [] and outcomes == [Outcome.INVALID]
    assert dp.phase("c1") is Phase.FAILED
    clock.now += 30
    assert await dp.tick() == 0 and ender.ended == []  # still not answered: nothing yet
    dp.answered("c1")
    await dp.tick()
    assert ender.ended == [(H, 'STIR;cause=438;text="msec: invalid"')]
    assert outcomes == [Outcome.INVALID] and len(dp) == 0  # recorded once


async def test_early_failure_of_a_dialog_that_never_answers_is_forgotten() -> None:
    dp, ender, _, _ = make()
    dp.offered("c1", H)
    await dp.backwards("c1", valid=False)
    dp.ended("c1")  # the INVITE failed or was cancelled
    dp.answered("c1")
    await dp.tick()
    assert ender.ended == [] and len(dp) == 0


async def test_valid_proof_on_the_early_dialog_needs_nothing_at_the_answer() -> None:
    dp, ender, clock, outcomes = make()
    dp.offered("c1", H)
    assert await dp.backwards("c1", valid=True) is Decision.CONTINUE
    dp.answered("c1")
    clock.now += 60
    assert await dp.tick() == 0
    assert ender.ended == [] and outcomes == [Outcome.CONFIRMED]


async def test_opportunistic_early_failure_is_only_recorded() -> None:
    dp, ender, clock, outcomes = make(MsecPolicy.OPPORTUNISTIC)
    dp.offered("c1", H)
    assert await dp.backwards("c1", valid=False) is Decision.CONTINUE
    dp.answered("c1")
    clock.now += 60
    await dp.tick()
    assert ender.ended == [] and outcomes == [Outcome.INVALID]


# -- two workers racing on one dialog (compare-and-set on the phase) -------------------


class Interleaved:
    """A store through which a worker sees another worker's write land between its own
    read (``get`` / ``claim_due``) and its write: ``meanwhile`` runs once, right after."""

    def __init__(self, inner: DialogStore) -> None:
        self.inner = inner
        self._meanwhile: Callable[[DialogStore], None] = lambda _: None

    def arm(self, meanwhile: Callable[[DialogStore], None]) -> None:
        self._meanwhile = meanwhile

    def _once(self) -> None:
        meanwhile, self._meanwhile = self._meanwhile, lambda _: None
        meanwhile(self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def get(self, call_id: str) -> DialogRecord | None:
        record = self.inner.get(call_id)
        self._once()
        return record

    def claim_due(self, now: float) -> list[DialogRecord]:
        claimed = self.inner.claim_due(now)
        self._once()
        return claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Race:
    dp: DialogPolicy
    store: Interleaved
    ender: FakeEnder = field(default_factory=FakeEnder)
    clock: Clock = field(default_factory=Clock)
    outcomes: list[Outcome] = field(default_factory=list)


def racing() -> Race:
    ender, clock, outcomes = FakeEnder(), Clock(), []
    store = Interleaved(_stores[-1](100))
    dp = DialogPolicy(ender, window=5.0, clock=clock, store=store,
                      on_outcome=lambda c, o, p: outcomes.append(o))  # fmt: skip
    return Race(dp, store, ender, clock, outcomes)


async def test_a_proof_confirmed_by_another_worker_after_the_timer_claimed_it_wins() -> None:
    """The window's timer (this worker) claims the dialog; the callee's valid proof is
    confirmed on another worker before this one acts: the call is not ended."""

    def confirm_elsewhere(store: DialogStore) -> None:
        record = store.get("c1")
        if record is not None:
            store.update(replace(record, phase=Phase.CONFIRMED))

    race = racing()
    race.dp.offered("c1", H)
    race.dp.answered("c1")
    race.clock.now += 6
    race.store.arm(confirm_elsewhere)
    assert await race.dp.tick() == 0
    assert race.ender.ended == [] and race.outcomes == []
    assert race.dp.phase("c1") is Phase.CONFIRMED


async def test_an_answer_read_before_another_worker_failed_the_dialog_cannot_undo_it() -> None:
    """This worker reads the dialog (offered) for the 2xx; meanwhile another worker fails
    it on an invalid early proof. The stale answer must not put it back to ANSWERED with
    a fresh window: the 2xx ends it at once."""

    def fail_elsewhere(store: DialogStore) -> None:
        record = store.get("c1")
        if record is not None:
            failed = replace(record, phase=Phase.FAILED, pending=Outcome.INVALID)
            store.update(failed)

    race = racing()
    race.dp.offered("c1", H)
    race.store.arm(fail_elsewhere)
    race.dp.answered("c1")
    assert race.dp.phase("c1") is Phase.FAILED
    await race.dp.tick()
    assert [reason for _, reason in race.ender.ended] == ['STIR;cause=438;text="msec: invalid"']
