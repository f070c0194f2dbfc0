"""The one hardened HTTP client of stird: every outbound request to a URL that is not
stird's own (certificates named by peers' ``info``/``x5u``, Call Placement Services).

Lessons it carries:

* Asterisk AST-2022-001 (unbounded download): bodies are capped at ``max_bytes``, refused
  early on a larger Content-Length, and the whole request (DNS, connect, TLS, body) has one
  deadline, so a trickling server cannot hold it.
* Asterisk AST-2022-002 (SSRF through x5u): only https by default, no redirects, no
  userinfo, no proxies from the environment, no decompression, no cookies; every address a
  host name resolves to is vetted against the RFC 6890 special-purpose registries before a
  socket is opened (:class:`VettingResolver`), and IP-literal hosts — which never reach the
  resolver — are vetted by :func:`check_url`, which also refuses numeric hosts that are not
  canonical addresses (``127.1``, ``2130706433``) and any other host holding a ``:``.

Failures are :class:`Refused` (``detail`` short and safe to log; :class:`TimedOut` for the
deadline); each caller maps them into its own error family. Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "FetchPolicy", "HardenedClient", "Refused", "TimedOut", "VettingResolver", "check_url",
    "is_public_address",
]  # fmt: skip

_T = TypeVar("_T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH: Final = 2048
_CHUNK: Final = 16384
_DNS_CACHE_SECONDS: Final = 60


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Limits of one client. The allow-lists exist for labs whose certificate repository
    or CPS lives on a private or loopback address."""

    timeout: float = 2.0  # total, including DNS, connect, TLS and body
    max_bytes: int = 65536  # body cap
    allow_http: bool = False  # https only by default
    allow_networks: tuple[IPNetwork, ...] = ()  # addresses that are otherwise refused
    allow_hosts: tuple[str, ...] = ()  # host names whose addresses are not vetted
    user_agent: str = "stird"


class Refused(Exception):
    """A request refused or failed; ``detail`` is short and names no internals."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TimedOut(Refused):
    """The one deadline of the request passed."""


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


class RefusedAddressError(OSError):
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
            raise RefusedAddressError(None, "refused address")
        return kept

    async def close(self) -> None:
        if self._owns_inner and self._inner is not None:
            await self._inner.close()
            self._inner = None


# --- URL checks ----------------------------------------------------------------------------


def check_url(url: str, policy: FetchPolicy) -> yarl.URL:
    """An http(s) URL with a host, no userinfo, no controls; an IP-literal host must be
    permitted by ``policy`` (a numeric non-canonical host or a non-IP host with ``:`` is
    refused: aiohttp would connect to it without asking the resolver)."""
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise Refused("malformed URL")
    try:
        target = yarl.URL(url)
    except ValueError:
        raise Refused("malformed URL") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if target.scheme not in schemes:
        raise Refused(f"scheme not allowed (use {' or '.join(schemes)})")
    if not target.raw_host:
        raise Refused("URL has no host")
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:  # e.g. a bracketed host that is no IP address: "https://[::1x]/"
        raise Refused("malformed URL") from None
    if "@" in netloc:  # yarl forgets an empty "user@"
        raise Refused("userinfo not allowed in URL")
    addr = _literal_address(target)
    trusted = _normal_host(target.host or "") in _trusted_hosts(policy)
    if addr is not None and not trusted and not _permitted(addr, policy):
        raise Refused("refused address")
    return target


def _literal_address(target: yarl.URL) -> IPAddress | None:
    host, raw = target.host or "", target.raw_host or ""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in raw or raw.replace(".", "").isdigit():
        raise Refused("malformed host")
    return None


def describe(exc: aiohttp.ClientError) -> str:
    """A short, internals-free name for an aiohttp failure."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        refused = isinstance(exc.os_error, RefusedAddressError)
        return "refused address" if refused else "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "TLS failure"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    if isinstance(exc, aiohttp.InvalidURL):
        return "malformed URL"
    return "HTTP failure"


# --- the client ----------------------------------------------------------------------------

Handler = Callable[[aiohttp.ClientResponse], Awaitable[_T]]


class HardenedClient:
    """One session (and bounded connection pool) created on first use, shared by every
    request: vetted resolver, one deadline, no redirects, no proxies, no cookies, no
    decompression. ``resolver`` replaces the resolver wrapped by the vetting (tests)."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        headers: dict[str, str] | None = None,
        limit: int = 64,
        limit_per_host: int = 8,  # one tarpit host cannot take every connection
    ) -> None:
        self.policy = policy
        self._ssl: ssl.SSLContext | bool = True if ssl_context is None else ssl_context
        self._inner_resolver = resolver
        self._headers = headers or {}
        self._limit, self._per_host = limit, limit_per_host
        self._session: aiohttp.ClientSession | None = None
        self._resolver: VettingResolver | None = None

    @property
    def connector(self) -> aiohttp.BaseConnector | None:
        """The shared connection pool, None before the first request or after close."""
        return None if self._session is None else self._session.connector

    def _get_session(self) -> aiohttp.ClientSession:
        # No await here: concurrent first requests cannot create two sessions.
        if self._session is None or self._session.closed:
            self._resolver = VettingResolver(self.policy, self._inner_resolver)
            connector = aiohttp.TCPConnector(
                resolver=self._resolver, ssl=self._ssl, limit=self._limit,
                limit_per_host=self._per_host, ttl_dns_cache=_DNS_CACHE_SECONDS,
            )  # fmt: skip
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # no decompression bombs: identity only
                trust_env=False,  # no proxy from the environment
                headers={aiohttp.hdrs.USER_AGENT: self.policy.user_agent,
                         aiohttp.hdrs.ACCEPT_ENCODING: "identity", **self._headers},
            )  # fmt: skip
        return self._session

    async def request(
        self, method: str, url: str, handle: Handler[_T], *, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _T:  # fmt: skip
        """``handle(response)`` within the deadline; a redirect or an encoded body is
        refused before it runs. Raises :class:`Refused` / :class:`TimedOut` only."""
        target = check_url(url, self.policy)
        try:
            async with asyncio.timeout(self.policy.timeout):  # also bounds a trickle
                async with self._get_session().request(
                    method, target, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    _check_response(resp)
                    return await handle(resp)
        except TimeoutError:
            raise TimedOut("timeout") from None
        except aiohttp.ClientError as exc:
            raise Refused(describe(exc)) from None
        except ssl.SSLError:
            raise Refused("TLS failure") from None
        except OSError:
            raise Refused("connection failed") from None

    async def read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, refused early on a larger Content-Length or as soon as more than
        ``max_bytes`` arrived."""
        limit = self.policy.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise Refused(f"larger than {limit} bytes")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise Refused(f"larger than {limit} bytes")
        return bytes(body)

    async def close(self) -> None:
        session, resolver = self._session, self._resolver
        self._session = self._resolver = None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()


def _check_response(resp: aiohttp.ClientResponse) -> None:
    if 300 <= resp.status < 400:
        raise Refused(f"redirect not followed (HTTP {resp.status})")
    encoding = resp.headers.get(aiohttp.hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Refused("unsupported content encoding")
