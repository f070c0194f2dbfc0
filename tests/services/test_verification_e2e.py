"""The verification service with the real fetcher and cache against a local HTTPS
certificate server (generated CA), and a Redis-backed cache shared by two instances."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.certfetch import FetchPolicy, HttpCertificateFetcher
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.core import certs
from stird.core.passport import Ppt
from stird.core.sign import SignRequest, sign_request
from stird.core.sipdate import format_sip_date
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import SipFacts, VerifyPolicy
from stird.services.certcache import CertificateCache
from stird.services.ports import KeyValueStore
from stird.services.verdicts import CallVerdict, ServicePolicy
from stird.services.verification import VerificationService
from tests.tlspki import Tls

ORIG, DEST = "12025550100", "12025550101"
LOOPBACK = (ip_network("127.0.0.0/8"),)


@dataclass(frozen=True)
class Pki:
    key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    chains: dict[str, bytes]  # path -> PEM body served


@pytest.fixture(scope="module")
def pki() -> Pki:
    now = int(time.time())
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = certs.make_stir_cert(root_key, now=now - 86400, ca=True, common_name="Test STI-CA")

    def leaf(start: int, days: int) -> bytes:
        cert = certs.make_stir_cert(key, now=start, days=days, tns=[ORIG], issuer_key=root_key,
                                    issuer_cert=root)  # fmt: skip
        return certs.cert_to_pem(cert) + certs.cert_to_pem(root)

    chains = {
        "/good.pem": leaf(now - 3600, 30),
        "/expired.pem": leaf(now - 10 * 86400, 1),
        "/future.pem": leaf(now + 86400, 30),
    }
    return Pki(key, root, chains)


@dataclass
class CertServer:
    port: int
    hits: Counter[str]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
async def cert_server(tls: Tls, pki: Pki) -> AsyncIterator[CertServer]:
    hits: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        hits[path] += 1
        if path in pki.chains:
            await asyncio.sleep(0.05)  # a cold fetch takes a moment: waiters pile up
            return web.Response(
                body=pki.chains[path], content_type="application/pem-certificate-chain"
            )
        if path == "/slow.pem":
            await asyncio.sleep(30)
        if path == "/redirect.pem":
            raise web.HTTPFound("/good.pem")
        if path == "/page.html":
            return web.Response(text="<html></html>", content_type="text/html")
        if path == "/big.pem":
            return web.Response(body=b"A" * 200_000, content_type="application/x-pem-file")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    await site.start()
    port = runner.addresses[0][1]
    yield CertServer(port, hits)
    await runner.cleanup()


Factory = Callable[..., VerificationService]


@pytest.fixture
async def make_service(tls: Tls, pki: Pki) -> AsyncIterator[Factory]:
    fetchers: list[HttpCertificateFetcher] = []

    def make(shared: KeyValueStore | None = None, **fetch: object) -> VerificationService:
        policy = FetchPolicy(timeout=0.5, **{"allow_networks": LOOPBACK, **fetch})  # type: ignore[arg-type]
        fetcher = HttpCertificateFetcher(policy, ssl_context=tls.client)
        fetchers.append(fetcher)
        cache = CertificateCache(fetcher, shared=shared)
        verify = VerifyPolicy(anchors=(pki.root,))
        return VerificationService(
            cache, MemoryStore(), ServicePolicy(verify=verify), replay_store=shared
        )

    yield make
    for fetcher in fetchers:
        await fetcher.close()


def call(pki: Pki, x5u: str, call_id: str = "c1") -> SipFacts:
    now = int(time.time())
    request = SignRequest(orig=PartyId(IdKind.TN, ORIG), dest=(PartyId(IdKind.TN, DEST),), iat=now,
                          ppt=Ppt.SHAKEN, attest="A", origid=call_id)  # fmt: skip
    _, header = sign_request(request, pki.key, x5u)
    return SipFacts(
        identity=(header.format(),), from_=f"<sip:+{ORIG}@pbx.example.com;user=phone>",
        to=f"<sip:+{DEST}@pbx.example.com;user=phone>", date=format_sip_date(now), call_id=call_id,
    )  # fmt: skip


def summary(verdict: CallVerdict) -> tuple[str, int | None, str | None]:
    failed = verdict.failed_check
    return verdict.verdict.value, verdict.code, failed


async def test_good_chain_verifies(
    make_service: Factory, cert_server: CertServer, pki: Pki
) -> None:
    verdict = await make_service().verify(call(pki, cert_server.url("/good.pem")))
    assert summary(verdict) == ("valid", None, None)
    assert verdict.attest == "A"


@pytest.mark.parametrize(
    ("path", "code", "check"),
    [
        ("/expired.pem", 437, "trust"),
        ("/future.pem", 437, "trust"),
        ("/slow.pem", 436, "credential"),
        ("/redirect.pem", 436, "credential"),
        ("/page.html", 436, "credential"),
        ("/big.pem", 436, "credential"),
        ("/missing.pem", 436, "credential"),
    ],
)
async def test_bad_credentials(
    make_service: Factory, cert_server: CertServer, pki: Pki, path: str, code: int, check: str
) -> None:
    started = time.monotonic()
    verdict = await make_service().verify(call(pki, cert_server.url(path)))
    assert summary(verdict) == ("invalid", code, check), verdict.to_json()
    assert time.monotonic() - started < 2.0  # the 0.5 s fetch timeout bounds the call


async def test_loopback_name_refused_unless_allowed(
    make_service: Factory, cert_server: CertServer, pki: Pki
) -> None:
    """SSRF (AST-2022-002): a host name that resolves to 127.0.0.1 is refused by default."""
    facts = call(pki, cert_server.url("/good.pem", host="localhost"))
    refused = await make_service(allow_networks=()).verify(facts)
    assert summary(refused) == ("invalid", 436, "credential")
    assert cert_server.hits["/good.pem"] == 0
    allowed = await make_service(allow_networks=(), allow_hosts=("localhost",)).verify(facts)
    assert summary(allowed) == ("valid", None, None)


async def test_hundred_concurrent_calls_cause_one_fetch(
    make_service: Factory, cert_server: CertServer, pki: Pki
) -> None:
    service = make_service()
    url = cert_server.url("/good.pem")
    verdicts = await asyncio.gather(*(service.verify(call(pki, url, f"c{i}")) for i in range(100)))
    assert {v.verdict.value for v in verdicts} == {"valid"}
    assert cert_server.hits["/good.pem"] == 1


async def test_redis_cache_shared_by_two_instances(
    make_service: Factory, cert_server: CertServer, pki: Pki, redis_url: str
) -> None:
    url = cert_server.url("/good.pem")
    async with RedisStore(redis_url, prefix=f"e2e:{time.monotonic_ns()}:") as shared:
        first, second = make_service(shared), make_service(shared)
        assert (await first.verify(call(pki, url, "a"))).verdict.value == "valid"
        assert (await second.verify(call(pki, url, "b"))).verdict.value == "valid"
    assert cert_server.hits["/good.pem"] == 1


def _malleate(value: str) -> str:
    """(r, s) → (r, n − s) of a full-form Identity value: valid without the key."""
    from stird.core import jose

    digest = value.split(";", 1)[0]
    head, body, sig = digest.split(".")
    raw = jose.b64u_decode(sig, "sig")
    s = int.from_bytes(raw[32:], "big")
    flipped = jose.b64u_encode(raw[:32] + (jose.P256_N - s).to_bytes(32, "big"))
    return value.replace(digest, f"{head}.{body}.{flipped}")


async def test_malleated_replay_refused_across_instances_on_redis(
    make_service: Factory, cert_server: CertServer, pki: Pki, redis_url: str
) -> None:
    """Two instances sharing Redis: an (r, n − s) copy on another call is a replay."""
    from dataclasses import replace

    url = cert_server.url("/good.pem")
    async with RedisStore(redis_url, prefix=f"mal:{time.monotonic_ns()}:") as shared:
        first, second = make_service(shared), make_service(shared)
        original = call(pki, url, "call-a")
        assert (await first.verify(original)).verdict.value == "valid"
        twin = replace(original, identity=(_malleate(original.identity[0]),), call_id="call-b")
        assert twin.identity != original.identity
        replayed = await second.verify(twin)
        assert summary(replayed) == ("invalid", 438, "replay")


@pytest.mark.parametrize(
    "spoil",
    [
        {"from_": "<sip:+12025550999@pbx.example.com;user=phone>"},  # orig is someone else
        {"to": "<sip:+12025550888@pbx.example.com;user=phone>"},  # dest is someone else
        {"date": format_sip_date(int(time.time()) - 3600)},  # stale Date
        {"identity": ("e30.e30.AAAA;info=<https://127.0.0.1:1/good.pem>",)},  # bad token
    ],
)
async def test_offline_failure_fetches_nothing(
    make_service: Factory, cert_server: CertServer, pki: Pki, spoil: dict[str, object]
) -> None:
    """A request that fails a check needing no certificate costs no certificate fetch."""
    from dataclasses import replace

    facts = replace(call(pki, cert_server.url("/good.pem")), **spoil)  # type: ignore[arg-type]
    verdict = await make_service().verify(facts)
    assert verdict.verdict.value == "invalid"
    assert sum(cert_server.hits.values()) == 0


async def test_full_redis_refuses_verification_instead_of_forgetting(
    make_service: Factory, cert_server: CertServer, pki: Pki, tmp_path: Path
) -> None:
    """Redis at maxmemory under noeviction refuses the replay entry: with the default
    replay_overflow the verification is refused (503), never waved through unchecked."""
    import subprocess

    from stird.core.errors import StirError
    from tests.fixtures_redis import _stop, _wait_ready, free_port, redis_server

    port = free_port()
    argv = [redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--maxmemory", "2mb",
            "--maxmemory-policy", "noeviction"]  # fmt: skip
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        url = f"redis://127.0.0.1:{port}/0"
        async with RedisStore(url, prefix="full:") as shared:
            assert await shared.eviction_policy() == "noeviction"
            filler = b"x" * 4096
            for i in range(2000):  # well past 2 MB
                try:
                    await shared.set(f"fill:{i}", filler, 600)
                except Exception:
                    break
            service = make_service(shared)
            with pytest.raises(StirError) as refused:
                await service.verify(call(pki, cert_server.url("/good.pem"), "c-full"))
            assert refused.value.code == 503
    finally:
        _stop(proc)
