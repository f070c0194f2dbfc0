"""The CPS over HTTP (aiohttp): RFC 8816 §9 storage and retrieval, and the key directory.

Routes and bodies are documented in :mod:`stird.core.cps`. :func:`add_cps_routes` mounts
them on an existing application (``stird serve`` runs the CPS in-process);
:func:`build_cps_app` is the standalone server with ``GET /healthz``.

Errors are JSON ``{"error": "...", "check": "..."}``: 400 malformed input, 403 an
untrusted or non-covering publication or store token, 404 unknown route, 413 body over the
cap, 415 wrong Content-Type, 429 over a flood-control cap or request rate, 503 store
unavailable or full, decoy budget spent, or stird running late (429 and 503 carry
Retry-After). Clients are told apart by peer address — an IPv6 peer by its /64, since one
host commonly holds a whole /64 (RFC 8816 §7.5 flood control without authenticating the
storer); ``X-Forwarded-For`` is not trusted.

Admission comes before any work: token buckets per client address (:class:`CpsLimits`,
separate for retrievals, anonymous stores and signed stores) in bounded tables, and, when
the CPS shares stird's event loop, ``lagging()`` — true while the loop runs late, at a
lower threshold than the one that sheds sign/verify — refuses every CPS request with 503
at once, so a CPS flood is turned away before it can make stird shed the PBX's work. A
store with ``Authorization: Bearer`` is checked (:meth:`CpsService.authenticate`) and
counted under its signer's own quota; one whose token does not verify is stored as an
anonymous one (and charged to the anonymous rate too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address, ip_network
from typing import Any

from aiohttp import web

from stird.core import cps, oobkeys
from stird.core.errors import Check, SipStatus, StirError
from stird.services.cps import CpsBusy, CpsRefused, CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsAdmission
from stird.services.stores import StoreUnavailable

log = logging.getLogger(__name__)

MAX_STORE_BODY = 64 * 1024  # a batch of 16 hybrid entries at the largest bucket fits
MAX_KEYS_BODY = 256 * 1024
_FORBIDDEN_CHECKS = frozenset({Check.TRUST, Check.AUTHORITY, Check.SIGNATURE, Check.FRESHNESS})
_NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Ping = Callable[[], Awaitable[None]]
Lagging = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class CpsLimits:
    """Request rates per client address (token buckets: ``rate`` a second, up to
    ``burst``), checked before any work."""

    retrieve_rate: float = 20.0  # GET /cps..., GET /keys...
    retrieve_burst: float = 40.0
    store_rate: float = 5.0  # anonymous POST /cps/{tn}/ppts
    store_burst: float = 20.0
    signed_rate: float = 50.0  # signed stores and key publications (before the check)
    signed_burst: float = 100.0
    max_clients: int = 10_000  # buckets per table (least recently used forgotten)
    concurrent: int = 4  # CPS requests working at once (the rest wait, suspended)
    queued: int = 64  # CPS requests waiting for a turn; past it: 503 at once


class _Gate:
    """At most ``concurrent`` CPS requests work at a time: a flood's requests wait
    suspended instead of all becoming ready in one loop pass, so sign and verify share
    the event loop with a few CPS requests at a time, not with the whole flood."""

    def __init__(self, concurrent: int, queued: int) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._waiting, self._queued = 0, queued
        self.refused = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._queued:
            self.refused += 1
            raise CpsBusy("busy: try again later", 1.0)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


class _Admission:
    def __init__(self, limits: CpsLimits, lagging: Lagging | None, clock: Callable[[], float]):
        n = limits.max_clients
        self.tables = {
            "retrieve": cps.RateTable(limits.retrieve_rate, limits.retrieve_burst, n),
            "store": cps.RateTable(limits.store_rate, limits.store_burst, n),
            "signed": cps.RateTable(limits.signed_rate, limits.signed_burst, n),
        }
        self.lagging, self.clock = lagging, clock
        self.refused = {"lagging": 0, **dict.fromkeys(self.tables, 0)}

    def admit(self, kind: str, request: web.Request) -> str:
        """The client key of ``request``, or :class:`CpsBusy` (503 late, 429 over rate)."""
        if self.lagging is not None and self.lagging():
            self.refused["lagging"] += 1
            raise CpsBusy("busy: try again later", 1.0)
        client = client_key(request.remote)
        wait = self.tables[kind].take(client, self.clock())
        if wait:
            self.refused[kind] += 1
            raise CpsBusy("too many requests from this client", wait, status=429)
        return client


def client_key(remote: str | None) -> str:
    """The flood-control identity of a peer: its IPv4 address or its IPv6 /64."""
    if not remote:
        return "unknown"
    try:
        address = ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote[:64]
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> web.Response:  # fmt: skip
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _stir_status(exc: StirError) -> int:
    if exc.status is SipStatus.FORBIDDEN or exc.check in _FORBIDDEN_CHECKS:
        return 403
    return 400


class _TooLarge(Exception):
    pass


async def _read(request: web.Request, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.content.iter_chunked(16384):
        body += chunk
        if len(body) > cap:
            raise _TooLarge
    return bytes(body)


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StirError as exc:
            return _error(_stir_status(exc), exc.detail, check=exc.check.value)
        except _TooLarge:
            return _error(413, "body too large")
        except CpsBusy as exc:
            return _error(exc.status, exc.reason, {"Retry-After": str(exc.retry_after)})
        except CpsRefused as exc:
            full = exc.admission is CpsAdmission.STORE_FULL
            return _error(503 if full else 429, exc.admission.value, {"Retry-After": "60"})
        except StoreUnavailable as exc:
            log.warning("CPS store unavailable: %s", exc)
            return _error(503, "store unavailable", {"Retry-After": "5"})

    return guarded


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise StirError(SipStatus.BAD_REQUEST, "Authorization must be a Bearer token")
    return token.strip()


class _Routes:
    def __init__(
        self, service: CpsService, directory: KeyDirectory | None, max_body: int,
        admission: _Admission, gate: _Gate,
    ) -> None:  # fmt: skip
        self.service, self.directory, self.max_body = service, directory, max_body
        self.admission, self.gate = admission, gate

    async def store(self, request: web.Request) -> web.Response:
        token = _bearer(request)
        client = self.admission.admit("store" if token is None else "signed", request)
        tn = cps.parse_tn(request.match_info["tn"])
        if request.content_type not in (cps.PASSPORT_TYPE, cps.JSON_TYPE):
            return _error(415, f"Content-Type must be {cps.PASSPORT_TYPE} or {cps.JSON_TYPE}")
        body = await _read(request, self.max_body)  # outside the gate: a slow peer waits alone
        async with self.gate.turn():  # a few CPS requests at a time
            entries = cps.parse_store_body(
                request.content_type, body, self.service.policy.max_batch
            )
            signer = None if token is None else await self._signer(token, tn, body, request)
            ids = await self.service.store(tn, entries, client, signer)
        locations = [cps.entry_path(tn, i) for i in ids]
        doc = {"ids": list(ids), "locations": locations, "ttl": self.service.policy.ttl}
        return web.json_response(doc, status=201, headers={"Location": locations[0]})

    async def _signer(self, token: str, tn: str, body: bytes, request: web.Request) -> str | None:
        """The verified signer; a token that does not verify (another CPS's credential,
        stale, replayed...) makes an anonymous store, charged to the anonymous rate."""
        try:
            return await self.service.authenticate(token, tn, body)
        except StirError as exc:
            log.debug("store token not accepted (%s): storing anonymously", exc.detail)
        self.admission.admit("store", request)
        return None

    async def collection(self, request: web.Request) -> web.Response:
        self.admission.admit("retrieve", request)
        async with self.gate.turn():  # a few CPS requests at a time
            tn = cps.parse_tn(request.match_info["tn"])
            items = await self.service.retrieve(tn)
            doc = cps.list_document(tn, [(item.id, item.entry) for item in items])
            return web.json_response(doc, headers=_NO_STORE)

    async def one(self, request: web.Request) -> web.Response:
        self.admission.admit("retrieve", request)
        async with self.gate.turn():  # a few CPS requests at a time
            tn = cps.parse_tn(request.match_info["tn"])
            entry = await self.service.get(tn, request.match_info["id"])
            headers = {**_NO_STORE, "Link": f'<{cps.collection_path(tn)}>; rel="collection"'}
            return web.Response(text=entry.text, content_type=cps.PASSPORT_TYPE, headers=headers)

    def _directory(self) -> KeyDirectory:
        if self.directory is None:
            raise StirError(SipStatus.BAD_REQUEST, "no key directory on this server")
        return self.directory

    async def publish(self, request: web.Request) -> web.Response:
        self.admission.admit("signed", request)
        tn = cps.parse_tn(request.match_info["tn"])
        directory = self._directory()
        try:
            token = (await _read(request, MAX_KEYS_BODY)).decode("ascii")  # outside the gate
        except UnicodeDecodeError:
            return _error(400, "a key publication is an ASCII JWS")
        async with self.gate.turn():  # a few CPS requests at a time
            if tn not in oobkeys.read_publication(token).tns:
                return _error(400, f"the publication does not name {tn}")
            pub = await directory.publish(token)
        doc = {"tns": list(pub.tns), "kids": [k.kid for k in pub.keys], "exp": pub.exp}
        return web.json_response(doc, status=201 if request.method == "POST" else 200)

    async def keys(self, request: web.Request) -> web.Response:
        self.admission.admit("retrieve", request)
        async with self.gate.turn():  # a few CPS requests at a time
            tn = cps.parse_tn(request.match_info["tn"])
            entry = await self._directory().lookup(tn)
            return web.json_response(entry.to_json(), headers={"Cache-Control": "max-age=30"})


def add_cps_routes(
    app: web.Application,
    service: CpsService,
    directory: KeyDirectory | None = None,
    *,
    max_body: int = MAX_STORE_BODY,
    limits: CpsLimits | None = None,
    lagging: Lagging | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """Mount ``/cps/{tn}/ppts…`` and, with a directory, ``/keys/{tn}`` on ``app``;
    returns the live counts of requests refused at admission, by reason."""
    limits = limits or CpsLimits()
    admission = _Admission(limits, lagging, clock)
    gate = _Gate(limits.concurrent, limits.queued)
    routes = _Routes(service, directory, max_body, admission, gate)
    app.router.add_post("/cps/{tn}/ppts", _guard(routes.store))
    app.router.add_get("/cps/{tn}/ppts", _guard(routes.collection))
    app.router.add_get("/cps/{tn}/ppts/{id}", _guard(routes.one))
    if directory is not None:
        app.router.add_put("/keys/{tn}", _guard(routes.publish))
        app.router.add_post("/keys/{tn}", _guard(routes.publish))
        app.router.add_get("/keys/{tn}", _guard(routes.keys))
    return admission.refused


def build_cps_app(
    service: CpsService,
    directory: KeyDirectory | None = None,
    *,
    ping: Ping | None = None,
    max_body: int = MAX_STORE_BODY,
    limits: CpsLimits | None = None,
) -> web.Application:
    """The standalone CPS: the routes above plus ``GET /healthz`` (503 when ``ping``
    fails, e.g. Redis is down)."""

    async def healthz(request: web.Request) -> web.Response:
        doc: dict[str, Any] = {"status": "ok", "stored": service.stored,
                               "refused": service.refused, "busy": service.busy,
                               "seals": service.seals, "admission_refused": refused}  # fmt: skip
        if ping is not None:
            try:
                await ping()
            except StoreUnavailable as exc:
                return web.json_response({**doc, "status": "store unavailable",
                                          "detail": str(exc)}, status=503)  # fmt: skip
        return web.json_response(doc)

    app = web.Application(client_max_size=max(max_body, MAX_KEYS_BODY))
    refused = add_cps_routes(app, service, directory, max_body=max_body, limits=limits)
    app.router.add_get("/healthz", healthz)
    return app
