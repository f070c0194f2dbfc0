"""The certificate cache: ``info`` URL → credential, fetched once and shared.

L1 is an in-process LRU of parsed chains; an optional shared
:class:`~stird.services.ports.KeyValueStore` (Redis) lets several stird instances reuse
one another's downloads. One fetch at most is in flight per URL; failures are cached
briefly (negative caching); an entry past its freshness is served stale while one
background refresh runs (RFC 5861 stale-while-revalidate). The shared store is an
optimisation only: when it is unavailable the cache carries on locally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from stird.core.certs import cert_to_pem, load_pem_chain
from stird.core.errors import Check, SipStatus, StirError
from stird.core.verdict import Credential, Trust
from stird.services.ports import (
    CertificateFetcher,
    Clock,
    FetchedCredential,
    KeyValueStore,
    system_clock,
)
from stird.services.stores import StoreUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "cert:"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    default_ttl: float = 3600.0  # when the server gives no lifetime
    max_ttl: float = 86400.0
    min_ttl: float = 60.0  # floor for tiny max-age values (not for no-store)
    negative_ttl: float = 30.0  # failures are remembered this long
    stale_ttl: float = 300.0  # stale-while-revalidate window
    max_entries: int = 10_000
    max_negative_entries: int = 4096  # failures remembered (the negative cache)
    max_negative_bytes: int = 2 * 1024 * 1024  # by negative_cost()
    shared_backoff: float = 5.0  # after a shared-store failure, leave it alone this long
    clock_tolerance: float = 60.0  # an entry made further in the future: the clock went back


@dataclass(slots=True)
class CacheStats:
    hits: int = 0  # answered from L1 or a pin (negative hits included)
    misses: int = 0  # had to wait for a lookup in the shared store and/or a fetch
    stale_served: int = 0
    fetches: int = 0
    fetch_errors: int = 0
    shared_hits: int = 0  # fresh entries adopted from the shared store
    shared_errors: int = 0  # StoreUnavailable or malformed shared values
    negative_entries: int = 0  # failures remembered now
    negative_bytes: int = 0  # their negative_cost()
    negative_evictions: int = 0  # failures forgotten early to keep within the bounds


@dataclass(frozen=True, slots=True)
class _Entry:
    credential: Credential | None  # None: a negative entry
    error: StirError | None  # the failure to report (negative entry or failed refresh)
    fresh_until: float
    stale_until: float
    retry_at: float = 0.0  # after a failed refresh: no new attempt before this
    made: float = 0.0  # when it was fetched (wall clock; 0: unknown)


MAX_DETAIL = 200
NEGATIVE_OVERHEAD = 512  # bytes of bookkeeping per negative entry (entry, error, dict slot)


def _copy(error: StirError) -> StirError:
    """A fresh exception per raise: a cached instance would accumulate tracebacks; only
    status, check and a short detail are kept."""
    return StirError(error.status, error.detail[:MAX_DETAIL], check=error.check)


def negative_cost(url: str, entry: _Entry) -> int:
    """The bytes a negative entry is accounted for (deterministic)."""
    detail = 0 if entry.error is None else len(entry.error.detail)
    return NEGATIVE_OVERHEAD + len(url) + detail


def _deliver(entry: _Entry) -> Credential:
    if entry.credential is not None:
        return entry.credential
    assert entry.error is not None
    raise _copy(entry.error)


def _key(url: str) -> str:
    return KEY_PREFIX + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def _encode(url: str, entry: _Entry) -> bytes:
    doc: dict[str, Any] = {"url": url, "fresh": entry.fresh_until, "stale": entry.stale_until,
                           "made": entry.made}  # fmt: skip
    if entry.credential is not None:
        doc["pem"] = b"".join(cert_to_pem(c) for c in entry.credential.chain).decode("ascii")
    elif entry.error is not None:
        err = entry.error
        doc["error"] = {"status": err.status.name, "check": err.check.value, "detail": err.detail}
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode(url: str, data: bytes) -> _Entry:
    """Raises ValueError, KeyError, TypeError or StirError when ``data`` is unusable."""
    doc = json.loads(data)
    if doc["url"] != url:
        raise ValueError("shared entry for another URL")
    fresh, stale = float(doc["fresh"]), float(doc["stale"])
    made = float(doc.get("made", 0.0))
    if "pem" in doc:
        chain = load_pem_chain(str(doc["pem"]).encode("ascii"))
        if not chain:
            raise ValueError("empty chain")
        return _Entry(Credential(chain), None, fresh, stale, made=made)
    err = doc["error"]
    detail = str(err["detail"])[:MAX_DETAIL]
    error = StirError(SipStatus[err["status"]], detail, check=Check(err["check"]))
    return _Entry(None, error, fresh, stale, made=made)


class CertificateCache:
    """A :class:`~stird.services.ports.CredentialProvider` in front of a fetcher."""

    def __init__(
        self,
        fetcher: CertificateFetcher,
        *,
        policy: CachePolicy = CachePolicy(),
        shared: KeyValueStore | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self._fetcher = fetcher
        self.policy = policy
        self._shared = shared
        self._clock = clock
        self.stats = CacheStats()
        self._l1: OrderedDict[str, _Entry] = OrderedDict()
        self._negative: OrderedDict[str, tuple[_Entry, int]] = OrderedDict()  # entry, cost
        self._pins: dict[str, Credential] = {}
        self._flights: dict[str, asyncio.Task[_Entry]] = {}
        self._shared_down_until = float("-inf")

    def __len__(self) -> int:
        return len(self._l1) + len(self._negative)

    def _cached(self, url: str) -> _Entry | None:
        entry = self._l1.get(url)
        if entry is not None:
            return entry
        negative = self._negative.get(url)
        return None if negative is None else negative[0]

    def pin(self, url: str, chain: Sequence[x509.Certificate]) -> None:
        """Serve ``chain`` for ``url`` forever as a pinned credential (stird's own certs)."""
        if not chain:
            raise ValueError("cannot pin an empty chain")
        self._pins[url] = Credential(tuple(chain), trust=Trust.ANCHOR)
        self._l1.pop(url, None)
        self._forget_negative(url)

    async def credential(self, url: str) -> Credential:
        pinned = self._pins.get(url)
        if pinned is not None:
            self.stats.hits += 1
            return pinned
        entry, now = self._cached(url), self._clock()
        if entry is not None and not self._from_future(entry, now):
            found = self._lookup(url, entry, now)
            if found is not None:
                return found
        self.stats.misses += 1
        # shield: a cancelled caller must not cancel the fetch the others wait for
        return _deliver(await asyncio.shield(self._flight(url)))

    async def close(self) -> None:
        """Cancel fetches and background refreshes still running."""
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flights.clear()

    def _from_future(self, entry: _Entry, now: float) -> bool:
        """Made later than ``now``: the wall clock went back since. Its lifetimes would
        stretch by the size of the jump (hours, years), so it counts as expired."""
        return entry.made > now + self.policy.clock_tolerance

    def _lookup(self, url: str, entry: _Entry, now: float) -> Credential | None:
        """The answer L1 gives at ``now`` (raising for negative entries); None on a miss."""
        if now < entry.fresh_until:
            self.stats.hits += 1
            (self._l1 if entry.credential is not None else self._negative).move_to_end(url)
            return _deliver(entry)
        if entry.credential is not None and now < entry.stale_until:
            self.stats.stale_served += 1
            if now >= entry.retry_at:
                self._flight(url)  # one background refresh; no-op when already running
            return entry.credential
        if entry.error is not None and now < entry.retry_at:
            self.stats.hits += 1  # stale window over, the last refresh failed recently
            raise _copy(entry.error)
        return None

    def _flight(self, url: str) -> asyncio.Task[_Entry]:
        task = self._flights.get(url)
        if task is None:
            task = asyncio.create_task(self._resolve(url), name=f"stird-cert-fetch {url}")
            self._flights[url] = task
            task.add_done_callback(functools.partial(self._landed, url))
        return task

    def _landed(self, url: str, task: asyncio.Task[_Entry]) -> None:
        if self._flights.get(url) is task:
            del self._flights[url]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("certificate lookup for %s failed unexpectedly", url, exc_info=exc)

    async def _resolve(self, url: str) -> _Entry:
        """Shared store first, then the fetcher; the L1 or shared stale entry is the fallback."""
        fallback = self._cached(url)
        shared = await self._shared_get(url)
        now = self._clock()
        if fallback is not None and (fallback.credential is None or now >= fallback.stale_until
                                     or self._from_future(fallback, now)):  # fmt: skip
            fallback = None
        if shared is not None and self._from_future(shared, now):
            shared = None
        if shared is not None and now < shared.fresh_until:
            if shared.credential is not None or fallback is None:
                self.stats.shared_hits += 1
                self._remember(url, shared)
                return shared
            assert shared.error is not None  # another instance just failed: don't retry
            return self._keep_stale(url, fallback, shared.error, shared.fresh_until)
        if fallback is None and shared is not None and shared.credential is not None:
            fallback = shared if now < shared.stale_until else None
        return await self._fetch(url, fallback)

    async def _fetch(self, url: str, fallback: _Entry | None) -> _Entry:
        self.stats.fetches += 1
        try:
            fetched = await self._fetcher.fetch(url)
            entry = self._positive(fetched, self._clock())
        except StirError as exc:
            return await self._failed(url, exc, fallback)
        except Exception as exc:  # a fetcher bug: report 436 rather than break every waiter
            log.exception("certificate fetcher raised a non-STIR error for %s", url)
            error = StirError(
                SipStatus.BAD_IDENTITY_INFO,
                f"credential fetch failed: {type(exc).__name__}",
                check=Check.CREDENTIAL,
            )
            return await self._failed(url, error, fallback)
        if fetched.no_store or entry.fresh_until <= self._clock():
            self._l1.pop(url, None)  # not stored; an older entry must not outlive it either
            self._forget_negative(url)
            return entry
        self._remember(url, entry)
        await self._shared_put(url, entry)
        return entry

    def _positive(self, fetched: FetchedCredential, now: float) -> _Entry:
        chain = tuple(fetched.chain)
        if not chain:
            raise StirError(
                SipStatus.UNSUPPORTED_CREDENTIAL, "empty certificate chain", check=Check.CREDENTIAL
            )
        policy = self.policy
        lifetime = policy.default_ttl if fetched.max_age is None else fetched.max_age
        lifetime = min(max(lifetime, policy.min_ttl), policy.max_ttl)
        not_after = chain[0].not_valid_after_utc.timestamp()
        fresh = min(now + lifetime, not_after)
        stale = min(fresh + policy.stale_ttl, not_after)
        return _Entry(Credential(chain), None, fresh, stale, made=now)

    async def _failed(self, url: str, error: StirError, fallback: _Entry | None) -> _Entry:
        self.stats.fetch_errors += 1
        now = self._clock()
        if fallback is not None:
            return self._keep_stale(url, fallback, error, now + self.policy.negative_ttl)
        until = now + self.policy.negative_ttl
        entry = _Entry(None, _copy(error), until, until, made=now)
        self._remember(url, entry)
        await self._shared_put(url, entry)
        return entry

    def _keep_stale(self, url: str, stale: _Entry, error: StirError, retry_at: float) -> _Entry:
        """A refresh failed: keep serving ``stale``, report ``error`` once it runs out."""
        entry = dataclasses.replace(stale, error=_copy(error), retry_at=retry_at)
        self._remember(url, entry)
        return entry

    def _remember(self, url: str, entry: _Entry) -> None:
        if entry.credential is None:
            self._remember_negative(url, entry)
            return
        self._forget_negative(url)
        self._l1[url] = entry
        self._l1.move_to_end(url)
        while len(self._l1) > self.policy.max_entries:
            self._l1.popitem(last=False)

    def _remember_negative(self, url: str, entry: _Entry) -> None:
        """Into the negative cache, within its entry and byte bounds (LRU evicted)."""
        self._l1.pop(url, None)
        self._forget_negative(url)
        cost, policy, stats = negative_cost(url, entry), self.policy, self.stats
        if cost > policy.max_negative_bytes or policy.max_negative_entries < 1:
            return
        self._negative[url] = (entry, cost)
        stats.negative_bytes += cost
        while (len(self._negative) > policy.max_negative_entries
               or stats.negative_bytes > policy.max_negative_bytes):  # fmt: skip
            _, (_, gone) = self._negative.popitem(last=False)
            stats.negative_bytes -= gone
            stats.negative_evictions += 1
        stats.negative_entries = len(self._negative)

    def _forget_negative(self, url: str) -> None:
        gone = self._negative.pop(url, None)
        if gone is not None:
            self.stats.negative_bytes -= gone[1]
            self.stats.negative_entries = len(self._negative)

    def _shared_store(self) -> KeyValueStore | None:
        if self._shared is None or self._clock() < self._shared_down_until:
            return None
        return self._shared

    def _shared_failed(self, what: str) -> None:
        self.stats.shared_errors += 1
        self._shared_down_until = self._clock() + self.policy.shared_backoff
        log.warning("shared certificate cache unavailable (%s); carrying on locally", what)

    async def _shared_get(self, url: str) -> _Entry | None:
        store = self._shared_store()
        if store is None:
            return None
        try:
            data = await store.get(_key(url))
        except StoreUnavailable as exc:
            self._shared_failed(str(exc))
            return None
        if data is None:
            return None
        try:
            return _decode(url, data)
        except (ValueError, KeyError, TypeError, StirError):
            self.stats.shared_errors += 1
            log.warning("ignoring a malformed shared certificate cache entry for %s", url)
            return None

    async def _shared_put(self, url: str, entry: _Entry) -> None:
        store = self._shared_store()
        ttl = entry.stale_until - self._clock()
        if store is None or ttl <= 0:
            return
        try:
            await store.set(_key(url), _encode(url, entry), ttl)
        except StoreUnavailable as exc:
            self._shared_failed(str(exc))
