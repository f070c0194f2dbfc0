"""The CPS client over aiohttp (:class:`~stird.services.ports.CpsClient`).

Two profiles, chosen per CPS by the service:

* RFC 8816 §9 as served by :mod:`stird.adapters.cps_server` (``GET /keys/{tn}``,
  ``POST``/``GET /cps/{tn}/ppts``; bodies in :mod:`stird.core.cps`), encrypted entries;
* the ATIS-style profile of SHAKEN deployments (:mod:`stird.core.atis`): plain PASSporTs
  under ``/passports/{dest}/{orig}``, ``Authorization: Bearer`` an ES256 JWT signed with
  the operator's SHAKEN credential.

The CPS URL comes from configuration, not from a peer, but the same hygiene as the
certificate fetcher applies: https only unless ``allow_http``, every address vetted
against the special-purpose registries (:class:`~stird.adapters.certfetch.VettingResolver`,
``allow_networks`` for labs), no redirects, no proxies from the environment, no
decompression, a body cap, and one deadline per request (DNS, connect, TLS and body).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.certfetch import FetchPolicy, VettingResolver, is_public_address
from stird.core import atis, cps, oob
from stird.core.errors import StirError
from stird.core.oob import RecipientKey, SealedEntry
from stird.services.ports import CpsFailure, CpsTimeout

log = logging.getLogger(__name__)

MAX_BODY = 2 * 1024 * 1024  # a busy number's list: 100 entries and dummies at 8 KiB
MAX_KEYS = 64
_CHUNK = 16384
_MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """Who signs RFC 8816 stores (``Authorization: Bearer``, :func:`stird.core.cps.store_token`):
    a CPS that trusts the credential counts them under their signer's own quota."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class AtisIdentity:
    """Who signs the ATIS Bearer tokens: the SHAKEN key, its certificate URL, its SPC."""

    key: ec.EllipticCurvePrivateKey
    x5u: str
    spc: str
    lifetime: int = 60  # publish token exp − iat; RFC 8816 §7.5 freshness


def default_policy(timeout: float, **lab: Any) -> FetchPolicy:
    """A :class:`FetchPolicy` for CPS requests (``lab``: allow_http, allow_networks...)."""
    return FetchPolicy(timeout=timeout, max_bytes=MAX_BODY, **lab)


def _fail(detail: str) -> CpsFailure:
    return CpsFailure(detail)


def _checked_url(url: str, policy: FetchPolicy) -> yarl.URL:
    if len(url) > _MAX_URL or any(ch <= " " or ch == "\x7f" for ch in url):
        raise _fail("malformed CPS URL")
    try:
        target = yarl.URL(url)
    except ValueError:
        raise _fail("malformed CPS URL") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if target.scheme not in schemes:
        raise _fail(f"CPS URL scheme not allowed (use {' or '.join(schemes)})")
    if not target.raw_host or "@" in urllib.parse.urlsplit(url).netloc:
        raise _fail("CPS URL needs a host and no userinfo")
    _vet_literal(target, policy)
    return target


def _vet_literal(target: yarl.URL, policy: FetchPolicy) -> None:
    """IP-literal hosts never reach the resolver, so they are vetted here."""
    host = (target.host or "").lower().rstrip(".")
    if host in {h.lower().rstrip(".") for h in policy.allow_hosts}:
        return
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        if host.replace(".", "").isdigit():
            raise _fail("malformed CPS host") from None
        return
    if not (is_public_address(addr) or any(addr in net for net in policy.allow_networks)):
        raise _fail("refused CPS address")


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed or address refused"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS failure"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    return "HTTP failure"


class HttpCpsClient:
    """One connection pool for every CPS; created on first use, closed by :meth:`close`."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        atis_identity: AtisIdentity | None = None,
        store_identity: StoreIdentity | None = None,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy, self._atis, self._clock = policy, atis_identity, clock
        self._signer = store_identity
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: VettingResolver | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._resolver = VettingResolver(self.policy, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver, ssl=self._ssl, limit=64, limit_per_host=16,
                ttl_dns_cache=60,
            )  # fmt: skip
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                headers={aiohttp.hdrs.USER_AGENT: self.policy.user_agent,
                         aiohttp.hdrs.ACCEPT_ENCODING: "identity"},
            )  # fmt: skip
        return self._session

    async def _request(
        self, method: str, url: str, *, body: bytes | None = None,
        headers: dict[str, str] | None = None, expect: tuple[int, ...] = (200,),
    ) -> tuple[int, bytes]:  # fmt: skip
        target = _checked_url(url, self.policy)
        try:
            async with asyncio.timeout(self.policy.timeout):
                return await self._exchange(method, target, body, headers or {}, expect)
        except TimeoutError:
            raise CpsTimeout(f"CPS did not answer within {self.policy.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise _fail(_describe(exc)) from None
        except (ssl.SSLError, OSError):
            raise _fail("connection failed") from None

    async def _exchange(
        self, method: str, target: yarl.URL, body: bytes | None, headers: dict[str, str],
        expect: tuple[int, ...],
    ) -> tuple[int, bytes]:  # fmt: skip
        session = self._get_session()
        async with session.request(
            method, target, data=body, headers=headers, allow_redirects=False
        ) as resp:
            if resp.status not in expect:
                raise _fail(f"CPS answered HTTP {resp.status}")
            limit = self.policy.max_bytes
            if resp.content_length is not None and resp.content_length > limit:
                raise _fail(f"CPS answer larger than {limit} bytes")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise _fail(f"CPS answer larger than {limit} bytes")
            return resp.status, bytes(data)

    # --- RFC 8816 §9 --------------------------------------------------------------------

    async def recipient_keys(self, cps_url: str, tn: str) -> tuple[RecipientKey, ...]:
        url = f"{cps_url.rstrip('/')}/keys/{oob.check_tn(tn)}"
        _, body = await self._request("GET", url, headers={"Accept": cps.JSON_TYPE})
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _fail("key directory answer is not JSON") from None
        jwks = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(jwks, list):
            raise _fail('key directory answer has no "keys" list')
        keys: list[RecipientKey] = []
        for jwk in jwks[:MAX_KEYS]:
            try:
                keys.append(oob.key_from_jwk(jwk))
            except StirError as exc:
                log.info("ignoring an unusable encryption key for %s: %s", tn, exc.detail)
        return tuple(keys)

    async def store_sealed(self, cps_url: str, tn: str, entries: Sequence[SealedEntry]) -> None:
        content_type, body = cps.store_body(entries)
        url = f"{cps_url.rstrip('/')}{cps.collection_path(tn)}"
        headers = {"Content-Type": content_type}
        if self._signer is not None:
            token = cps.store_token(tn, body, key=self._signer.key, chain=self._signer.chain,
                                    now=int(self._clock()), jti=uuid.uuid4().hex)  # fmt: skip
            headers["Authorization"] = f"Bearer {token}"
        await self._request("POST", url, body=body, headers=headers, expect=(200, 201))

    async def fetch_sealed(self, cps_url: str, tn: str) -> tuple[SealedEntry, ...]:
        url = f"{cps_url.rstrip('/')}{cps.collection_path(tn)}"
        _, body = await self._request("GET", url, headers={"Accept": cps.JSON_TYPE})
        try:
            return tuple(entry for _, entry in cps.parse_list_document(body))
        except StirError as exc:
            raise _fail(f"CPS list: {exc.detail}") from None

    # --- ATIS-style profile -------------------------------------------------------------

    def _atis_request(
        self, action: atis.Action, cps_url: str, dest: str, orig: str, passports: Sequence[str]
    ) -> tuple[str, dict[str, str]]:
        me = self._atis
        if me is None:
            raise _fail("no ATIS credential configured ([oob] atis_credential, atis_spc)")
        try:
            url = atis.passports_url(cps_url, dest, orig)
        except StirError as exc:
            raise _fail(exc.detail) from None
        audience = yarl.URL(cps_url).host or ""
        request = atis.AuthRequest(action, me.spc, audience, dest, orig, tuple(passports))
        token = atis.auth_token(request, me.key, me.x5u, now=int(self._clock()),
                                jti=str(uuid.uuid4()), lifetime=me.lifetime)  # fmt: skip
        return url, {"Authorization": f"Bearer {token}"}

    async def store_plain(
        self, cps_url: str, dest: str, orig: str, passports: Sequence[str]
    ) -> None:
        url, headers = self._atis_request(atis.Action.PUBLISH, cps_url, dest, orig, passports)
        headers["Content-Type"] = cps.JSON_TYPE
        await self._request("POST", url, body=atis.passports_body(passports), headers=headers,
                            expect=(200, 201, 202, 204))  # fmt: skip

    async def fetch_plain(self, cps_url: str, dest: str, orig: str) -> tuple[str, ...]:
        url, headers = self._atis_request(atis.Action.RETRIEVE, cps_url, dest, orig, ())
        headers["Accept"] = cps.JSON_TYPE
        status, body = await self._request("GET", url, headers=headers, expect=(200, 204, 404))
        if status != 200 or not body:  # nothing stored for this call
            return ()
        try:
            return atis.parse_passports_body(body)
        except StirError as exc:
            raise _fail(exc.detail) from None

    async def close(self) -> None:
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()


__all__ = ["AtisIdentity", "HttpCpsClient", "StoreIdentity", "default_policy"]
