"""Out-of-band STIR (RFC 8816 §8): store PASSporTs at the called number's Call Placement
Service, and retrieve them on the terminating side.

Authentication side (§8.1 steps 3–4): find the CPS (by called-number prefix, else the
default), fetch the callee's encryption keys (cached), seal the full-form PASSporT once
per key, store — all under one bound (``timeout``, 1 s by default). The outcome is a
:class:`PublishResult`; nothing here raises into signing.

Verification side (§8.2 step 1): fetch every entry for the called number, decrypt what
the configured keys open and drop the rest (dummies, other parties' entries), under the
same bound. Steps 2–6 are :mod:`stird.services.oobverify`.

With the ATIS-style profile (DIGEST §5.2) the PASSporTs travel unencrypted and the CPS
authenticates both sides; they are stored under the called and the calling number.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stird.core import cps, oob
from stird.core.errors import StirError
from stird.core.oob import DecryptionKey, RecipientKey, SealedEntry
from stird.services.ports import Clock, CpsClient, CpsFailure, CpsTimeout, system_clock

log = logging.getLogger(__name__)


class CpsProfile(enum.StrEnum):
    RFC8816 = "rfc8816"  # encrypted entries, /cps/{tn}/ppts and /keys/{tn}
    ATIS = "atis"  # plain PASSporTs, /passports/{dest}/{orig}, Bearer JWT


class RetrievePolicy(enum.StrEnum):
    ABSENT = "absent"  # retrieve when the call carries no Identity header
    ALWAYS = "always"  # retrieve for every call (hides which calls had one, RFC 8816 §13)
    NEVER = "never"


class Outcome(enum.StrEnum):
    """The ``result`` label of ``stird_cps_operations``."""

    STORED = "stored"
    FOUND = "found"
    EMPTY = "empty"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class CpsRoute:
    url: str
    profile: CpsProfile = CpsProfile.RFC8816


@dataclass(frozen=True, slots=True)
class OobPolicy:
    """``[oob]`` of stird.toml, resolved. Telephone numbers and prefixes are E.164
    digits without ``+``."""

    default_cps: str | None = None
    cps_by_prefix: tuple[tuple[str, str], ...] = ()  # (prefix, URL), longest prefix wins
    profiles: tuple[tuple[str, CpsProfile], ...] = ()  # URL -> profile (default rfc8816)
    publish_for: tuple[str, ...] = ()  # called-number prefixes always sent out of band
    retrieve: RetrievePolicy = RetrievePolicy.ABSENT
    timeout: float = 1.0  # bound on one publication or retrieval, seconds
    key_cache_ttl: float = 30.0
    max_cached_keys: int = 10_000
    max_entries: int = 128  # entries tried per retrieval (each costs one HPKE open per key)

    def route(self, tn: str) -> CpsRoute | None:
        """The CPS for called number ``tn`` (RFC 8816 §10: provisioned), or None."""
        matches = [(p, url) for p, url in self.cps_by_prefix if tn.startswith(p)]
        url = max(matches, key=lambda m: len(m[0]))[1] if matches else self.default_cps
        if url is None:
            return None
        return CpsRoute(url, dict(self.profiles).get(url, CpsProfile.RFC8816))

    def publishes_for(self, tn: str) -> bool:
        return any(tn.startswith(prefix) for prefix in self.publish_for)


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: Outcome
    cps: str | None = None
    entries: int = 0
    error: str | None = None

    @property
    def stored(self) -> bool:
        return self.outcome is Outcome.STORED

    def to_json(self) -> dict[str, Any]:
        return {"stored": self.stored, "cps": self.cps, "entries": self.entries,
                "error": self.error}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RetrieveResult:
    outcome: Outcome
    cps: str | None = None
    passports: tuple[str, ...] = ()  # full-form PASSporTs, decrypted
    fetched: int = 0  # entries the CPS returned, dummies included
    error: str | None = None


def _failure(exc: Exception, bound: float) -> tuple[Outcome, str]:
    if isinstance(exc, TimeoutError | CpsTimeout):
        return Outcome.TIMEOUT, f"CPS did not answer within {bound:g} s"
    if isinstance(exc, StirError):
        return Outcome.ERROR, exc.detail
    if isinstance(exc, CpsFailure):
        return Outcome.ERROR, str(exc)
    log.error("out-of-band STIR: unexpected failure", exc_info=exc)
    return Outcome.ERROR, f"internal error ({type(exc).__name__})"


class OobPublisher:
    """RFC 8816 §8.1 steps 3–4 and the store, bounded."""

    def __init__(self, client: CpsClient, policy: OobPolicy, *, clock: Clock = system_clock):
        self.client, self.policy, self._clock = client, policy, clock
        self._keys: OrderedDict[tuple[str, str], tuple[float, tuple[RecipientKey, ...]]]
        self._keys = OrderedDict()

    async def publish(
        self, passports: str | Sequence[str], dest_tn: str, orig_tn: str | None = None
    ) -> PublishResult:
        """Store the full-form ``passports`` of one call for ``dest_tn``; never raises."""
        tokens = (passports,) if isinstance(passports, str) else tuple(passports)
        route = self.policy.route(dest_tn)
        if route is None:
            return PublishResult(Outcome.SKIPPED, error=f"no CPS configured for {dest_tn}")
        if not tokens:
            return PublishResult(Outcome.SKIPPED, route.url, error="nothing to store")
        bound = self.policy.timeout
        try:
            async with asyncio.timeout(bound):
                count = await self._store(route, tokens, dest_tn, orig_tn)
        except Exception as exc:  # a CPS failure must never fail signing (RFC 8816 §8.1)
            outcome, detail = _failure(exc, bound)
            log.warning("out-of-band PASSporT for %s not stored at %s: %s",
                        dest_tn, route.url, detail)  # fmt: skip
            return PublishResult(outcome, route.url, error=detail)
        log.info("stored %d out-of-band entr(ies) for %s at %s", count, dest_tn, route.url)
        return PublishResult(Outcome.STORED, route.url, count)

    async def _store(
        self, route: CpsRoute, tokens: tuple[str, ...], dest: str, orig: str | None
    ) -> int:
        if route.profile is CpsProfile.ATIS:
            if not orig:
                raise CpsFailure("the ATIS profile needs a telephone-number caller")
            await self.client.store_plain(route.url, dest, orig, tokens)
            return len(tokens)
        keys = await self.recipient_keys(route.url, dest)
        if not keys:
            raise CpsFailure(f"no encryption keys published for {dest}")
        entries = [entry for token in tokens for entry in oob.seal(token, keys, dest)]
        for start in range(0, len(entries), cps.MAX_BATCH):
            await self.client.store_sealed(route.url, dest, entries[start : start + cps.MAX_BATCH])
        return len(entries)

    async def recipient_keys(self, url: str, tn: str) -> tuple[RecipientKey, ...]:
        """The callee's keys from the CPS's directory, cached ``key_cache_ttl`` seconds."""
        now = self._clock()
        cached = self._keys.get((url, tn))
        if cached is not None and cached[0] > now:
            self._keys.move_to_end((url, tn))
            return cached[1]
        keys = await self.client.recipient_keys(url, tn)
        self._keys[(url, tn)] = (now + self.policy.key_cache_ttl, keys)
        while len(self._keys) > self.policy.max_cached_keys:
            self._keys.popitem(last=False)
        return keys


class OobRetriever:
    """RFC 8816 §8.2 step 1, bounded: every current PASSporT for a called number that
    one of ``keys`` decrypts (ATIS: every PASSporT the CPS returns)."""

    def __init__(self, client: CpsClient, policy: OobPolicy, keys: Sequence[DecryptionKey]):
        self.client, self.policy, self.keys = client, policy, tuple(keys)

    async def retrieve(
        self, called_tn: str, calling_tn: str | None = None, *, timeout: float | None = None
    ) -> RetrieveResult:
        """Never raises; ``timeout`` can only shorten the policy's bound."""
        route = self.policy.route(called_tn)
        skipped = self._skip_reason(route, calling_tn)
        if skipped is not None or route is None:
            return RetrieveResult(Outcome.SKIPPED, route.url if route else None, error=skipped)
        bound = min(self.policy.timeout, timeout or self.policy.timeout)
        try:
            async with asyncio.timeout(bound):
                fetched, tokens = await self._fetch(route, called_tn, calling_tn or "")
        except Exception as exc:  # nor verification
            outcome, detail = _failure(exc, bound)
            log.warning("out-of-band retrieval for %s from %s failed: %s",
                        called_tn, route.url, detail)  # fmt: skip
            return RetrieveResult(outcome, route.url, error=detail)
        outcome = Outcome.FOUND if tokens else Outcome.EMPTY
        return RetrieveResult(outcome, route.url, tokens, fetched)

    def _skip_reason(self, route: CpsRoute | None, calling_tn: str | None) -> str | None:
        if route is None:
            return "no CPS configured for this number"
        if route.profile is CpsProfile.ATIS and not calling_tn:
            return "the ATIS profile needs a telephone-number caller"
        if route.profile is CpsProfile.RFC8816 and not self.keys:
            return "no decryption keys ([oob] decryption_keys)"
        return None

    async def _fetch(
        self, route: CpsRoute, called: str, calling: str
    ) -> tuple[int, tuple[str, ...]]:
        if route.profile is CpsProfile.ATIS:
            tokens = await self.client.fetch_plain(route.url, called, calling)
            return len(tokens), tokens
        entries = await self.client.fetch_sealed(route.url, called)
        return len(entries), self.open_all(entries, called)

    def open_all(self, entries: Sequence[SealedEntry], called: str) -> tuple[str, ...]:
        """Decrypt what our keys open; dummies and entries for other keys are dropped
        (RFC 8816 §6.2: an undecryptable entry does not mean "no call")."""
        out: list[str] = []
        for entry in entries[: self.policy.max_entries]:
            try:
                token = oob.open_entry(entry, self.keys, called)
            except StirError:
                continue
            if token is not None and token not in out:
                out.append(token)
        return tuple(out)


__all__ = [
    "CpsProfile", "CpsRoute", "OobPolicy", "OobPublisher", "OobRetriever", "Outcome",
    "PublishResult", "RetrievePolicy", "RetrieveResult",
]  # fmt: skip
