"""Fault injection, clock jumps (issue #9): the wall clock steps forward or back by hours.

* Freshness follows the wall clock, as RFC 8224 §6.2 step 4 / §12.1 ask: a PASSporT signed
  before a forward jump is stale (403), one from before a backward jump lies in the
  future (403), and new calls verify.
* The replay cache (the daemon's MemoryStore runs on the wall clock, like freshness)
  never accepts a replay: its entries live exactly as long as the PASSporT is fresh by
  the same clock, and are purged once it is not — they are not kept for ever.
* The certificate cache never keeps an entry made "in the future": after a backward jump
  a remembered fetch failure or certificate is fetched again instead of being served for
  the hours the clock went back.
"""

from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from stird.adapters import keyfiles
from stird.adapters.store_memory import MemoryStore
from stird.core.errors import Check, SipStatus, StirError
from stird.core.verdict import Credential, SipFacts, Trust
from stird.services.certcache import CacheStats, CertificateCache
from stird.services.credentials import StaticCredentials
from stird.services.ports import FetchedCredential
from stird.services.verdicts import ServicePolicy
from stird.services.verification import VerificationService
from tests.conftest import Signer
from tests.faults.helpers import CALLEE, CALLER, identity, signer_for

HOUR = 3600.0
X5U = "https://certs.example/cert.pem"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Stack:
    """Signing and verification (replay cache in a MemoryStore) on one wall clock."""

    def __init__(self, signer: Signer, wall: Clock) -> None:
        chain = keyfiles.load_certs(signer.cert)
        cache = StaticCredentials({X5U: _pinned(chain)})
        self.store = MemoryStore(clock=wall)
        self.verifier = VerificationService(cache, self.store, ServicePolicy(), clock=wall)
        self.auth = signer_for(signer.key, signer.cert, X5U, clock=wall)

    async def verify(self, values: list[str], call_id: str) -> tuple[str, int | None, str]:
        facts = SipFacts(identity=tuple(values), from_=f"<tel:{CALLER}>", to=f"<tel:{CALLEE}>",
                         call_id=call_id)  # fmt: skip
        verdict = await self.verifier.verify(facts)
        return verdict.verdict.value, verdict.code, str(verdict.failed_check)


def _pinned(chain: tuple[x509.Certificate, ...]) -> Credential:
    return Credential(chain, trust=Trust.ANCHOR)


@pytest.mark.parametrize("jump", [2 * HOUR, -2 * HOUR], ids=["forward", "back"])
async def test_freshness_and_replay_follow_the_wall_clock(
    signer: Signer, wall_now: float, jump: float
) -> None:
    wall = Clock(wall_now)
    stack = Stack(signer, wall)
    before = identity(stack.auth)
    assert await stack.verify(before, "call-1") == ("valid", None, "None")
    wall.now += jump
    # the old PASSporT is stale, or lies in the future: 403 either way, never accepted
    assert await stack.verify(before, "call-2") == ("invalid", 403, "freshness")
    fresh = identity(stack.auth)
    assert await stack.verify(fresh, "call-3") == ("valid", None, "None")
    assert await stack.verify(fresh, "call-4") == ("invalid", 438, "replay")
    if jump < 0:  # the clock catches up: the first PASSporT is fresh again, still a replay
        wall.now = wall_now + 5
        assert await stack.verify(before, "call-5") == ("invalid", 438, "replay")
    wall.now += 2 * HOUR + 120  # every PASSporT stale now: nothing is kept for ever
    assert len(stack.store) == 0


class FlakyFetcher:
    def __init__(self, chain: tuple[x509.Certificate, ...]) -> None:
        self.chain, self.fail, self.calls = chain, False, 0

    async def fetch(self, url: str) -> FetchedCredential:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise StirError(SipStatus.BAD_IDENTITY_INFO, "cannot fetch certificate: timeout",
                            check=Check.CREDENTIAL)  # fmt: skip
        return FetchedCredential(X5U, self.chain, max_age=HOUR)


async def _outcome(cache: CertificateCache) -> str:
    try:
        await cache.credential(X5U)
    except StirError as exc:
        return str(exc.code)
    return "ok"


@pytest.mark.parametrize(
    ("first_fails", "jump", "outcomes", "fetches"),
    [
        # a failure remembered just before the clock went back 2 h is not served for 2 h
        (True, -2 * HOUR, ("436", "ok"), 2),
        # a certificate fetched before the clock went back a day is fetched again
        (False, -24 * HOUR, ("ok", "ok"), 2),
        # forward: the entry is past its freshness and stale window, so fetched again
        (False, 2 * HOUR, ("ok", "ok"), 2),
        # a small step back (NTP) keeps the entry
        (False, -5.0, ("ok", "ok"), 1),
    ],
    ids=["negative-back", "positive-back", "forward", "small-step-back"],
)
async def test_certificate_cache_survives_clock_jumps(
    signer: Signer, wall_now: float, first_fails: bool, jump: float,
    outcomes: tuple[str, str], fetches: int,
) -> None:  # fmt: skip
    wall = Clock(wall_now)
    fetcher = FlakyFetcher(keyfiles.load_certs(signer.cert))
    cache = CertificateCache(fetcher, clock=wall)
    fetcher.fail = first_fails
    first = await _outcome(cache)
    fetcher.fail = False
    wall.now += jump
    second = await _outcome(cache)
    assert (first, second) == outcomes
    assert fetcher.calls == fetches
    assert isinstance(cache.stats, CacheStats) and len(cache) == 1
    await cache.close()


@pytest.fixture
def wall_now(signer: Signer) -> float:
    """Now, as far as the test certificate is concerned (valid for a while either side)."""
    cert = keyfiles.load_cert(signer.cert)
    return cert.not_valid_before_utc.timestamp() + 2 * 86400


def test_the_fixture_certificate_spans_the_jumps(signer: Signer, wall_now: float) -> None:
    cert = keyfiles.load_cert(signer.cert)
    assert cert.not_valid_after_utc.timestamp() > wall_now + 3 * 86400
    assert cert.not_valid_before_utc.timestamp() < wall_now - 36 * HOUR


async def test_msec_dialog_window_ignores_wall_clock_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from stird.adapters.metrics import Metrics
    from stird.services.dialogs import DialogHandle
    from stird.wiring.config import DialogConfig
    from stird.wiring.dialog_app import build_dialogs

    parts = build_dialogs(DialogConfig(policy="mandatory", window=5.0), Metrics())
    policy = parts.api.policy
    assert policy is not None
    try:
        policy.offered("call-1", DialogHandle(kamailio=(1, 2)))
        policy.answered("call-1")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + HOUR)  # the wall clock steps
        assert await policy.tick() == 0  # 5 s have not passed: nothing may be ended yet
    finally:
        if parts.deferred is not None:
            await parts.deferred.close()
