"""The msec dialog policy (RFC 8862 §4.3–4.4, RFC 4916): after a caller's msec-signed
INVITE is answered, the callee must prove its DTLS keys with a signed request in the
backwards direction (an UPDATE carrying the answer's fingerprints).

Under the **mandatory** policy a dialog that sees no valid backwards request within the
window after the answer is ended through the PBX (Kamailio `dlg.end_dlg`, Asterisk AMI
`Hangup`); under the **opportunistic** policy the call goes on and the outcome is only
recorded. A 428/436/437/438 answer to a signed mid-dialog request gets one retry (RFC
8224 §6.1.1), then the policy. Memory is bounded; ended dialogs and their timers go away.

A failure before the answer (an invalid backwards UPDATE on the early dialog, after PRACK)
is acted on when the 2xx arrives: an early dialog cannot be ended with BYE (RFC 3261
§15; Kamailio's `dlg.end_dlg` only logs "terminating non-confirmed dialogs not
supported" and the call goes on).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from stird.services.ports import Clock, system_clock
from stird.services.stores import StoreUnavailable

log = logging.getLogger(__name__)

REPAIRABLE = frozenset({428, 436, 437, 438})  # RFC 8224 §6.1.1, RFC 8862 §4.3
_RACES = 3  # reads and compare-and-sets before giving up to a busier worker


class MsecPolicy(enum.StrEnum):
    MANDATORY = "mandatory"
    OPPORTUNISTIC = "opportunistic"


class Phase(enum.StrEnum):
    OFFERED = "offered"  # our msec INVITE went out
    ANSWERED = "answered"  # 2xx seen: the backwards signed request is due
    CONFIRMED = "confirmed"  # a valid backwards request arrived
    FAILED = "failed"  # the policy acted (ended, or recorded under opportunistic)


class Outcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    TIMED_OUT = "timed-out"  # no signed backwards request in the window
    INVALID = "invalid"  # the backwards request failed verification
    REJECTED = "rejected"  # our signed mid-dialog request was refused twice


@dataclass(frozen=True, slots=True)
class DialogHandle:
    """How the PBX names the dialog when stird asks it to end it."""

    kamailio: tuple[int, int] | None = None  # (dlg h_entry, h_id)
    asterisk_channel: str | None = None


class DialogEnder(Protocol):
    async def end(self, handle: DialogHandle, reason: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class DialogRecord:
    """One tracked dialog, as a :class:`DialogStore` keeps it."""

    call_id: str
    handle: DialogHandle
    created: float
    phase: Phase = Phase.OFFERED
    deadline: float | None = None  # set at the answer: the window's end (or now)
    retries: int = 0
    pending: Outcome | None = None  # failed before the answer: end it at the 2xx


class DialogStore(Protocol):
    """Where :class:`DialogPolicy` keeps its dialogs: this process's memory
    (:class:`MemoryDialogStore`) or a table the worker processes of a host share
    (stird.adapters.dialogs_sqlite). Calls are synchronous and short; bounded by the
    store. A store that fails raises :class:`~stird.services.stores.StoreUnavailable`."""

    def __len__(self) -> int: ...

    def get(self, call_id: str) -> DialogRecord | None: ...

    def insert(self, record: DialogRecord) -> None:
        """A new dialog (replacing one with its Call-ID); beyond the bound the oldest
        dialogs go."""
        ...

    def update(
        self, record: DialogRecord, *, due: float | None = None, expect: Phase | None = None
    ) -> bool:
        """Change a dialog that is still tracked (else nothing) and, with ``expect``, still
        in that phase (compare-and-set: another process may have moved it); ``due``: arm
        its timer. True when changed."""
        ...

    def remove(self, call_id: str) -> None: ...

    def claim_due(self, now: float) -> list[DialogRecord]:
        """The tracked dialogs whose timer is due at ``now``, their timers disarmed, in one
        atomic step: among processes sharing the store, each is handed to one only (a
        shared store leases those that still need an action instead of disarming them, so
        they come back if the claimer dies before it acts)."""
        ...

    def evict_created_before(self, moment: float) -> None: ...


class MemoryDialogStore:
    """The dialogs of one process: insertion-ordered (the oldest are evicted first) with a
    heap of timers (stale ones dropped lazily when due)."""

    def __init__(self, max_dialogs: int = 10_000) -> None:
        if max_dialogs < 1:
            raise ValueError("max_dialogs must be at least 1")
        self._max = max_dialogs
        self._dialogs: OrderedDict[str, DialogRecord] = OrderedDict()
        self._timers: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._dialogs)

    def get(self, call_id: str) -> DialogRecord | None:
        return self._dialogs.get(call_id)

    def insert(self, record: DialogRecord) -> None:
        self._dialogs.pop(record.call_id, None)
        while len(self._dialogs) >= self._max:
            self._dialogs.popitem(last=False)  # the oldest goes; it is counted nowhere
        self._dialogs[record.call_id] = record

    def update(
        self, record: DialogRecord, *, due: float | None = None, expect: Phase | None = None
    ) -> bool:
        current = self._dialogs.get(record.call_id)
        if current is None or (expect is not None and current.phase is not expect):
            return False
        self._dialogs[record.call_id] = record
        if due is not None:
            heapq.heappush(self._timers, (due, record.call_id))
        return True

    def remove(self, call_id: str) -> None:
        self._dialogs.pop(call_id, None)

    def claim_due(self, now: float) -> list[DialogRecord]:
        due = []
        while self._timers and self._timers[0][0] <= now:
            _, call_id = heapq.heappop(self._timers)
            record = self._dialogs.get(call_id)
            if record is not None:
                due.append(record)
        return due

    def evict_created_before(self, moment: float) -> None:
        while self._dialogs:
            oldest = next(iter(self._dialogs.values()))
            if oldest.created > moment:
                break
            self._dialogs.popitem(last=False)


class Decision(enum.StrEnum):
    CONTINUE = "continue"
    RETRY = "retry"  # sign again (full form) and resend once
    END = "end"  # the dialog is being ended


def _reason(outcome: Outcome) -> str:
    return f'STIR;cause=438;text="msec: {outcome.value}"'


class DialogPolicy:
    def __init__(
        self,
        ender: DialogEnder,
        *,
        policy: MsecPolicy = MsecPolicy.MANDATORY,
        window: float = 5.0,
        max_dialogs: int = 10_000,
        max_age: float = 4 * 3600.0,
        clock: Clock = system_clock,
        on_outcome: Callable[[str, Outcome, MsecPolicy], None] | None = None,
        store: DialogStore | None = None,
    ) -> None:
        """``store``: where the dialogs are kept (default: this process's memory, bounded
        by ``max_dialogs``; a shared store has its own bound). Processes sharing a store
        need a shared ``clock`` (time.monotonic is the host's)."""
        self._ender, self.policy, self.window = ender, policy, window
        self._max_age, self._clock = max_age, clock
        self._store: DialogStore = store if store is not None else MemoryDialogStore(max_dialogs)
        self._on_outcome = on_outcome

    def __len__(self) -> int:
        return len(self._store)

    def phase(self, call_id: str) -> Phase | None:
        dialog = self._get(call_id)
        return dialog.phase if dialog else None

    def _get(self, call_id: str) -> DialogRecord | None:
        try:
            return self._store.get(call_id)
        except StoreUnavailable as exc:
            log.warning("msec dialog %s: the dialog store failed: %s", call_id, exc)
            return None

    def offered(self, call_id: str, handle: DialogHandle) -> None:
        """Our msec-signed dialog-forming INVITE went out."""
        try:
            self._store.insert(DialogRecord(call_id, handle, self._clock()))
        except StoreUnavailable as exc:
            log.warning("msec dialog %s not tracked: the dialog store failed: %s", call_id, exc)

    def answered(self, call_id: str) -> None:
        """A 2xx arrived: start the window for the backwards signed request."""
        for _ in range(_RACES):
            dialog = self._get(call_id)
            if dialog is None or dialog.deadline is not None:
                return
            if dialog.pending is not None:  # failed on the early dialog: end it now
                answered = replace(dialog, deadline=self._clock())
            elif dialog.phase is Phase.OFFERED:
                answered = replace(dialog, phase=Phase.ANSWERED,
                                   deadline=self._clock() + self.window)  # fmt: skip
            else:  # confirmed on the early dialog: nothing is due
                return
            if self._swap(dialog, answered, due=answered.deadline):
                return

    def _save(self, dialog: DialogRecord, *, due: float | None = None) -> None:
        try:
            self._store.update(dialog, due=due)
        except StoreUnavailable as exc:
            log.warning("msec dialog %s: the dialog store failed: %s", dialog.call_id, exc)

    def _swap(self, old: DialogRecord, new: DialogRecord, *, due: float | None = None) -> bool:
        """``new`` stored if the dialog is still in ``old``'s phase: False when another
        worker moved it first (the caller reads it again). A failing store is logged and
        the caller acts on what it read, as one process would."""
        try:
            return self._store.update(new, due=due, expect=old.phase)
        except StoreUnavailable as exc:
            log.warning("msec dialog %s: the dialog store failed: %s", old.call_id, exc)
            return True

    async def backwards(self, call_id: str, valid: bool) -> Decision:
        """The callee's signed backwards request was verified (RFC 8862 §4.3)."""
        for _ in range(_RACES):
            dialog = self._get(call_id)
            if dialog is None or dialog.phase in (Phase.CONFIRMED, Phase.FAILED):
                return Decision.CONTINUE
            if not valid:
                return await self._fail(dialog, Outcome.INVALID) or Decision.CONTINUE
            if self._swap(dialog, replace(dialog, phase=Phase.CONFIRMED)):
                self._record(call_id, Outcome.CONFIRMED)
                return Decision.CONTINUE
        return Decision.CONTINUE

    async def refused(self, call_id: str, code: int) -> Decision:
        """Our signed mid-dialog request got ``code``: one retry, then the policy."""
        dialog = self._get(call_id) if code in REPAIRABLE else None
        if dialog is None:
            return Decision.CONTINUE
        if dialog.retries == 0:
            self._save(replace(dialog, retries=1))
            return Decision.RETRY
        return await self._fail(dialog, Outcome.REJECTED) or Decision.CONTINUE

    def ended(self, call_id: str) -> None:
        """BYE / hangup: forget the dialog (a timer of its is dropped when due)."""
        try:
            self._store.remove(call_id)
        except StoreUnavailable as exc:
            log.warning("msec dialog %s: the dialog store failed: %s", call_id, exc)

    async def tick(self) -> int:
        """Act on every window that has passed; returns how many dialogs failed. With a
        shared store each due dialog is claimed by one process only."""
        now, failed = self._clock(), 0
        for dialog in self._store.claim_due(now):
            if dialog.phase is Phase.ANSWERED:
                if await self._fail(dialog, Outcome.TIMED_OUT) is not None:
                    failed += 1
            elif dialog.pending is not None:
                await self._end(dialog, dialog.pending)
        self._store.evict_created_before(now - self._max_age)
        return failed

    async def _fail(self, dialog: DialogRecord, outcome: Outcome) -> Decision | None:
        """The policy's answer to a failed dialog; None (go on) when another worker moved
        the dialog first: confirmed by a valid proof, or already failed (and ended) there."""
        answered = dialog.deadline is not None
        failed = replace(dialog, phase=Phase.FAILED)
        if self.policy is MsecPolicy.OPPORTUNISTIC:
            decision = Decision.CONTINUE
        else:  # ended at the 2xx or now; pending until then, so a worker that picks the
            # dialog up after this one died (a shared store's lease) ends it too
            failed, decision = replace(failed, pending=outcome), Decision.END
        if not self._swap(dialog, failed):
            return None
        self._record(dialog.call_id, outcome)
        if decision is Decision.END and answered:
            await self._end(failed, outcome)
        return decision

    async def _end(self, dialog: DialogRecord, outcome: Outcome) -> None:
        try:
            ended = await self._ender.end(dialog.handle, _reason(outcome))
        except Exception:  # the PBX link failed: logged, the call table stays bounded
            log.exception("could not end dialog %s", dialog.call_id)
            ended = False
        if not ended:
            log.warning("dialog %s: the PBX did not end it (%s)", dialog.call_id, outcome)
        self.ended(dialog.call_id)

    def _record(self, call_id: str, outcome: Outcome) -> None:
        log.info("msec dialog %s: %s (%s policy)", call_id, outcome.value, self.policy.value)
        if self._on_outcome is not None:
            try:
                self._on_outcome(call_id, outcome, self.policy)
            except Exception:  # a counting bug must not leave the dialog up
                log.exception("recording the outcome of dialog %s failed", call_id)

    async def run(self, interval: float = 0.25) -> None:
        """The timer task: checks windows every ``interval`` seconds until cancelled. The
        daemon runs it under :class:`stird.adapters.supervisor.Supervisor`: an exception
        (a failing store too) is logged and counted, and the task restarts with the
        dialogs it tracked."""
        while True:
            await self.tick()
            await asyncio.sleep(interval)
