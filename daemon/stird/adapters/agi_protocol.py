"""FastAGI wire protocol (Asterisk res_agi), on panoramisk's ``fast_agi`` classes.

What Asterisk 22 does on the wire (../shared/asterisk facts 1–5): the ``agi_*`` block
ends with an empty line and may arrive over several reads; every line ends in a bare LF;
replies are ``200 result=1 (value)`` (the value may hold ``(``, ``)``, ``<``, ``;``, ``=``),
``200 result=0``, ``510 …``, ``511 …`` and a multi-line ``520-`` usage text closed by
``520 End of proper usage.``; ``HANGUP`` lines arrive unasked, before a reply or when the
server has nothing pending. Asterisk waits for a silent server forever, so every read and
write here has a timeout and every session a byte, line and command budget.

panoramisk 1.4's ``Application.handler`` loops on ``reader.read()`` until it sees a blank
line, which spins forever once the peer closes, and buffers without bound; its
``Request.send_command`` takes a ``HANGUP`` notice for the reply and reads one line of a
520 text. :class:`AgiApplication` and :class:`AgiRequest` replace those two methods and
keep the rest (routes, headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from panoramisk.fast_agi import Application, Request

log = logging.getLogger(__name__)

MAX_LINE = 65536  # one reply line: GET FULL VARIABLE of a 5 KB Identity header fits
MAX_ENV = 16384  # the agi_* block (about 500 bytes in practice)
MAX_SESSION_BYTES = 1 << 20  # everything read from one peer
MAX_COMMANDS = 64  # commands one session may send
MAX_NOTICES = 8  # HANGUP / 100 lines tolerated before one reply
MAX_USAGE_LINES = 64  # lines of one 520 usage text

_REPLY = re.compile(r"(?P<code>[0-9]{3})(?P<sep>[ -]|$)(?P<rest>.*)", re.DOTALL)
# 200 result=<n> [(<value>)] [extra] ; the value runs to the LAST ")" of the line
_RESULT = re.compile(r"result=(?P<result>\S*)(?: \((?P<value>.*)\))?", re.DOTALL)


class AgiProtocolError(Exception):
    """The peer closed, stalled, overran a budget or sent something that is not AGI."""


#: Everything a misbehaving peer can make a session raise.
PEER_ERRORS: tuple[type[BaseException], ...] = (
    AgiProtocolError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    TimeoutError,
    ConnectionError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class AgiReply:
    code: int
    result: str = ""  # the text after "result=" (200 only)
    value: str | None = None  # inside the parentheses, None when absent
    text: str = ""  # the reply line (520: the whole usage text)

    @property
    def variable(self) -> str:
        """The value of a GET (FULL) VARIABLE: empty for unset, failed or non-200."""
        if self.code != 200 or self.result != "1":
            return ""
        return self.value or ""


def parse_reply(line: str) -> AgiReply:
    match = _REPLY.fullmatch(line)
    if match is None:
        raise AgiProtocolError(f"not an AGI reply: {line[:60]!r}")
    code, rest = int(match["code"]), match["rest"]
    if code != 200:
        return AgiReply(code, text=line)
    result = _RESULT.match(rest)
    if result is None:
        raise AgiProtocolError(f"200 reply without result=: {line[:60]!r}")
    return AgiReply(200, result["result"], result["value"], line)


def quote(value: str) -> str:
    """One AGI argument: res_agi's parse_args splits on blanks outside double quotes and
    takes a backslash as escaping the next character. Line ends and NUL cannot be sent."""
    clean = "".join(ch for ch in value if ch not in "\r\n\0")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_env(raw: bytes) -> dict[str, str]:
    """``agi_name: value`` lines (value may be empty) → dict; other lines are ignored."""
    env: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        name, sep, value = line.partition(":")
        if sep and name.startswith("agi_"):
            env[name] = value.removeprefix(" ")
    return env


def agi_args(env: dict[str, str]) -> list[str]:
    """The ``AGI(url,arg1,arg2,…)`` arguments, in order."""
    out: list[str] = []
    while f"agi_arg_{len(out) + 1}" in env:
        out.append(env[f"agi_arg_{len(out) + 1}"])
    return out


def known(value: str) -> str:
    """Asterisk writes "unknown" for an empty caller ID or DNID in the agi_* block."""
    return "" if value == "unknown" else value


class AgiRequest(Request):  # type: ignore[misc]
    """One FastAGI session: panoramisk's Request with bounded, timed exchanges."""

    def __init__(self, app: Any, headers: dict[str, str], reader: Any, writer: Any, *,
                 timeout: float) -> None:  # fmt: skip
        super().__init__(app, headers, reader, writer, encoding="utf-8")
        self.timeout = timeout
        self.hungup = False
        self.commands = 0
        self._budget = MAX_SESSION_BYTES

    @property
    def env(self) -> dict[str, str]:
        return dict(self.headers)

    @property
    def channel(self) -> str:
        return str(self.headers.get("agi_channel", "?"))

    async def send_command(self, command: str) -> AgiReply:
        """Send one command and read its reply, skipping HANGUP notices."""
        if any(ch in command for ch in "\r\n\0"):
            raise ValueError("an AGI command is one line")
        self.commands += 1
        if self.commands > MAX_COMMANDS:
            raise AgiProtocolError("command budget exhausted")
        self.writer.write(command.encode("utf-8") + b"\n")
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the awaitable in a
        # task, and a peer that goes away leaves task, exception and frames in a cycle
        # that only a full (slow) garbage collection frees
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()
        async with asyncio.timeout(self.timeout):
            return await self._reply()

    async def get_full(self, expression: str) -> str:
        """``GET FULL VARIABLE``: no 1023-character limit (fact 5), functions evaluated."""
        return (await self.send_command(f"GET FULL VARIABLE {expression}")).variable

    async def set_variable(self, name: str, value: str) -> None:
        reply = await self.send_command(f"SET VARIABLE {name} {quote(value)}")
        if reply.code != 200:
            raise AgiProtocolError(f"SET VARIABLE {name} answered {reply.text[:60]!r}")

    async def _line(self) -> str:
        raw = await self.reader.readuntil(b"\n")
        self._budget -= len(raw)
        if self._budget < 0:
            raise AgiProtocolError("session byte budget exhausted")
        return str(raw[:-1].decode("utf-8", "replace"))

    async def _reply(self) -> AgiReply:
        for _ in range(MAX_NOTICES + 1):
            line = await self._line()
            if line == "HANGUP":  # fact 3: a notice, the reply follows
                self.hungup = True
                continue
            reply = parse_reply(line)
            if reply.code == 100:  # "100 result=0 Trying...": the real reply follows
                continue
            if reply.code == 520 and line.startswith("520-"):
                return await self._usage(line)
            return reply
        raise AgiProtocolError("too many notices before a reply")

    async def _usage(self, first: str) -> AgiReply:
        lines = [first]
        for _ in range(MAX_USAGE_LINES):
            line = await self._line()
            lines.append(line)
            if line.startswith("520 "):
                return AgiReply(520, text="\n".join(lines))
        raise AgiProtocolError("520 usage text does not end")


Route = Callable[[AgiRequest], Awaitable[None]]


class AgiApplication(Application):  # type: ignore[misc]
    """panoramisk's Application (routes keyed by ``agi_network_script``) with a bounded,
    timed header read, a connection cap and a guaranteed close."""

    def __init__(
        self, *, timeout: float, max_connections: int, session_limit: float, health: dict[str, Any]
    ) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self.timeout = timeout
        self.max_connections = max_connections
        self.session_limit = session_limit
        self.tasks: set[asyncio.Task[Any]] = set()
        self.health = health  # "refused" is counted here

    @property
    def active(self) -> int:
        return len(self.tasks)

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self.tasks) >= self.max_connections:
            self.health["refused"] = self.health.get("refused", 0) + 1
            log.warning("FastAGI: %d sessions open, refusing a connection", len(self.tasks))
            await self._close(writer)
            return
        self.tasks.add(task)
        try:
            await self._session(reader, writer)
        finally:
            self.tasks.discard(task)
            await self._close(writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: see AgiRequest
                raw = await reader.readuntil(b"\n\n")
            if len(raw) > MAX_ENV:
                raise AgiProtocolError("agi_* block too large")
            env = parse_env(raw)
            script = env.get("agi_network_script", "")
            route: Route | None = self._route.get(script)
            if route is None:
                log.warning("FastAGI from %s: no route for script %r", peer, script[:40])
                return
            request = AgiRequest(self, env, reader, writer, timeout=self.timeout)
            async with asyncio.timeout(self.session_limit):
                await route(request)
        except PEER_ERRORS as exc:
            log.info("FastAGI from %s ended early: %s", peer, type(exc).__name__)
        except Exception:
            log.exception("FastAGI from %s: unexpected error", peer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(*PEER_ERRORS):
            async with asyncio.timeout(self.timeout):
                await writer.wait_closed()


__all__ = [
    "PEER_ERRORS",
    "AgiApplication",
    "AgiProtocolError",
    "AgiReply",
    "AgiRequest",
    "agi_args",
    "known",
    "parse_env",
    "parse_reply",
    "quote",
]
