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
from dataclasses import dataclass
from typing import Protocol

from stird.services.ports import Clock, system_clock

log = logging.getLogger(__name__)

REPAIRABLE = frozenset({428, 436, 437, 438})  # RFC 8224 §6.1.1, RFC 8862 §4.3


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


@dataclass(slots=True)
class _Dialog:
    call_id: str
    handle: DialogHandle
    created: float
    phase: Phase = Phase.OFFERED
    deadline: float | None = None
    retries: int = 0
    pending: Outcome | None = None  # failed before the answer: end it at the 2xx


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
    ) -> None:
        self._ender, self.policy, self.window = ender, policy, window
        self._max, self._max_age, self._clock = max_dialogs, max_age, clock
        self._dialogs: OrderedDict[str, _Dialog] = OrderedDict()
        self._timers: list[tuple[float, str]] = []
        self._on_outcome = on_outcome

    def __len__(self) -> int:
        return len(self._dialogs)

    def phase(self, call_id: str) -> Phase | None:
        dialog = self._dialogs.get(call_id)
        return dialog.phase if dialog else None

    def offered(self, call_id: str, handle: DialogHandle) -> None:
        """Our msec-signed dialog-forming INVITE went out."""
        while len(self._dialogs) >= self._max:
            self._dialogs.popitem(last=False)  # the oldest goes; it is counted nowhere
        self._dialogs[call_id] = _Dialog(call_id, handle, self._clock())

    def answered(self, call_id: str) -> None:
        """A 2xx arrived: start the window for the backwards signed request."""
        dialog = self._dialogs.get(call_id)
        if dialog is None or dialog.deadline is not None:
            return
        if dialog.pending is not None:  # failed on the early dialog: end it now
            dialog.deadline = self._clock()
        elif dialog.phase is Phase.OFFERED:
            dialog.phase, dialog.deadline = Phase.ANSWERED, self._clock() + self.window
        else:  # confirmed on the early dialog: nothing is due
            return
        heapq.heappush(self._timers, (dialog.deadline, call_id))

    async def backwards(self, call_id: str, valid: bool) -> Decision:
        """The callee's signed backwards request was verified (RFC 8862 §4.3)."""
        dialog = self._dialogs.get(call_id)
        if dialog is None or dialog.phase in (Phase.CONFIRMED, Phase.FAILED):
            return Decision.CONTINUE
        if valid:
            dialog.phase = Phase.CONFIRMED
            self._record(call_id, Outcome.CONFIRMED)
            return Decision.CONTINUE
        return await self._fail(dialog, Outcome.INVALID)

    async def refused(self, call_id: str, code: int) -> Decision:
        """Our signed mid-dialog request got ``code``: one retry, then the policy."""
        dialog = self._dialogs.get(call_id)
        if dialog is None or code not in REPAIRABLE:
            return Decision.CONTINUE
        if dialog.retries == 0:
            dialog.retries = 1
            return Decision.RETRY
        return await self._fail(dialog, Outcome.REJECTED)

    def ended(self, call_id: str) -> None:
        """BYE / hangup: forget the dialog (its timer entry is dropped lazily)."""
        self._dialogs.pop(call_id, None)

    async def tick(self) -> int:
        """Act on every window that has passed; returns how many dialogs failed."""
        now, failed = self._clock(), 0
        while self._timers and self._timers[0][0] <= now:
            _, call_id = heapq.heappop(self._timers)
            dialog = self._dialogs.get(call_id)
            if dialog is not None and dialog.phase is Phase.ANSWERED:
                await self._fail(dialog, Outcome.TIMED_OUT)
                failed += 1
            elif dialog is not None and dialog.pending is not None:
                await self._end(dialog, dialog.pending)
        self._evict_old(now)
        return failed

    def _evict_old(self, now: float) -> None:
        while self._dialogs:
            oldest = next(iter(self._dialogs.values()))
            if now - oldest.created < self._max_age:
                break
            self._dialogs.popitem(last=False)

    async def _fail(self, dialog: _Dialog, outcome: Outcome) -> Decision:
        answered = dialog.deadline is not None
        dialog.phase = Phase.FAILED
        self._record(dialog.call_id, outcome)
        if self.policy is MsecPolicy.OPPORTUNISTIC:
            return Decision.CONTINUE
        if not answered:
            dialog.pending = outcome  # ended when the 2xx arrives (see answered())
            return Decision.END
        await self._end(dialog, outcome)
        return Decision.END

    async def _end(self, dialog: _Dialog, outcome: Outcome) -> None:
        try:
            ended = await self._ender.end(dialog.handle, _reason(outcome))
        except Exception:  # the PBX link failed: logged, the call table stays bounded
            log.exception("could not end dialog %s", dialog.call_id)
            ended = False
        if not ended:
            log.warning("dialog %s: the PBX did not end it (%s)", dialog.call_id, outcome)
        self._dialogs.pop(dialog.call_id, None)

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
        is logged and counted, and the task restarts with the dialogs it tracked."""
        while True:
            await self.tick()
            await asyncio.sleep(interval)
