"""The certificate fetcher against a real local HTTPS server (AST-2022-001, AST-2022-002).

The server's certificate is issued at test time by a throw-away CA; nothing is committed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_network

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.certfetch import (
    FetchPolicy,
    HttpCertificateFetcher,
    VettingResolver,
    cache_lifetime,
    is_public_address,
)
from stird.core import certs
from stird.core.errors import Check, StirError
from tests.tlspki import Tls

LOOPBACK = (ip_network("127.0.0.0/8"),)
MARKER = b"SECRET-BODY-MARKER"

# --- STIR certificates served -------------------------------------------------------------


@dataclass(frozen=True)
class Stir:
    good: x509.Certificate
    ca: x509.Certificate
    leaf: x509.Certificate  # issued by ca
    expired: x509.Certificate
    future: x509.Certificate


@pytest.fixture(scope="module")
def stir() -> Stir:
    now = int(time.time())
    key, ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certs.make_stir_cert(ca_key, now=now, spcs=("1234",), ca=True)
    return Stir(
        good=certs.make_stir_cert(key, now=now, tns=("12025550100",)),
        ca=ca,
        leaf=certs.make_stir_cert(
            key, now=now, tns=("12025550101",), issuer_key=ca_key, issuer_cert=ca
        ),
        expired=certs.make_stir_cert(key, now=now - 400 * 86400, days=30, tns=("12025550100",)),
        future=certs.make_stir_cert(key, now=now + 30 * 86400, tns=("12025550100",)),
    )


# --- the server ---------------------------------------------------------------------------

PEM_CHAIN = "application/pem-certificate-chain"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _pem(cert: x509.Certificate, ctype: str = PEM_CHAIN, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=certs.cert_to_pem(cert), content_type=ctype, headers=headers)

    return handler


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(10)
    return web.Response(text="late")


async def _trickle(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    while True:  # cancelled when the client hangs up
        await resp.write(b"-")
        await asyncio.sleep(0.05)


async def _big_declared(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.content_length = 10_000_000
    await resp.prepare(request)
    await resp.write(b"-" * 100)
    await asyncio.sleep(10)  # a client waiting for the body would time out
    return resp


async def _big_chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(1000):  # 8 MB unless the client stops reading
        await resp.write(b"-" * 8192)
    await resp.write_eof()
    return resp


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/good")


async def _status(request: web.Request) -> web.StreamResponse:
    return web.Response(status=int(request.match_info["code"]))


async def _garbage(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"not a certificate " + MARKER, content_type="text/plain")


def _app(stir: Stir, hits: list[str]) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    pem = certs.cert_to_pem(stir.good)
    chain = certs.cert_to_pem(stir.leaf) + certs.cert_to_pem(stir.ca)

    async def typed(request: web.Request) -> web.StreamResponse:
        return web.Response(body=pem, headers={"Content-Type": request.query["type"]})

    async def gzip(request: web.Request) -> web.StreamResponse:
        return web.Response(body=pem, headers={"Content-Encoding": "gzip"})

    async def pem_chain(request: web.Request) -> web.StreamResponse:
        return web.Response(body=chain, content_type=PEM_CHAIN)

    async def der(request: web.Request) -> web.StreamResponse:
        body = stir.good.public_bytes(serialization.Encoding.DER)
        return web.Response(body=body, content_type="application/pkix-cert")

    date, expires = "Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:59:37 GMT"
    routes = {
        "/good": _pem(stir.good),
        "/chain": pem_chain,
        "/der": der,
        "/expired": _pem(stir.expired),
        "/future": _pem(stir.future),
        "/max-age": _pem(stir.good, **{"Cache-Control": "public, max-age=3600"}),
        "/no-store": _pem(stir.good, **{"Cache-Control": "no-store"}),
        "/expires": _pem(stir.good, Date=date, Expires=expires),
        "/slow": _slow,
        "/trickle": _trickle,
        "/big-declared": _big_declared,
        "/big-chunked": _big_chunked,
        "/redirect": _redirect,
        "/status/{code}": _status,
        "/typed": typed,
        "/garbage": _garbage,
        "/gzip": gzip,
    }
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Server:
    port: int  # https
    http_port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def typed(self, ctype: str) -> str:
        return str(yarl.URL(self.url("/typed")).with_query(type=ctype))


@pytest.fixture
async def server(tls: Tls, stir: Stir) -> AsyncIterator[Server]:
    hits: list[str] = []
    runner = web.AppRunner(_app(stir, hits), handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    https_sock, http_sock = _listening_socket(), _listening_socket()
    await web.SockSite(runner, https_sock, ssl_context=tls.server).start()
    await web.SockSite(runner, http_sock).start()
    yield Server(https_sock.getsockname()[1], http_sock.getsockname()[1], hits)
    await runner.cleanup()


@pytest.fixture
async def fetcher(tls: Tls) -> AsyncIterator[HttpCertificateFetcher]:
    policy = FetchPolicy(timeout=0.5, allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
        yield fetcher


async def _refused(fetcher: HttpCertificateFetcher, url: str, detail: str) -> StirError:
    with pytest.raises(StirError) as info:
        await fetcher.fetch(url)
    error = info.value
    assert (error.code, error.check) == (436, Check.CREDENTIAL)
    assert detail in error.detail
    return error


# --- successes ----------------------------------------------------------------------------


async def test_fetches_a_pem_certificate(
    fetcher: HttpCertificateFetcher, server: Server, stir: Stir
) -> None:
    url = server.url("/good")
    got = await fetcher.fetch(url)
    assert got.url == url
    assert got.chain == (stir.good,)
    assert (got.max_age, got.no_store) == (None, False)


async def test_fetches_a_pem_chain_leaf_first(
    fetcher: HttpCertificateFetcher, server: Server, stir: Stir
) -> None:
    got = await fetcher.fetch(server.url("/chain"))
    assert got.chain == (stir.leaf, stir.ca)


async def test_fetches_a_der_certificate(
    fetcher: HttpCertificateFetcher, server: Server, stir: Stir
) -> None:
    assert (await fetcher.fetch(server.url("/der"))).chain == (stir.good,)


@pytest.mark.parametrize("path", ["/expired", "/future"])
async def test_returns_certificates_outside_their_validity(
    fetcher: HttpCertificateFetcher, server: Server, stir: Stir, path: str
) -> None:
    """Validity at ``iat`` is the verifier's business, not the fetcher's."""
    expected = stir.expired if path == "/expired" else stir.future
    assert (await fetcher.fetch(server.url(path))).chain == (expected,)


@pytest.mark.parametrize(
    "ctype",
    [
        "application/pkix-cert",
        "application/x-x509-ca-cert",
        "application/pem-certificate-chain",
        "application/x-pem-file",
        "application/octet-stream",
        "text/plain",
        "Text/Plain; charset=us-ascii",
    ],
)
async def test_accepts_certificate_content_types(
    fetcher: HttpCertificateFetcher, server: Server, stir: Stir, ctype: str
) -> None:
    assert (await fetcher.fetch(server.typed(ctype))).chain == (stir.good,)


async def test_accepts_a_missing_content_type(tls: Tls, stir: Stir) -> None:
    """aiohttp's server always sends one, so a raw TLS server answers here."""
    body = certs.cert_to_pem(stir.good)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls.server)
    port = raw.sockets[0].getsockname()[1]
    policy = FetchPolicy(allow_networks=LOOPBACK)
    try:
        async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
            got = await fetcher.fetch(f"https://127.0.0.1:{port}/raw")
    finally:
        raw.close()
        await raw.wait_closed()
    assert got.chain == (stir.good,)


@pytest.mark.parametrize(
    ("path", "max_age", "no_store"),
    [("/max-age", 3600.0, False), ("/no-store", None, True), ("/expires", 600.0, False)],
)
async def test_reports_caching_headers(
    fetcher: HttpCertificateFetcher,
    server: Server,
    path: str,
    max_age: float | None,
    no_store: bool,
) -> None:
    got = await fetcher.fetch(server.url(path))
    assert (got.max_age, got.no_store) == (max_age, no_store)


# --- refusals of the response -------------------------------------------------------------


async def test_slow_server_times_out(fetcher: HttpCertificateFetcher, server: Server) -> None:
    start = time.monotonic()
    await _refused(fetcher, server.url("/slow"), "timeout")
    assert time.monotonic() - start < fetcher.policy.timeout + 1


async def test_trickling_server_times_out(fetcher: HttpCertificateFetcher, server: Server) -> None:
    start = time.monotonic()
    await _refused(fetcher, server.url("/trickle"), "timeout")
    assert time.monotonic() - start < fetcher.policy.timeout + 1


async def test_trickle_is_bounded_without_aiohttp_timeout(
    tls: Tls, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio.timeout guard holds even if aiohttp's own deadline did not."""
    unbounded = aiohttp.ClientTimeout()
    monkeypatch.setattr(aiohttp, "ClientTimeout", lambda total: unbounded)
    policy = FetchPolicy(timeout=0.5, allow_networks=LOOPBACK)
    start = time.monotonic()
    async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
        await _refused(fetcher, server.url("/trickle"), "timeout")
    assert time.monotonic() - start < 1.5


async def test_declared_oversize_is_refused_before_reading(tls: Tls, server: Server) -> None:
    policy = FetchPolicy(timeout=3.0, allow_networks=LOOPBACK)
    start = time.monotonic()
    async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
        await _refused(fetcher, server.url("/big-declared"), "larger than 65536 bytes")
    assert time.monotonic() - start < 1.0  # did not wait for the promised 10 MB


async def test_undeclared_oversize_stops_reading(
    fetcher: HttpCertificateFetcher, server: Server
) -> None:
    await _refused(fetcher, server.url("/big-chunked"), "larger than 65536 bytes")


async def test_max_bytes_boundary(tls: Tls, server: Server, stir: Stir) -> None:
    size = len(certs.cert_to_pem(stir.good))
    exact = FetchPolicy(max_bytes=size, allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(exact, ssl_context=tls.client) as fetcher:
        assert (await fetcher.fetch(server.url("/good"))).chain == (stir.good,)
    short = FetchPolicy(max_bytes=size - 1, allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(short, ssl_context=tls.client) as fetcher:
        await _refused(fetcher, server.url("/good"), f"larger than {size - 1} bytes")


async def test_redirect_is_not_followed(fetcher: HttpCertificateFetcher, server: Server) -> None:
    await _refused(fetcher, server.url("/redirect"), "redirect not followed")
    assert server.hits == ["/redirect"]


@pytest.mark.parametrize("code", [404, 500, 204])
async def test_http_error_status(
    fetcher: HttpCertificateFetcher, server: Server, code: int
) -> None:
    await _refused(fetcher, server.url(f"/status/{code}"), f"HTTP status {code}")


@pytest.mark.parametrize("ctype", ["text/html", "application/json", "image/png"])
async def test_unexpected_content_type(
    fetcher: HttpCertificateFetcher, server: Server, ctype: str
) -> None:
    await _refused(fetcher, server.typed(ctype), "unexpected content type")


async def test_garbage_body_is_refused_without_echo(
    fetcher: HttpCertificateFetcher, server: Server
) -> None:
    error = await _refused(fetcher, server.url("/garbage"), "no usable certificate")
    assert MARKER.decode() not in f"{error!r} {error}"


async def test_compressed_body_is_refused(fetcher: HttpCertificateFetcher, server: Server) -> None:
    await _refused(fetcher, server.url("/gzip"), "unsupported content encoding")


# --- refusals of the URL and the address --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("https://user:pw@127.0.0.1/good", "userinfo"),
        ("https://user@127.0.0.1/good", "userinfo"),
        ("https://@127.0.0.1/good", "userinfo"),
        ("ftp://127.0.0.1/good", "scheme not allowed"),
        ("file:///etc/passwd", "scheme not allowed"),
        ("data:text/plain,x", "scheme not allowed"),
        ("https:///good", "no host"),
        ("/good", "scheme not allowed"),
        ("https://127.0.0.1/" + "a" * 2048, "longer than 2048"),
        ("https://127.0.0.1/a b", "malformed URL"),
        ("https://127.0.0.1/a\r\nX-Injected: 1", "malformed URL"),
        ("https://127.0.0.1:99999/good", "malformed URL"),
        ("https://127.1/good", "malformed host"),
        ("https://2130706433/good", "malformed host"),
        ("https://0177.0.0.1/good", "malformed host"),
    ],
)
async def test_bad_urls_are_refused(fetcher: HttpCertificateFetcher, url: str, detail: str) -> None:
    await _refused(fetcher, url, detail)
    assert fetcher.connector is None  # refused before any connection was attempted


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:a9fe:a9fe]",
        "169.254.169.254",
        "10.1.2.3",
    ],
)
async def test_ip_literals_are_vetted(tls: Tls, host: str) -> None:
    async with HttpCertificateFetcher(ssl_context=tls.client) as fetcher:
        await _refused(fetcher, f"https://{host}/cert.pem", "refused address")


async def test_localhost_is_refused_after_resolution(tls: Tls, server: Server) -> None:
    async with HttpCertificateFetcher(ssl_context=tls.client) as fetcher:
        await _refused(fetcher, server.url("/good", "localhost"), "refused address")
    assert server.hits == []


@pytest.mark.parametrize(
    "policy",
    [FetchPolicy(allow_hosts=("LocalHost.",)), FetchPolicy(allow_networks=LOOPBACK)],
    ids=["allow_hosts", "allow_networks"],
)
async def test_localhost_is_accepted_when_allowed(
    tls: Tls, server: Server, stir: Stir, policy: FetchPolicy
) -> None:
    async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
        got = await fetcher.fetch(server.url("/good", "localhost"))
    assert got.chain == (stir.good,)


async def test_http_needs_allow_http(tls: Tls, server: Server, stir: Stir) -> None:
    url = f"http://127.0.0.1:{server.http_port}/good"
    async with HttpCertificateFetcher(FetchPolicy(allow_networks=LOOPBACK)) as fetcher:
        await _refused(fetcher, url, "scheme not allowed")
    lab = FetchPolicy(allow_http=True, allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(lab) as fetcher:
        assert (await fetcher.fetch(url)).chain == (stir.good,)


async def test_untrusted_tls_server(tls: Tls, server: Server) -> None:
    policy = FetchPolicy(allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(policy, ssl_context=tls.stranger) as fetcher:
        await _refused(fetcher, server.url("/good"), "TLS failure")
    async with HttpCertificateFetcher(policy) as fetcher:  # system trust store
        await _refused(fetcher, server.url("/good"), "TLS failure")
    assert server.hits == []


async def test_closed_port(fetcher: HttpCertificateFetcher) -> None:
    sock = _listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    await _refused(fetcher, f"https://127.0.0.1:{port}/good", "connection failed")


# --- resolver -----------------------------------------------------------------------------


class FakeResolver(AbstractResolver):
    """A DNS that answers from a table; names absent from it do not exist."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=addr,
                port=port,
                family=socket.AF_INET6 if ":" in addr else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for addr in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


MIXED = ["10.0.0.1", "93.184.216.34", "::1", "2606:4700::1", "fe80::1%eth0", "not-an-ip"]


async def test_resolver_keeps_only_public_addresses() -> None:
    resolver = VettingResolver(FetchPolicy(), FakeResolver({"mixed.test": MIXED}))
    got = await resolver.resolve("mixed.test", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in got] == ["93.184.216.34", "2606:4700::1"]


async def test_resolver_refuses_when_nothing_is_left() -> None:
    resolver = VettingResolver(FetchPolicy(), FakeResolver({"evil.test": ["127.0.0.1", "::1"]}))
    with pytest.raises(OSError, match="refused address"):
        await resolver.resolve("evil.test", 443)


async def test_resolver_allow_lists() -> None:
    table = {"lab.test": ["10.0.0.1", "192.168.1.1"]}
    by_net = VettingResolver(
        FetchPolicy(allow_networks=(ip_network("10.0.0.0/8"),)), FakeResolver(table)
    )
    assert [r["host"] for r in await by_net.resolve("lab.test")] == ["10.0.0.1"]
    by_host = VettingResolver(FetchPolicy(allow_hosts=("LAB.test.",)), FakeResolver(table))
    assert [r["host"] for r in await by_host.resolve("lab.test")] == table["lab.test"]


async def test_resolver_does_not_close_an_injected_inner() -> None:
    inner = FakeResolver({})
    await VettingResolver(FetchPolicy(), inner).close()
    assert not inner.closed


async def test_name_pointing_at_loopback_never_connects(tls: Tls, server: Server) -> None:
    """DNS rebinding: the vetted answer is the only one the connector may use."""
    resolver = FakeResolver({"rebind.test": ["127.0.0.1"]})
    async with HttpCertificateFetcher(ssl_context=tls.client, resolver=resolver) as fetcher:
        await _refused(fetcher, server.url("/good", "rebind.test"), "refused address")
    assert server.hits == []


async def test_unknown_name(fetcher: HttpCertificateFetcher, tls: Tls) -> None:
    async with HttpCertificateFetcher(ssl_context=tls.client, resolver=FakeResolver({})) as f:
        await _refused(f, "https://nowhere.test/cert.pem", "DNS lookup failed")


async def test_certificate_must_name_the_host(tls: Tls, server: Server) -> None:
    resolver = FakeResolver({"other.test": ["127.0.0.1"]})
    policy = FetchPolicy(allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(policy, ssl_context=tls.client, resolver=resolver) as f:
        await _refused(f, server.url("/good", "other.test"), "TLS failure")


# --- session lifecycle --------------------------------------------------------------------


async def test_concurrent_fetches_share_one_session(
    tls: Tls, server: Server, stir: Stir, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[aiohttp.TCPConnector] = []

    class Counting(aiohttp.TCPConnector):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(aiohttp, "TCPConnector", Counting)
    policy = FetchPolicy(allow_networks=LOOPBACK)
    async with HttpCertificateFetcher(policy, ssl_context=tls.client) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(server.url("/good")) for _ in range(8)))
        assert all(r.chain == (stir.good,) for r in results)
        connector = fetcher.connector
        await fetcher.fetch(server.url("/der"))
        assert fetcher.connector is connector
    assert made == [connector]
    assert fetcher.connector is None


async def test_close_is_idempotent_and_fetch_reopens(tls: Tls, server: Server, stir: Stir) -> None:
    fetcher = HttpCertificateFetcher(FetchPolicy(allow_networks=LOOPBACK), ssl_context=tls.client)
    await fetcher.close()
    await fetcher.fetch(server.url("/good"))
    first = fetcher.connector
    await fetcher.close()
    await fetcher.close()
    assert (await fetcher.fetch(server.url("/good"))).chain == (stir.good,)
    assert fetcher.connector is not first
    await fetcher.close()


# --- pure helpers -------------------------------------------------------------------------

PUBLIC_TABLE = [
    # IPv4
    ("8.8.8.8", True),
    ("93.184.216.34", True),
    ("1.1.1.1", True),
    ("0.0.0.0", False),
    ("0.1.2.3", False),
    ("10.20.30.40", False),
    ("100.64.0.1", False),
    ("100.127.255.254", False),
    ("100.128.0.1", True),
    ("127.0.0.1", False),
    ("127.255.255.254", False),
    ("169.254.169.254", False),
    ("172.16.0.1", False),
    ("172.31.255.255", False),
    ("172.32.0.1", True),
    ("192.0.0.9", False),
    ("192.0.2.1", False),
    ("192.88.99.1", False),
    ("192.168.1.1", False),
    ("198.18.0.1", False),
    ("198.19.255.255", False),
    ("198.51.100.7", False),
    ("203.0.113.9", False),
    ("224.0.0.1", False),
    ("239.255.255.250", False),
    ("240.0.0.1", False),
    ("255.255.255.255", False),
    # IPv6
    ("2606:4700:4700::1111", True),
    ("2a00:1450:4001::200e", True),
    ("::", False),
    ("::1", False),
    ("fc00::1", False),
    ("fd12:3456::1", False),
    ("fe80::1", False),
    ("fec0::1", False),
    ("ff02::1", False),
    ("2001:db8::1", False),
    ("2001::1", False),  # Teredo
    ("2001:1ff::1", False),
    ("100::1", False),
    ("64:ff9b:1::1", False),
    ("3fff::1", False),
    ("4000::1", False),  # outside 2000::/3
    ("::7f00:1", False),  # IPv4-compatible, deprecated
    # IPv6 carrying IPv4: judged by the IPv4
    ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("::ffff:8.8.8.8", True),
    ("64:ff9b::7f00:1", False),
    ("64:ff9b::a00:1", False),
    ("64:ff9b::808:808", True),
    ("2002:7f00:1::1", False),
    ("2002:c0a8:101::1", False),
    ("2002:808:808::1", True),
]


@pytest.mark.parametrize(("text", "public"), PUBLIC_TABLE)
def test_is_public_address(text: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(text)) is public


DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("cache_control", "expires", "date", "expected"),
    [
        ([], None, DATE, (None, False)),
        (["max-age=60"], None, None, (60.0, False)),
        (["Max-Age=60, public"], None, None, (60.0, False)),
        (['max-age="60"'], None, None, (60.0, False)),
        (["public", "max-age=120"], None, None, (120.0, False)),
        (["max-age=60", "max-age=5"], None, None, (60.0, False)),
        (["max-age=60, s-maxage=30"], None, None, (30.0, False)),
        (["max-age=99999999999"], None, None, (2.0**31, False)),
        (["max-age=0"], None, None, (0.0, False)),
        (["max-age=-1"], None, None, (None, False)),
        (["max-age=abc"], None, None, (None, False)),
        (["max-age"], None, None, (None, False)),
        (["max-age=1e3"], None, None, (None, False)),
        (["max-age=abc"], "Sun, 06 Nov 1994 08:59:37 GMT", DATE, (None, False)),
        (["no-store"], None, None, (None, True)),
        (["no-store, max-age=60"], None, None, (60.0, True)),
        (["no-cache"], None, None, (0.0, False)),
        (["no-cache, max-age=60"], None, None, (0.0, False)),
        ([], "Sun, 06 Nov 1994 08:59:37 GMT", DATE, (600.0, False)),
        ([], "Sun, 06 Nov 1994 08:39:37 GMT", DATE, (0.0, False)),
        ([], "Sunday, 06-Nov-94 08:59:37 GMT", DATE, (600.0, False)),
        ([], "0", DATE, (0.0, False)),  # invalid Expires is already stale (RFC 9111 §5.3)
        ([], "Sun, 06 Nov 1994 08:59:37 GMT", None, (None, False)),
        ([], "Sun, 06 Nov 1994 08:59:37 GMT", "yesterday", (None, False)),
        (["max-age=60"], "Sun, 06 Nov 1994 08:39:37 GMT", DATE, (60.0, False)),
    ],
)
def test_cache_lifetime(
    cache_control: list[str],
    expires: str | None,
    date: str | None,
    expected: tuple[float | None, bool],
) -> None:
    assert cache_lifetime(cache_control, expires, date) == expected


def test_policy_defaults() -> None:
    policy = FetchPolicy()
    assert (policy.timeout, policy.max_bytes, policy.allow_http) == (2.0, 65536, False)
    assert (policy.allow_networks, policy.allow_hosts, policy.user_agent) == ((), (), "stird")


@pytest.fixture(autouse=True)
def _no_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the environment must not be used (trust_env=False)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
