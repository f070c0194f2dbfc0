"""The one hardened HTTP client under both outbound clients (issue #17 C): the certificate
fetcher and the CPS client refuse the same hostile hosts, before any connection."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from stird.adapters.certfetch import HttpCertificateFetcher
from stird.adapters.cps_client import HttpCpsClient, default_policy
from stird.adapters.httpclient import FetchPolicy, Refused, check_url
from stird.core.errors import StirError
from stird.services.ports import CpsFailure

TN = "12025550101"


class EvilDns(AbstractResolver):
    """Every name resolves to loopback, as an attacker's zone would (DNS rebinding)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port,
                              family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]  # fmt: skip

    async def close(self) -> None:
        pass


@pytest.fixture
async def target() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback server every hostile URL points at; it must never be reached."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield port, hits
    await runner.cleanup()


HOSTILE = [
    "https://127.0.0.1:{port}",  # loopback literal
    "https://127.1:{port}",  # non-canonical numeric forms aiohttp would connect to
    "https://2130706433:{port}",
    "https://0.0.0.0:{port}",
    "https://[::1]:{port}",
    "https://[::ffff:127.0.0.1]:{port}",  # IPv4-mapped loopback
    "https://[64:ff9b::7f00:1]:{port}",  # NAT64 of loopback
    "https://[2002:7f00:1::1]:{port}",  # 6to4 of loopback
    "https://[fe80::1]:{port}",
    "https://[::1x]:{port}",  # a ':' in a host that is no IP address
    "https://169.254.169.254:{port}",  # cloud metadata
    "https://10.0.0.1:{port}",
    "https://user@cps.example.net:{port}",  # userinfo
    "https://:@cps.example.net:{port}",
    "http://cps.example.net:{port}",  # plain http
    "https://cps.example.net:{port}",  # resolves to loopback: refused after DNS
    "https://0x7f000001:{port}",  # a name, resolved to loopback
    "https://cps.example.net:{port}/\x00",  # control characters
    "https://" + "a" * 2100 + ".example.net:{port}",  # overlong
]
REFUSALS = ("refused", "malformed", "scheme", "userinfo", "host", "longer than")


@pytest.mark.parametrize("base", HOSTILE)
async def test_both_clients_refuse_the_same_hostile_hosts(
    base: str, target: tuple[int, list[str]]
) -> None:
    port, hits = target
    url = base.format(port=port)
    policy = FetchPolicy(timeout=2.0)
    fetcher = HttpCertificateFetcher(policy, resolver=EvilDns())
    client = HttpCpsClient(default_policy(2.0), resolver=EvilDns())
    try:
        with pytest.raises(StirError) as cert_error:
            await fetcher.fetch(url + "/cert.pem")
        with pytest.raises(CpsFailure) as cps_error:
            await client.recipient_keys(url, TN)
    finally:
        await fetcher.close()
        await client.close()
    assert cert_error.value.code == 436
    assert any(word in cert_error.value.detail for word in REFUSALS), cert_error.value.detail
    assert any(word in str(cps_error.value) for word in REFUSALS), str(cps_error.value)
    assert hits == []  # refused before a connection, not by a failed one


@pytest.mark.parametrize(
    "base", [b for b in HOSTILE if ("example.net" not in b or "@" in b) and "0x7f" not in b]
)
def test_the_url_rules_are_one_function(base: str) -> None:
    with pytest.raises(Refused):
        check_url(base.format(port=443), FetchPolicy())


def test_lab_allow_lists_open_what_they_name() -> None:
    from ipaddress import ip_network

    lab = FetchPolicy(allow_http=True, allow_networks=(ip_network("127.0.0.0/8"),))
    assert check_url("http://127.0.0.1:8080/x", lab).port == 8080
    with pytest.raises(Refused):
        check_url("http://127.1:8080/x", lab)  # still not a canonical address
