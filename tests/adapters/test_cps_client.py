"""The CPS client on loopback: the RFC 8816 §9 profile against stird's own CPS server, the
ATIS-style profile against a fake ATIS CPS that checks the Bearer JWT, and the fetch
hygiene (https only by default, vetted addresses, no redirects, body cap, timeout)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.cps_client import AtisIdentity, HttpCpsClient, default_policy
from stird.adapters.cps_memory import MemoryCpsStore
from stird.adapters.cps_server import build_cps_app
from stird.adapters.store_memory import MemoryStore
from stird.core import oob
from stird.core.oob import DecryptionKey, OobSuite
from stird.core.oobkeys import PublicationPolicy
from stird.services.cps import CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsFailure
from tests.atis_fake import FakeAtisCps
from tests.core.vectors import RFC8225_TOKEN

TN, CALLER = "12025550101", "12025550100"
LAB = {"allow_http": True, "allow_networks": (ip_network("127.0.0.0/8"),)}


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(timeout: float = 2.0, **kwargs: object) -> AsyncIterator[HttpCpsClient]:
    c = HttpCpsClient(default_policy(timeout, **LAB), **kwargs)  # type: ignore[arg-type]
    try:
        yield c
    finally:
        await c.close()


async def test_rfc8816_profile_round_trip() -> None:
    enc = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)
    directory = KeyDirectory(MemoryStore(), PublicationPolicy(), dev_wildcard=[enc.public_key()])
    service = CpsService(MemoryCpsStore(), suites=directory.suites)
    async with serving(build_cps_app(service, directory)) as base, client() as c:
        keys = await c.recipient_keys(base + "/", TN)
        assert keys == (enc.public_key(),)
        await c.store_sealed(base, TN, oob.seal(RFC8225_TOKEN, keys, TN))
        await c.store_sealed(base, TN, oob.seal(RFC8225_TOKEN, [*keys, *keys], TN))  # a batch
        entries = await c.fetch_sealed(base, TN)
        opened = [oob.open_entry(e, [enc], TN) for e in entries]
        assert opened.count(RFC8225_TOKEN) == 3 and None in opened  # and a dummy


async def test_atis_profile_against_a_fake_atis_cps() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    x5u = "https://certs.example/sp.pem"

    async def key_for(url: str) -> ec.EllipticCurvePublicKey:
        assert url == x5u
        return key.public_key()

    fake = FakeAtisCps("1234", key_for)
    identity = AtisIdentity(key, x5u, "1234")
    async with serving(fake.app()) as base, client(atis_identity=identity) as c:
        await c.store_plain(base, TN, CALLER, [RFC8225_TOKEN])
        assert await c.fetch_plain(base, TN, CALLER) == (RFC8225_TOKEN,)
        assert await c.fetch_plain(base, TN, "12025550199") == ()
        wrong = AtisIdentity(key, x5u, "9999")
        async with client(atis_identity=wrong) as other:
            with pytest.raises(CpsFailure, match="HTTP 401"):
                await other.store_plain(base, TN, CALLER, [RFC8225_TOKEN])
    assert fake.refusals == ["claim spc: '9999' != '1234'"]
    assert [c["action"] for c in fake.claims] == ["publish", "retrieve", "retrieve"]
    async with client() as c:
        with pytest.raises(CpsFailure, match="no ATIS credential"):
            await c.fetch_plain("https://cps.example", TN, CALLER)


async def test_https_only_and_vetted_addresses_by_default() -> None:
    strict = HttpCpsClient(default_policy(1.0))
    with pytest.raises(CpsFailure, match="scheme not allowed"):
        await strict.fetch_sealed("http://127.0.0.1:9", TN)
    with pytest.raises(CpsFailure, match="refused CPS address"):
        await strict.fetch_sealed("https://127.0.0.1:9", TN)
    with pytest.raises(CpsFailure, match="userinfo"):
        await strict.fetch_sealed("https://user@cps.example", TN)
    await strict.close()


async def test_no_redirects_body_cap_and_timeout() -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere")

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(300):
            await response.write(b"x" * 16384)
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/redirect/keys/{tn}", redirect)
    app.router.add_get("/huge/keys/{tn}", huge)
    app.router.add_get("/slow/keys/{tn}", slow)
    async with serving(app) as base, client(timeout=0.3) as c:
        with pytest.raises(CpsFailure, match="HTTP 302"):
            await c.recipient_keys(base + "/redirect", TN)
        with pytest.raises(CpsFailure, match="larger than"):
            await c.recipient_keys(base + "/huge", TN)
        started = time.monotonic()
        with pytest.raises(CpsFailure, match=r"did not answer within 0\.3 s"):
            await c.recipient_keys(base + "/slow", TN)
        assert time.monotonic() - started < 0.8
    async with client() as c:
        with pytest.raises(CpsFailure, match="connection failed"):
            await c.fetch_sealed("http://127.0.0.1:9", TN)
