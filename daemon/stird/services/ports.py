"""The small typed interfaces through which services reach the world.

Adapters implement them (aiohttp fetcher, memory and Redis stores, CPS stores); tests
inject fakes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from stird.core.oob import RecipientKey, SealedEntry
from stird.core.verdict import Credential

#: Seconds since the epoch, as a float. Services never read the clock directly.
Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class FetchedCredential:
    """A certificate chain downloaded from an ``info``/``x5u`` URL.

    ``max_age`` is the freshness lifetime the server gave (Cache-Control max-age or
    Expires − Date, RFC 9111 §4.2.1), None when it gave none; ``no_store`` when it
    forbade caching.
    """

    url: str
    chain: tuple[x509.Certificate, ...]
    max_age: float | None = None
    no_store: bool = False


class CertificateFetcher(Protocol):
    """Downloads a credential. Raises :class:`~stird.core.errors.StirError` (436 on
    network/HTTP failures, 437 on unusable content); never hangs past its timeout."""

    async def fetch(self, url: str) -> FetchedCredential: ...


class KeyValueStore(Protocol):
    """Shared state for several stird instances (replay cache, certificate cache, CPS).

    Values are bytes with a time to live in seconds. Implementations: in-memory (default,
    bounded) and Redis."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only when absent; True when stored (atomic: SET NX in Redis)."""
        ...

    async def delete(self, key: str) -> None: ...


class CredentialProvider(Protocol):
    """Turns an ``info`` URL into a credential (cached, fetched, pinned...).

    Raises :class:`~stird.core.errors.StirError` (436/437) when it cannot."""

    async def credential(self, url: str) -> Credential: ...


class CpsAdmission(enum.Enum):
    """What a CPS store answers to a storage request (RFC 8816 §7.5 flood control)."""

    STORED = "stored"
    TN_FULL = "too many entries for this number"
    CLIENT_FULL = "too many entries from this client"
    CLIENT_TN_FULL = "too many entries from this client for this number"
    STORE_FULL = "the store is full"


@dataclass(frozen=True, slots=True)
class CpsCaps:
    """Live-entry limits checked atomically with the insertion."""

    per_tn: int = 100  # call centres legitimately collect many (RFC 8816 §9)
    per_client: int = 1000  # one client across all numbers
    per_client_tn: int = 10  # one client for one number: a flood cannot fill a number
    #: entries are counted per pool (``per_tn`` is per number and pool): anonymous
    #: storers and signed ones have separate quotas, so neither can fill the other's
    pool: str = "anon"
    pool_bytes: int | None = None  # bytes the pool may hold in all; None: the store's bound


class CpsUsage(Protocol):
    """What a CPS store holds now, asked for one figure at a time (a store that must
    query for each stops at the first cap that refuses)."""

    def tn_pool(self) -> int: ...  # live entries for this number in the caps' pool

    def client(self) -> int: ...  # live entries of this client, all numbers

    def client_tn(self) -> int: ...  # live entries of this client for this number

    def totals(self) -> tuple[int, int]: ...  # live entries and their bytes, whole store

    def pool_bytes(self) -> int: ...  # bytes of the caps' pool


def cps_admission(
    usage: CpsUsage, n: int, size: int, caps: CpsCaps, *, max_entries: int, max_bytes: int
) -> CpsAdmission:
    """Whether ``n`` more entries of ``size`` bytes fit, the caps checked in one order for
    every in-process store (the Redis store's Lua script keeps the same order)."""
    if usage.tn_pool() + n > caps.per_tn:
        return CpsAdmission.TN_FULL
    if usage.client() + n > caps.per_client:
        return CpsAdmission.CLIENT_FULL
    if usage.client_tn() + n > caps.per_client_tn:
        return CpsAdmission.CLIENT_TN_FULL
    count, stored = usage.totals()
    if count + n > max_entries or stored + size > max_bytes:
        return CpsAdmission.STORE_FULL
    if caps.pool_bytes is not None and usage.pool_bytes() + size > caps.pool_bytes:
        return CpsAdmission.STORE_FULL
    return CpsAdmission.STORED


class CpsStore(Protocol):
    """Encrypted PASSporTs indexed by called number, each living ``ttl`` seconds.

    Times are seconds since the epoch handed in by the service (servers sharing a store
    need synchronised clocks). Raises
    :class:`~stird.services.stores.StoreUnavailable` when a shared backend fails."""

    async def add(
        self,
        tn: str,
        items: Sequence[tuple[str, bytes]],
        *,
        client: str,
        now: float,
        ttl: float,
        caps: CpsCaps,
    ) -> CpsAdmission:
        """Store all ``(id, blob)`` items or none of them."""
        ...

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        """Every live ``(id, blob)`` for ``tn``."""
        ...

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None: ...


class CpsFailure(Exception):
    """A request to a Call Placement Service failed: unreachable, timed out, refused
    (HTTP status), or answered something malformed. The message is short and safe to log
    (no body is echoed)."""


class CpsTimeout(CpsFailure):
    """The CPS did not answer within the client's timeout."""


class CpsClient(Protocol):
    """Talks to Call Placement Services (RFC 8816 §9 and the ATIS-style profile). ``cps``
    is the service's base URL; every call raises only :class:`CpsFailure` and never
    outlives its timeout."""

    async def recipient_keys(self, cps: str, tn: str) -> tuple[RecipientKey, ...]:
        """The encryption keys published for ``tn`` (``GET /keys/{tn}``)."""
        ...

    async def store_sealed(self, cps: str, tn: str, entries: Sequence[SealedEntry]) -> None:
        """``POST /cps/{tn}/ppts`` (one entry, or a batch)."""
        ...

    async def fetch_sealed(self, cps: str, tn: str) -> tuple[SealedEntry, ...]:
        """``GET /cps/{tn}/ppts``: real entries and dummies, indistinguishable."""
        ...

    async def store_plain(self, cps: str, dest: str, orig: str, passports: Sequence[str]) -> None:
        """ATIS profile: ``POST /passports/{dest}/{orig}`` with a Bearer token."""
        ...

    async def fetch_plain(self, cps: str, dest: str, orig: str) -> tuple[str, ...]:
        """ATIS profile: ``GET /passports/{dest}/{orig}``."""
        ...
