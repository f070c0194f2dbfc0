"""Asterisk Manager Interface client on panoramisk's ``Manager``.

Logs in, follows calls (:mod:`stird.adapters.ami_calls`), and acts on them with
``PJSIPHangup`` (a SIP code before answer; it comes back as ``TechCause`` in the Hangup
event) and ``Hangup`` (a Q.850 cause). What Asterisk 22 does (../shared/asterisk facts
8–12): a one-line banner ``Asterisk Call Manager/11.0.0``; ``Key: value`` lines ending in
CRLF, messages ending in an empty line, one message possibly split over reads; a
UserEvent event echoes the ActionID, so a reply is a message with ``Response:`` AND the
ActionID; an unknown channel answers ``Response: Error`` / ``Message: No such channel``.

panoramisk keeps the Action/Message classes, the Login exchange and the event dispatch.
Replaced here: reading (bytes buffered with a bound, the banner checked), reply matching
(``Response`` + ActionID only), what happens to pending actions on a lost connection
(they fail at once instead of being re-sent after the next login: a late PJSIPHangup is
worse than none), and reconnecting (bounded exponential backoff, a connect timeout and a
Ping that must be answered, instead of a fixed 2 s retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager
from panoramisk.message import Message
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stird.adapters.ami_calls import CallTable
from stird.adapters.metrics import Metrics

log = logging.getLogger(__name__)

MAX_BUFFER = 1 << 20  # bytes of one unfinished message
MAX_PENDING = 1024  # actions awaiting a reply on one connection
EVENTS = ("Newchannel", "VarSet", "DialBegin", "DialEnd", "Hangup")
_BANNER = b"Asterisk Call Manager/"
_SIP_CAUSE = re.compile(r"[4-6][0-9]{2}|[A-Z][A-Z_]{2,40}")  # 400–699 or a pjsip name


@dataclass(frozen=True, slots=True)
class AmiSettings:
    host: str = "127.0.0.1"
    port: int = 5038
    user: str = "stird"
    secret: str = field(default="", repr=False)
    timeout: float = 2.0  # connect, login and each action
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    ping_interval: float = 20.0  # a Ping unanswered by the next one drops the connection
    events: str = "call,dialplan"  # the Login event mask


class Outcome(enum.StrEnum):
    OK = "ok"
    NO_SUCH_CHANNEL = "no-such-channel"
    ERROR = "error"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    INVALID = "invalid"  # refused before sending (bad channel name or cause)


@dataclass(frozen=True, slots=True)
class ActionResult:
    outcome: Outcome
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


class AmiLoginError(Exception):
    pass


#: Headers that route a frame. panoramisk turns a repeated header into a list (legitimate
#: for e.g. ChanVariable); for these the first value counts (found by fuzzing: a list
#: here raised TypeError out of data_received and dropped the connection).
_ROUTING = ("Event", "Response", "ActionID")


def _routing_scalars(message: Message) -> Message:
    for name in _ROUTING:
        value = message.get(name)
        if isinstance(value, list):
            message[name] = str(value[0]) if value else ""
    return message


class _Protocol(AMIProtocol):  # type: ignore[misc]
    closed: bool
    version: str | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER:
            log.warning("AMI: message longer than %d bytes; dropping the connection", MAX_BUFFER)
            self.transport.abort()
            return
        if self.version is None and not self._banner():
            return
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            message = Message.from_line(frame.decode("utf-8", "replace"))
            if message is not None:
                self.handle_message(_routing_scalars(message))

    def _banner(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > 256:
                self.transport.abort()
            return False
        line = bytes(self._buffer[:end])
        if not line.startswith(_BANNER):
            log.warning("AMI: not an Asterisk manager (%r); dropping the connection", line[:40])
            self.transport.abort()
            return False
        self.version = line[len(_BANNER) :].decode("ascii", "replace")
        del self._buffer[: end + 2]
        return True

    def handle_message(self, message: Message) -> None:
        if "response" in message:  # a reply: matched on Response + ActionID (fact 9)
            action = self.responses.pop(message.action_id, None) if message.action_id else None
            if action is not None and not action.future.done():
                action.future.set_result(message)
        elif "event" in message and self.factory is not None:
            self.factory.dispatch(message)

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = not self.closed
        self.close()
        if was_open and self.factory is not None:
            self.factory.connection_lost(exc)

    def close(self) -> None:
        for action in list(self.responses.values()):
            action.future.cancel()  # fail now; never re-sent after a reconnect
        self.responses.clear()
        if not self.closed:
            self.closed = True
            self.transport.close()


class _Manager(Manager):  # type: ignore[misc]
    authenticated_future: asyncio.Future[Any] | None

    def __init__(self, client: AmiClient) -> None:
        s = client.settings
        super().__init__(
            host=s.host, port=s.port, username=s.user, secret=s.secret, events=s.events,
            loop=asyncio.get_running_loop(), protocol_factory=_Protocol, log=log,
        )  # fmt: skip
        self.ping_delay = self.ping_interval = s.ping_interval  # panoramisk rounds to int
        self._client = client
        self._ping: asyncio.Future[Any] | None = None
        for name in EVENTS:
            self.register_event(name, client.on_event)

    def attach(self, transport: asyncio.BaseTransport, protocol: _Protocol) -> None:
        """panoramisk's connection setup (it sends Login) for a connection made here."""
        made = self.loop.create_future()
        made.set_result((transport, protocol))
        self.connection_made(made)

    def login(self, future: asyncio.Future[Any]) -> bool:
        if future.cancelled() or future.exception() is not None:
            self.authenticated_future, self.authenticated = None, False
            return False
        return bool(super().login(future))

    def ping(self) -> None:
        protocol = self.protocol
        if protocol is None or protocol.closed:
            return
        if self._ping is not None and not self._ping.done():
            log.warning("AMI: Ping unanswered for %s s; reconnecting", self.ping_interval)
            protocol.transport.abort()
            return
        self.pinger = self.loop.call_later(self.ping_interval, self.ping)
        self._ping = protocol.send({"Action": "Ping"})

    def connection_lost(self, exc: Exception | None) -> None:
        """Replaces panoramisk's fixed-delay reconnect: the client's loop reconnects."""
        self._connected = self.authenticated = False
        if self.pinger is not None:
            self.pinger.cancel()
            self.pinger = None
        self._ping = None
        self._client.lost(exc)


class AmiClient:
    def __init__(
        self,
        settings: AmiSettings,
        metrics: Metrics | None = None,
        *,
        calls: CallTable | None = None,
    ) -> None:
        self.settings = settings
        self.calls = calls if calls is not None else CallTable()
        self.health: dict[str, Any] = {
            "enabled": True, "address": f"{settings.host}:{settings.port}", "connected": False,
            "logins": 0, "last_error": None, "calls": 0,
        }  # fmt: skip
        self.action_counts: dict[tuple[str, str], int] = {}
        self._listeners: list[Callable[[Mapping[str, Any]], None]] = []
        self._manager: _Manager | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()
        if metrics is not None:
            with contextlib.suppress(ValueError):  # already registered
                metrics.registry.register(_AmiCollector(self))

    @property
    def connected(self) -> bool:
        return bool(self.health["connected"])

    def subscribe(self, listener: Callable[[Mapping[str, Any]], None]) -> None:
        """Also hand every followed event (see EVENTS) to ``listener``."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self._manager = _Manager(self)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stird-ami")

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), timeout)
        return self.connected

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._manager is not None and self.connected:
            await self._send("Logoff", {}, min(self.settings.timeout, 1.0))
        if self._manager is not None:
            self._manager.close()
        self._set_up(False)

    # --- actions -----------------------------------------------------------------------

    async def pjsip_hangup(self, channel: str, code: int | str) -> ActionResult:
        """Reject an unanswered PJSIP channel with a SIP code (400–699) or pjsip name."""
        if not _SIP_CAUSE.fullmatch(str(code)):
            return self._count("PJSIPHangup", ActionResult(Outcome.INVALID, f"cause {code!r}"))
        return await self._act("PJSIPHangup", {"Channel": channel, "Cause": str(code)})

    async def hangup(self, channel: str, cause: int = 16) -> ActionResult:
        """Hang up a channel with a Q.850 cause (fact 14 maps causes to SIP codes)."""
        if not 0 < cause < 128:
            return self._count("Hangup", ActionResult(Outcome.INVALID, f"cause {cause!r}"))
        return await self._act("Hangup", {"Channel": channel, "Cause": str(cause)})

    async def _act(self, name: str, fields: dict[str, str]) -> ActionResult:
        if any(not v or any(ch in v for ch in "\r\n\0") for v in fields.values()):
            return self._count(name, ActionResult(Outcome.INVALID, "empty or multi-line value"))
        return self._count(name, await self._send(name, fields, self.settings.timeout))

    async def _send(self, name: str, fields: dict[str, str], timeout: float) -> ActionResult:
        manager = self._manager
        protocol = manager.protocol if manager is not None else None
        if manager is None or protocol is None or protocol.closed or not self.connected:
            return ActionResult(Outcome.DISCONNECTED, "not connected to the Asterisk manager")
        if len(protocol.responses) >= MAX_PENDING:
            return ActionResult(Outcome.ERROR, "too many actions awaiting a reply")
        future = manager.send_action(Action({"Action": name, **fields}))
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if not done:
            future.cancel()
            return ActionResult(Outcome.TIMEOUT, f"no reply within {timeout} s")
        if future.cancelled():
            return ActionResult(Outcome.DISCONNECTED, "connection lost before the reply")
        reply = future.result()
        message = str(reply.get("Message", ""))
        if reply.get("Response") in ("Success", "Goodbye"):
            return ActionResult(Outcome.OK, message)
        if message.lower() == "no such channel":
            return ActionResult(Outcome.NO_SUCH_CHANNEL, message)
        return ActionResult(Outcome.ERROR, message)

    def _count(self, name: str, result: ActionResult) -> ActionResult:
        key = (name, result.outcome.value)
        self.action_counts[key] = self.action_counts.get(key, 0) + 1
        if not result.ok:
            log.info("AMI %s: %s %s", name, result.outcome.value, result.message)
        return result

    # --- connection --------------------------------------------------------------------

    def on_event(self, manager: Any, event: Message) -> None:
        try:
            self.calls.apply(event)
            for listener in self._listeners:
                listener(event)
        except Exception:
            log.exception("AMI: event handler failed")
        self.health["calls"] = len(self.calls)

    def lost(self, exc: Exception | None) -> None:
        self.health["last_error"] = f"connection lost{f' ({exc})' if exc else ''}"
        self._set_up(False)
        self._lost.set()

    def _set_up(self, up: bool) -> None:
        self.health["connected"] = up
        (self._up.set if up else self._up.clear)()

    async def _run(self) -> None:
        delay = self.settings.backoff_min
        while True:
            try:
                await self._session()
                delay = self.settings.backoff_min
            except (OSError, TimeoutError, AmiLoginError) as exc:
                self.health["last_error"] = f"{type(exc).__name__}: {exc}"
                log.warning("AMI %s: %s", self.health["address"], self.health["last_error"])
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter)
            delay = min(delay * 2, self.settings.backoff_max)

    async def _session(self) -> None:
        """Connect, log in, and return once the connection is lost."""
        assert self._manager is not None
        s, loop = self.settings, asyncio.get_running_loop()
        self._lost.clear()
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(_Protocol, s.host, s.port), s.timeout
        )
        try:
            self._manager.attach(transport, protocol)
            await self._login(self._manager.authenticated_future)
        except BaseException:
            protocol.close()
            raise
        self.health.update(logins=self.health["logins"] + 1, last_error=None)
        self._set_up(True)
        log.info("AMI: logged in to %s as %s", self.health["address"], s.user)
        await self._lost.wait()

    async def _login(self, future: asyncio.Future[Any] | None) -> None:
        if future is None:
            raise ConnectionError("Login was not sent")
        done, _ = await asyncio.wait({future}, timeout=self.settings.timeout)
        if not done:
            raise TimeoutError("no answer to Login")
        if future.cancelled():
            raise ConnectionError("connection lost during Login")
        reply = future.result()
        if not reply.success:
            raise AmiLoginError(str(reply.get("Message") or "Login refused"))


class _AmiCollector(Collector):
    def __init__(self, client: AmiClient) -> None:
        self._client = client

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        c = self._client
        yield GaugeMetricFamily(
            "stird_ami_connected", "1 while logged in to the Asterisk manager",
            value=1.0 if c.connected else 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "stird_ami_logins", "AMI logins (the first one and every reconnect)",
            value=float(c.health["logins"]),
        )  # fmt: skip
        yield GaugeMetricFamily("stird_ami_calls", "Calls followed", value=float(len(c.calls)))
        actions = CounterMetricFamily(
            "stird_ami_actions", "AMI actions by outcome", labels=["action", "outcome"]
        )
        for (name, outcome), count in sorted(c.action_counts.items()):
            actions.add_metric([name, outcome], float(count))
        yield actions


__all__ = ["ActionResult", "AmiClient", "AmiLoginError", "AmiSettings", "Outcome"]
