"""The encryption key directory (RFC 8816 §11): signed publications in, keys by TN out.

A publication (:mod:`stird.core.oobkeys`) is accepted only when its STIR credential is
trusted and its TNAuthList covers every TN it names; its ``x5u`` is dereferenced through a
:class:`~stird.services.ports.CredentialProvider` (the SSRF-safe certificate cache).
Accepted publications live in a :class:`~stird.services.ports.KeyValueStore` — one record
per TN mapping publisher → token, shared by several CPS servers when it is Redis — with an
in-process cache in front. Two servers publishing for one TN at the same instant may lose
one update (read-modify-write); publications are rare and idempotent, so the publisher
retries.

Development only: ``dev_wildcard`` keys are returned for every TN (logged loudly).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from stird.core import oobkeys
from stird.core.errors import Check, SipStatus, StirError, bad_request
from stird.core.oob import OobSuite, RecipientKey, check_tn
from stird.core.oobkeys import KeyPublication, PublicationPolicy
from stird.services.ports import Clock, CredentialProvider, KeyValueStore, system_clock

log = logging.getLogger(__name__)

KEY_PREFIX = "oobkeys:"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """The keys published for one TN and the signed publications they came from (so a
    client can check them itself, end to end)."""

    tn: str
    keys: tuple[RecipientKey, ...]
    publications: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "tn": self.tn,
            "keys": [key.jwk() for key in self.keys],
            "publications": list(self.publications),
        }


class KeyDirectory:
    def __init__(
        self,
        store: KeyValueStore,
        policy: PublicationPolicy,
        *,
        credentials: CredentialProvider | None = None,
        clock: Clock = system_clock,
        ages: Clock = time.monotonic,
        cache_ttl: float = 30.0,
        max_cached: int = 10_000,
        dev_wildcard: Sequence[RecipientKey] = (),
    ) -> None:
        self._store, self._policy, self._credentials = store, policy, credentials
        # ``clock``: publication validity (wall time); ``ages``: the lookup cache's
        # durations, immune to wall-clock steps
        self._clock, self._ages, self._ttl, self._max = clock, ages, cache_ttl, max_cached
        self._cache: OrderedDict[str, tuple[float, DirectoryEntry]] = OrderedDict()
        self._wildcard = tuple(dev_wildcard)
        if self._wildcard:
            log.warning(
                "DEVELOPMENT KEY DIRECTORY: encryption keys %s are published for EVERY "
                "telephone number; never use this in production",
                ", ".join(k.kid for k in self._wildcard),
            )

    async def publish(self, token: str) -> KeyPublication:
        """Verify and store a publication; raises :class:`StirError` (400 malformed,
        403 untrusted or not covering a TN, 436/437 x5u failures)."""
        pub = oobkeys.read_publication(token)
        if not pub.chain:
            pub = await self._fetch_chain(pub)
        now = int(self._clock())
        pub = oobkeys.verify_publication(pub, self._policy, now)
        for tn in pub.tns:
            await self._merge(tn, pub, now)
            self._cache.pop(tn, None)
        log.info("accepted %d encryption key(s) for %d TN(s) from %s",
                 len(pub.keys), len(pub.tns), pub.publisher[:16])  # fmt: skip
        return pub

    async def _fetch_chain(self, pub: KeyPublication) -> KeyPublication:
        if self._credentials is None or pub.x5u is None:
            raise bad_request("this directory accepts only publications carrying x5c")
        credential = await self._credentials.credential(pub.x5u)
        return KeyPublication(pub.token, pub.tns, pub.keys, pub.iat, pub.exp,
                              credential.chain, pub.x5u)  # fmt: skip

    async def _merge(self, tn: str, pub: KeyPublication, now: int) -> None:
        record = self._live(await self._record(tn), now)
        previous = record.get(pub.publisher)
        if previous is not None and int(previous["iat"]) > pub.iat:
            raise StirError(
                SipStatus.FORBIDDEN,
                "a newer publication from this credential is in force",
                check=Check.FRESHNESS,
            )
        if pub.keys:
            record[pub.publisher] = {"token": pub.token, "iat": pub.iat, "exp": pub.exp}
        else:
            record.pop(pub.publisher, None)
        if not record:
            await self._store.delete(KEY_PREFIX + tn)
            return
        ttl = max(int(item["exp"]) for item in record.values()) - now
        await self._store.set(KEY_PREFIX + tn, json.dumps(record).encode(), ttl)

    async def _record(self, tn: str) -> dict[str, dict[str, int | str]]:
        raw = await self._store.get(KEY_PREFIX + tn)
        if raw is None:
            return {}
        try:
            record = json.loads(raw)
        except ValueError:
            log.warning("discarding a malformed key directory record for %s", tn)
            return {}
        return record if isinstance(record, dict) else {}

    @staticmethod
    def _live(record: dict[str, dict[str, int | str]], now: int) -> dict[str, dict[str, int | str]]:
        return {p: item for p, item in record.items()
                if isinstance(item, dict) and int(item.get("exp", 0)) > now}  # fmt: skip

    async def lookup(self, tn: str) -> DirectoryEntry:
        """Every key published for ``tn`` (cached ``cache_ttl`` seconds); may raise
        :class:`~stird.services.stores.StoreUnavailable`."""
        tn = check_tn(tn)
        age = self._ages()
        cached = self._cache.get(tn)
        if cached is not None and cached[0] > age:
            self._cache.move_to_end(tn)
            return cached[1]
        entry = await self._load(tn, int(self._clock()))
        self._cache[tn] = (age + self._ttl, entry)
        self._cache.move_to_end(tn)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return entry

    async def _load(self, tn: str, now: int) -> DirectoryEntry:
        keys: list[RecipientKey] = []
        tokens: list[str] = []
        for item in self._live(await self._record(tn), now).values():
            try:
                pub = oobkeys.read_publication(str(item["token"]))
            except (StirError, KeyError):
                log.warning("discarding a malformed stored publication for %s", tn)
                continue
            tokens.append(pub.token)
            keys.extend(k for k in pub.keys if k not in keys)
        keys.extend(k for k in self._wildcard if k not in keys)
        return DirectoryEntry(tn, tuple(keys), tuple(tokens))

    async def keys(self, tn: str) -> tuple[RecipientKey, ...]:
        return (await self.lookup(tn)).keys

    async def suites(self, tn: str) -> frozenset[OobSuite]:
        return frozenset(key.suite for key in await self.keys(tn))
