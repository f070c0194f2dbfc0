"""The HTTP listener (aiohttp): REST endpoints, JSON-RPC, health, metrics, certificates."""

from __future__ import annotations

import hmac
import re
from typing import Any

from aiohttp import web

from stird.adapters import jsoncodec
from stird.adapters.api import StirApi
from stird.adapters.errors import PARSE_ERROR, mapped
from stird.adapters.jsonrpc import Dispatcher, error
from stird.adapters.requests import FieldError
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
_GUARDED = ("/v1/", "/jsonrpc", "/metrics")


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
    api: StirApi, *, max_body: int = 256 * 1024, token: str | None = None
) -> web.Application:
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
    return app
