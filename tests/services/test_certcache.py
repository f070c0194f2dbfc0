"""CertificateCache: single flight, TTLs, negative caching, stale-while-revalidate, sharing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.services.certcache import CachePolicy, CertificateCache
from stird.services.ports import FetchedCredential
from tests.fixtures_redis import free_port

NOW = 1_700_000_000
URL = "https://cert.example.net/a.pem"
KEY = ec.generate_private_key(ec.SECP256R1())


def make_chain(days: int = 365, tn: str = "12025550100") -> tuple[x509.Certificate, ...]:
    return (certs.make_stir_cert(KEY, now=NOW, days=days, tns=(tn,)),)


CHAIN = make_chain()
OTHER = make_chain(tn="12025550199")


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeFetcher:
    """Counts calls; holds every fetch at ``gate`` while it is clear; raises ``error``."""

    def __init__(self, chain: tuple[x509.Certificate, ...] = CHAIN) -> None:
        self.chain = chain
        self.max_age: float | None = None
        self.no_store = False
        self.error: BaseException | None = None
        self.calls = 0
        self.cancelled = 0
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def fetch(self, url: str) -> FetchedCredential:
        self.calls += 1
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return FetchedCredential(url, self.chain, max_age=self.max_age, no_store=self.no_store)


def fetch_error() -> StirError:
    return StirError(SipStatus.BAD_IDENTITY_INFO, "HTTP 503", check=Check.CREDENTIAL)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fetcher() -> FakeFetcher:
    return FakeFetcher()


def make_cache(fetcher: FakeFetcher, clock: FakeClock, **policy: float) -> CertificateCache:
    return CertificateCache(fetcher, policy=CachePolicy(**policy), clock=clock)  # type: ignore[arg-type]


async def settle(cache: CertificateCache) -> None:
    """Wait for background refreshes."""
    await asyncio.gather(*list(cache._flights.values()), return_exceptions=True)


async def test_single_flight_for_100_concurrent_callers(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    cache = make_cache(fetcher, clock)
    fetcher.gate.clear()
    tasks = [asyncio.create_task(cache.credential(URL)) for _ in range(100)]
    await fetcher.started.wait()
    await asyncio.sleep(0.01)
    assert fetcher.calls == 1
    fetcher.gate.set()
    results = await asyncio.gather(*tasks)
    assert fetcher.calls == 1
    assert all(r is results[0] for r in results)
    assert results[0].chain == CHAIN and results[0].trust is None
    assert (cache.stats.misses, cache.stats.fetches) == (100, 1)


async def test_cancelled_waiter_does_not_cancel_fetch(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    cache = make_cache(fetcher, clock)
    fetcher.gate.clear()
    first = asyncio.create_task(cache.credential(URL))
    second = asyncio.create_task(cache.credential(URL))
    await fetcher.started.wait()
    first.cancel()
    await asyncio.sleep(0)
    assert first.cancelled()
    fetcher.gate.set()
    assert (await second).chain == CHAIN
    assert (fetcher.calls, fetcher.cancelled) == (1, 0)


async def test_sole_cancelled_waiter_still_fills_cache(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    cache = make_cache(fetcher, clock)
    fetcher.gate.clear()
    waiter = asyncio.create_task(cache.credential(URL))
    await fetcher.started.wait()
    waiter.cancel()
    fetcher.gate.set()
    await settle(cache)
    assert (await cache.credential(URL)).chain == CHAIN
    assert fetcher.calls == 1 and cache.stats.hits == 1


async def test_hit_miss_and_expiry(fetcher: FakeFetcher, clock: FakeClock) -> None:
    cache = make_cache(fetcher, clock, stale_ttl=0)
    await cache.credential(URL)
    clock.now += 3599
    await cache.credential(URL)
    assert (fetcher.calls, cache.stats.hits, cache.stats.misses) == (1, 1, 1)
    clock.now += 2  # past default_ttl
    await cache.credential(URL)
    assert (fetcher.calls, cache.stats.misses) == (2, 2)


@pytest.mark.parametrize(
    ("max_age", "policy", "hit_at", "refetch_at"),
    [
        (120, {}, 119, 121),  # max-age honoured
        (10**7, {"max_ttl": 1000}, 999, 1001),  # capped by max_ttl
        (1, {}, 59, 61),  # floored at min_ttl
        (0, {"min_ttl": 5}, 4, 6),
        (None, {"default_ttl": 200}, 199, 201),  # no lifetime given
    ],
)
async def test_lifetime(
    fetcher: FakeFetcher,
    clock: FakeClock,
    max_age: float | None,
    policy: dict[str, float],
    hit_at: float,
    refetch_at: float,
) -> None:
    fetcher.max_age = max_age
    cache = make_cache(fetcher, clock, stale_ttl=0, **policy)
    await cache.credential(URL)
    clock.now = NOW + hit_at
    await cache.credential(URL)
    assert fetcher.calls == 1
    clock.now = NOW + refetch_at
    await cache.credential(URL)
    assert fetcher.calls == 2


async def test_lifetime_and_stale_capped_by_not_after(clock: FakeClock) -> None:
    fetcher = FakeFetcher(make_chain(days=1))
    fetcher.max_age = 3 * 86400
    cache = make_cache(fetcher, clock, max_ttl=10 * 86400, stale_ttl=3600)
    await cache.credential(URL)
    clock.now = NOW + 86399
    await cache.credential(URL)
    assert fetcher.calls == 1
    clock.now = NOW + 86401  # past notAfter: not even served stale
    await cache.credential(URL)
    assert fetcher.calls == 2 and cache.stats.stale_served == 0


async def test_expired_certificate_is_not_cached(clock: FakeClock) -> None:
    fetcher = FakeFetcher(make_chain(days=1))
    clock.now = NOW + 2 * 86400
    cache = make_cache(fetcher, clock)
    await cache.credential(URL)
    await cache.credential(URL)
    assert fetcher.calls == 2 and len(cache) == 0


async def test_no_store_is_not_cached_but_single_flighted(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    fetcher.no_store = True
    cache = make_cache(fetcher, clock)
    fetcher.gate.clear()
    tasks = [asyncio.create_task(cache.credential(URL)) for _ in range(10)]
    await fetcher.started.wait()
    fetcher.gate.set()
    await asyncio.gather(*tasks)
    assert fetcher.calls == 1
    await cache.credential(URL)
    assert fetcher.calls == 2 and len(cache) == 0 and cache.stats.hits == 0


async def test_negative_caching_then_retry(fetcher: FakeFetcher, clock: FakeClock) -> None:
    fetcher.error = fetch_error()
    cache = make_cache(fetcher, clock, negative_ttl=30)
    with pytest.raises(StirError) as first:
        await cache.credential(URL)
    clock.now += 29
    with pytest.raises(StirError) as second:
        await cache.credential(URL)
    assert fetcher.calls == 1 and cache.stats.fetch_errors == 1
    assert first.value.code == second.value.code == 436
    assert second.value.detail == "HTTP 503" and second.value is not first.value
    fetcher.error = None
    clock.now += 2
    assert (await cache.credential(URL)).chain == CHAIN
    assert fetcher.calls == 2


async def test_non_stir_fetcher_error_becomes_436(fetcher: FakeFetcher, clock: FakeClock) -> None:
    fetcher.error = RuntimeError("bug")
    cache = make_cache(fetcher, clock)
    with pytest.raises(StirError, match="RuntimeError") as err:
        await cache.credential(URL)
    assert err.value.code == 436


async def test_empty_chain_is_437(clock: FakeClock) -> None:
    cache = make_cache(FakeFetcher(()), clock)
    with pytest.raises(StirError) as err:
        await cache.credential(URL)
    assert err.value.code == 437


async def test_stale_while_revalidate(fetcher: FakeFetcher, clock: FakeClock) -> None:
    fetcher.max_age = 100
    cache = make_cache(fetcher, clock, stale_ttl=300)
    await cache.credential(URL)
    clock.now += 150
    fetcher.gate.clear()
    fetcher.chain = OTHER
    stale = await asyncio.wait_for(cache.credential(URL), 1)  # at once, gate still closed
    again = await cache.credential(URL)
    assert stale.chain == again.chain == CHAIN
    await fetcher.started.wait()
    assert fetcher.calls == 2 and cache.stats.stale_served == 2
    fetcher.gate.set()
    await settle(cache)
    assert (await cache.credential(URL)).chain == OTHER
    assert fetcher.calls == 2


async def test_failed_refresh_serves_stale_until_window_ends(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    fetcher.max_age = 100
    cache = make_cache(fetcher, clock, stale_ttl=300, negative_ttl=30)
    await cache.credential(URL)
    fetcher.error = fetch_error()
    for offset, calls in ((150, 2), (170, 2), (190, 3), (390, 4)):
        clock.now = NOW + offset
        assert (await cache.credential(URL)).chain == CHAIN
        await settle(cache)
        assert fetcher.calls == calls, offset
    clock.now = NOW + 401  # stale window over, last failure 11 s ago: the error
    with pytest.raises(StirError, match="HTTP 503"):
        await cache.credential(URL)
    assert fetcher.calls == 4
    fetcher.error = None
    clock.now = NOW + 421
    assert (await cache.credential(URL)).chain == CHAIN
    assert fetcher.calls == 5


async def test_bounded_lru(fetcher: FakeFetcher, clock: FakeClock) -> None:
    cache = make_cache(fetcher, clock, max_entries=3)
    for name in "abc":
        await cache.credential(f"https://x/{name}")
    await cache.credential("https://x/a")  # a becomes most recent
    await cache.credential("https://x/d")  # evicts b
    assert len(cache) == 3 and fetcher.calls == 4
    await cache.credential("https://x/a")
    assert fetcher.calls == 4
    await cache.credential("https://x/b")
    assert fetcher.calls == 5


async def test_pin_never_expires(fetcher: FakeFetcher, clock: FakeClock) -> None:
    cache = make_cache(fetcher, clock)
    await cache.credential(URL)
    cache.pin(URL, OTHER)
    clock.now += 10 * 365 * 86400
    cred = await cache.credential(URL)
    assert cred.trust == "anchor" and cred.chain == OTHER and fetcher.calls == 1
    with pytest.raises(ValueError, match="empty"):
        cache.pin(URL, ())


async def test_close_cancels_background_refresh(fetcher: FakeFetcher, clock: FakeClock) -> None:
    fetcher.max_age = 100
    cache = make_cache(fetcher, clock)
    await cache.credential(URL)
    clock.now += 150
    fetcher.gate.clear()
    fetcher.started.clear()
    await cache.credential(URL)
    await fetcher.started.wait()
    await cache.close()
    assert fetcher.cancelled == 1 and not cache._flights


# -- shared store ----------------------------------------------------------------------


async def test_two_instances_share_through_redis(
    redis_store: RedisStore,
    clock: FakeClock,
) -> None:
    one, two = FakeFetcher(), FakeFetcher()
    first = CertificateCache(one, shared=redis_store, clock=clock)
    second = CertificateCache(two, shared=redis_store, clock=clock)
    await first.credential(URL)
    cred = await second.credential(URL)
    assert cred.chain == CHAIN and cred.trust is None
    assert (one.calls, two.calls) == (1, 0)
    assert second.stats.shared_hits == 1 and second.stats.shared_errors == 0
    await second.credential(URL)  # now from L1
    assert second.stats.hits == 1 and second.stats.shared_hits == 1


async def test_negative_entries_are_shared(
    redis_store: RedisStore,
    clock: FakeClock,
) -> None:
    one, two = FakeFetcher(), FakeFetcher()
    one.error = fetch_error()
    first = CertificateCache(one, shared=redis_store, clock=clock)
    second = CertificateCache(two, shared=redis_store, clock=clock)
    with pytest.raises(StirError):
        await first.credential(URL)
    with pytest.raises(StirError, match="HTTP 503") as err:
        await second.credential(URL)
    assert err.value.code == 436 and err.value.check is Check.CREDENTIAL
    assert two.calls == 0


async def test_shared_stale_entry_is_a_fallback(clock: FakeClock) -> None:
    shared = MemoryStore(clock=clock)
    one, two = FakeFetcher(), FakeFetcher()
    one.max_age = 100
    await CertificateCache(one, shared=shared, clock=clock).credential(URL)
    clock.now += 150
    two.error = fetch_error()
    late = CertificateCache(two, shared=shared, clock=clock)
    assert (await late.credential(URL)).chain == CHAIN
    assert two.calls == 1 and late.stats.fetch_errors == 1


async def test_shared_store_down_carries_on(fetcher: FakeFetcher, clock: FakeClock) -> None:
    async with RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2) as down:
        cache = CertificateCache(fetcher, shared=down, clock=clock)
        assert (await cache.credential(URL)).chain == CHAIN
        assert cache.stats.shared_errors == 1  # the GET; the SET is skipped (backoff)
        await cache.credential("https://x/other")
        assert cache.stats.shared_errors == 1
        clock.now += 6
        await cache.credential("https://x/third")
        assert cache.stats.shared_errors == 2  # backoff over: the GET fails (SET skipped)
        assert fetcher.calls == 3


async def test_malformed_shared_value_is_ignored(fetcher: FakeFetcher, clock: FakeClock) -> None:
    from stird.services.certcache import _key

    shared = MemoryStore(clock=clock)
    await shared.set(_key(URL), b"{not json", 60)
    cache = CertificateCache(fetcher, shared=shared, clock=clock)
    assert (await cache.credential(URL)).chain == CHAIN
    assert cache.stats.shared_errors == 1 and fetcher.calls == 1
    other = CertificateCache(FakeFetcher(), shared=shared, clock=clock)
    assert (await other.credential(URL)).chain == CHAIN  # the fetch overwrote it
    assert other.stats.shared_hits == 1


class HeavyFailure(FakeFetcher):
    """Fails like a real fetcher would: raising from inside frames that hold a response-
    sized buffer, with a long detail naming the URL."""

    async def fetch(self, url: str) -> FetchedCredential:
        self.calls += 1
        response = bytearray(64 * 1024)  # what a traceback would keep alive
        try:
            raise OSError(f"refused {len(response)}")
        except OSError:
            detail = f"cannot fetch certificate: connection failed for {url} " + "x" * 4000
            raise StirError(SipStatus.BAD_IDENTITY_INFO, detail,
                            check=Check.CREDENTIAL) from None  # fmt: skip


async def test_distinct_failing_url_flood_stays_within_the_negative_bounds(
    clock: FakeClock,
) -> None:
    policy = CachePolicy(max_negative_entries=1000, max_negative_bytes=256 * 1024)
    cache = CertificateCache(HeavyFailure(), policy=policy, clock=clock)
    cache.pin("https://cert.example.net/own.pem", CHAIN)
    for i in range(20_000):
        with pytest.raises(StirError) as info:
            await cache.credential(f"https://evil{i}.example.net/{'p' * (i % 300)}.pem")
        assert len(info.value.detail) <= 200
    stats = cache.stats
    assert stats.negative_entries <= 1000 and stats.negative_bytes <= 256 * 1024
    assert stats.negative_evictions >= 19_000 and len(cache) == stats.negative_entries
    assert (await cache.credential("https://cert.example.net/own.pem")).chain == CHAIN
    # a remembered failure is a small error, not the exception raised with its frames
    remembered = [entry.error for entry, _ in cache._negative.values()]
    assert all(e is not None and e.__traceback__ is None and e.__context__ is None
               for e in remembered)  # fmt: skip
    # and it still answers: the last URL fails from the cache, without a new fetch
    calls = cache._fetcher.calls  # type: ignore[attr-defined]
    with pytest.raises(StirError):
        await cache.credential(f"https://evil19999.example.net/{'p' * (19999 % 300)}.pem")
    assert cache._fetcher.calls == calls  # type: ignore[attr-defined]


async def test_negative_flood_does_not_push_good_credentials_out(
    clock: FakeClock, fetcher: FakeFetcher
) -> None:
    cache = CertificateCache(fetcher, policy=CachePolicy(max_negative_entries=10), clock=clock)
    assert (await cache.credential(URL)).chain == CHAIN
    fetcher.error = fetch_error()
    for i in range(100):
        with pytest.raises(StirError):
            await cache.credential(f"https://bad{i}.example.net/x.pem")
    calls = fetcher.calls
    assert (await cache.credential(URL)).chain == CHAIN and fetcher.calls == calls
    assert cache.stats.negative_entries == 10 and cache.stats.negative_evictions == 90


async def test_workers_share_certificates_through_shared_memory(
    clock: FakeClock, tmp_path: Path
) -> None:
    """Workers of one host (stird.wiring.workers) without Redis: one fetch for all, the
    shared level in the supervisor's shared-memory table (the sizes it creates)."""
    from stird.adapters.store_shm import ShmStore
    from stird.wiring.workers import CERT_ENTRIES, CERT_VALUE_SIZE

    path = tmp_path / "certs"
    ShmStore.create(path, CERT_ENTRIES, value_size=CERT_VALUE_SIZE, evict=True).close()
    one, two = FakeFetcher(), FakeFetcher()
    first = CertificateCache(one, shared=ShmStore.attach(path, clock=clock), clock=clock)
    second = CertificateCache(two, shared=ShmStore.attach(path, clock=clock), clock=clock)
    await first.credential(URL)
    cred = await second.credential(URL)
    assert cred.chain == CHAIN and (one.calls, two.calls) == (1, 0)
    assert second.stats.shared_hits == 1 and second.stats.shared_errors == 0
