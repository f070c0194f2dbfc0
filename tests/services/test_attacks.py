"""Attacks on the verification service's trust decisions (issue #16).

Each test is what an attacker would try: a self-signed credential where an anchor is
needed, a malleated signature, a flood that evicts replay state, a request built to make
stird fetch before it has checked anything it could check offline.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stird.adapters.store_memory import MemoryStore
from stird.core import certs, jose
from stird.core.errors import StirError
from stird.core.identity import IdentityHeader, parse_identity
from stird.core.passport import Claims, Dest, PassportHeader, Ppt, sign
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import Credential, Trust
from stird.services.ports import KeyValueStore
from stird.services.verdicts import ReplayOverflow, ServicePolicy, Verstat
from stird.services.verification import VerificationService, fingerprint
from tests.services.test_verification import (
    DEST,
    NOW,
    ORIG,
    X5U,
    DictStore,
    FakeProvider,
    facts,
    identity,
    tn,
)

N = jose.P256_N


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate  # issued by root, covers ORIG
    rogue_key: ec.EllipticCurvePrivateKey
    rogue: x509.Certificate  # self-signed, an SPC only: "covers every number"
    self_key: ec.EllipticCurvePrivateKey
    self_cert: x509.Certificate  # self-signed for ORIG: a SIPBRANDY (msec) credential


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certs.make_stir_cert(root_key, now=NOW - 7200, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certs.make_stir_cert(
        leaf_key, now=NOW - 3600, tns=[ORIG], issuer_key=root_key, issuer_cert=root
    )
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = certs.make_stir_cert(rogue_key, now=NOW - 3600, spcs=["0001"])
    self_key = ec.generate_private_key(ec.SECP256R1())
    self_cert = certs.make_stir_cert(self_key, now=NOW - 3600, tns=[ORIG])
    return Pki(root, leaf_key, leaf, rogue_key, rogue, self_key, self_cert)


def verifier(
    creds: dict[str, Credential | StirError],
    *,
    store: KeyValueStore | None = None,
    replay_store: KeyValueStore | None = None,
    anchors: tuple[x509.Certificate, ...] = (),
    **policy: object,
) -> VerificationService:
    base = ServicePolicy(**policy)  # type: ignore[arg-type]
    base = replace(base, verify=replace(base.verify, anchors=anchors))
    return VerificationService(
        FakeProvider(creds), store or DictStore(), base, clock=lambda: NOW,
        replay_store=replay_store,
    )  # fmt: skip


def shaken(key: ec.EllipticCurvePrivateKey, **kw: object) -> str:
    return identity(key, ppt=Ppt.SHAKEN, attest="A", origid="o-1", sdp=None, **kw)


# --- trust scope: pins and TOFU speak for msec only ------------------------------------


@pytest.mark.parametrize("tofu", [True, False])
@pytest.mark.parametrize("with_anchor", [True, False])
async def test_self_signed_shaken_is_437_whatever_tofu_says(
    pki: Pki, tofu: bool, with_anchor: bool
) -> None:
    anchors = (pki.root,) if with_anchor else ()
    svc = verifier({X5U: Credential((pki.rogue,))}, anchors=anchors, tofu=tofu)
    for call in range(3):  # first use, and every use after it
        verdict = await svc.verify(facts(shaken(pki.rogue_key), call_id=f"c{call}"))
        assert (verdict.verdict, verdict.code) == ("invalid", 437)
        assert verdict.verstat is Verstat.FAILED
        assert verdict.passports[0].to_json()["failed_check"] == "trust"


async def test_pinned_self_signed_shaken_and_baseline_are_437(pki: Pki) -> None:
    pins = frozenset({fingerprint(pki.self_cert)})
    svc = verifier({X5U: Credential((pki.self_cert,))}, pins=pins, anchors=(pki.root,))
    for value in (shaken(pki.self_key), identity(pki.self_key, ppt=None)):
        verdict = await svc.verify(facts(value))
        assert verdict.code == 437, verdict.detail


async def test_self_signed_div_is_437(pki: Pki) -> None:
    claims = Claims(orig=tn(ORIG), dest=Dest(tn=(DEST,)), iat=NOW, div=tn("12025550199"))
    signed = sign(PassportHeader(x5u=X5U, ppt=Ppt.DIV), claims, pki.self_key)
    div = IdentityHeader(signed.full, X5U, ppt=Ppt.DIV).format()
    verdict = await verifier({X5U: Credential((pki.self_cert,))}).verify(facts(div))
    assert verdict.code == 437


async def test_anchored_shaken_is_tn_validated(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    verdict = await svc.verify(facts(shaken(pki.leaf_key)))
    assert (verdict.verdict, verdict.trust, verdict.verstat) == (
        "valid", Trust.ANCHOR, Verstat.PASSED,
    )  # fmt: skip
    assert verdict.to_json()["trust"] == "anchor"


async def test_tofu_msec_is_continuity_not_tn_validation(pki: Pki) -> None:
    store = DictStore()
    svc = verifier({X5U: Credential((pki.self_cert,))}, store=store, anchors=(pki.root,))
    verdict = await svc.verify(facts(identity(pki.self_key)))
    assert (verdict.verdict, verdict.trust) == ("valid", Trust.TOFU)
    assert verdict.verstat is Verstat.NONE  # never TN-Validation-Passed
    assert verdict.passports[0].to_json()["trust"] == "tofu"
    again = await svc.verify(facts(identity(pki.self_key), call_id="second"))
    assert (again.verdict, again.trust, again.verstat) == ("valid", Trust.TOFU, Verstat.NONE)


async def test_pinned_msec_says_pin(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.self_cert,))}, tofu=False,
                   pins=frozenset({fingerprint(pki.self_cert)}))  # fmt: skip
    verdict = await svc.verify(facts(identity(pki.self_key)))
    assert (verdict.verdict, verdict.trust, verdict.verstat) == ("valid", Trust.PIN, Verstat.NONE)


async def test_no_tofu_no_pin_no_anchor_is_437(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.self_cert,))}, tofu=False)
    assert (await svc.verify(facts(identity(pki.self_key)))).code == 437


async def test_a_self_signed_shaken_never_creates_a_tofu_pin(pki: Pki) -> None:
    """An attacker's shaken call must not claim the caller's pin for later msec calls."""
    store = DictStore()
    svc = verifier({X5U: Credential((pki.rogue,))}, store=store)
    await svc.verify(facts(shaken(pki.rogue_key)))
    assert not any(k.startswith("pin:") for k in store.data)


async def test_tofu_pin_refuses_a_changed_key(pki: Pki) -> None:
    store = DictStore()
    first = verifier({X5U: Credential((pki.self_cert,))}, store=store)
    assert (await first.verify(facts(identity(pki.self_key)))).trust is Trust.TOFU
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = certs.make_stir_cert(other_key, now=NOW - 3600, tns=[ORIG])
    second = verifier({X5U: Credential((other,))}, store=store)
    verdict = await second.verify(facts(identity(other_key), call_id="c2"))
    assert (verdict.code, verdict.passports[0].to_json()["failed_check"]) == (437, "trust")


async def test_own_credential_counts_as_an_anchor(pki: Pki) -> None:
    """stird's own (development) credential verifies what stird signs, shaken included."""
    svc = verifier({X5U: Credential((pki.rogue,), trust=Trust.ANCHOR)})
    verdict = await svc.verify(facts(shaken(pki.rogue_key)))
    assert (verdict.verdict, verdict.trust, verdict.verstat) == (
        "valid", Trust.ANCHOR, Verstat.PASSED,
    )  # fmt: skip


# --- replay: malleability, identical content, flooding ---------------------------------


def malleate(value: str) -> str:
    """(r, s) → (r, n − s): valid without the key, a different base64 string."""
    header = parse_identity(value)[0]
    head, body, sig = header.digest.split(".")
    raw = jose.b64u_decode(sig, "sig")
    s = int.from_bytes(raw[32:], "big")
    flipped = raw[:32] + (N - s).to_bytes(32, "big")
    new_sig = base64.urlsafe_b64encode(flipped).decode().rstrip("=")
    return value.replace(header.digest, f"{head}.{body}.{new_sig}")


async def test_malleated_signature_still_verifies_but_is_a_replay(pki: Pki) -> None:
    creds: dict[str, Credential | StirError] = {X5U: Credential((pki.leaf,))}
    value = shaken(pki.leaf_key)
    twin = malleate(value)
    assert twin != value
    fresh = verifier(creds, anchors=(pki.root,))
    assert (await fresh.verify(facts(twin, call_id="other"))).verdict == "valid"  # it verifies
    svc = verifier(creds, anchors=(pki.root,))
    assert (await svc.verify(facts(value, call_id="call-1"))).verdict == "valid"
    replayed = await svc.verify(facts(twin, call_id="call-2"))
    assert (replayed.verdict, replayed.code) == ("invalid", 438)
    assert replayed.passports[0].to_json()["failed_check"] == "replay"


async def test_non_canonical_base64_tail_is_the_same_passport(pki: Pki) -> None:
    """86 base64url characters carry 516 bits for 512: the last one has 4 spare bits."""
    value = shaken(pki.leaf_key)
    digest = parse_identity(value)[0].digest
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(digest[-1])
    twin = value.replace(digest, digest[:-1] + alphabet[last ^ 0x3])
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    assert (await svc.verify(facts(value, call_id="a"))).verdict == "valid"
    assert (await svc.verify(facts(twin, call_id="b"))).code == 438


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=st.text(min_size=1, max_size=40), other=st.text(min_size=1, max_size=40))
async def test_property_malleated_copy_on_another_call_is_refused(
    pki: Pki, call: str, other: str
) -> None:
    if call == other:
        return
    creds: dict[str, Credential | StirError] = {X5U: Credential((pki.leaf,))}
    svc = verifier(creds, anchors=(pki.root,), replay_store=MemoryStore(1000, evict=False))
    value = shaken(pki.leaf_key)
    assert (await svc.verify(facts(value, call_id=call))).verdict == "valid"
    assert (await svc.verify(facts(value, call_id=call))).verdict == "valid"  # a retry
    for copy in (value, malleate(value)):
        assert (await svc.verify(facts(copy, call_id=other))).code == 438


def test_signing_twice_gives_two_passports(pki: Pki) -> None:
    assert identity(pki.leaf_key) != identity(pki.leaf_key)
    assert shaken(pki.leaf_key) != shaken(pki.leaf_key)


async def test_two_real_msec_calls_with_identical_content_both_verify(pki: Pki) -> None:
    """Redial or trunk failover in the same second: same caller, callee, SDP, iat."""
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    one, two = identity(pki.leaf_key), identity(pki.leaf_key)
    assert (await svc.verify(facts(one, call_id="first"))).verdict == "valid"
    assert (await svc.verify(facts(two, call_id="failover"))).verdict == "valid"


@pytest.mark.parametrize("overflow", list(ReplayOverflow))
async def test_a_flood_of_valid_passports_cannot_flush_an_old_one(
    pki: Pki, overflow: ReplayOverflow
) -> None:
    capacity = 300
    replay = MemoryStore(capacity, clock=lambda: NOW, evict=False)
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,),
                   replay_store=replay, replay_overflow=overflow)  # fmt: skip
    old = shaken(pki.leaf_key)
    assert (await svc.verify(facts(old, call_id="victim"))).replay.checked  # type: ignore[union-attr]
    for i in range(capacity - 1):
        assert (
            await svc.verify(facts(shaken(pki.leaf_key), call_id=f"flood-{i}"))
        ).verdict == "valid"
    if overflow is ReplayOverflow.REFUSE:
        with pytest.raises(StirError) as refused:
            await svc.verify(facts(shaken(pki.leaf_key), call_id="one-more"))
        assert refused.value.code == 503
    else:
        more = await svc.verify(facts(shaken(pki.leaf_key), call_id="one-more"))
        assert (more.verdict, more.to_json()["replay"]) == ("valid", "unchecked")
        assert more.to_json()["replay_unchecked"] == "store-full"
    replayed = await svc.verify(facts(old, call_id="attacker"))
    assert (replayed.verdict, replayed.code) == ("invalid", 438)  # still remembered
    stats = svc.replay_stats
    assert stats.replayed == 1 and stats.unchecked == {"store-full": 1}


def test_memory_replay_store_keeps_200000_entries_and_never_evicts() -> None:
    import asyncio

    async def run() -> None:
        store = MemoryStore(200_000, clock=lambda: NOW, evict=False)
        for i in range(200_000):
            assert await store.add(f"replay:{i}", b"c", 70.0)
        assert not await store.add("replay:0", b"x", 70.0)  # the oldest is still there
        with pytest.raises(Exception, match="200000 live entries"):
            await store.add("replay:new", b"x", 70.0)
        assert await store.get("replay:0") == b"c"

    asyncio.run(run())


async def test_replay_entries_expire_after_the_window(pki: Pki) -> None:
    now = [float(NOW)]
    replay = MemoryStore(2, clock=lambda: now[0], evict=False)
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,), replay_store=replay)
    await svc.verify(facts(shaken(pki.leaf_key), call_id="a"))
    await svc.verify(facts(shaken(pki.leaf_key), call_id="b"))
    now[0] += 71  # max_age 60 + max_skew 10
    assert len(replay) == 0


# --- visible gaps ------------------------------------------------------------------------


async def test_missing_call_id_is_reported_unchecked(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    verdict = await svc.verify(facts(shaken(pki.leaf_key), call_id=None))
    assert (verdict.verdict, verdict.to_json()["replay"]) == ("valid", "unchecked")
    assert verdict.to_json()["replay_unchecked"] == "no-call-id"
    assert svc.replay_stats.unchecked == {"no-call-id": 1}


async def test_require_call_id_makes_it_400(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,), require_call_id=True)
    with pytest.raises(StirError) as error:
        await svc.verify(facts(shaken(pki.leaf_key), call_id=None))
    assert error.value.code == 400 and "call_id" in error.value.detail


async def test_replay_disabled_is_reported_unchecked(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,), replay=False)
    verdict = await svc.verify(facts(shaken(pki.leaf_key)))
    assert verdict.to_json()["replay"] == "unchecked"
    checked = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    assert (await checked.verify(facts(shaken(pki.leaf_key)))).to_json()["replay"] == "checked"


# --- order of work: nothing is fetched for what fails offline ----------------------------


def _offline_failures(key: ec.EllipticCurvePrivateKey) -> dict[str, tuple[str, dict[str, object]]]:
    good = identity(key)
    return {
        "stale iat": (identity(key, iat=NOW - 3600), {"date": None}),
        "future iat": (identity(key, iat=NOW + 3600), {"date": None}),
        "wrong caller": (good, {"from_": "<sip:+12025550999@x.example;user=phone>"}),
        "wrong callee": (good, {"to": "<tel:+12025550888>", "ruri": None}),
        "mky mismatch": (good, {"sdp": "v=0\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32)}),
        "no sdp for msec": (good, {"sdp": None}),
        "garbage": ("not a header", {}),
        "bad token": ("e30.e30.AAAA;info=<https://cert.example.org/alice.pem>", {}),
        "alg mismatch": (good.replace(";alg=ES256", ";alg=RS256"), {}),
        "ppt mismatch": (good.replace(";ppt=msec", ";ppt=shaken"), {}),
    }


@pytest.mark.parametrize("case", list(_offline_failures(ec.generate_private_key(ec.SECP256R1()))))
async def test_offline_failure_costs_zero_fetches(pki: Pki, case: str) -> None:
    value, changes = _offline_failures(pki.leaf_key)[case]
    provider = FakeProvider({X5U: Credential((pki.leaf,))})
    svc = VerificationService(provider, DictStore(), ServicePolicy(), clock=lambda: NOW)
    verdict = await svc.verify(replace(facts(value), **changes))  # type: ignore[arg-type]
    assert verdict.verdict == "invalid", case
    assert provider.calls == [], case


async def test_only_headers_that_pass_offline_are_fetched(pki: Pki) -> None:
    stale = shaken(pki.leaf_key, iat=NOW - 3600, x5u="https://stale.example/c.pem")
    good = identity(pki.leaf_key)
    provider = FakeProvider({X5U: Credential((pki.leaf,))})
    policy = ServicePolicy()
    policy = replace(policy, verify=replace(policy.verify, anchors=(pki.root,)))
    svc = VerificationService(provider, DictStore(), policy, clock=lambda: NOW)
    verdict = await svc.verify(facts(stale, good, date=None))
    assert verdict.verdict == "valid" and provider.calls == [X5U]


# --- alg (RFC 8224 §4.1, §6.2.2) ---------------------------------------------------------


async def test_identity_alg_must_match_the_jose_alg(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    value = identity(pki.leaf_key)
    assert ";alg=ES256" in value
    assert (await svc.verify(facts(value, call_id="a"))).verdict == "valid"
    no_alg = identity(pki.leaf_key).replace(";alg=ES256", "")
    assert (await svc.verify(facts(no_alg, call_id="b"))).verdict == "valid"
    bad = identity(pki.leaf_key).replace(";alg=ES256", ";alg=RS256")
    bad = await svc.verify(facts(bad, call_id="c"))
    assert (bad.verdict, bad.code) == ("invalid", 438)


async def test_unsupported_alg_is_437(pki: Pki) -> None:
    """A compact form whose alg parameter names an algorithm stird does not verify."""
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,))
    value = identity(pki.leaf_key, compact=True)
    header = parse_identity(value)[0]
    compact = value.replace(";alg=ES256", ";alg=PS256")
    assert parse_identity(compact)[0].digest == header.digest
    verdict = await svc.verify(facts(compact))
    assert verdict.code == 437


# --- found by review: pins follow orig, fail closed, anonymous, verstat -----------------


async def test_a_pinned_number_cannot_be_claimed_through_pai(pki: Pki) -> None:
    """The victim's number is pinned; the attacker puts it in PAI (orig may match PAI)."""
    store = DictStore()
    victim = verifier({X5U: Credential((pki.self_cert,))}, store=store)
    assert (await victim.verify(facts(identity(pki.self_key)))).trust is Trust.TOFU
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=NOW - 3600, tns=[ORIG])
    attacker = verifier({X5U: Credential((cert,))}, store=store)
    spoofed = facts(
        identity(key), call_id="c2", from_="<sip:+12025550999@evil.example;user=phone>",
        pai=f"<sip:+{ORIG}@evil.example;user=phone>",
    )  # fmt: skip
    verdict = await attacker.verify(spoofed)
    assert (verdict.verdict, verdict.code) == ("invalid", 437)


class DownStore(DictStore):
    async def get(self, key: str) -> bytes | None:
        from stird.services.stores import StoreUnavailable

        raise StoreUnavailable("down")


async def test_no_first_use_while_the_pin_store_is_down(pki: Pki) -> None:
    svc = verifier({X5U: Credential((pki.self_cert,))}, store=DownStore())
    verdict = await svc.verify(facts(identity(pki.self_key)))
    assert (verdict.verdict, verdict.code) == ("invalid", 437)


async def test_anonymous_msec_callers_are_never_pinned(pki: Pki) -> None:
    """RFC 8862 §4.2: one-time certificates; a second anonymous caller is not refused."""
    store = DictStore()
    for call in range(2):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certs.make_anonymous_cert(key, now=NOW - 60)
        svc = verifier({X5U: Credential((cert,))}, store=store)
        anon = PartyId(IdKind.URI, certs.ANONYMOUS_URI)
        value = identity(key, orig=anon)
        verdict = await svc.verify(
            facts(value, call_id=f"anon-{call}", from_=f"<{certs.ANONYMOUS_URI}>")
        )
        assert (verdict.verdict, verdict.trust, verdict.verstat) == (
            "valid",
            Trust.TOFU,
            Verstat.NONE,
        )
    assert not any(k.startswith("pin:") for k in store.data)


async def test_replay_unchecked_for_want_of_room_is_not_tn_validated(pki: Pki) -> None:
    replay = MemoryStore(1, clock=lambda: NOW, evict=False)
    svc = verifier({X5U: Credential((pki.leaf,))}, anchors=(pki.root,), replay_store=replay,
                   replay_overflow=ReplayOverflow.UNCHECKED)  # fmt: skip
    first = await svc.verify(facts(shaken(pki.leaf_key), call_id="a"))
    assert first.verstat is Verstat.PASSED
    second = await svc.verify(facts(shaken(pki.leaf_key), call_id="b"))
    assert (second.verdict, second.to_json()["replay"]) == ("valid", "unchecked")
    assert second.verstat is Verstat.NONE


async def test_200000_valid_passports_at_the_default_size_cannot_flush_an_old_one() -> None:
    """The issue's number, at the daemon's default replay cache (peak rate × window):
    200,000 valid PASSporTs, as they reach the replay check, and the first one is still a
    replay; past the bound the verifier refuses (503), it never forgets."""
    from stird.core.verdict import PassportCheck
    from stird.wiring.app import replay_capacity, replay_store_for
    from stird.wiring.config import Config

    config = Config()
    store = replay_store_for(config)
    svc = VerificationService(FakeProvider({}), DictStore(), ServicePolicy(),
                              clock=lambda: NOW, replay_store=store)  # fmt: skip

    def valid(i: int) -> PassportCheck:
        return PassportCheck(index=0, supported=True, replay_id=i.to_bytes(16, "big"))

    first = valid(0)
    assert (await svc._refuse_replays((first,), facts(call_id="victim")))[1].checked  # type: ignore[union-attr]
    refused = 0
    for i in range(1, 200_000):
        try:
            await svc._refuse_replays((valid(i),), facts(call_id=f"c{i}"))
        except StirError as exc:
            assert exc.code == 503
            refused += 1
    assert refused == 200_000 - replay_capacity(config)
    checks, _ = await svc._refuse_replays((first,), facts(call_id="attacker"))
    assert checks[0].error is not None and checks[0].error.check.value == "replay"
