"""The status page's call log: a bounded ring of recent calls, per-minute counters for 24
hours (bounded), filter and search, and decoded PASSporTs that never keep a signature."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import SipStatus, StirError
from stird.core.tn import IdKind, PartyId
from stird.core.verdict import SipFacts, Verdict
from stird.services.authentication import AuthenticationService, SigningCredential, SignInput
from stird.services.status import MAX_TEXT, CallLog, CallRecord, categories, decode_identities
from stird.services.verdicts import Action, CallVerdict, Verstat

NOW = 1_790_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tn(value: str) -> PartyId:
    return PartyId(IdKind.TN, value)


def record(verdict: str = "valid", *, at: float = NOW, code: int | None = None,
           call_id: str = "c1", caller: str = "15551110000") -> CallRecord:  # fmt: skip
    return CallRecord(at=at, kind="verify", direction="in", call_id=call_id, caller=caller,
                      callee="15552220000", verdict=verdict, code=code)  # fmt: skip


def no_identity() -> CallVerdict:
    return CallVerdict(Verdict.NO_IDENTITY, None, Action.CONTINUE, Verstat.NONE, None, (),
                       None, ())  # fmt: skip


def test_ring_is_bounded_and_newest_first() -> None:
    log = CallLog(size=500, clock=Clock())
    for i in range(1200):
        log.add(record(call_id=f"call-{i}"))
    assert len(log.calls) == 500
    recent = log.recent(3)
    assert [r.call_id for r in recent] == ["call-1199", "call-1198", "call-1197"]
    assert log.find("call-10") == []  # pushed out
    assert log.totals(60)["valid"] == 1200  # the counters count every call, not the ring


def test_buckets_are_per_minute_and_pruned_after_a_day() -> None:
    clock = Clock()
    log = CallLog(clock=clock)
    for minute in range(3 * 24 * 60):  # three days of one call a minute
        clock.now = NOW + minute * 60
        log.add(record(at=clock.now))
    assert len(log._buckets) <= 24 * 60  # bounded, whatever the uptime
    assert log.totals(60)["valid"] == 60
    assert log.totals(24 * 60)["valid"] == 24 * 60
    points = log.series(60, 15)
    assert len(points) == 4 and all(c["valid"] == 15 for _, c in points)


def test_categories_split_failures_by_code() -> None:
    log = CallLog(clock=Clock())
    log.add(record("invalid", code=438))
    log.add(record("invalid", code=438))
    log.add(record("invalid", code=436))
    log.add(record("no-identity"))
    log.add(record("valid"))
    totals = log.totals(60)
    assert totals == {"fail 438": 2, "fail 436": 1, "no-identity": 1, "valid": 1}
    assert list(categories([totals]))[:3] == ["valid", "fail 436", "fail 438"]


def test_filter_by_verdict_and_search_by_number_or_call_id() -> None:
    log = CallLog(clock=Clock())
    log.add(record("valid", call_id="a-1@pbx", caller="15551110000"))
    log.add(record("invalid", code=438, call_id="b-2@pbx", caller="15553330000"))
    assert [r.call_id for r in log.recent(verdict="invalid")] == ["b-2@pbx"]
    assert [r.call_id for r in log.recent(verdict="fail 438")] == ["b-2@pbx"]
    assert [r.call_id for r in log.recent(query="5553330")] == ["b-2@pbx"]
    assert [r.call_id for r in log.recent(query="A-1")] == ["a-1@pbx"]
    assert log.recent(query="nothing") == []


def test_signed_call_keeps_claims_never_the_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=int(NOW) - 60, tns=["15551110000"])
    auth = AuthenticationService(
        [SigningCredential("main", key, (cert,), "https://certs.example/main.pem")],
        clock=lambda: NOW,
    )
    request = SignInput(tn("15551110000"), (tn("15552220000"),), call_id="s-1@pbx")
    out = auth.sign(request)
    log = CallLog(clock=Clock())
    log.signed(request, out)
    (kept,) = log.find("s-1@pbx")
    assert kept.verdict == "signed" and kept.credential == "main" and kept.ppts == ("shaken",)
    assert kept.decoded()[0]["claims"]["orig"] == {"tn": "15551110000"}
    text = repr(kept.to_json(full=True))
    signature = out.passports[0].full.rsplit(".", 1)[1]
    assert signature not in text and out.passports[0].full not in text


def test_verified_call_decodes_identity_without_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=int(NOW) - 60, tns=["15551110000"])
    auth = AuthenticationService(
        [SigningCredential("main", key, (cert,), "https://certs.example/main.pem")],
        clock=lambda: NOW,
    )
    out = auth.sign(SignInput(tn("15551110000"), (tn("15552220000"),)))
    (decoded,) = decode_identities(out.identity)
    assert decoded["header"]["x5u"] == "https://certs.example/main.pem"
    assert decoded["claims"]["dest"] == {"tn": ["15552220000"]}
    assert out.passports[0].full.rsplit(".", 1)[1] not in repr(decoded)


def test_hostile_values_are_bounded() -> None:
    log = CallLog(clock=Clock())
    facts = SipFacts(identity=("x" * 5000, "not;an=identity"), from_="<" * 100_000,
                     to="<sip:1@h>", call_id="c" * 10_000)  # fmt: skip
    log.verified(facts, no_identity())
    (kept,) = log.calls
    assert len(kept.caller or "") <= MAX_TEXT and len(kept.call_id or "") <= MAX_TEXT
    assert all(len(repr(p)) < 5000 for p in kept.decoded())


def test_errors_are_recorded_from_raw_params() -> None:
    log = CallLog(clock=Clock())
    exc = StirError(SipStatus.FORBIDDEN, "no signing credential covers 1555")
    log.sign_failed({"orig": "+1555", "dest": ["+1666"], "call_id": "e-1"}, exc)
    log.sign_failed(None, exc)  # not even an object: still counted
    log.verify_failed({"from": "<sip:1@h>", "to": 7}, exc)
    assert log.totals(60) == {"error": 3}
    assert log.find("e-1")[0].code == 403
