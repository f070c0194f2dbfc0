"""CPS storage (RFC 8816 §6, §7.5) on the memory and the real Redis backends, and the key
directory (RFC 8816 §11): publications accepted only from a covering STIR credential."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.cps_memory import ENTRY_OVERHEAD, MemoryCpsStore
from stird.adapters.cps_redis import RedisCpsStore
from stird.adapters.cps_sqlite import SqliteCpsStore
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.core import certs, oob, oobkeys
from stird.core.errors import Check, SipStatus, StirError
from stird.core.oob import DecryptionKey, OobSuite, SealedEntry
from stird.core.oobkeys import PublicationPolicy
from stird.core.verdict import Credential
from stird.services.cps import CpsPolicy, CpsRefused, CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsAdmission, CpsCaps, CpsStore
from tests.core.vectors import RFC8225_TOKEN

TN, TN2 = "12025550101", "12025550102"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Kit:
    store: CpsStore
    clock: Callable[[], float]
    advance: Callable[[float], Awaitable[None]]

    def service(self, policy: CpsPolicy | None = None, **kw: object) -> CpsService:
        return CpsService(self.store, policy, clock=self.clock, **kw)  # type: ignore[arg-type]


def sqlite_store(folder: Path, max_entries: int = 100_000) -> SqliteCpsStore:
    SqliteCpsStore.create(folder / "cps.sqlite")
    return SqliteCpsStore(folder / "cps.sqlite", max_entries)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    if request.param in ("memory", "sqlite"):
        clock = FakeClock()

        async def tick(seconds: float) -> None:
            clock.now += seconds

        if request.param == "memory":
            yield Kit(MemoryCpsStore(), clock, tick)
        else:
            store = sqlite_store(tmp_path)
            yield Kit(store, clock, tick)
            await store.close()
    else:
        url: str = request.getfixturevalue("redis_url")
        async with RedisCpsStore(url, prefix=f"cps:{uuid.uuid4().hex}:", timeout=2.0) as store:
            yield Kit(store, time.time, asyncio.sleep)


@pytest.fixture(scope="module")
def key() -> DecryptionKey:
    return DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)


def sealed(key: DecryptionKey, n: int = 1) -> tuple[SealedEntry, ...]:
    return oob.seal(RFC8225_TOKEN, [key.public_key()] * n, TN)


def opened(items: list, key: DecryptionKey) -> list[str]:
    return [t for item in items if (t := oob.open_entry(item.entry, [key], TN)) is not None]


async def test_store_and_retrieve_with_dummies(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service()
    ids = await cps.store(TN, sealed(key, 2), "192.0.2.1")
    assert len(ids) == 2 and len(set(ids)) == 2
    items = await cps.retrieve(TN)
    assert {item.id for item in items} >= set(ids)
    assert 3 <= len(items) <= 2 + cps.policy.max_dummies  # at least one dummy (§6.2)
    assert opened(items, key) == [RFC8225_TOKEN] * 2
    sizes = {len(item.entry.to_bytes()) for item in items}
    assert len(sizes) == 1  # dummies are the size and form of the real entries
    assert (await cps.get(TN, ids[0])).to_bytes() == sealed_bytes(items, ids[0])


def sealed_bytes(items: list, entry_id: str) -> bytes:
    return next(item.entry.to_bytes() for item in items if item.id == entry_id)


async def test_empty_number_gets_plausible_dummies(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service()
    (real,) = sealed(key)
    for _ in range(10):
        items = await cps.retrieve(TN2)
        assert items and opened(items, key) == []  # never empty (§6.2), nothing opens
        for item in items:
            assert len(item.entry.to_bytes()) == len(real.to_bytes())
            assert item.entry.to_bytes()[:7] == real.to_bytes()[:7]


async def test_dummies_never_repeat(kit: Kit) -> None:
    cps = kit.service()
    blobs = [item.entry.to_bytes() for _ in range(30) for item in await cps.retrieve(TN2)]
    assert len(set(blobs)) == len(blobs)


async def test_unknown_id_gets_a_dummy(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service()
    (real,) = sealed(key)
    one = await cps.get(TN, "A" * 22)
    two = await cps.get(TN, "A" * 22)
    assert len(one.to_bytes()) == len(real.to_bytes()) and one != two


async def test_entries_age_out(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service(CpsPolicy(ttl=0.4))
    (entry_id,) = await cps.store(TN, sealed(key), "192.0.2.1")
    assert opened(await cps.retrieve(TN), key) == [RFC8225_TOKEN]
    await kit.advance(0.6)
    items = await cps.retrieve(TN)
    assert opened(items, key) == [] and entry_id not in {i.id for i in items}
    assert oob.open_entry(await cps.get(TN, entry_id), [key], TN) is None


async def test_flood_from_one_client_is_capped_without_hurting_others(
    kit: Kit, key: DecryptionKey
) -> None:
    cps = kit.service(CpsPolicy(caps=CpsCaps(per_tn=20, per_client=50, per_client_tn=5)))
    (entry,) = sealed(key)
    for _ in range(5):
        await cps.store(TN, [entry], "198.51.100.7")
    with pytest.raises(CpsRefused) as info:
        await cps.store(TN, [entry], "198.51.100.7")
    assert info.value.admission is CpsAdmission.CLIENT_TN_FULL
    await cps.store(TN, [entry], "192.0.2.1")  # the flood did not fill the number
    await cps.store(TN2, [entry], "198.51.100.7")  # nor the flooder's other numbers
    assert cps.refused == 1


async def test_signers_and_anonymous_clients_have_separate_pools(
    kit: Kit, key: DecryptionKey
) -> None:
    """Anonymous addresses filling a number's share do not touch a signer's quota, and a
    signer is counted under its credential, not its address (both backends)."""
    anon = CpsCaps(per_tn=4, per_client=100, per_client_tn=2)
    signed = CpsCaps(per_tn=6, per_client=100, per_client_tn=6, pool="signed")
    cps = kit.service(CpsPolicy(caps=anon, signed_caps=signed))
    (entry,) = sealed(key)
    for client in ("192.0.2.1", "192.0.2.2"):
        await cps.store(TN, [entry, entry], client)
    with pytest.raises(CpsRefused) as info:
        await cps.store(TN, [entry], "192.0.2.3")
    assert info.value.admission is CpsAdmission.TN_FULL
    for _ in range(3):  # from a flooding address, but signed: its own quota
        await cps.store(TN, [entry, entry], "192.0.2.1", signer="ab" * 32)
    with pytest.raises(CpsRefused) as info:
        await cps.store(TN, [entry], "192.0.2.9", signer="ab" * 32)
    assert info.value.admission is CpsAdmission.TN_FULL
    assert len(opened(await cps.retrieve(TN), key)) == 10


async def test_anonymous_pool_is_bounded_in_bytes(kit: Kit, key: DecryptionKey) -> None:
    (entry,) = sealed(key)
    cost = ENTRY_OVERHEAD + 22 + len(entry.to_bytes())
    anon = CpsCaps(per_client_tn=100, pool_bytes=3 * cost)
    cps = kit.service(CpsPolicy(caps=anon))
    for n in range(3):
        await cps.store(f"1202555030{n}", [entry], f"192.0.2.{n}")
    with pytest.raises(CpsRefused) as info:
        await cps.store(TN, [entry], "192.0.2.50")
    assert info.value.admission is CpsAdmission.STORE_FULL
    await cps.store(TN, [entry], "192.0.2.50", signer="cd" * 32)  # the signed pool is free


async def test_per_tn_and_per_client_caps(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service(CpsPolicy(caps=CpsCaps(per_tn=4, per_client=6, per_client_tn=4)))
    (entry,) = sealed(key)
    for client in ("192.0.2.1", "192.0.2.2"):
        await cps.store(TN, [entry, entry], client)
    with pytest.raises(CpsRefused) as info:
        await cps.store(TN, [entry], "192.0.2.3")
    assert info.value.admission is CpsAdmission.TN_FULL
    for n in range(4):
        await cps.store(f"1202555020{n}", [entry], "192.0.2.1")
    with pytest.raises(CpsRefused) as info:
        await cps.store("12025550299", [entry], "192.0.2.1")
    assert info.value.admission is CpsAdmission.CLIENT_FULL


async def test_batch_is_all_or_nothing(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service(CpsPolicy(caps=CpsCaps(per_tn=3, per_client=10, per_client_tn=3)))
    await cps.store(TN, sealed(key, 2), "192.0.2.1")
    with pytest.raises(CpsRefused):
        await cps.store(TN, sealed(key, 2), "192.0.2.2")
    assert len(opened(await cps.retrieve(TN), key)) == 2


async def test_caps_free_up_as_entries_age_out(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service(CpsPolicy(ttl=0.3, caps=CpsCaps(per_tn=1, per_client=1, per_client_tn=1)))
    (entry,) = sealed(key)
    await cps.store(TN, [entry], "192.0.2.1")
    with pytest.raises(CpsRefused):
        await cps.store(TN, [entry], "192.0.2.1")
    await kit.advance(0.5)
    await cps.store(TN, [entry], "192.0.2.1")


async def test_dummies_imitate_the_real_suite(kit: Kit) -> None:
    hybrid = DecryptionKey.generate(OobSuite.MLKEM768_X25519, secrets.token_bytes)
    cps = kit.service(CpsPolicy(min_dummies=3, max_dummies=3))
    await cps.store(TN, oob.seal(RFC8225_TOKEN, [hybrid.public_key()], TN), "192.0.2.1")
    assert {i.entry.suite for i in await cps.retrieve(TN)} == {OobSuite.MLKEM768_X25519}


async def test_dummies_follow_published_suites_when_empty(kit: Kit) -> None:
    async def suites(tn: str) -> frozenset[OobSuite]:
        return frozenset({OobSuite.MLKEM768_X25519})

    cps = kit.service(suites=suites)
    assert {i.entry.suite for i in await cps.retrieve(TN2)} == {OobSuite.MLKEM768_X25519}


async def test_malformed_requests_are_stir_errors(kit: Kit, key: DecryptionKey) -> None:
    cps = kit.service()
    with pytest.raises(StirError):
        await cps.store("+12025550101", sealed(key), "x")
    with pytest.raises(StirError):
        await cps.store(TN, sealed(key, 17), "x")
    with pytest.raises(StirError):
        await cps.get(TN, "../etc")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_memory_store_is_bounded(key: DecryptionKey, backend: str, tmp_path: Path) -> None:
    store: CpsStore = (MemoryCpsStore(max_entries=2) if backend == "memory"
                       else sqlite_store(tmp_path, max_entries=2))  # fmt: skip
    cps = CpsService(store, clock=FakeClock())
    (entry,) = sealed(key)

    async def run() -> None:
        await cps.store(TN, [entry, entry], "a")
        with pytest.raises(CpsRefused) as info:
            await cps.store(TN2, [entry], "b")
        assert info.value.admission is CpsAdmission.STORE_FULL

    asyncio.run(run())


# ---------------------------------------------------------------- key directory
@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey

    def credential(self, tns: list[str]) -> tuple[ec.EllipticCurvePrivateKey, list]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = int(time.time())
        leaf = certs.make_stir_cert(key, now=now, tns=tns, issuer_key=self.root_key,
                                    issuer_cert=self.root)  # fmt: skip
        return key, [leaf, self.root]


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certs.make_stir_cert(root_key, now=int(time.time()) - 3600, ca=True,
                                common_name="Test STI-CA")  # fmt: skip
    return Pki(root, root_key)


def publication(
    pki: Pki, tns: list[str], keys: list[oob.RecipientKey], *, signer_tns: list[str] | None = None,
    now: int | None = None, x5u: str | None = None,
) -> tuple[str, list]:  # fmt: skip
    signer, chain = pki.credential(signer_tns or tns)
    token = oobkeys.build_publication(keys, tns, signing_key=signer, chain=chain,
                                      now=now or int(time.time()), x5u=x5u)  # fmt: skip
    return token, chain


def directory(pki: Pki, store: object | None = None, **kw: object) -> KeyDirectory:
    return KeyDirectory(
        store if store is not None else MemoryStore(), PublicationPolicy(anchors=(pki.root,)), **kw
    )  # type: ignore[arg-type]


async def test_publication_accepted_from_covering_credential(pki: Pki, key: DecryptionKey) -> None:
    keydir = directory(pki)
    token, _ = publication(pki, [TN, TN2], [key.public_key()])
    pub = await keydir.publish(token)
    assert pub.tns == (TN, TN2)
    for tn in (TN, TN2):
        entry = await keydir.lookup(tn)
        assert entry.keys == (key.public_key(),) and entry.publications == (token,)
    assert await keydir.keys("12025550199") == ()
    assert await keydir.suites(TN) == {OobSuite.X25519}


async def test_tn_outside_tnauthlist_refused(pki: Pki, key: DecryptionKey) -> None:
    keydir = directory(pki)
    token, _ = publication(pki, [TN, TN2], [key.public_key()], signer_tns=[TN])
    with pytest.raises(StirError) as info:
        await keydir.publish(token)
    assert info.value.check is Check.AUTHORITY and info.value.status is SipStatus.FORBIDDEN
    assert await keydir.keys(TN) == ()  # nothing of a refused publication is kept


async def test_untrusted_credential_refused(key: DecryptionKey) -> None:
    other_root_key = ec.generate_private_key(ec.SECP256R1())
    other = Pki(certs.make_stir_cert(other_root_key, now=int(time.time()), ca=True), other_root_key)
    token, _ = publication(other, [TN], [key.public_key()])
    root_key = ec.generate_private_key(ec.SECP256R1())
    keydir = directory(Pki(certs.make_stir_cert(root_key, now=int(time.time()), ca=True), root_key))
    with pytest.raises(StirError) as info:
        await keydir.publish(token)
    assert info.value.check is Check.TRUST


async def test_x5u_publication_fetches_the_chain(pki: Pki, key: DecryptionKey) -> None:
    token, chain = publication(pki, [TN], [key.public_key()], x5u="https://keys.example/c.pem")

    class Provider:
        def __init__(self) -> None:
            self.urls: list[str] = []

        async def credential(self, url: str) -> Credential:
            self.urls.append(url)
            return Credential(tuple(chain))

    provider = Provider()
    assert (await directory(pki, credentials=provider).publish(token)).tns == (TN,)
    assert provider.urls == ["https://keys.example/c.pem"]
    with pytest.raises(StirError):
        await directory(pki).publish(token)  # no provider: x5u not accepted


async def test_newer_publication_replaces_older_and_publishers_add_up(pki: Pki) -> None:
    keydir = directory(pki, cache_ttl=0)
    k1, k2, k3 = (DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
                  for _ in range(3))  # fmt: skip
    signer, chain = pki.credential([TN])
    now = int(time.time())
    build = oobkeys.build_publication
    await keydir.publish(build([k1], [TN], signing_key=signer, chain=chain, now=now - 10))
    await keydir.publish(build([k2], [TN], signing_key=signer, chain=chain, now=now))
    assert await keydir.keys(TN) == (k2,)
    with pytest.raises(StirError):  # replaying the older one is refused
        await keydir.publish(build([k1], [TN], signing_key=signer, chain=chain, now=now - 10))
    token, _ = publication(pki, [TN], [k3])  # another credential (an enterprise, say)
    await keydir.publish(token)
    assert set(await keydir.keys(TN)) == {k2, k3}
    await keydir.publish(build([], [TN], signing_key=signer, chain=chain, now=now + 1))
    assert await keydir.keys(TN) == (k3,)  # an empty set withdraws


async def test_lookup_is_cached(pki: Pki, key: DecryptionKey) -> None:
    clock = FakeClock(time.time())
    shared = MemoryStore()
    ages = FakeClock(0.0)
    reader = directory(pki, shared, clock=clock, ages=ages, cache_ttl=30)
    writer = directory(pki, shared)
    assert await reader.keys(TN) == ()
    token, _ = publication(pki, [TN], [key.public_key()])
    await writer.publish(token)
    assert await reader.keys(TN) == ()  # cached
    clock.now -= 7200  # a backward wall-clock step does not keep the cache for hours
    ages.now += 31
    assert await reader.keys(TN) == (key.public_key(),)


async def test_dev_wildcard(pki: Pki, key: DecryptionKey, caplog: pytest.LogCaptureFixture) -> None:
    keydir = directory(pki, dev_wildcard=[key.public_key()])
    assert "DEVELOPMENT" in caplog.text
    assert await keydir.keys("4930123456") == (key.public_key(),)


async def test_directories_share_redis(pki: Pki, key: DecryptionKey, redis_url: str) -> None:
    prefix = f"keys:{uuid.uuid4().hex}:"
    async with RedisStore(redis_url, prefix=prefix, timeout=2.0) as one, \
            RedisStore(redis_url, prefix=prefix, timeout=2.0) as two:  # fmt: skip
        token, _ = publication(pki, [TN], [key.public_key()])
        await directory(pki, one).publish(token)
        assert await directory(pki, two).keys(TN) == (key.public_key(),)


async def test_directory_failure_does_not_cost_the_retrieval(kit: Kit) -> None:
    from stird.services.stores import StoreUnavailable

    async def suites(tn: str) -> frozenset[OobSuite]:
        raise StoreUnavailable("down")

    items = await kit.service(suites=suites).retrieve(TN2)
    assert items and {i.entry.suite for i in items} == {oob.DEFAULT_SUITE}
