"""The calls stird follows through AMI events, so it can act on them later in the call.

Fed with Newchannel, VarSet (``STIRD_*`` only), DialBegin, DialEnd and Hangup events as
Asterisk 22 sends them (../shared/asterisk/transcripts/ami-session.txt): keyed by
``Uniqueid``, bounded in size, entries dropped on Hangup and after a maximum age.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar

MAX_CALLS = 4096
CALL_TTL = 4 * 3600.0
MAX_VARIABLES = 32
MAX_VALUE = 8192
RECENT_HANGUPS = 256


@dataclass(frozen=True, slots=True)
class CallState:
    uniqueid: str
    channel: str
    linkedid: str = ""
    caller: str = ""  # CallerIDNum
    exten: str = ""
    context: str = ""
    created: float = 0.0
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    peer: str | None = None  # the other leg's Uniqueid (DialBegin)
    dial_status: str | None = None  # DialEnd

    def variable(self, name: str) -> str | None:
        return self.variables.get(name)


@dataclass(frozen=True, slots=True)
class Hangup:
    uniqueid: str
    channel: str
    cause: str  # Q.850
    tech_cause: str | None  # the SIP code of a PJSIPHangup (fact 12)


def _field(event: Mapping[str, object], name: str) -> str:
    value = event.get(name, "")
    if isinstance(value, list):  # a repeated header: panoramisk gives a list
        value = value[-1] if value else ""
    text = str(value)
    return "" if text == "<unknown>" else text


class CallTable:
    def __init__(
        self,
        *,
        max_calls: int = MAX_CALLS,
        ttl: float = CALL_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_calls, self.ttl, self._clock = max_calls, ttl, clock
        self._calls: OrderedDict[str, CallState] = OrderedDict()
        self._by_channel: dict[str, str] = {}
        self.hangups: deque[Hangup] = deque(maxlen=RECENT_HANGUPS)

    def __len__(self) -> int:
        return len(self._calls)

    def get(self, uniqueid: str) -> CallState | None:
        return self._calls.get(uniqueid)

    def by_channel(self, channel: str) -> CallState | None:
        uniqueid = self._by_channel.get(channel)
        return self._calls.get(uniqueid) if uniqueid is not None else None

    def apply(self, event: Mapping[str, object]) -> None:
        """Update the table with one AMI event (other events are ignored)."""
        handler = self._HANDLERS.get(_field(event, "Event").lower())
        if handler is not None:
            self._expire()
            handler(self, event)

    def _ensure(self, event: Mapping[str, object], prefix: str = "") -> CallState | None:
        uniqueid = _field(event, prefix + "Uniqueid")
        if not uniqueid:
            return None
        call = self._calls.get(uniqueid)
        if call is None:
            call = CallState(
                uniqueid=uniqueid,
                channel=_field(event, prefix + "Channel"),
                linkedid=_field(event, prefix + "Linkedid"),
                caller=_field(event, prefix + "CallerIDNum"),
                exten=_field(event, prefix + "Exten"),
                context=_field(event, prefix + "Context"),
                created=self._clock(),
            )
            self._store(call)
            while len(self._calls) > self.max_calls:
                self._drop(next(iter(self._calls)))
        return call

    def _store(self, call: CallState) -> None:
        self._calls[call.uniqueid] = call
        if call.channel:
            self._by_channel[call.channel] = call.uniqueid

    def _drop(self, uniqueid: str) -> CallState | None:
        call = self._calls.pop(uniqueid, None)
        if call is not None and self._by_channel.get(call.channel) == uniqueid:
            del self._by_channel[call.channel]
        return call

    def _expire(self) -> None:
        horizon = self._clock() - self.ttl
        while self._calls:
            oldest = next(iter(self._calls.values()))
            if oldest.created >= horizon:
                break
            self._drop(oldest.uniqueid)

    def _newchannel(self, event: Mapping[str, object]) -> None:
        self._ensure(event)

    def _varset(self, event: Mapping[str, object]) -> None:
        name = _field(event, "Variable").lstrip("_")
        if not name.startswith("STIRD_"):
            return
        call = self._ensure(event)
        if call is None or (name not in call.variables and len(call.variables) >= MAX_VARIABLES):
            return
        variables = {**call.variables, name: _field(event, "Value")[:MAX_VALUE]}
        self._store(replace(call, variables=MappingProxyType(variables)))

    def _dial_begin(self, event: Mapping[str, object]) -> None:
        caller, dest = self._ensure(event), self._ensure(event, "Dest")
        if caller is not None and dest is not None:
            self._store(replace(caller, peer=dest.uniqueid))
            self._store(replace(dest, peer=caller.uniqueid))

    def _dial_end(self, event: Mapping[str, object]) -> None:
        status = _field(event, "DialStatus") or None
        for call in (self._ensure(event), self._ensure(event, "Dest")):
            if call is not None:
                self._store(replace(call, dial_status=status))

    def _hangup(self, event: Mapping[str, object]) -> None:
        uniqueid = _field(event, "Uniqueid")
        call = self._drop(uniqueid)
        channel = call.channel if call is not None else _field(event, "Channel")
        tech = _field(event, "TechCause") or None
        self.hangups.append(Hangup(uniqueid, channel, _field(event, "Cause"), tech))

    _HANDLERS: ClassVar[dict[str, Callable[[CallTable, Mapping[str, object]], None]]] = {
        "newchannel": _newchannel,
        "varset": _varset,
        "dialbegin": _dial_begin,
        "dialend": _dial_end,
        "hangup": _hangup,
    }


__all__ = ["CallState", "CallTable", "Hangup"]
