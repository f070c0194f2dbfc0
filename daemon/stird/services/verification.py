"""The verification service (RFC 8224 §6.2) for one call's SIP facts.

Obtains every credential the Identity headers name (concurrently, under one deadline),
applies explicit pins and trust on first use for self-signed SIPBRANDY credentials
(RFC 8862 §4.1), runs the sans-I/O decision of :mod:`stird.core.verify`, refuses
replayed PASSporTs (RFC 8224 §12.1), and turns the outcome into a :class:`CallVerdict`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from stird.core.errors import Check, SipStatus, StirError
from stird.core.passport import Ppt
from stird.core.tn import party_from_header
from stird.core.verdict import Credential, PassportCheck, SipFacts, Verdict
from stird.core.verify import credential_uris, decide, link_diversions, verify_request
from stird.services.ports import Clock, CredentialProvider, KeyValueStore, system_clock
from stird.services.stores import StoreUnavailable
from stird.services.verdicts import CallVerdict, ServicePolicy, to_call_verdict

Lookup = dict[str, Credential | StirError]


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lower-case hex (the pin format)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _digest16(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


def replay_key(compact: str) -> str:
    """The replay-cache key of a PASSporT: 128 bits of its SHA-256, base64url (29 chars).

    Short because the in-memory cache holds up to 100,000 of them; its entries live only
    for the freshness window, so the format can change between releases."""
    return "replay:" + base64.urlsafe_b64encode(_digest16(compact.encode())).decode()[:22]


def replay_value(call_id: str) -> bytes:
    """What the replay cache remembers of a Call-ID: 128 bits of its SHA-256 (a fixed
    16 bytes per entry, however long the peer's Call-ID)."""
    return _digest16(call_id.encode())


class VerificationService:
    """Verify inbound requests; shared state (pins, replay) lives in a KeyValueStore."""

    def __init__(
        self,
        credentials: CredentialProvider,
        store: KeyValueStore,
        policy: ServicePolicy,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._credentials = credentials
        self._store = store
        self.policy = policy
        self._clock = clock

    async def verify(self, facts: SipFacts, *, deadline: float | None = None) -> CallVerdict:
        """Verify one request; ``deadline`` (seconds) can only shorten the policy's."""
        now = int(self._clock())
        limit = min(self.policy.deadline, deadline or self.policy.deadline)
        lookup = await self._obtain(credential_uris(facts), limit)
        tofu = await self._apply_pins(facts, lookup)
        result = verify_request(facts, lookup, self.policy.verify, now)
        if result.verdict is Verdict.VALID or result.failed:
            checks = await self._refuse_replays(result.passports, facts)
            result = decide(link_diversions(checks), facts, self.policy.verify)
        if result.verdict is Verdict.VALID and tofu:
            await self._remember(tofu, result.passports)
        return to_call_verdict(result, self.policy, dialog_forming=facts.dialog_forming)

    async def _one(self, url: str) -> Credential | StirError:
        try:
            return await self._credentials.credential(url)
        except StirError as exc:
            return exc

    async def _obtain(self, urls: tuple[str, ...], deadline: float) -> Lookup:
        """RFC 8224 §6.2 step 3 for every header at once, bounded by the deadline. A fetch
        cut short here goes on in the cache (single flight), so the next call profits."""
        tasks = {url: asyncio.ensure_future(self._one(url)) for url in urls}
        if not tasks:
            return {}
        await asyncio.wait(tasks.values(), timeout=deadline)
        lookup: Lookup = {}
        for url, task in tasks.items():
            if task.done():
                lookup[url] = task.result()
            else:
                task.cancel()
                lookup[url] = StirError(
                    SipStatus.BAD_IDENTITY_INFO,
                    f"credential not obtained within {deadline:.2f} s",
                    check=Check.CREDENTIAL,
                )
        return lookup

    async def _apply_pins(self, facts: SipFacts, lookup: Lookup) -> dict[str, str]:
        """Mark self-signed credentials trusted by an explicit pin or by TOFU.

        Returns the TOFU candidates (pin key → fingerprint) to remember once the
        request verifies; a TOFU pin is never recorded for a request that fails."""
        candidates: dict[str, str] = {}
        caller = self._caller(facts)
        for url, found in lookup.items():
            if isinstance(found, StirError) or found.pinned or not _self_signed(found.chain[0]):
                continue
            print_ = fingerprint(found.chain[0])
            if print_ in self.policy.pins:
                lookup[url] = replace(found, pinned=True)
            elif self.policy.tofu and caller is not None:
                key = "pin:" + _key(caller)
                known = await self._get(key)
                if known is None:
                    candidates[key] = print_
                if known is None or known == print_.encode():
                    lookup[url] = replace(found, pinned=True)
        return candidates

    def _caller(self, facts: SipFacts) -> str | None:
        if not facts.from_:
            return None
        try:
            party = party_from_header(facts.from_, default_region=self.policy.verify.default_region)
        except StirError:
            return None
        return f"{party.kind}:{party.value}"

    async def _remember(self, tofu: dict[str, str], checks: tuple[PassportCheck, ...]) -> None:
        if not any(c.valid and c.ppt == Ppt.MSEC for c in checks):
            return  # TOFU is for SIPBRANDY (msec) credentials only
        for key, print_ in tofu.items():
            await self._add(key, print_.encode(), 365 * 86400.0)

    async def _refuse_replays(
        self, checks: tuple[PassportCheck, ...], facts: SipFacts
    ) -> list[PassportCheck]:
        """RFC 8224 §12.1: a PASSporT seen for another Call-ID inside the window."""
        if not self.policy.replay or not facts.call_id:
            return list(checks)
        return [await self._replay_check(check, replay_value(facts.call_id)) for check in checks]

    async def _replay_check(self, check: PassportCheck, call_id: bytes) -> PassportCheck:
        if not check.valid or check.compact is None:
            return check
        window = float(self.policy.verify.max_age + self.policy.verify.max_skew)
        key = replay_key(check.compact)
        if await self._add(key, call_id, window) or (await self._get(key)) in (None, call_id):
            return check
        error = StirError(
            SipStatus.INVALID_IDENTITY_HEADER,
            "PASSporT replayed from another call (RFC 8224 §12.1)",
            check=Check.REPLAY,
        )
        return replace(check, error=error)

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self._store.get(key)
        except StoreUnavailable:
            return None

    async def _add(self, key: str, value: bytes, ttl: float) -> bool:
        try:
            return await self._store.add(key, value, ttl)
        except StoreUnavailable:
            return True  # fail open on shared state: the signature checks still stand
