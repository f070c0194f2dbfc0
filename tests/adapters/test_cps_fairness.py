"""Hostile tests of the CPS's fairness and priorities (issue #17): crowds of anonymous
addresses (distinct 127.0.0.x sources on loopback) against a number's signed publisher,
against the store's byte bound, and a retrieval flood against sign/verify's load shedder."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from stird.adapters.cps_client import HttpCpsClient, StoreIdentity, default_policy
from stird.adapters.cps_memory import MemoryCpsStore, entry_cost
from stird.adapters.cps_redis import RedisCpsStore
from stird.adapters.cps_server import CpsLimits, add_cps_routes
from stird.adapters.cps_sqlite import SqliteCpsStore
from stird.adapters.overload import LoadShedder, Overloaded
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_shm import ShmStore
from stird.core import certs, cps, oob
from stird.core.errors import StirError
from stird.core.oob import DecryptionKey, SealedEntry
from stird.core.oobkeys import PublicationPolicy
from stird.services.cps import CpsBusy, CpsPolicy, CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsAdmission, CpsCaps, CpsStore
from stird.services.stores import StoreUnavailable
from tests.adapters.test_cps_server import TIMEOUT, Pki, serving, session, store
from tests.core.vectors import RFC8225_TOKEN

TN = "12025550101"
BIG = oob.BUCKETS[-1]


def signer(pki: Pki) -> StoreIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = certs.make_stir_cert(key, now=int(time.time()) - 60, tns=["13035550100"],
                                issuer_key=pki.root_key, issuer_cert=pki.root)  # fmt: skip
    return StoreIdentity(key, (leaf, pki.root))


def service_for(pki: Pki, store: CpsStore, policy: CpsPolicy | None = None) -> CpsService:
    directory = KeyDirectory(MemoryStore(), PublicationPolicy(anchors=(pki.root,)))
    return CpsService(store, policy, suites=directory.suites,
                      signers=PublicationPolicy(anchors=(pki.root,)),
                      replays=MemoryStore(evict=False))  # fmt: skip


def app_for(service: CpsService, **kw: object) -> web.Application:
    app = web.Application(client_max_size=cps.MAX_BATCH * 16384)
    add_cps_routes(app, service, **kw)  # type: ignore[arg-type]
    return app


def publisher(identity: StoreIdentity | None) -> HttpCpsClient:
    lab = default_policy(5.0, allow_http=True, allow_networks=(ip_network("127.0.0.0/8"),))
    return HttpCpsClient(lab, store_identity=identity)


async def signed_post(
    s: aiohttp.ClientSession, url: str, tn: str, entries: tuple[SealedEntry, ...],
    identity: StoreIdentity, *, jti: str | None = None,
) -> int:  # fmt: skip
    content_type, body = cps.store_body(entries)
    token = cps.store_token(tn, body, key=identity.key, chain=identity.chain,
                            now=int(time.time()), jti=jti or uuid.uuid4().hex)  # fmt: skip
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    async with s.post(f"{url}/cps/{tn}/ppts", data=body, headers=headers) as r:
        await r.read()
        return r.status


@pytest.fixture
async def crowd() -> AsyncIterator[list[aiohttp.ClientSession]]:
    """Sessions bound to 100 distinct loopback sources, 127.0.0.2 to 127.0.0.101."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(session(f"127.0.0.{i}")) for i in range(2, 102)]


async def test_ten_addresses_flooding_a_number_do_not_stop_its_signed_publisher(
    pki: Pki, enc: DecryptionKey, crowd: list[aiohttp.ClientSession]
) -> None:
    service = service_for(pki, MemoryCpsStore())
    entries = oob.seal(RFC8225_TOKEN, [enc.public_key()], TN)
    async with serving(app_for(service)) as url:
        codes = [(await store(s, url, TN, entries)).status for s in crowd[:12] for _ in range(11)]
        assert codes.count(201) == 100  # the number's anonymous share is full
        refused = await store(crowd[20], url, TN, entries)
        assert refused.status == 429 and refused.headers["Retry-After"]
        # stird's own publication, signed with its credential: its own quota, well past
        # the 10 an anonymous client gets for one number
        client = publisher(signer(pki))
        try:
            for _ in range(30):
                await client.store_sealed(url, TN, entries)
        finally:
            await client.close()
        # a token from an untrusted credential counts as anonymous: refused like the crowd
        stranger = Pki(pki.root, ec.generate_private_key(ec.SECP256R1()))
        stranger_root = certs.make_stir_cert(stranger.root_key, now=int(time.time()) - 60,
                                             ca=True)  # fmt: skip
        forged = signer(Pki(stranger_root, stranger.root_key))
        async with session() as s:
            assert await signed_post(s, url, TN, entries, forged) == 429
        async with session() as s, s.get(f"{url}/cps/{TN}/ppts") as r:
            listed = cps.parse_list_document(await r.read())
    opened = [e for _, e in listed if oob.open_entry(e, [enc], TN) is not None]
    assert len(opened) == 130


async def test_signed_store_tokens_bind_number_body_and_are_single_use(
    pki: Pki, enc: DecryptionKey
) -> None:
    service = service_for(pki, MemoryCpsStore())
    identity = signer(pki)
    entries = oob.seal(RFC8225_TOKEN, [enc.public_key()], TN)
    _, body = cps.store_body(entries)
    now = int(time.time())
    token = cps.store_token(TN, body, key=identity.key, chain=identity.chain, now=now, jti="a")
    assert await service.authenticate(token, TN, body)
    for tn, data in ((TN, body), ("12025550199", body), (TN, body + b"A")):
        with pytest.raises(StirError) as info:  # replayed, other number, other body
            await service.authenticate(token, tn, data)
        assert info.value.status.code == 403
    stale = cps.store_token(TN, body, key=identity.key, chain=identity.chain, now=now - 300,
                            jti="b")  # fmt: skip
    with pytest.raises(StirError):
        await service.authenticate(stale, TN, body)
    with pytest.raises(StirError):
        await service.authenticate("a.b.c", TN, body)


async def test_a_store_token_is_single_use_across_workers_sharing_the_replay_table(
    pki: Pki, enc: DecryptionKey, tmp_path: Path
) -> None:
    """Two workers (two CpsServices, as two processes map one shared-memory replay table):
    a signed store token accepted by one is a replay on the other."""
    table = tmp_path / "replay"
    ShmStore.create(table, 1000).close()
    one, two = (ShmStore.attach(table), ShmStore.attach(table))
    signers = PublicationPolicy(anchors=(pki.root,))
    first = CpsService(MemoryCpsStore(), signers=signers, replays=one)
    second = CpsService(MemoryCpsStore(), signers=signers, replays=two)
    identity = signer(pki)
    _, body = cps.store_body(oob.seal(RFC8225_TOKEN, [enc.public_key()], TN))
    token = cps.store_token(TN, body, key=identity.key, chain=identity.chain,
                            now=int(time.time()), jti="once")  # fmt: skip
    assert await first.authenticate(token, TN, body)
    with pytest.raises(StirError) as info:
        await second.authenticate(token, TN, body)
    assert (info.value.status.code, info.value.detail) == (403, "store token replayed")
    one.close()
    two.close()


class _DownStore(MemoryStore):
    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        raise StoreUnavailable("replay store down")


async def test_a_store_token_is_refused_while_its_replay_check_cannot_be_made(
    pki: Pki, enc: DecryptionKey
) -> None:
    service = CpsService(MemoryCpsStore(), signers=PublicationPolicy(anchors=(pki.root,)),
                         replays=_DownStore())  # fmt: skip
    identity = signer(pki)
    _, body = cps.store_body(oob.seal(RFC8225_TOKEN, [enc.public_key()], TN))
    token = cps.store_token(TN, body, key=identity.key, chain=identity.chain,
                            now=int(time.time()), jti="x")  # fmt: skip
    with pytest.raises(StirError) as info:
        await service.authenticate(token, TN, body)
    assert info.value.status.code == 503


def test_signed_stores_need_a_replay_store(pki: Pki) -> None:
    with pytest.raises(ValueError, match="replay store"):
        CpsService(MemoryCpsStore(), signers=PublicationPolicy(anchors=(pki.root,)))


async def test_hundred_addresses_cannot_push_the_store_past_its_byte_bound(
    pki: Pki, crowd: list[aiohttp.ClientSession]
) -> None:
    bound = 1024 * 1024
    memory = MemoryCpsStore(max_bytes=bound)
    policy = CpsPolicy(caps=CpsCaps(pool_bytes=bound * 3 // 4))
    service = service_for(pki, memory, policy)
    big = [oob.dummy(BIG, secrets.token_bytes) for _ in range(4)]
    tns = [f"1202555{n:04d}" for n in range(100)]
    async with serving(app_for(service)) as url:

        async def flood(i: int, s: aiohttp.ClientSession) -> list[int]:
            return [(await store(s, url, tns[(i + k) % 100], tuple(big))).status
                    for k in range(3)]  # fmt: skip

        codes = [c for batch in await asyncio.gather(*map(flood, range(100), crowd))
                 for c in batch]  # fmt: skip
        assert 503 in codes and memory.bytes <= bound * 3 // 4
        # the signed publisher still stores: the anonymous crowd cannot take its share
        async with session() as s:
            assert await signed_post(s, url, TN, tuple(big[:1]), signer(pki)) == 201
    assert memory.bytes <= bound


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
async def test_store_bounds_bytes_on_both_backends(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    blob = oob.dummy(BIG, secrets.token_bytes).to_bytes()
    cost = entry_cost("x" * 22, blob)
    bound, now, caps = 10 * cost, time.time(), CpsCaps(per_client=1000, per_client_tn=1000)
    async with AsyncExitStack() as stack:
        if backend == "memory":
            store: CpsStore = MemoryCpsStore(max_bytes=bound)
        elif backend == "sqlite":
            SqliteCpsStore.create(tmp_path / "cps.sqlite")
            store = SqliteCpsStore(tmp_path / "cps.sqlite", max_bytes=bound)
        else:
            url = request.getfixturevalue("redis_url")
            store = await stack.enter_async_context(RedisCpsStore(
                url, prefix=f"cps:{uuid.uuid4().hex}:", timeout=2.0, max_bytes=bound))  # fmt: skip
        results = [await store.add(TN, [(f"{i:022d}", blob)], client=f"c{i}", now=now,
                                   ttl=60, caps=caps) for i in range(25)]  # fmt: skip
        assert results.count(CpsAdmission.STORED) == 10
        assert results[10:] == [CpsAdmission.STORE_FULL] * 15
        # once they age out, the bytes are free again
        later = await store.add(TN, [("y" * 22, blob)], client="late", now=now + 61, ttl=60,
                                caps=caps)  # fmt: skip
        assert later is CpsAdmission.STORED
        assert len(await store.entries(TN, now + 61)) == 1


async def test_decoy_seals_have_a_budget() -> None:
    clock = [1000.0]
    policy = CpsPolicy(min_dummies=2, max_dummies=2, seals_per_second=10, seal_burst=20)
    service = CpsService(MemoryCpsStore(), policy, clock=lambda: clock[0])
    for _ in range(10):
        await service.retrieve(TN)
    with pytest.raises(CpsBusy) as info:
        await service.retrieve(TN)
    assert info.value.retry_after >= 1 and service.seals == 20 and service.busy == 1
    with pytest.raises(CpsBusy):  # probing single ids draws on the same budget
        await service.get(TN, "A" * 22)
    clock[0] += 1.0
    assert len(await service.retrieve(TN)) == 2


def test_rate_table_is_bounded_and_refills() -> None:
    table = cps.RateTable(rate=2.0, burst=3.0, max_keys=100)
    assert [table.take("a", 0.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert table.take("a", 0.0) == pytest.approx(0.5)
    assert table.take("a", 0.5) == 0.0
    for i in range(1000):
        table.take(f"k{i}", 1.0)
    assert len(table) == 100 and table.evictions == 901


async def test_retrieval_flood_is_rate_limited_and_never_sheds_sign_verify(
    crowd: list[aiohttp.ClientSession],
) -> None:
    """The embedded CPS shares stird's event loop with sign/verify: a flood of anonymous
    retrievals from 100 addresses is cut to each address's rate and the decoy budget,
    and while it runs every sign/verify check of the shedder admits."""
    registry = CollectorRegistry()
    shedder = LoadShedder(0.5, registry=registry)
    frozen = time.time()  # no refill during the flood: the counts below are exact
    service = CpsService(MemoryCpsStore(), clock=lambda: frozen)
    limits = CpsLimits(retrieve_burst=5)
    app = app_for(service, lagging=shedder.behind, limits=limits, clock=lambda: frozen)
    shed: list[Overloaded] = []

    async def sign(request: web.Request) -> web.Response:
        try:
            shedder.check("api")
        except Overloaded as exc:
            shed.append(exc)
            return web.Response(status=503)
        return web.Response(text="signed")

    app.router.add_post("/v1/sign", sign)
    watcher = asyncio.create_task(shedder.run())
    try:
        async with serving(app) as url:

            async def flood(s: aiohttp.ClientSession) -> list[int]:
                codes = []
                for _ in range(20):
                    async with s.get(f"{url}/cps/{TN}/ppts") as r:
                        await r.read()
                        codes.append(r.status)
                return codes

            async def pbx() -> list[int]:
                codes = []
                async with aiohttp.ClientSession(timeout=TIMEOUT) as s:
                    for _ in range(50):
                        async with s.post(f"{url}/v1/sign") as r:
                            codes.append(r.status)
                        await asyncio.sleep(0.005)
                return codes

            results = await asyncio.gather(pbx(), *map(flood, crowd))
    finally:
        watcher.cancel()
    signed, flooded = results[0], [c for codes in results[1:] for c in codes]
    assert signed == [200] * 50 and not shed
    assert flooded.count(429) == 100 * (20 - 5)  # each address gets its burst of 5
    # of the 500 admitted, those past the decoy budget are refused before sealing
    assert flooded.count(200) + flooded.count(503) == 500 and flooded.count(503) > 0
    assert service.seals <= service.policy.seal_burst


async def test_a_late_loop_refuses_cps_before_sign_verify_is_shed() -> None:
    shedder = LoadShedder(0.2, registry=CollectorRegistry())
    service = CpsService(MemoryCpsStore())
    async with serving(app_for(service, lagging=shedder.behind)) as url, session() as s:
        shedder.observe(0.15)  # late, but under the sign/verify threshold
        shedder.check("api")  # sign/verify still admitted
        async with s.get(f"{url}/cps/{TN}/ppts") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert service.seals == 0  # refused before any decoy was sealed
        shedder.observe(0.01)
        async with s.get(f"{url}/cps/{TN}/ppts") as r:
            assert r.status == 200


async def test_the_gate_lets_a_few_cps_requests_work_at_a_time() -> None:
    """A flood's requests wait suspended for a turn (so sign/verify share the loop with
    a few of them, not all), and past the queue they are refused at once."""
    from stird.adapters.cps_server import CpsBusy, _Gate

    gate = _Gate(concurrent=2, queued=3)
    working, most = 0, 0
    release = asyncio.Event()

    async def request() -> str:
        nonlocal working, most
        try:
            async with gate.turn():
                working += 1
                most = max(most, working)
                await release.wait()
                working -= 1
        except CpsBusy:
            return "busy"
        return "served"

    tasks = [asyncio.create_task(request()) for _ in range(8)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks)
    assert most == 2
    assert results.count("served") == 5 and results.count("busy") == 3
    assert gate.refused == 3


def _token(header: dict[str, object], claims: dict[str, object], sig: bytes = b"s" * 64) -> str:
    import json

    from stird.core import jose

    head = jose.b64u_encode(json.dumps(header).encode())
    body = jose.b64u_encode(json.dumps(claims).encode())
    return f"{head}.{body}.{jose.b64u_encode(sig)}"


async def test_hostile_store_tokens_are_refused_with_a_stir_error(pki: Pki) -> None:
    """Who may store as a signer: only a credential under the CPS's anchors, signing this
    number and body. Every forgery is a StirError (400/403/437/438), never a crash."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    service = service_for(pki, MemoryCpsStore())
    body, now = b'{"entries": []}', int(time.time())
    good = signer(pki)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = certs.make_stir_cert(rogue_key, now=now - 60, tns=["13035550100"])  # self-signed
    claims = {"iat": now, "jti": "x", "tn": TN, "body": cps.body_digest(body)}

    def der(c: x509.Certificate) -> str:
        return base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()

    x5c = [der(c) for c in good.chain]
    typ = cps.STORE_TOKEN_TYP
    hostile = {
        "self-signed credential": cps.store_token(
            TN, body, key=rogue_key, chain=(rogue,), now=now, jti="r"
        ),
        "trusted chain, another key": cps.store_token(
            TN, body, key=rogue_key, chain=good.chain, now=now, jti="k"
        ),
        "alg none": _token({"alg": "none", "typ": typ, "x5c": x5c}, claims),
        "alg HS256": _token({"alg": "HS256", "typ": typ, "x5c": x5c}, claims),
        "x5c not a list": _token({"alg": "ES256", "typ": typ, "x5c": "abc"}, claims),
        "x5c garbage": _token({"alg": "ES256", "typ": typ, "x5c": ["!!!", 7]}, claims),
        "x5c PEM": _token(
            {"alg": "ES256", "typ": typ, "x5c": [certs.cert_to_pem(good.chain[0]).decode()]}, claims
        ),
        "x5c empty": _token({"alg": "ES256", "typ": typ, "x5c": []}, claims),
        "eleven certificates": _token({"alg": "ES256", "typ": typ, "x5c": x5c * 6}, claims),
        "bad signature": _token({"alg": "ES256", "typ": typ, "x5c": x5c}, claims),
        "iat a bool": _token({"alg": "ES256", "typ": typ, "x5c": x5c}, {**claims, "iat": True}),
        "two parts": "a.b",
        "huge": "a." * 20_000 + "b",
        "not base64": "%%%.%%%.%%%",
        "nested": _token(
            {"alg": "ES256", "typ": typ, "x5c": x5c}, {"a": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}
        ),
    }
    for name, token in hostile.items():
        with pytest.raises(StirError) as info:
            await service.authenticate(token, TN, body)
        assert info.value.code in (400, 403, 437, 438), (name, info.value)
    assert await service.authenticate(
        cps.store_token(TN, body, key=good.key, chain=good.chain, now=now, jti="ok"), TN, body
    )
