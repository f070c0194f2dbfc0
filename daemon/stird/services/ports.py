"""The small typed interfaces through which services reach the world.

Adapters implement them (aiohttp fetcher, memory and Redis stores); tests inject fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

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
