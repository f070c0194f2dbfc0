"""The HTTP listener (aiohttp): REST endpoints, JSON-RPC, health, metrics, certificates."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from stird.adapters import jsoncodec
from stird.adapters.api import StirApi
from stird.adapters.connpolicy import Connection, ConnectionTracker, Phase, fd_of
from stird.adapters.errors import PARSE_ERROR, mapped
from stird.adapters.jsonrpc import Dispatcher, error
from stird.adapters.requests import FieldError
from stird.adapters.status_page import StatusView
from stird.core.errors import StirError

_CERT_NAME = re.compile(r"[\w.-]{1,64}")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=jsoncodec.dumps(body), status=status, content_type="application/json")


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


class TooLarge(Exception):
    pass


async def _body(request: web.Request) -> Any:
    try:
        return jsoncodec.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge from None
    except (ValueError, UnicodeDecodeError):
        raise FieldError("body", "not valid JSON") from None


def _wrap(operation: Any) -> Any:
    async def handler(request: web.Request) -> web.Response:
        try:
            return _json(await operation(await _body(request)))
        except TooLarge:
            return _json_error(413, "body too large", field="body")
        except StirError as exc:  # a bad field too: 400 (stird.adapters.errors)
            m = mapped(exc)
            extra = {"field": m.field} if m.field is not None else {}
            answer = _json_error(m.http, exc.detail, code=m.sip, reason=m.reason, **extra)
            if m.retry_after is not None:
                answer.headers["Retry-After"] = m.retry_after
            return answer

    return handler


#: What a bearer token guards: the operations and what they reveal. Certificates
#: (``/certs/``: verifiers fetch them through ``x5u``), the CPS (RFC 8816: public by
#: design, flood-capped) and ``/healthz`` stay open.
_GUARDED = ("/v1/", "/jsonrpc", "/metrics", "/status")


def bearer_guard(token: str) -> Any:
    """RFC 6750 §2.1 ``Authorization: Bearer <token>`` on the guarded paths; 401 with
    ``WWW-Authenticate`` (RFC 6750 §3) otherwise. Compared in constant time."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(_GUARDED):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                refused = _json_error(401, "missing or wrong bearer token")
                refused.headers["WWW-Authenticate"] = 'Bearer realm="stird"'
                return refused
        answer: web.StreamResponse = await handler(request)
        return answer

    return guard


def build_app(
    api: StirApi, *, max_body: int = 256 * 1024, token: str | None = None,
    status: StatusView | None = None,
) -> web.Application:  # fmt: skip
    dispatcher = Dispatcher(api.methods())

    async def jsonrpc(request: web.Request) -> web.Response:
        try:
            message = jsoncodec.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _json(error(PARSE_ERROR, "parse error"))
        answer = await dispatcher.handle(message)
        return _json(answer) if answer is not None else web.Response(status=204)

    async def healthz(request: web.Request) -> web.Response:
        return _json(await api.status())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=api.metrics.render(), content_type="text/plain", charset="utf-8")

    async def certificate(request: web.Request) -> web.Response:
        name = request.match_info["name"].removesuffix(".pem")
        pem = api.runtime.certificates.get(name) if _CERT_NAME.fullmatch(name) else None
        if pem is None:
            return _json_error(404, "no such certificate")
        return web.Response(body=pem, content_type="application/pem-certificate-chain")

    middlewares = [bearer_guard(token)] if token is not None else []
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app.router.add_post("/v1/sign", _wrap(api.sign))
    app.router.add_post("/v1/verify", _wrap(api.verify))
    app.router.add_post("/v1/dialog", _wrap(api.dialog))
    app.router.add_post("/jsonrpc", jsonrpc)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/certs/{name}", certificate)
    if status is not None:  # /status, /status.json, /status/call (adapters/status_page.py)
        status.mount(app.router)
    return app


# --- the connection policy on aiohttp's listener ------------------------------------------
# aiohttp's server has one timer, keepalive_timeout (default 3,630 s), which closes a
# connection only while no request head is complete: a head trickled for an hour, or a
# body announced and never sent, holds the connection (and the handler) for good. Each
# connection's RequestHandler therefore reports to a ConnectionTracker what it waits for:
# the head (from the accept, or from the first byte after an answer), the body (from the
# complete head until the payload's EOF), or nothing (an answer is being made), and the
# tracker closes it past its deadline, at the listener's cap or past the frame budget.


HOLD_OFF = 0.5  # seconds a connection's reading pauses after a 429 or 503 answer on it


class _PolicedHandler(RequestHandler):
    """aiohttp's per-connection protocol, reporting its phases to a tracker."""

    __slots__ = ("_conn", "_received", "_tracker")

    def __init__(self, tracker: ConnectionTracker, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._tracker = tracker
        self._conn: Connection | None = None
        self._received = 0  # bytes of the unfinished head or body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tcp = cast(asyncio.Transport, transport)
        self._conn = self._tracker.admit(tcp.abort, Phase.HEAD, fd_of(tcp))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._conn is not None:
            self._conn.release()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp logs a handler's failure with its traceback; not when the policy closed
        the connection under it (counted and logged by the tracker): formatting a
        traceback for each evicted attacker cost more than the attack itself."""
        if self._conn is None or not self._conn.closed:
            super().log_exception(*args, **kw)
            return
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            # the request's payload reader keeps this exception, whose frames keep the
            # request: a cycle per evicted connection that only a full (slow) collection
            # would free. Its traceback is of no use to anyone: drop it.
            exc.__traceback__ = None

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            if conn.phase is Phase.IDLE:
                conn.wait(Phase.HEAD)  # the next request has begun
                self._received = 0
            if conn.phase is not Phase.IDLE:
                self._received += len(data)
                conn.hold(self._received)
        super().data_received(data)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        conn = self._conn
        if conn is None:
            return await super()._handle_request(request, start_time, request_handler)
        conn.begin()
        content = request.content
        self._received = 0
        conn.hold(0)
        if content.is_eof():
            conn.wait(Phase.IDLE, fresh=True)
        else:
            conn.wait(Phase.BODY, content.is_eof, fresh=True)
        try:
            answer = await super()._handle_request(request, start_time, request_handler)
        finally:
            conn.hold(0)  # the body is the handler's (or abandoned) now
            if conn.phase is Phase.BODY:
                conn.wait(Phase.IDLE)
            conn.end()
        if answer[0].status in (429, 503):
            self._hold_off()
        return answer

    def _hold_off(self) -> None:
        """Told to slow down (429, 503): this connection's next request is read only after
        :data:`HOLD_OFF` s, so a flood over kept-alive connections cannot queue ahead of
        everyone else's requests as fast as it is refused."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(RuntimeError, AttributeError):
            transport.pause_reading()
            asyncio.get_running_loop().call_later(HOLD_OFF, self._resume)

    def _resume(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(RuntimeError, AttributeError):
                transport.resume_reading()


class PolicedSite(web.SockSite):
    """A listening socket whose connections live under ``tracker``'s policy."""

    __slots__ = ("_tracker",)

    def __init__(
        self, runner: web.BaseRunner, sock: socket.socket, tracker: ConnectionTracker,
        *, backlog: int,
    ) -> None:  # fmt: skip
        super().__init__(runner, sock, backlog=backlog)
        self._tracker = tracker

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site (SockSite.start would serve)
        server, policy = self._runner.server, self._tracker.policy
        assert server is not None  # set by runner.setup(), which BaseSite checks
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {
            **server._kwargs,  # what the runner was given (web.Server.__call__ passes them)
            "loop": loop,
            "access_log": None,
            # a backstop only: the tracker closes idle connections first
            "keepalive_timeout": policy.idle_timeout + policy.header_timeout,
            # reading out a body the handler did not want: at most this long
            "lingering_time": min(policy.body_timeout, 10.0),
        }

        def protocol() -> _PolicedHandler:
            return _PolicedHandler(self._tracker, server, **options)

        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)

    async def stop(self) -> None:
        await super().stop()
        self._tracker.stop()  # what is in flight finishes: the runner's graceful shutdown
