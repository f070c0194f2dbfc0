"""services/verdicts: an msec PASSporT whose mky went unchecked (Asterisk without the HEP
copy of the SDP, issue 19) never earns TN-Validation-Passed on its own."""

from __future__ import annotations

from stird.core.passport import Ppt
from stird.core.verdict import PassportCheck, Trust, Verdict, Verification
from stird.services.verdicts import ServicePolicy, Verstat, to_call_verdict


def _check(index: int, ppt: str) -> PassportCheck:
    return PassportCheck(index=index, supported=True, ppt=ppt, trust=Trust.ANCHOR, attest="A")


def _verdict(*checks: PassportCheck, unchecked: bool) -> Verification:
    return Verification(Verdict.VALID, None, None, checks, "A", unchecked)


def test_unchecked_mky_alone_is_no_tn_validation() -> None:
    out = to_call_verdict(
        _verdict(_check(0, Ppt.MSEC), unchecked=True), ServicePolicy(), dialog_forming=True
    )
    assert out.verstat is Verstat.NONE
    assert out.to_json()["mky"] == "unchecked"
    assert out.to_json()["verdict"] == "valid"


def test_a_valid_shaken_beside_it_still_passes() -> None:
    result = _verdict(_check(0, Ppt.MSEC), _check(1, Ppt.SHAKEN), unchecked=True)
    out = to_call_verdict(result, ServicePolicy(), dialog_forming=True)
    assert out.verstat is Verstat.PASSED


def test_checked_mky_passes_and_reports_nothing() -> None:
    out = to_call_verdict(
        _verdict(_check(0, Ppt.MSEC), unchecked=False), ServicePolicy(), dialog_forming=True
    )
    assert out.verstat is Verstat.PASSED and out.to_json()["mky"] is None
