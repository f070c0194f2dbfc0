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
``s`` inside a Gosub); the Call-ID is ``CHANNEL(pjsip,call-id)``, the string HEP carries.
Lines 1–2 and the rest come in one GET FULL VARIABLE: each command
is a round trip, and under load every round trip waits its turn in stird's event loop.
Sets ``STIRD_VERDICT``, ``STIRD_CODE``, ``STIRD_REASON``, ``STIRD_VERSTAT``,
``STIRD_ATTEST``, ``STIRD_PAI``, ``STIRD_REASON_HEADER``, ``STIRD_MKY``.

The dialplan cannot read the SDP. For a `ppt=msec` header the route takes the INVITE's
offer from the HEP collector (``[asterisk] hep``, stird.adapters.hep), waiting at most
``hep_wait`` for its copy; without it ``msec_without_sdp`` decides: ``unchecked`` (verify
the rest, mky unchecked, never TN-Validation-Passed on it alone), ``ignore`` (left out as an
unsupported ppt, RFC 8224 §6.2 step 1) or ``reject`` (an msec PASSporT without SDP: 438).
``STIRD_MKY`` says which: ``checked``, ``unchecked``, ``ignored``, ``rejected``, or empty
when the call carries no msec PASSporT.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
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
from stird.adapters.hep import HepCollector
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
_SIGN_INPUTS = 7
#: The sign session's results as the channel holds them before it, read in the same
#: GET FULL VARIABLE as the inputs: a result variable already holding its new value
#: (on a fresh channel: STIRD_CODE, STIRD_REASON, often STIRD_IDENTITY_2 are empty) is
#: not set again, and STIRD_ACTION is cleared only when it holds something. The usual
#: session is 4 or 5 commands instead of 8, each a round trip through stird's loop.
_SIGN_OUTPUTS = (
    "STIRD_ACTION", "STIRD_IDENTITY", "STIRD_IDENTITY_2", "STIRD_DATE", "STIRD_CODE",
    "STIRD_REASON",
)  # fmt: skip
_SIGN_BATCH = _SIGN_READ + "".join(f"|${{{name}}}" for name in _SIGN_OUTPUTS)
_VERIFY_READS = (
    ("from", "${PJSIP_HEADER(read,From)}"),
    ("pai", "${PJSIP_HEADER(read,P-Asserted-Identity)}"),
    ("to", "${PJSIP_HEADER(read,To)}"),
    ("date", "${PJSIP_HEADER(read,Date)}"),
    ("call_id", "${CHANNEL(pjsip,call-id)}"),
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


class MsecWithoutSdp(enum.StrEnum):
    """What the verify route does with an msec PASSporT whose SDP it cannot see."""

    UNCHECKED = "unchecked"  # verify the rest; mky unchecked, never TN-Validation-Passed
    IGNORE = "ignore"  # an unsupported ppt (RFC 8224 §6.2 step 1), as before HEP
    REJECT = "reject"  # an msec PASSporT without SDP: 438


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
        hep: HepCollector | None = None,
        hep_wait: float = 0.05,
        msec_without_sdp: MsecWithoutSdp | str = MsecWithoutSdp.UNCHECKED,
    ) -> None:
        self.api, self.dtls, self.timeout = api, dtls, timeout
        self.hep, self.hep_wait = hep, hep_wait
        self.msec_without_sdp = MsecWithoutSdp(msec_without_sdp)
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

    async def start(
        self, host: str = "127.0.0.1", port: int = 4573, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
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
            self._admit, None if sock else host, None if sock else port, sock=sock,
            limit=MAX_LINE, backlog=LISTEN_BACKLOG,
        )  # fmt: skip
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
        await self._run(request, "sign", self._sign_then_work, clear_first=False)

    async def _sign_then_work(
        self, request: AgiRequest, current: dict[str, str]
    ) -> tuple[Variables, str]:
        """The inputs and the results as they stand in one read (``current``: results that
        do not change are not set again); STIRD_ACTION cleared only when it holds one."""
        inputs, found = await self._sign_read(request)
        current.update(found)
        if current.get("STIRD_ACTION", "?"):  # no stale verdict passes
            await request.set_variable("STIRD_ACTION", "")
            current["STIRD_ACTION"] = ""
        return await self._sign_work(request, inputs)

    async def _sign_read(self, request: AgiRequest) -> tuple[list[str], dict[str, str]]:
        """(the seven inputs, the result variables as they are now); one round trip."""
        values = (await request.get_full(_SIGN_BATCH)).split("|")
        if len(values) == _SIGN_INPUTS + len(_SIGN_OUTPUTS):
            outputs = values[_SIGN_INPUTS:]
            return values[:_SIGN_INPUTS], dict(zip(_SIGN_OUTPUTS, outputs, strict=True))
        # a '|' in some value: the inputs alone, and every result set as before
        return (await request.get_full(_SIGN_READ)).split("|"), {}

    async def _verify(self, request: AgiRequest) -> None:
        await self._run(request, "verify", lambda r, _: self._verify_work(r))

    async def _run(
        self,
        request: AgiRequest,
        route: str,
        work: Callable[[AgiRequest, dict[str, str]], Awaitable[tuple[Variables, str]]],
        *,
        clear_first: bool = True,
    ) -> None:
        """One route: admission, the work, its variables (those ``work`` found already
        set to the same value are left alone), and STIRD_ACTION last ("all set"); a
        failure sets the fail action. ``clear_first``: clear STIRD_ACTION before anything
        else (no stale verdict passes, even a refused one)."""
        outcome = "error"  # until known otherwise (an unexpected exception: logged above)
        current: dict[str, str] = {}  # result variables as the channel holds them, if read
        try:
            if clear_first:
                await request.set_variable("STIRD_ACTION", "")
            try:
                self.api.admit("agi")  # before the channel reads: a refusal costs little
                variables, action = await work(request, current)
                outcome = "ok"
            except (StirError, DtlsError, WorkFailed) as exc:
                variables, action = self._failure(route, request, exc)
                outcome = "failed"
            for name, value in variables:
                if current.get(name) != value:
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
        if self.fail_action is FailAction.CONTINUE:  # the call goes on unsigned/unverified
            self.api.metrics.fail_open.labels("agi", route, str(code)).inc()
        common = [("STIRD_CODE", str(code)), ("STIRD_REASON", reason)]
        if route == "sign":
            return [
                ("STIRD_IDENTITY", ""),
                ("STIRD_IDENTITY_2", ""),
                *common,
            ], self.fail_action.value
        verdict = [("STIRD_VERDICT", "error"), *common, ("STIRD_VERSTAT", "No-TN-Validation")]
        empty = [("STIRD_ATTEST", ""), ("STIRD_PAI", ""), ("STIRD_REASON_HEADER", ""),
                 ("STIRD_MKY", "")]  # fmt: skip
        return [*verdict, *empty], self.fail_action.value

    async def _call(self, operation: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.call_timeout):  # no wait_for task (agi_protocol)
                return await operation
        except TimeoutError:
            raise WorkFailed(f"no answer within {self.call_timeout} s") from None
        except StirError:  # a bad field too
            raise
        except Exception as exc:
            log.exception("FastAGI: internal error")
            raise WorkFailed(f"internal error: {type(exc).__name__}") from None

    # --- sign --------------------------------------------------------------------------

    async def _sign_work(self, request: AgiRequest, inputs: list[str]) -> tuple[Variables, str]:
        result = await self._call(self.api.sign(self._sign_params(request, inputs)))
        identity = [str(v) for v in result.get("identity", [])]
        if self.hep is not None and request.channel:  # connected identity (RFC 8862 §4.3)
            self.hep.expect(identity, request.channel)
        variables = [
            ("STIRD_IDENTITY", identity[0] if identity else ""),
            ("STIRD_IDENTITY_2", identity[1] if len(identity) > 1 else ""),
            *((f"STIRD_IDENTITY_{n}", v) for n, v in enumerate(identity[2:], start=3)),
            ("STIRD_DATE", str(result.get("date") or "")),
            ("STIRD_CODE", ""),
            ("STIRD_REASON", ""),
        ]
        return variables, "continue"

    def _sign_params(self, request: AgiRequest, values: list[str]) -> dict[str, Any]:
        env, args = request.env, agi_args(request.env)
        args += [""] * (3 - len(args))
        if len(values) != _SIGN_INPUTS:
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
        mky = await self._media(params)
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
            ("STIRD_MKY", mky),
        ]
        return variables, str(verdict.get("action") or self.fail_action.value)

    async def _media(self, params: dict[str, Any]) -> str:
        """The SDP for an msec PASSporT's mky (from HEP, bounded wait) or the policy
        without it; returns what ``STIRD_MKY`` reports."""
        identities: list[str] = params["identity"]
        if not any(_is_msec(v) for v in identities):
            return ""
        call_id = params.get("call_id")
        sdp: str | None = None
        if self.hep is not None and call_id:
            sdp = await self.hep.store.wait_offer(str(call_id), self.hep_wait)
            self.hep.metrics.hep_sdp.labels("match" if sdp is not None else "miss").inc()
        if sdp is not None:
            params["sdp"] = sdp
            return "checked"
        policy = self.msec_without_sdp
        if policy is MsecWithoutSdp.IGNORE:
            params["identity"] = [v for v in identities if not _is_msec(v)]
            return "ignored"
        if policy is MsecWithoutSdp.UNCHECKED:
            params["sdp_unavailable"] = True
            return "unchecked"
        return "rejected"  # verified without an SDP: 438 (RFC 8862 §4.4 rejects)


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
    """Every Identity value, one header each, at most MAX_LIST (msec: see _media)."""
    return [value for line in lines for value in split_identity(line)][:MAX_LIST]


def _session_counter(api: StirApi) -> Counter:
    """``stird_agi_sessions_total{route,outcome}`` in the daemon's registry (once)."""
    args = ("stird_agi_sessions", "FastAGI sessions by route and outcome", ["route", "outcome"])
    try:
        return Counter(*args, registry=api.metrics.registry)
    except ValueError:  # a second server on the same registry
        return Counter(*args, registry=None)


__all__ = ["AgiServer", "DtlsCertificates", "DtlsError", "FailAction", "MsecWithoutSdp",
           "split_identity"]  # fmt: skip
