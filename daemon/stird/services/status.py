"""What the operator's status page shows about calls: the most recent calls (a bounded
ring) and per-minute verdict counters for the last 24 hours (bounded buckets).

Everything recorded here came from the PBX and, through it, from whoever placed the call:
it is kept as plain text, bounded in length, and escaped by whoever renders it. A call's
PASSporTs are kept decoded (JOSE header and claims): never a token, a signature or a key.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stird.core.errors import StirError
from stird.core.identity import parse_identity
from stird.core.passport import SignedPassport, decode_json
from stird.core.verdict import PassportCheck, SipFacts
from stird.services.authentication import SignInput, SignOutput
from stird.services.ports import Clock, system_clock
from stird.services.verdicts import CallVerdict

RING_SIZE = 500  # calls kept for the table and the detail view
DAY_MINUTES = 24 * 60  # per-minute buckets kept
MAX_TEXT = 256  # characters kept of a header value (From, To, Call-ID, detail)
MAX_PASSPORTS = 4  # decoded PASSporTs kept per call
MAX_IDENTITY = 16384  # characters of Identity values kept for the detail view
MAX_CLAIMS_JSON = 4096  # characters of one decoded PASSporT (header + claims)
MAX_KEYS = 32  # distinct categories per minute (codes are stird's own: few)

OUT_OF_BAND = "out-of-band"
SIGNED = "signed"
SIGN_ERROR = "sign-error"
ERROR = "error"


def _text(value: object, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One sign or verify request as the status page shows it."""

    at: float  # POSIX time
    kind: str  # "sign" | "verify"
    direction: str  # "out" (signed for the PBX) | "in" (verified) | "in-backwards"
    call_id: str | None
    caller: str | None
    callee: str | None
    verdict: str  # valid, invalid, no-identity, unsupported, signed, error
    code: int | None = None
    reason: str | None = None
    detail: str | None = None
    ppts: tuple[str, ...] = ()
    trust: str | None = None
    replay: str | None = None
    oob: bool = False
    credential: str | None = None
    checks: tuple[Mapping[str, Any], ...] = ()  # per-PASSporT outcome (verify)
    passports: tuple[Mapping[str, Any], ...] = ()  # decoded header and claims
    # what the above are made from, when first asked (the detail view): not on the hot path
    identities: tuple[str, ...] = field(default=(), repr=False)  # Identity values received
    signed: tuple[SignedPassport, ...] = field(default=(), repr=False)
    verdict_checks: tuple[PassportCheck, ...] = field(default=(), repr=False)

    def decoded(self) -> tuple[Mapping[str, Any], ...]:
        """Each PASSporT's JOSE header and claims (never the signature)."""
        if self.passports:
            return self.passports
        if self.signed:
            return tuple(
                _bounded({"info": p.header.x5u, "ppt": p.header.ppt,
                          "header": p.header.to_json(), "claims": p.claims.to_json()})
                for p in self.signed[:MAX_PASSPORTS]
            )  # fmt: skip
        return decode_identities(self.identities)

    def check_details(self) -> tuple[Mapping[str, Any], ...]:
        if self.checks:
            return self.checks
        return tuple(_bounded(p.to_json()) for p in self.verdict_checks[:MAX_PASSPORTS])

    @property
    def category(self) -> str:
        """The chart series: valid, "fail 438", no-identity, signed, sign-error, error."""
        if self.verdict in ("valid", "no-identity", "unsupported", SIGNED, "unsigned", ERROR):
            return self.verdict
        if self.kind == "sign":
            return SIGN_ERROR
        return f"fail {self.code}" if self.code else "fail"

    def matches(self, verdict: str | None, query: str | None) -> bool:
        """The filter by verdict (or category) and the search by number or Call-ID."""
        if verdict and verdict not in (self.verdict, self.category):
            return False
        if not query:
            return True
        needle = query.lower()
        return any(
            needle in value.lower()
            for value in (self.call_id, self.caller, self.callee)
            if value is not None
        )

    def to_json(self, *, full: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "at": self.at,
            "kind": self.kind,
            "direction": self.direction,
            "call_id": self.call_id,
            "caller": self.caller,
            "callee": self.callee,
            "verdict": self.verdict,
            "category": self.category,
            "code": self.code,
            "reason": self.reason,
            "detail": self.detail,
            "ppts": list(self.ppts),
            "trust": self.trust,
            "replay": self.replay,
            "oob": self.oob,
            "credential": self.credential,
        }
        if full:
            body["checks"] = [dict(c) for c in self.check_details()]
            body["passports"] = [dict(p) for p in self.decoded()]
        return body


def _bounded(entry: dict[str, Any]) -> Mapping[str, Any]:
    if len(json.dumps(entry, default=str)) > MAX_CLAIMS_JSON:
        return {"note": f"larger than {MAX_CLAIMS_JSON} characters: not kept"}
    return entry


def decode_identities(values: Iterable[str]) -> tuple[Mapping[str, Any], ...]:
    """The JOSE header and claims of each full-form PASSporT (the signature is dropped);
    a compact one (RFC 8225 §7) carries neither and shows as such."""
    out: list[Mapping[str, Any]] = []
    for value in values:
        try:
            headers = parse_identity(value)
        except StirError as exc:
            out.append({"error": _text(exc.detail)})
            continue
        for header in headers:
            if len(out) >= MAX_PASSPORTS:
                return tuple(out)
            entry: dict[str, Any] = {"info": _text(header.info), "ppt": _text(header.ppt)}
            if header.is_compact:
                entry["form"] = "compact"
            else:
                try:
                    entry["header"], entry["claims"] = decode_json(header.digest)
                    entry["header"].pop("x5c", None)  # certificates: not the page's business
                except (StirError, ValueError) as exc:
                    entry["error"] = _text(getattr(exc, "detail", None) or "undecodable")
            out.append(_bounded(entry))
    return tuple(out)


class CallLog:
    """The ring of recent calls and the per-minute counters behind the charts."""

    def __init__(
        self, size: int = RING_SIZE, minutes: int = DAY_MINUTES, clock: Clock = system_clock
    ) -> None:
        self.calls: deque[CallRecord] = deque(maxlen=size)
        self._minutes = minutes
        self._buckets: dict[int, Counter[str]] = {}  # minute (POSIX // 60) -> counts
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    # --- recording -----------------------------------------------------------------------

    def add(self, record: CallRecord) -> None:
        self.calls.append(record)
        minute = int(record.at // 60)
        bucket = self._buckets.get(minute)
        if bucket is None:
            self._prune(minute)
            bucket = self._buckets[minute] = Counter()
        if record.category in bucket or len(bucket) < MAX_KEYS:
            bucket[record.category] += 1
        if record.oob:
            bucket[OUT_OF_BAND] += 1

    def _prune(self, minute: int) -> None:
        oldest = minute - self._minutes
        for key in [k for k in self._buckets if k <= oldest]:
            del self._buckets[key]

    def signed(self, request: SignInput, out: SignOutput) -> None:
        self.add(
            CallRecord(
                at=self._clock(),
                kind="sign",
                direction="out",
                call_id=_text(request.call_id),
                caller=_text(request.orig.value),
                callee=_text(", ".join(d.value for d in request.dest)),
                verdict=SIGNED if out.passports else "unsigned",
                ppts=tuple(p.header.ppt or "base" for p in out.passports),
                credential=out.credential,
                signed=out.passports[:MAX_PASSPORTS],
            )
        )

    def sign_failed(self, params: Mapping[str, Any] | None, exc: StirError) -> None:
        raw = params if isinstance(params, Mapping) else {}
        self.add(
            CallRecord(
                at=self._clock(),
                kind="sign",
                direction="out",
                call_id=_text(raw.get("call_id") or raw.get("callid")),
                caller=_text(raw.get("orig")),
                callee=_text(raw.get("dest")),
                verdict=ERROR,
                code=exc.code,
                reason=exc.reason,
                detail=_text(exc.detail),
            )
        )

    def verified(self, facts: SipFacts, verdict: CallVerdict, *, backwards: bool = False) -> None:
        first = next((p for p in verdict.passports if p.orig is not None), None)
        caller = first.orig.value if first is not None and first.orig is not None else None
        callee = ", ".join(d.value for d in first.dest) if first is not None else None
        kept = facts.identity if sum(map(len, facts.identity)) <= MAX_IDENTITY else ()
        self.add(
            CallRecord(
                at=self._clock(),
                kind="verify",
                direction="in-backwards" if backwards else "in",
                call_id=_text(facts.call_id),
                caller=_text(caller or facts.pai or facts.from_),
                callee=_text(callee or facts.to),
                verdict=verdict.verdict.value,
                code=verdict.code,
                reason=verdict.reason,
                detail=_text(verdict.detail),
                ppts=tuple(p.ppt or "base" for p in verdict.passports if p.supported),
                trust=verdict.trust.value if verdict.trust else None,
                replay=verdict.replay.to_json() if verdict.replay else None,
                oob=verdict.out_of_band,
                identities=kept,
                verdict_checks=verdict.passports[:MAX_PASSPORTS],
            )
        )

    def verify_failed(self, params: Mapping[str, Any] | None, exc: StirError) -> None:
        raw = params if isinstance(params, Mapping) else {}
        self.add(
            CallRecord(
                at=self._clock(),
                kind="verify",
                direction="in",
                call_id=_text(raw.get("call_id") or raw.get("callid")),
                caller=_text(raw.get("pai") or raw.get("from")),
                callee=_text(raw.get("to")),
                verdict=ERROR,
                code=exc.code,
                reason=exc.reason,
                detail=_text(exc.detail),
            )
        )

    # --- reading -------------------------------------------------------------------------

    def recent(
        self, last: int = 50, *, verdict: str | None = None, query: str | None = None
    ) -> list[CallRecord]:
        """The newest first, at most ``last``."""
        found: list[CallRecord] = []
        for record in reversed(self.calls):
            if record.matches(verdict, query):
                found.append(record)
                if len(found) >= last:
                    break
        return found

    def find(self, call_id: str) -> list[CallRecord]:
        """Every kept record of one Call-ID, newest first (sign and verify of one call)."""
        return [r for r in reversed(self.calls) if r.call_id == call_id]

    def series(self, minutes: int, step: int = 1) -> list[tuple[int, Counter[str]]]:
        """``minutes`` of counters ending now, summed ``step`` minutes a point, oldest
        first: ``(start minute, counts)``."""
        end = int(self._clock() // 60)
        start = end - minutes + 1
        points: list[tuple[int, Counter[str]]] = []
        for first in range(start, end + 1, step):
            total: Counter[str] = Counter()
            for minute in range(first, min(first + step, end + 1)):
                total.update(self._buckets.get(minute, {}))
            points.append((first, total))
        return points

    def totals(self, minutes: int) -> Counter[str]:
        total: Counter[str] = Counter()
        for _, counts in self.series(minutes, step=minutes):
            total.update(counts)
        return total


def categories(counts: Iterable[Counter[str]]) -> Sequence[str]:
    """The series present, in a stable order: valid first, failures by code, the rest."""
    seen: set[str] = set()
    for count in counts:
        seen.update(count)
    order = {
        "valid": 0,
        "no-identity": 2,
        "unsupported": 3,
        ERROR: 4,
        SIGNED: 5,
        SIGN_ERROR: 6,
        OUT_OF_BAND: 7,
    }
    return sorted(seen, key=lambda c: (order.get(c, 1), c))


__all__ = ["CallLog", "CallRecord", "categories", "decode_identities"]
