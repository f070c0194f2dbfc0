"""FastAGI server for Asterisk dialplans: ``AGI(agi://127.0.0.1:4573/sign)`` and ``…/verify``.

Both routes end by setting ``STIRD_ACTION`` (``continue`` | ``reject``) LAST, after
clearing it first: a dialplan that finds it empty knows stird produced nothing (closed,
refused, stalled) and fails closed (../shared/asterisk facts 28–32). On any failure of
stird itself the configured fail action is set together with ``STIRD_CODE``.

``sign`` — variables set: ``STIRD_IDENTITY``, ``STIRD_IDENTITY_2`` (the extra `shaken`
header, empty if none), ``STIRD_DATE``, ``STIRD_CODE``, ``STIRD_REASON``. Inputs, first
non-empty wins (one ``GET FULL VARIABLE`` reads all variables at once):

* dest: AGI arg 1, ``STIRD_DEST``, Gosub ``ARG1``, ``EXTEN`` (unless ``s``);
* orig: AGI arg 2, ``STIRD_ORIG``, Gosub ``ARG2``, then ``CONNECTEDLINE(num)`` on the
  outgoing channel of a pre-dial handler (recognised by ``CALLERID(num)`` being the
  dialled number, fact 4), else ``CALLERID(num)``;
* endpoint (for the msec `mky`): AGI arg 3, ``STIRD_ENDPOINT``, ``CHANNEL(endpoint)``.

``verify`` — reads every Identity header line (``PJSIP_HEADER(read,Identity,N)`` for N = 1,
2, … until empty, through GET FULL VARIABLE: GET VARIABLE stops at 1023 characters, fact 5),
splits comma-joined lines (fact 25), and From, P-Asserted-Identity, To, Date, Call-ID and
the Request-URI (``CHANNEL(pjsip,request_uri)``: ``EXTEN`` is only its user part, and is
``s`` inside a Gosub). Lines 1–2 and the rest come in one GET FULL VARIABLE: each command
is a round trip, and under load every round trip waits its turn in stird's event loop.
Sets ``STIRD_VERDICT``, ``STIRD_CODE``, ``STIRD_REASON``, ``STIRD_VERSTAT``,
``STIRD_ATTEST``, ``STIRD_PAI``, ``STIRD_REASON_HEADER``.
The dialplan cannot read the SDP, so `ppt=msec` headers cannot have their `mky` checked:
they are left out as an unsupported ppt (RFC 8224 §6.2 step 1) and the others verified.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from stird.adapters.agi_protocol import (
    MAX_LINE,
    PEER_ERRORS,
    AgiApplication,
    AgiRequest,
    Route,
    agi_args,
    known,
)
from stird.adapters.api import StirApi
from stird.adapters.connpolicy import Connection, ConnectionPolicy, Listeners, Phase, fd_of
from stird.adapters.dtls import DtlsCertificates, DtlsError
from stird.adapters.errors import mapped
from stird.adapters.overload import Overloaded
from stird.adapters.requests import MAX_LIST, FieldError
from stird.adapters.sockets import LISTEN_BACKLOG
from stird.core.errors import StirError
from stird.core.identity import parse_identity

log = logging.getLogger(__name__)

MAX_IDENTITY_LINES = 8
_SIGN_READ = (
    "${STIRD_DEST}|${ARG1}|${STIRD_ORIG}|${ARG2}|${CONNECTEDLINE(num)}"
    "|${STIRD_ENDPOINT}|${CHANNEL(endpoint)}"
)
_VERIFY_READS = (
    ("from", "${PJSIP_HEADER(read,From)}"),
    ("pai", "${PJSIP_HEADER(read,P-Asserted-Identity)}"),
    ("to", "${PJSIP_HEADER(read,To)}"),
    ("date", "${PJSIP_HEADER(read,Date)}"),
    ("call_id", "${PJSIP_HEADER(read,Call-ID)}"),
    ("ruri", "${CHANNEL(pjsip,request_uri)}"),
)


def _identity_read(index: int) -> str:
    return f"${{PJSIP_HEADER(read,Identity,{index})}}"


#: One round trip for the usual call: Identity lines 1 and 2 and every other read,
#: joined by '|' (the transcripts' ``${STIRD_ORIG}->${STIRD_DEST}`` read shows Asterisk
#: expanding several expressions in one GET FULL VARIABLE). A value holding '|' itself
#: shows as a wrong field count and the reads are redone one by one.
_VERIFY_BATCH = "|".join([_identity_read(1), _identity_read(2)] + [e for _, e in _VERIFY_READS])
_VERIFY_FIELDS = 2 + len(_VERIFY_READS)
Variables = list[tuple[str, str]]


class FailAction(enum.StrEnum):
    """What the dialplan is told to do when stird cannot sign or verify."""

    REJECT = "reject"
    CONTINUE = "continue"


class WorkFailed(Exception):
    """The sign/verify call itself failed (timeout, internal error): answer 500."""


def split_identity(value: str) -> list[str]:
    """Split one header line at commas outside ``<…>`` and quoted strings (fact 25)."""
    parts: list[str] = []
    start, quoted, angle, escaped = 0, False, False, False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


def _is_msec(value: str) -> bool:
    try:
        return all(h.ppt == "msec" for h in parse_identity(value))
    except StirError:
        return False  # unparseable: the verifier reports it


def _first(*values: str) -> str:
    return next((v.strip() for v in values if v and v.strip()), "")


def _describe(exc: Exception) -> tuple[int, str, str]:
    """STIRD_CODE, STIRD_REASON and the logged detail: a StirError (a bad field: 400)
    through the one table of stird.adapters.errors; stird's own failure (timeout, bug) 500."""
    if isinstance(exc, StirError):
        answer = mapped(exc)
        return answer.sip, answer.reason, answer.detail
    return 500, "Server Internal Error", str(exc)


class AgiServer:
    """FastAGI listener with the ``sign`` and ``verify`` routes."""

    def __init__(
        self,
        api: StirApi,
        dtls: DtlsCertificates,
        *,
        timeout: float = 2.0,
        fail_action: FailAction | str = FailAction.REJECT,
        call_timeout: float = 5.0,
        listeners: Listeners | None = None,
    ) -> None:
        self.api, self.dtls, self.timeout = api, dtls, timeout
        self.fail_action = FailAction(fail_action)
        self.call_timeout = call_timeout
        self.listeners = listeners or Listeners.build(ConnectionPolicy())
        self._tracker = self.listeners.tracker("agi")
        self._conns: dict[asyncio.StreamWriter, Connection] = {}
        self.health: dict[str, Any] = {"address": None, "sessions": 0, "failed": 0,
                                       "peer_errors": 0, "refused": 0}  # fmt: skip
        self._routes: dict[str, Route] = {"sign": self._sign, "verify": self._verify}
        self._app: AgiApplication | None = None
        self._server: asyncio.Server | None = None
        self._sessions = _session_counter(api)

    def add_route(self, script: str, route: Route) -> None:
        """Another ``agi://…/<script>`` (before :meth:`start`)."""
        self._routes[script] = route

    @property
    def active(self) -> int:
        return self._app.active if self._app is not None else 0

    async def start(self, host: str = "127.0.0.1", port: int = 4573) -> tuple[str, int]:
        limit = self.call_timeout + 6 * self.timeout
        self._app = AgiApplication(
            timeout=self.timeout,
            # the tracker holds the cap; room here for connections it is closing
            max_connections=2 * self.listeners.policy.max_connections,
            session_limit=limit,
            health=self.health,
        )
        for script, route in self._routes.items():
            self._app.add_route(script, self._session(route))
        self._server = await asyncio.start_server(
            self._admit, host, port, limit=MAX_LINE, backlog=LISTEN_BACKLOG
        )
        sockname = self._server.sockets[0].getsockname()
        address = (str(sockname[0]), int(sockname[1]))
        self.health["address"] = f"{address[0]}:{address[1]}"
        return address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._app is not None:
            tasks = list(self._app.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tracker.close_all()
        if self._server is not None:
            await self._server.wait_closed()

    # --- admission (stird.adapters.connpolicy) -------------------------------------------

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admit a connection under the policy: until its ``agi_*`` block is in, it may be
        closed at the header deadline or to make room for a new one at the cap."""
        conn = self._tracker.admit(writer.transport.abort, Phase.HEAD, fd_of(writer.transport))
        if conn is None:
            self.health["refused"] += 1
            return
        self._conns[writer] = conn
        try:
            assert self._app is not None  # started
            await self._app.handler(reader, writer)
        finally:
            del self._conns[writer]
            conn.release()

    def _session(self, route: Route) -> Route:
        async def session(request: AgiRequest) -> None:
            conn = self._conns.get(request.writer)
            if conn is not None:  # a session: ended by its own timeouts, never evicted
                conn.begin()
                conn.wait(Phase.IDLE)
            await route(request)

        return session

    # --- routes ------------------------------------------------------------------------

    async def _sign(self, request: AgiRequest) -> None:
        await self._run(request, "sign", self._sign_work)

    async def _verify(self, request: AgiRequest) -> None:
        await self._run(request, "verify", self._verify_work)

    async def _run(
        self,
        request: AgiRequest,
        route: str,
        work: Callable[[AgiRequest], Awaitable[tuple[Variables, str]]],
    ) -> None:
        outcome = "error"  # until known otherwise (an unexpected exception: logged above)
        try:
            await request.set_variable("STIRD_ACTION", "")  # no stale verdict passes
            try:
                self.api.admit("agi")  # before the channel reads: a refusal costs little
                variables, action = await work(request)
                outcome = "ok"
            except (StirError, DtlsError, WorkFailed) as exc:
                variables, action = self._failure(route, request, exc)
                outcome = "failed"
            for name, value in variables:
                await request.set_variable(name, value)
            await request.set_variable("STIRD_ACTION", action)  # last: "all set"
        except PEER_ERRORS:
            outcome = "peer"
            raise
        finally:
            self._record(route, outcome)

    def _record(self, route: str, outcome: str) -> None:
        self._sessions.labels(route, outcome).inc()
        self.health["sessions"] += 1
        key = {"failed": "failed", "error": "failed", "peer": "peer_errors"}.get(outcome)
        if key:
            self.health[key] += 1

    def _failure(self, route: str, request: AgiRequest, exc: Exception) -> tuple[Variables, str]:
        code, reason, detail = _describe(exc)
        (log.debug if isinstance(exc, Overloaded) else log.warning)(  # the shedder logs once
            "FastAGI %s on %s failed: %d %s (%s); telling the dialplan to %s",
            route, request.channel, code, reason, detail, self.fail_action.value,
        )  # fmt: skip
        common = [("STIRD_CODE", str(code)), ("STIRD_REASON", reason)]
        if route == "sign":
            return [
                ("STIRD_IDENTITY", ""),
                ("STIRD_IDENTITY_2", ""),
                *common,
            ], self.fail_action.value
        verdict = [("STIRD_VERDICT", "error"), *common, ("STIRD_VERSTAT", "No-TN-Validation")]
        empty = [("STIRD_ATTEST", ""), ("STIRD_PAI", ""), ("STIRD_REASON_HEADER", "")]
        return [*verdict, *empty], self.fail_action.value

    async def _call(self, operation: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(operation, self.call_timeout)
        except TimeoutError:
            raise WorkFailed(f"no answer within {self.call_timeout} s") from None
        except StirError:  # a bad field too
            raise
        except Exception as exc:
            log.exception("FastAGI: internal error")
            raise WorkFailed(f"internal error: {type(exc).__name__}") from None

    # --- sign --------------------------------------------------------------------------

    async def _sign_work(self, request: AgiRequest) -> tuple[Variables, str]:
        result = await self._call(self.api.sign(await self._sign_params(request)))
        identity = [str(v) for v in result.get("identity", [])]
        variables = [
            ("STIRD_IDENTITY", identity[0] if identity else ""),
            ("STIRD_IDENTITY_2", identity[1] if len(identity) > 1 else ""),
            *((f"STIRD_IDENTITY_{n}", v) for n, v in enumerate(identity[2:], start=3)),
            ("STIRD_DATE", str(result.get("date") or "")),
            ("STIRD_CODE", ""),
            ("STIRD_REASON", ""),
        ]
        return variables, "continue"

    async def _sign_params(self, request: AgiRequest) -> dict[str, Any]:
        env, args = request.env, agi_args(request.env)
        args += [""] * (3 - len(args))
        values = (await request.get_full(_SIGN_READ)).split("|")
        if len(values) != 7:
            raise FieldError("dest", "a STIRD_*/ARG variable holds '|'")
        stird_dest, arg1, stird_orig, arg2, connected, stird_endpoint, endpoint = values
        exten = env.get("agi_extension", "")
        dest = _first(args[0], stird_dest, arg1, "" if exten == "s" else exten)
        callerid = known(env.get("agi_callerid", ""))
        outgoing = bool(dest) and callerid == dest  # fact 4: the pre-dial handler's channel
        orig = _first(args[1], stird_orig, arg2, connected if outgoing else callerid)
        if not dest or not orig:
            raise FieldError("dest" if not dest else "orig", "not found in the channel")
        params: dict[str, Any] = {"orig": orig, "dest": [dest]}
        sdp = self.dtls.sdp(_first(args[2], stird_endpoint, endpoint))
        if sdp is not None:
            params["sdp"] = sdp
        return params

    # --- verify ------------------------------------------------------------------------

    async def _verify_work(self, request: AgiRequest) -> tuple[Variables, str]:
        params = await _verify_params(request)
        params["dialog_forming"] = True
        verdict = await self._call(self.api.verify(params))
        code = verdict.get("code")
        variables = [
            ("STIRD_VERDICT", str(verdict.get("verdict") or "")),
            ("STIRD_CODE", "" if code is None else str(code)),
            ("STIRD_REASON", str(verdict.get("reason") or "")),
            ("STIRD_VERSTAT", str(verdict.get("verstat") or "")),
            ("STIRD_ATTEST", str(verdict.get("attest") or "")),
            ("STIRD_PAI", str(verdict.get("pai") or "")),
            ("STIRD_REASON_HEADER", str(verdict.get("reason_header") or "")),
        ]
        return variables, str(verdict.get("action") or self.fail_action.value)


async def _verify_params(request: AgiRequest) -> dict[str, Any]:
    """The verify request from the channel: one GET FULL VARIABLE for the usual call,
    then Identity lines 3, 4, … while there are more (at most MAX_IDENTITY_LINES)."""
    values = (await request.get_full(_VERIFY_BATCH)).split("|")
    if len(values) != _VERIFY_FIELDS:  # a value holds '|': read each on its own
        lines = await _identity_lines(request, 1, [])
        headers = [await request.get_full(e) for _, e in _VERIFY_READS]
    else:
        first, second, *headers = values
        lines = [first, second] if first and second else [first] if first else []
        if len(lines) == 2:  # maybe more: line N exists only if line N-1 did
            lines = await _identity_lines(request, 3, lines)
    params: dict[str, Any] = {"identity": _identities(lines)}
    params.update((name, v) for (name, _), v in zip(_VERIFY_READS, headers, strict=True) if v)
    return params


async def _identity_lines(request: AgiRequest, first: int, lines: list[str]) -> list[str]:
    """Identity header lines ``first``, ``first + 1``, … until an empty one."""
    for index in range(first, MAX_IDENTITY_LINES + 1):
        line = await request.get_full(_identity_read(index))
        if not line:
            break
        lines.append(line)
    return lines


def _identities(lines: list[str]) -> list[str]:
    """Every Identity value, one header each, at most MAX_LIST; msec left out."""
    values = [value for line in lines for value in split_identity(line)]
    return [v for v in values if not _is_msec(v)][:MAX_LIST]


def _session_counter(api: StirApi) -> Counter:
    """``stird_agi_sessions_total{route,outcome}`` in the daemon's registry (once)."""
    args = ("stird_agi_sessions", "FastAGI sessions by route and outcome", ["route", "outcome"])
    try:
        return Counter(*args, registry=api.metrics.registry)
    except ValueError:  # a second server on the same registry
        return Counter(*args, registry=None)


__all__ = ["AgiServer", "DtlsCertificates", "DtlsError", "FailAction", "split_identity"]
