"""The operations the PBX calls (sign, verify, status), independent of transport:
HTTP (`/v1/...`), JSON-RPC over HTTP and over netstrings all land here."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stird.adapters.jsonrpc import Method
from stird.adapters.metrics import Metrics
from stird.adapters.requests import budget, sign_input, sip_facts, wants_oob
from stird.core.errors import StirError
from stird.core.verstat import with_verstat
from stird.services.authentication import AuthenticationService
from stird.services.verification import VerificationService


@dataclass(frozen=True)
class Runtime:
    """What a (re)load of the configuration produces; swapped atomically on SIGHUP."""

    auth: AuthenticationService
    verifier: VerificationService
    region: str | None = None
    certificates: Mapping[str, bytes] = field(default_factory=dict)  # name -> PEM chain
    started: float = field(default_factory=time.time)
    notes: tuple[str, ...] = ()


class StirApi:
    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.health: dict[str, Any] = {}

    def methods(self) -> dict[str, Method]:
        return {"stir.sign": self.sign, "stir.verify": self.verify, "stir.status": self.status}

    async def sign(self, params: Any) -> dict[str, Any]:
        started = time.perf_counter()
        request = sign_input(params, self.runtime.region)
        wants_oob(params)  # validated now; out-of-band delivery comes with the CPS
        try:
            out = self.runtime.auth.sign(request)
        except StirError as exc:
            self.metrics.observe("sign", time.perf_counter() - started, "error", exc.code, "")
            raise
        ppts = ",".join(p.ppt or "base" for p in out.passports) or "none"
        self.metrics.observe("sign", time.perf_counter() - started, "signed", None, ppts)
        return {
            "identity": list(out.identity),
            "date": out.date,
            "passport": out.passport,
            "credential": out.credential,
        }

    async def verify(self, params: Any) -> dict[str, Any]:
        started = time.perf_counter()
        facts = sip_facts(params)
        verdict = await self.runtime.verifier.verify(facts, deadline=budget(params))
        body = verdict.to_json()
        body["pai"] = self._pai(facts.pai or facts.from_, verdict.verstat.value)
        ppt = next((p.ppt or "base" for p in verdict.passports if p.supported), "none")
        self.metrics.observe(
            "verify", time.perf_counter() - started, verdict.verdict.value, verdict.code, ppt
        )
        return body

    def _pai(self, source: str | None, verstat: str) -> str | None:
        """The P-Asserted-Identity value with verstat, ready for the PBX to set."""
        if not source:
            return None
        try:
            return with_verstat(source, verstat)
        except StirError:
            return None

    async def status(self, params: Any = None) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "status": "ok",
            "uptime": round(time.time() - runtime.started, 1),
            "credentials": [c.name for c in runtime.auth.credentials],
            "notes": list(runtime.notes),
            **self.health,
        }
