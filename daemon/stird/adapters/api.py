"""The operations the PBX calls (sign, verify, dialog, status), independent of transport:
HTTP (`/v1/...`), JSON-RPC over HTTP and over netstrings all land here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from stird.adapters.dialog_api import DialogApi, is_backwards
from stird.adapters.jsonrpc import Method
from stird.adapters.metrics import Metrics
from stird.adapters.overload import LoadShedder
from stird.adapters.requests import budget, sign_input, sip_facts, wants_flat, wants_oob
from stird.adapters.supervisor import Supervisor
from stird.core.errors import StirError
from stird.core.tn import IdKind
from stird.core.verstat import with_verstat
from stird.services.authentication import AuthenticationService, SignInput, SignOutput
from stird.services.oob import OobPublisher, Outcome, PublishResult
from stird.services.oobverify import OobVerification
from stird.services.status import CallLog
from stird.services.status_expiry import degraded as expiring
from stird.services.status_expiry import expiries
from stird.services.verification import VerificationService


@dataclass(frozen=True)
class OobRuntime:
    """Out-of-band STIR (RFC 8816): storing at sign time, retrieval at verify time."""

    publisher: OobPublisher
    verification: OobVerification


@dataclass(frozen=True)
class Runtime:
    """What a (re)load of the configuration produces; swapped atomically on SIGHUP."""

    auth: AuthenticationService
    verifier: VerificationService
    region: str | None = None
    certificates: Mapping[str, bytes] = field(default_factory=dict)  # name -> PEM chain
    notes: tuple[str, ...] = ()
    oob: OobRuntime | None = None


def _publishes_for(oob: OobRuntime | None, request: SignInput) -> bool:
    """A called number under ``[oob] publish_for``."""
    return oob is not None and any(
        d.kind is IdKind.TN and oob.publisher.policy.publishes_for(d.value) for d in request.dest
    )


def _merged(results: Sequence[PublishResult]) -> PublishResult:
    """One answer for a call to several numbers: stored only when stored for each."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if not r.stored]
    outcome = failed[0].outcome if failed else Outcome.STORED
    return PublishResult(outcome, results[0].cps, sum(r.entries for r in results),
                         failed[0].error if failed else None)  # fmt: skip


def flat_sign(out: SignOutput, request: SignInput) -> str:
    """``stir.sign`` with ``"reply": "flat"``: the result is the header lines to append, one
    string (every Identity header, then Date when the request had none: the PASSporTs'
    iat), so Kamailio's single janssonrpcc I/O process decodes the answer once and calls
    append_hf once. Empty when nothing was signed and the request had a Date."""
    lines = [f"Identity: {value}\r\n" for value in out.identity]
    if request.date is None:
        lines.append(f"Date: {out.date}\r\n")
    return "".join(lines)


def flat_verify(body: Mapping[str, Any]) -> dict[str, Any]:
    """``stir.verify`` with ``"reply": "flat"``: the scalar members only (the per-PASSporT
    details stay out; the msec dialog decision, when there is one, as ``dialog``)."""
    flat = {k: v for k, v in body.items() if not isinstance(v, dict | list)}
    if isinstance(body.get("dialog"), dict):
        flat["dialog"] = body["dialog"].get("decision")
    return flat


class StirApi:
    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.health: dict[str, Any] = {}
        self.dialogs = DialogApi()  # the msec dialog policy ([dialog]); off by default
        self.shedder: LoadShedder | None = None  # refuses sign/verify while stird is behind
        self.started = time.monotonic()  # /healthz uptime: from daemon start, across reloads
        self.supervisor: Supervisor | None = None  # the background tasks, for /healthz
        self.calls = CallLog()  # the status page's recent calls and per-minute counters

    def admit(self, interface: str = "api") -> None:
        """Raise :class:`~stird.adapters.overload.Overloaded` while stird is behind."""
        if self.shedder is not None:
            self.shedder.check(interface)

    def methods(self) -> dict[str, Method]:
        return {"stir.sign": self.sign_rpc, "stir.verify": self.verify, "stir.status": self.status,
                "stir.dialog": self.dialog}  # fmt: skip

    async def sign(self, params: Any) -> dict[str, Any]:
        """``POST /v1/sign``, FastAGI: the full result (``reply`` is JSON-RPC's)."""
        body, _ = await self._sign(params)
        return body

    async def sign_rpc(self, params: Any) -> dict[str, Any] | str:
        """JSON-RPC ``stir.sign``: ``"reply": "flat"`` makes it the header text."""
        body, flat = await self._sign(params)
        return body if flat is None else flat

    async def _sign(self, params: Any) -> tuple[dict[str, Any], str | None]:
        self.admit()
        started = time.perf_counter()
        runtime = self.runtime
        try:
            request = sign_input(params, runtime.region)  # a bad field is a StirError (400)
            oob = wants_oob(params)
            flat = wants_flat(params)
            out = runtime.auth.sign(request)
        except StirError as exc:
            self.metrics.observe("sign", time.perf_counter() - started, "error", exc.code, "")
            self.calls.sign_failed(params, exc)
            raise
        body: dict[str, Any] = {
            "identity": list(out.identity),
            "date": out.date,
            "passport": out.passport,
            "credential": out.credential,
        }
        tracked = self.dialogs.signed(params, out)  # an msec dialog-forming request
        if tracked is not None:
            body["dialog"] = tracked
        if oob or _publishes_for(runtime.oob, request):
            body["oob"] = (await self._publish(runtime.oob, request, out)).to_json()
        ppts = ",".join(p.ppt or "base" for p in out.passports) or "none"
        self.calls.signed(request, out)
        self.metrics.observe("sign", time.perf_counter() - started, "signed", None, ppts)
        return body, flat_sign(out, request) if flat else None

    async def _publish(
        self, oob: OobRuntime | None, request: SignInput, out: SignOutput
    ) -> PublishResult:
        """RFC 8816 §8.1: store before answering, bounded; never raises."""
        dests = [d.value for d in request.dest if d.kind is IdKind.TN]
        if oob is None:
            result = PublishResult(Outcome.SKIPPED, error="out-of-band STIR is off ([oob] cps)")
        elif not out.passports:
            result = PublishResult(Outcome.SKIPPED, error="nothing was signed")
        elif not dests:
            result = PublishResult(Outcome.SKIPPED, error="no telephone-number destination")
        else:
            orig = request.orig.value if request.orig.kind is IdKind.TN else None
            tokens = [p.full for p in out.passports]
            result = _merged(await asyncio.gather(
                *(oob.publisher.publish(tokens, dest, orig) for dest in dests)
            ))  # fmt: skip
        self.metrics.cps.labels("publish", result.outcome.value).inc()
        return result

    async def verify(self, params: Any) -> dict[str, Any]:
        self.admit()
        started = time.perf_counter()
        runtime = self.runtime
        try:
            facts = sip_facts(params)  # a bad field is a StirError (400): recorded below
            backwards = is_backwards(params)  # the callee's in-dialog request (RFC 8862 §4.3)
            flat = wants_flat(params)
            if backwards:
                facts = replace(facts, dialog_forming=False)
            if runtime.oob is None:
                verdict = await runtime.verifier.verify(facts, deadline=budget(params))
            else:
                check = await runtime.oob.verification.verify(
                    runtime.verifier, facts, budget(params)
                )
                verdict = check.verdict
                if check.retrieval is not None:
                    self.metrics.cps.labels("retrieve", check.retrieval.outcome.value).inc()
        except StirError as exc:
            self.calls.verify_failed(params, exc)
            raise
        self.calls.verified(facts, verdict, backwards=backwards)
        body = verdict.to_json()
        body["pai"] = self._pai(facts.pai or facts.from_, verdict.verstat.value)
        if backwards:
            body["dialog"] = await self.dialogs.backwards(params, verdict)
        ppt = next((p.ppt or "base" for p in verdict.passports if p.supported), "none")
        self.metrics.observe(
            "verify", time.perf_counter() - started, verdict.verdict.value, verdict.code, ppt
        )
        return flat_verify(body) if flat else body

    async def dialog(self, params: Any) -> dict[str, Any]:
        """``stir.dialog``: answered / ended / refused events of msec dialogs."""
        return await self.dialogs.event(params)

    def _pai(self, source: str | None, verstat: str) -> str | None:
        """The P-Asserted-Identity value with verstat, ready for the PBX to set."""
        if not source:
            return None
        try:
            return with_verstat(source, verstat)
        except StirError:
            return None

    async def status(self, params: Any = None) -> dict[str, Any]:
        """/healthz: "degraded" (and which tasks) while a background task keeps failing."""
        runtime = self.runtime
        supervisor = self.supervisor
        degraded = supervisor.degraded() if supervisor is not None else []
        anchors = runtime.verifier.policy.verify.anchors
        degraded += expiring(expiries(runtime.auth.credentials, anchors), time.time())
        body: dict[str, Any] = {
            "status": "degraded" if degraded else "ok",
            "uptime": round(time.monotonic() - self.started, 1),
            "credentials": [c.name for c in runtime.auth.credentials],
            "notes": list(runtime.notes),
            **self.health,
        }
        if supervisor is not None:
            body["tasks"] = supervisor.health()
        if degraded:
            body["degraded"] = degraded
        return body
