"""Out-of-band STIR services with a fake CPS client: CPS routing, the bounded publisher
(one ciphertext per key, key cache, failures as results), the retriever (dummies and
other parties' entries dropped) and the §8.2 filtering into Identity header values."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import oob
from stird.core.identity import parse_identity
from stird.core.oob import DecryptionKey, OobSuite, RecipientKey, SealedEntry
from stird.core.passport import Ppt
from stird.core.sign import SignRequest, sign_request
from stird.core.tn import parse_cli_id
from stird.core.verdict import SipFacts
from stird.services.oob import (
    CpsProfile,
    CpsRoute,
    OobPolicy,
    OobPublisher,
    OobRetriever,
    Outcome,
    RetrievePolicy,
)
from stird.services.oobverify import called_party, identity_values
from stird.services.ports import CpsFailure

CALLER, CALLEE = "12025550100", "12025550101"
FP = ":".join(["AB"] * 32)
SDP = f"v=0\r\nm=audio 5004 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {FP}\r\n"
KEY = ec.generate_private_key(ec.SECP256R1())


def token(ppt: Ppt | None = Ppt.SHAKEN, orig: str = CALLER, iat: int | None = None) -> str:
    request = SignRequest(
        orig=parse_cli_id(orig), dest=(parse_cli_id(CALLEE),), iat=iat or int(time.time()),
        ppt=ppt, attest="A" if ppt == Ppt.SHAKEN else None,
        origid=str(uuid.uuid4()) if ppt == Ppt.SHAKEN else None,
        sdp=SDP if ppt == Ppt.MSEC else None,
    )  # fmt: skip
    return sign_request(request, KEY, "https://certs.example/sp.pem")[0].full


class FakeCps:
    """A CpsClient in memory; ``delay`` makes every call slow, ``fail`` makes it fail."""

    def __init__(self, keys: Sequence[RecipientKey] = ()) -> None:
        self.keys = tuple(keys)
        self.sealed: dict[str, list[SealedEntry]] = {}
        self.plain: dict[tuple[str, str], list[str]] = {}
        self.key_lookups = 0
        self.delay = 0.0
        self.fail: str | None = None

    async def _io(self) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise CpsFailure(self.fail)

    async def recipient_keys(self, cps: str, tn: str) -> tuple[RecipientKey, ...]:
        self.key_lookups += 1
        await self._io()
        return self.keys

    async def store_sealed(self, cps: str, tn: str, entries: Sequence[SealedEntry]) -> None:
        await self._io()
        self.sealed.setdefault(tn, []).extend(entries)

    async def fetch_sealed(self, cps: str, tn: str) -> tuple[SealedEntry, ...]:
        await self._io()
        dummy = oob.dummy(oob.BUCKETS[0], secrets.token_bytes)
        return (*self.sealed.get(tn, ()), dummy)

    async def store_plain(self, cps: str, dest: str, orig: str, passports: Sequence[str]) -> None:
        await self._io()
        self.plain.setdefault((dest, orig), []).extend(passports)

    async def fetch_plain(self, cps: str, dest: str, orig: str) -> tuple[str, ...]:
        await self._io()
        return tuple(self.plain.get((dest, orig), ()))


def enc_key() -> DecryptionKey:
    return DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)


POLICY = OobPolicy(default_cps="https://cps.example", timeout=0.3)


def test_routing_longest_prefix_and_profile() -> None:
    policy = OobPolicy(
        default_cps="https://default.example",
        cps_by_prefix=(("1", "https://nanp.example"), ("1202", "https://dc.example")),
        profiles=(("https://dc.example", CpsProfile.ATIS),),
        publish_for=("44",),
    )
    assert policy.route("12025550101") == CpsRoute("https://dc.example", CpsProfile.ATIS)
    assert policy.route("13035550101") == CpsRoute("https://nanp.example")
    assert policy.route("442079460000") == CpsRoute("https://default.example")
    assert OobPolicy().route("1") is None
    assert policy.publishes_for("442079460000") and not policy.publishes_for("12025550101")


async def test_publish_seals_once_per_key_and_caches_keys() -> None:
    mine, theirs = enc_key(), enc_key()
    cps = FakeCps([mine.public_key(), theirs.public_key()])
    publisher = OobPublisher(cps, POLICY)
    tokens = [token(Ppt.MSEC), token()]
    result = await publisher.publish(tokens, CALLEE, CALLER)
    assert result.to_json() == {"stored": True, "cps": "https://cps.example", "entries": 4,
                                "error": None}  # fmt: skip
    retriever = OobRetriever(cps, POLICY, [mine])
    found = await retriever.retrieve(CALLEE)
    assert found.outcome is Outcome.FOUND and set(found.passports) == set(tokens)
    assert found.fetched == 5  # four entries and a dummy
    await publisher.publish(token(), CALLEE, CALLER)
    assert cps.key_lookups == 1


@pytest.mark.parametrize(
    ("setup", "outcome", "error"),
    [
        ({"delay": 5.0}, Outcome.TIMEOUT, "within 0.3 s"),
        ({"fail": "connection failed"}, Outcome.ERROR, "connection failed"),
        ({"keys": ()}, Outcome.ERROR, "no encryption keys published"),
    ],
)
async def test_publish_failures_are_results_within_the_bound(
    setup: dict[str, object], outcome: Outcome, error: str
) -> None:
    cps = FakeCps([enc_key().public_key()])
    for name, value in setup.items():
        setattr(cps, name, value)
    started = time.monotonic()
    result = await OobPublisher(cps, POLICY).publish(token(), CALLEE, CALLER)
    assert time.monotonic() - started < 0.3 + 0.2
    assert (result.stored, result.outcome) == (False, outcome)
    assert result.error is not None and error in result.error


async def test_publish_without_cps_or_with_atis() -> None:
    assert (await OobPublisher(FakeCps(), OobPolicy()).publish(token(), CALLEE)).outcome is (
        Outcome.SKIPPED
    )
    atis = OobPolicy(default_cps="https://a.example",
                     profiles=(("https://a.example", CpsProfile.ATIS),))  # fmt: skip
    cps = FakeCps()
    assert (await OobPublisher(cps, atis).publish(token(), CALLEE)).outcome is Outcome.ERROR
    assert (await OobPublisher(cps, atis).publish(token(), CALLEE, CALLER)).stored
    retriever = OobRetriever(cps, atis, [])
    assert (await retriever.retrieve(CALLEE)).outcome is Outcome.SKIPPED  # needs the caller
    assert len((await retriever.retrieve(CALLEE, CALLER)).passports) == 1


async def test_retriever_drops_what_it_cannot_open() -> None:
    mine, theirs = enc_key(), enc_key()
    cps = FakeCps([theirs.public_key()])
    await OobPublisher(cps, POLICY).publish(token(), CALLEE, CALLER)
    assert (await OobRetriever(cps, POLICY, [mine]).retrieve(CALLEE)).outcome is Outcome.EMPTY
    assert (await OobRetriever(cps, POLICY, []).retrieve(CALLEE)).outcome is Outcome.SKIPPED
    cps.delay = 5.0
    result = await OobRetriever(cps, POLICY, [theirs]).retrieve(CALLEE, timeout=0.05)
    assert result.outcome is Outcome.TIMEOUT


def facts(**extra: str) -> SipFacts:
    base = {"from_": f"<sip:+{CALLER}@a.example>", "to": f"<sip:+{CALLEE}@b.example>"}
    return SipFacts(**{**base, **extra})  # type: ignore[arg-type]


def test_identity_values_apply_steps_2_and_3() -> None:
    now = int(time.time())
    older, newer = token(iat=now - 20), token(iat=now)
    stranger = token(orig="12025550199")
    msec = token(Ppt.MSEC)
    values = identity_values([older, stranger, msec, newer, "not.a.token"], facts(), "US")
    assert [parse_identity(v)[0].digest for v in values] == [newer, older]
    header = parse_identity(values[0])[0]
    assert (header.info, header.ppt) == ("https://certs.example/sp.pem", "shaken")
    with_sdp = identity_values([msec], facts(sdp=SDP), "US")
    assert parse_identity(with_sdp[0])[0].ppt == "msec"


def test_called_party_prefers_the_request_uri() -> None:
    party = called_party(facts(ruri="sip:+12025550177@gw.example;user=phone"), "US")
    assert party is not None and party.value == "12025550177"
    assert called_party(SipFacts(to="<sip:alice@example.com>"), "US") is None


def test_retrieve_policy_values() -> None:
    assert [p.value for p in RetrievePolicy] == ["absent", "always", "never"]
