"""Downloading the credential of an ``info`` URL (RFC 8224 §6.2 step 3, §7.2).

The URL comes from the peer, so this is the daemon's most exposed client. It runs on
:mod:`stird.adapters.httpclient` (SSRF rules, one deadline, body cap, no redirects: the
hardening shared with the CPS client) and adds what is particular to certificates: the
accepted content types and the cache lifetime of the answer (RFC 9111).

Every failure is a :class:`StirError` 436 Bad Identity Info with ``check=credential`` and a
short detail; the body is never logged or echoed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver

from stird.adapters.closing import AsyncClosing
from stird.adapters.httpclient import (
    FetchPolicy,
    HardenedClient,
    Refused,
    VettingResolver,
    is_public_address,
)
from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.services.ports import FetchedCredential

__all__ = [
    "FetchPolicy", "HttpCertificateFetcher", "VettingResolver", "cache_lifetime",
    "is_public_address",
]  # fmt: skip

#: RFC 9111 §1.2.2: delta-seconds beyond 2^31 are taken as 2^31.
MAX_DELTA_SECONDS: Final = 2**31
_ACCEPTED_TYPES: Final = frozenset(
    {
        "application/pkix-cert",  # RFC 2585 §4.1, DER
        "application/x-x509-ca-cert",
        "application/pem-certificate-chain",  # RFC 8555 §9.1
        "application/x-pem-file",
        "application/octet-stream",
        "text/plain",
    }
)
_ACCEPT: Final = "application/pem-certificate-chain, application/pkix-cert;q=0.9, */*;q=0.1"


def _fail(detail: str) -> StirError:
    return StirError(
        SipStatus.BAD_IDENTITY_INFO, f"cannot fetch certificate: {detail}", check=Check.CREDENTIAL
    )


# --- response checks -----------------------------------------------------------------------


def _delta_seconds(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA_SECONDS)


def _directives(cache_control: list[str]) -> dict[str, str | None]:
    """Cache-Control directives (RFC 9111 §5.2), names lowercased; first occurrence wins."""
    out: dict[str, str | None] = {}
    for field in cache_control:
        for part in field.split(","):
            name, eq, value = part.strip().partition("=")
            if name:
                out.setdefault(name.strip().lower(), value.strip().strip('"') if eq else None)
    return out


def _http_date(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, source zone unknown (RFC 5322 §3.3)
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _expires_lifetime(expires: str | None, date: str | None) -> float | None:
    """Expires − Date (RFC 9111 §4.2.1); an invalid Expires is already stale (§5.3)."""
    received = _http_date(date)
    if expires is None or received is None:
        return None
    deadline = _http_date(expires)
    return 0.0 if deadline is None else max(0.0, deadline - received)


def cache_lifetime(
    cache_control: list[str], expires: str | None, date: str | None
) -> tuple[float | None, bool]:
    """(max_age, no_store) from a response's caching headers (RFC 9111 §4.2.1, §5.2.2).

    ``s-maxage`` wins over ``max-age`` (stird's certificate cache is shared, §5.2.2.10);
    either one overrides Expires (§5.3); ``no-cache`` means revalidate, i.e. age 0; a
    malformed delta gives None (no lifetime)."""
    directives = _directives(cache_control)
    no_store = "no-store" in directives
    if "no-cache" in directives:
        return 0.0, no_store
    for name in ("s-maxage", "max-age"):
        if name in directives:
            delta = _delta_seconds(directives[name])
            return (None if delta is None else float(delta)), no_store
    return _expires_lifetime(expires, date), no_store


def _check_response(resp: aiohttp.ClientResponse) -> None:
    if resp.status != 200:
        raise _fail(f"HTTP status {resp.status}")
    content_type = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE, "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _ACCEPTED_TYPES:
        raise _fail("unexpected content type")


# --- the fetcher ---------------------------------------------------------------------------


class HttpCertificateFetcher(AsyncClosing):
    """:class:`~stird.services.ports.CertificateFetcher` over the hardened client.

    One session (and connection pool) is created on first use and shared by every fetch;
    ``resolver`` replaces the resolver wrapped by the address vetting (tests, aiodns)."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._client = HardenedClient(
            policy or FetchPolicy(), ssl_context=ssl_context, resolver=resolver,
            headers={aiohttp.hdrs.ACCEPT: _ACCEPT},
        )  # fmt: skip

    @property
    def policy(self) -> FetchPolicy:
        return self._client.policy

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The shared connection pool, None before the first fetch or after close."""
        return self._client.connector

    async def fetch(self, url: str) -> FetchedCredential:
        try:
            body, max_age, no_store = await self._client.request("GET", url, self._download)
        except Refused as exc:
            raise _fail(exc.detail) from None
        chain = certs.load_pem_chain(body)
        return FetchedCredential(url=url, chain=chain, max_age=max_age, no_store=no_store)

    async def _download(self, resp: aiohttp.ClientResponse) -> tuple[bytes, float | None, bool]:
        _check_response(resp)
        body = await self._client.read(resp)
        headers = resp.headers
        max_age, no_store = cache_lifetime(
            headers.getall(aiohttp.hdrs.CACHE_CONTROL, []),
            headers.get(aiohttp.hdrs.EXPIRES),
            headers.get(aiohttp.hdrs.DATE),
        )
        return body, max_age, no_store

    async def close(self) -> None:
        await self._client.close()
