"""Downloading the credential of an ``info`` URL (RFC 8224 §6.2 step 3, §7.2).

The URL comes from the peer, so this is the daemon's most exposed client. Lessons:

* Asterisk AST-2022-001 (unbounded download): the body is capped at ``max_bytes``, refused
  early on a larger Content-Length, and the whole fetch (DNS, connect, TLS, body) has one
  deadline, so a trickling server cannot hold it.
* Asterisk AST-2022-002 (SSRF through x5u): only https by default, no redirects, no
  userinfo, no proxies from the environment, and every address a host name resolves to
  is vetted against the RFC 6890 special-purpose registries before a socket is opened.

Every failure is a :class:`StirError` 436 Bad Identity Info with ``check=credential`` and a
short detail; the body is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import ipaddress
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.services.ports import FetchedCredential

__all__ = [
    "FetchPolicy", "HttpCertificateFetcher", "VettingResolver", "cache_lifetime",
    "is_public_address",
]  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH: Final = 2048
#: RFC 9111 §1.2.2: delta-seconds beyond 2^31 are taken as 2^31.
MAX_DELTA_SECONDS: Final = 2**31
_CHUNK: Final = 16384
_CONNECTION_LIMIT: Final = 64
_CONNECTIONS_PER_HOST: Final = 8  # one tarpit host cannot take every connection
_DNS_CACHE_SECONDS: Final = 60
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


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of one fetcher. The allow-lists exist for labs whose certificate
    repository lives on a private or loopback address."""

    timeout: float = 2.0  # total, including DNS, connect, TLS and body
    max_bytes: int = 65536  # body cap
    allow_http: bool = False  # https only by default
    allow_networks: tuple[IPNetwork, ...] = ()  # addresses that are otherwise refused
    allow_hosts: tuple[str, ...] = ()  # host names whose addresses are not vetted
    user_agent: str = "stird"


def _fail(detail: str) -> StirError:
    return StirError(
        SipStatus.BAD_IDENTITY_INFO, f"cannot fetch certificate: {detail}", check=Check.CREDENTIAL
    )


# --- address vetting (RFC 6890 and the IANA special-purpose address registries) ----------

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

#: IPv4 blocks that no peer-supplied URL may reach (global sub-blocks refused too).
_REFUSED_V4: Final = tuple(
    _V4(net)
    for net in (
        "0.0.0.0/8",  # "this network", unspecified (RFC 791)
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, CGNAT (RFC 6598)
        "127.0.0.0/8",  # loopback (RFC 1122)
        "169.254.0.0/16",  # link-local (RFC 3927), cloud metadata services
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
        "192.0.2.0/24",  # TEST-NET-1 (RFC 5737)
        "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
        "192.168.0.0/16",  # private (RFC 1918)
        "198.18.0.0/15",  # benchmarking (RFC 2544)
        "198.51.100.0/24",  # TEST-NET-2 (RFC 5737)
        "203.0.113.0/24",  # TEST-NET-3 (RFC 5737)
        "224.0.0.0/4",  # multicast (RFC 5771)
        "240.0.0.0/4",  # reserved (RFC 1112), includes broadcast 255.255.255.255
    )
)

#: IPv6 unicast outside this block is not allocated for global use (RFC 4291 §2.4).
_GLOBAL_V6: Final = _V6("2000::/3")

#: IPv6 blocks refused; those outside 2000::/3 are listed for the reader's sake.
_REFUSED_V6: Final = tuple(
    _V6(net)
    for net in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32 (RFC 2928)
        "2001:db8::/32",  # documentation (RFC 3849)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local (RFC 4291)
        "fec0::/10",  # site-local, deprecated (RFC 3879)
        "ff00::/8",  # multicast (RFC 4291)
    )
)

#: IPv6 forms that carry an IPv4 address (judged instead): (block, bit offset of the IPv4).
_EMBEDDED_V4: Final = (
    (_V6("::ffff:0:0/96"), 0),  # IPv4-mapped (RFC 4291 §2.5.5.2)
    (_V6("64:ff9b::/96"), 0),  # NAT64 well-known prefix (RFC 6052)
    (_V6("2002::/16"), 80),  # 6to4 (RFC 3056)
)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    for block, shift in _EMBEDDED_V4:
        if addr in block:
            return ipaddress.IPv4Address((int(addr) >> shift) & 0xFFFFFFFF)
    return None


def is_public_address(addr: IPAddress) -> bool:
    """False for loopback, private, link-local, multicast, documentation, reserved... (RFC
    6890); IPv4-mapped, NAT64 and 6to4 IPv6 addresses are judged by their IPv4 address."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            return is_public_address(inner)
        return addr in _GLOBAL_V6 and not any(addr in net for net in _REFUSED_V6)
    return not any(addr in net for net in _REFUSED_V4)


def _in_networks(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and (inner := _embedded_v4(addr)) is not None:
        candidates.append(inner)
    return any(a in net for a in candidates for net in networks)


def _permitted(addr: IPAddress, policy: FetchPolicy) -> bool:
    return is_public_address(addr) or _in_networks(addr, policy.allow_networks)


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


def _trusted_hosts(policy: FetchPolicy) -> frozenset[str]:
    return frozenset(_normal_host(host) for host in policy.allow_hosts)


class _RefusedAddressError(OSError):
    """Raised inside aiohttp's resolver call; aiohttp wraps it in ClientConnectorDNSError."""


class VettingResolver(AbstractResolver):
    """Resolves with ``inner`` (default: aiohttp's default resolver) and drops every
    address that :func:`is_public_address` refuses, unless it lies in ``allow_networks``
    or the host is in ``allow_hosts``.

    The connector connects only to the addresses this returns, and caches only them: the
    address that was vetted is the address connected to, so DNS rebinding between the
    check and the connect is impossible.
    """

    def __init__(self, policy: FetchPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._trusted_hosts = _trusted_hosts(policy)
        self._inner = inner
        self._owns_inner = inner is None

    def _keep(self, result: ResolveResult) -> bool:
        try:
            addr = ipaddress.ip_address(result["host"])
        except ValueError:
            return False
        return _permitted(addr, self._policy)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = aiohttp.DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        if _normal_host(host) in self._trusted_hosts:
            return results
        kept = [result for result in results if self._keep(result)]
        if not kept:
            raise _RefusedAddressError(None, "refused address")
        return kept

    async def close(self) -> None:
        if self._owns_inner and self._inner is not None:
            await self._inner.close()
            self._inner = None


# --- URL checks ----------------------------------------------------------------------------


def _check_url(url: str, policy: FetchPolicy) -> yarl.URL:
    """RFC 8224 §7.2 ``info`` URL: https (http in labs), a host, no userinfo."""
    if len(url) > MAX_URL_LENGTH:
        raise _fail(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise _fail("malformed URL")
    try:
        target = yarl.URL(url)
    except ValueError:
        raise _fail("malformed URL") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if target.scheme not in schemes:
        raise _fail(f"scheme not allowed (use {' or '.join(schemes)})")
    if not target.raw_host:
        raise _fail("URL has no host")
    if "@" in urllib.parse.urlsplit(url).netloc:  # yarl forgets an empty "user@"
        raise _fail("userinfo not allowed in URL")
    return target


def _literal_address(target: yarl.URL) -> IPAddress | None:
    """The IP address of an IP-literal host, None for a host name.

    aiohttp connects to anything that looks numeric without asking the resolver, so a
    numeric host that is not a canonical address (``127.1``, ``2130706433``) is refused."""
    host, raw = target.host or "", target.raw_host or ""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in raw or raw.replace(".", "").isdigit():
        raise _fail("malformed host")
    return None


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


def _check_response(resp: aiohttp.ClientResponse, max_bytes: int) -> None:
    if 300 <= resp.status < 400:
        raise _fail(f"redirect not followed (HTTP {resp.status})")
    if resp.status != 200:
        raise _fail(f"HTTP status {resp.status}")
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise _fail(f"larger than {max_bytes} bytes")
    encoding = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _fail("unsupported content encoding")
    content_type = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE, "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type not in _ACCEPTED_TYPES:
        raise _fail("unexpected content type")


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, refused as soon as more than ``max_bytes`` arrived."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise _fail(f"larger than {max_bytes} bytes")
    return bytes(body)


def _describe(exc: aiohttp.ClientError) -> str:
    """A short, internals-free name for an aiohttp failure."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        refused = isinstance(exc.os_error, _RefusedAddressError)
        return "refused address" if refused else "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "TLS failure"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    if isinstance(exc, aiohttp.InvalidURL):
        return "malformed URL"
    return "HTTP failure"


# --- the fetcher ---------------------------------------------------------------------------


class HttpCertificateFetcher:
    """:class:`~stird.services.ports.CertificateFetcher` over aiohttp.

    One session (and connection pool) is created on first use and shared by every fetch;
    ``resolver`` replaces the resolver wrapped by the address vetting (tests, aiodns)."""

    def __init__(
        self,
        policy: FetchPolicy = FetchPolicy(),
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._policy = policy
        self._trusted_hosts = _trusted_hosts(policy)
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: VettingResolver | None = None

    @property
    def policy(self) -> FetchPolicy:
        return self._policy

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The shared connection pool, None before the first fetch or after close."""
        return None if self._session is None else self._session.connector

    def _get_session(self) -> aiohttp.ClientSession:
        # No await here: concurrent first fetches cannot create two sessions.
        if self._session is None or self._session.closed:
            self._resolver = VettingResolver(self._policy, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
                ssl=self._ssl,
                limit=_CONNECTION_LIMIT,
                limit_per_host=_CONNECTIONS_PER_HOST,
                ttl_dns_cache=_DNS_CACHE_SECONDS,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._policy.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # no decompression bombs: identity only
                trust_env=False,  # no proxy from the environment
                headers={
                    aiohttp.hdrs.USER_AGENT: self._policy.user_agent,
                    aiohttp.hdrs.ACCEPT: _ACCEPT,
                    aiohttp.hdrs.ACCEPT_ENCODING: "identity",
                },
            )
        return self._session

    def _vet_literal(self, target: yarl.URL) -> None:
        addr = _literal_address(target)
        if addr is None or _normal_host(target.host or "") in self._trusted_hosts:
            return
        if not _permitted(addr, self._policy):
            raise _fail("refused address")

    async def fetch(self, url: str) -> FetchedCredential:
        target = _check_url(url, self._policy)
        self._vet_literal(target)  # IP literals never reach the resolver
        try:
            async with asyncio.timeout(self._policy.timeout):  # also bounds a trickle
                return await self._download(target, url)
        except TimeoutError:
            raise _fail("timeout") from None
        except aiohttp.ClientError as exc:
            raise _fail(_describe(exc)) from None
        except ssl.SSLError:
            raise _fail("TLS failure") from None
        except OSError:
            raise _fail("connection failed") from None

    async def _download(self, target: yarl.URL, url: str) -> FetchedCredential:
        limit = self._policy.max_bytes
        session = self._get_session()
        async with session.get(target, allow_redirects=False) as resp:
            _check_response(resp, limit)
            body = await _read_capped(resp, limit)
            headers = resp.headers
            max_age, no_store = cache_lifetime(
                headers.getall(aiohttp.hdrs.CACHE_CONTROL, []),
                headers.get(aiohttp.hdrs.EXPIRES),
                headers.get(aiohttp.hdrs.DATE),
            )
        chain = certs.load_pem_chain(body)
        return FetchedCredential(url=url, chain=chain, max_age=max_age, no_store=no_store)

    async def close(self) -> None:
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
