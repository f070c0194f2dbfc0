"""The CPS client over aiohttp (:class:`~stird.services.ports.CpsClient`).

Two profiles, chosen per CPS by the service:

* RFC 8816 §9 as served by :mod:`stird.adapters.cps_server` (``GET /keys/{tn}``,
  ``POST``/``GET /cps/{tn}/ppts``; bodies in :mod:`stird.core.cps`), encrypted entries;
* the ATIS-style profile of SHAKEN deployments (:mod:`stird.core.atis`): plain PASSporTs
  under ``/passports/{dest}/{orig}``, ``Authorization: Bearer`` an ES256 JWT signed with
  the operator's SHAKEN credential.

The CPS URL comes from configuration, not from a peer, but it goes through the same
hardened client as the certificate fetcher (:mod:`stird.adapters.httpclient`): https only
unless ``allow_http``, every address vetted against the special-purpose registries
(``allow_networks`` for labs), the same host rules, no redirects, no proxies from the
environment, no decompression, a body cap, and one deadline per request (DNS, connect, TLS
and body).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.httpclient import FetchPolicy, HardenedClient, Refused, TimedOut
from stird.core import atis, cps, oob
from stird.core.errors import StirError
from stird.core.oob import RecipientKey, SealedEntry
from stird.services.ports import CpsFailure, CpsTimeout

log = logging.getLogger(__name__)

MAX_BODY = 2 * 1024 * 1024  # a busy number's list: 100 entries and dummies at 8 KiB
MAX_KEYS = 64
_WORDING = {"refused address": "refused CPS address"}


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
        self._http = HardenedClient(policy, ssl_context=ssl_context, resolver=resolver,
                                    limit_per_host=16)  # fmt: skip

    async def _request(
        self, method: str, url: str, *, body: bytes | None = None,
        headers: dict[str, str] | None = None, expect: tuple[int, ...] = (200,),
    ) -> tuple[int, bytes]:  # fmt: skip
        async def answer(resp: aiohttp.ClientResponse) -> tuple[int, bytes]:
            if resp.status not in expect:
                raise _fail(f"CPS answered HTTP {resp.status}")
            return resp.status, await self._http.read(resp)

        try:
            return await self._http.request(method, url, answer, body=body, headers=headers)
        except TimedOut:
            raise CpsTimeout(f"CPS did not answer within {self.policy.timeout:g} s") from None
        except Refused as exc:
            raise _fail(_WORDING.get(exc.detail, exc.detail)) from None

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
        await self._http.close()


__all__ = ["AtisIdentity", "HttpCpsClient", "StoreIdentity", "default_policy"]
