"""What the verification service decides for the PBX: policy knobs and the verdict object.

The core says whether the Identity headers hold (RFC 8224 §6.2); this module turns that
into what the PBX does: reject with a code, or continue with `verstat` and a Reason
header (RFC 9410), according to the role and policy of RFC 8862 §4 and §4.4.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from stird.core.errors import Check, SipStatus
from stird.core.passport import Ppt
from stird.core.verdict import PassportCheck, Trust, Verdict, Verification, VerifyPolicy


class Role(enum.StrEnum):
    ENDPOINT = "endpoint"
    INTERMEDIARY = "intermediary"  # RFC 8862 §4: never blocks over an untrusted credential


class OnFailure(enum.StrEnum):
    REJECT = "reject"
    CONTINUE = "continue"
    CONTINUE_WITH_REASON = "continue-with-reason"  # RFC 9410 §4


class Action(enum.StrEnum):
    CONTINUE = "continue"
    REJECT = "reject"


class Verstat(enum.StrEnum):
    """The `verstat` user-part parameter for phones (3GPP TS 24.229 §7.2A.20)."""

    PASSED = "TN-Validation-Passed"
    FAILED = "TN-Validation-Failed"
    NONE = "No-TN-Validation"


class ReplayOverflow(enum.StrEnum):
    """What a verification does when the replay cache cannot record its PASSporTs."""

    REFUSE = "refuse"  # 503: the PBX applies its fail policy
    UNCHECKED = "unchecked"  # go on; the verdict says "replay": "unchecked"


@dataclass(frozen=True, slots=True)
class ReplayStatus:
    """Whether the RFC 8224 §12.1 replay check ran over the request's valid PASSporTs;
    ``reason`` says why not (disabled, no-call-id, store-full, store-unavailable)."""

    checked: bool
    reason: str | None = None

    def to_json(self) -> str:
        return "checked" if self.checked else "unchecked"


#: Unchecked for want of room or of the store: a valid verdict may then be a replay, so
#: phones are not told the number was validated ("disabled" and "no-call-id" are the
#: operator's and the PBX's choice, and keep their verstat).
_REPLAY_UNKNOWN = frozenset({"store-full", "store-unavailable"})

_VERSTAT = {
    Verdict.VALID: Verstat.PASSED,
    Verdict.INVALID: Verstat.FAILED,
    Verdict.NO_IDENTITY: Verstat.NONE,
    Verdict.UNSUPPORTED: Verstat.NONE,
}


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """Everything the verification service acts under."""

    verify: VerifyPolicy = field(default_factory=VerifyPolicy)
    role: Role = Role.ENDPOINT
    on_failure: OnFailure = OnFailure.REJECT
    min_attest: str | None = None  # shaken: below it, verstat says No-TN-Validation
    tofu: bool = True  # trust-on-first-use for self-signed msec credentials (RFC 8862 §4.1)
    pins: frozenset[str] = frozenset()  # SHA-256 fingerprints (hex) of trusted certificates
    replay: bool = True  # refuse a PASSporT seen before for another Call-ID (RFC 8224 §12.1)
    replay_overflow: ReplayOverflow = ReplayOverflow.REFUSE  # the replay cache is full
    require_call_id: bool = False  # a request without call_id is 400, not unchecked
    deadline: float = 3.0  # seconds for obtaining every credential of one request


@dataclass(frozen=True, slots=True)
class CallVerdict:
    """The verdict object of the API (the PBX acts on ``action`` and ``code``)."""

    verdict: Verdict
    status: SipStatus | None
    action: Action
    verstat: Verstat
    attest: str | None
    reason_headers: tuple[str, ...]
    detail: str | None
    passports: tuple[PassportCheck, ...]
    out_of_band: bool = False
    trust: Trust | None = None  # how the best valid PASSporT's credential was trusted
    replay: ReplayStatus | None = None  # None: no valid PASSporT to check
    mky_unchecked: bool = False  # a valid msec PASSporT's media binding was not checked

    @property
    def code(self) -> int | None:
        return self.status.code if self.status else None

    @property
    def reason(self) -> str | None:
        return self.status.reason if self.status else None

    @property
    def failed_check(self) -> str | None:
        """The check that failed first, for logs and metrics."""
        for passport in self.passports:
            if passport.supported and passport.error is not None:
                return passport.error.check.value
        return None

    @property
    def reason_header(self) -> str | None:
        return ", ".join(self.reason_headers) or None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "code": self.code,
            "reason": self.reason,
            "reason_header": self.reason_header,
            "verstat": self.verstat.value,
            "attest": self.attest,
            "action": self.action.value,
            "detail": self.detail,
            "failed_check": self.failed_check,
            "oob": self.out_of_band,
            "trust": self.trust.value if self.trust else None,
            "replay": self.replay.to_json() if self.replay else None,
            "replay_unchecked": self.replay.reason if self.replay else None,
            "mky": "unchecked" if self.mky_unchecked else None,
            "passports": [p.to_json() for p in self.passports],
        }


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def reason_value(protocol: str, status: SipStatus, ppi: str | None = None) -> str:
    """`Reason: SIP ;cause=438 ;text="..."` (RFC 3326) or `STIR` (RFC 9410 §3, §5)."""
    value = f"{protocol} ;cause={status.code} ;text={_quoted(status.reason)}"
    return value if ppi is None else f"{value} ;ppi={_quoted(ppi)}"


def _stir_reasons(result: Verification) -> tuple[str, ...]:
    """RFC 9410 §5–6: one STIR Reason per failing header, with ppi when there are several."""
    several = sum(1 for p in result.passports if p.supported) > 1
    out: list[str] = []
    for check in result.failed:
        if check.error is not None:
            ppi = check.compact if several else None
            out.append(reason_value("STIR", check.error.status, ppi))
    return tuple(out)


def _is_trust_only(result: Verification) -> bool:
    """Every failure is about trusting the credential (RFC 8862 §4 intermediary rule)."""
    failed = result.failed
    return bool(failed) and all(
        p.error is not None and p.error.check is Check.TRUST for p in failed
    )


def _msec_rejects(result: Verification, dialog_forming: bool) -> bool:
    """RFC 8862 §4.4: any failed msec PASSporT on a dialog-forming request rejects."""
    return dialog_forming and any(p.ppt == Ppt.MSEC for p in result.failed)


def _rests_on_unchecked_mky(result: Verification) -> bool:
    """Valid only through msec PASSporTs whose mky went unchecked: never TN-Validation-Passed."""
    return result.mky_unchecked and not any(p.valid and p.ppt != Ppt.MSEC for p in result.passports)


def _action_for_invalid(
    result: Verification, policy: ServicePolicy, dialog_forming: bool
) -> Action:
    if policy.role is Role.INTERMEDIARY and _is_trust_only(result):
        return Action.CONTINUE
    if policy.role is Role.ENDPOINT and _msec_rejects(result, dialog_forming):
        return Action.REJECT
    return Action.REJECT if policy.on_failure is OnFailure.REJECT else Action.CONTINUE


def to_call_verdict(
    result: Verification,
    policy: ServicePolicy,
    *,
    dialog_forming: bool,
    out_of_band: bool = False,
    replay: ReplayStatus | None = None,
) -> CallVerdict:
    """Apply role and policy to the core's decision."""
    verstat = _VERSTAT[result.verdict]
    detail = result.detail
    reasons = _stir_reasons(result)
    if result.verdict is Verdict.VALID:
        action = Action.CONTINUE
        # pin/TOFU prove continuity, not the number; an unrecorded PASSporT may be a replay
        # and an msec PASSporT whose mky went unchecked proves nothing about the media
        not_anchored = result.trust is not Trust.ANCHOR or _rests_on_unchecked_mky(result)
        if not_anchored or (replay is not None and replay.reason in _REPLAY_UNKNOWN):
            verstat = Verstat.NONE
        elif policy.min_attest and result.attest and result.attest > policy.min_attest:
            verstat = Verstat.NONE
            detail = f"attestation {result.attest} is below the minimum {policy.min_attest}"
    elif result.verdict is Verdict.INVALID:
        action = _action_for_invalid(result, policy, dialog_forming)
        if action is Action.REJECT and result.status is not None:
            reasons = (reason_value("SIP", result.status),)
        elif policy.on_failure is OnFailure.CONTINUE and policy.role is Role.ENDPOINT:
            reasons = ()
    else:
        action = Action.REJECT if result.status is not None else Action.CONTINUE
    return CallVerdict(
        verdict=result.verdict,
        status=result.status,
        action=action,
        verstat=verstat,
        attest=result.attest,
        reason_headers=reasons,
        detail=detail,
        passports=result.passports,
        out_of_band=out_of_band,
        trust=result.trust,
        replay=replay,
        mky_unchecked=result.mky_unchecked,
    )
