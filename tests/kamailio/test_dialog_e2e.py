"""Issue 7 acceptance, end to end: connected identity and the msec dialog policy (RFC 8862
§4.3–4.4, RFC 4916) on real Kamailio 5.6 (kamailio.cfg + stird.cfg, dialog module) and
SIPp with 183 + PRACK + UPDATE (100rel), stird with ``[dialog] policy = "mandatory"``
and a 2 s window, ending dialogs through Kamailio's jsonrpcs (``dlg.end_dlg``).

Caller side (the INVITE from OUTBOUND_SRC is signed msec, so the callee must prove its
keys with a signed backwards UPDATE):
  (a) a valid signed UPDATE           -> relayed, the dialog continues past window + margin
  (b) an unsigned UPDATE (no proof)   -> BYE to caller and callee once the window passes
  (c) a tampered signed UPDATE        -> 438 to the callee, then BYE to both
  (e) the caller's signed UPDATE refused 438 twice (one retry, RFC 8224 §6.1.1)
                                      -> BYE to both (the policy)
Callee side (the INVITE arrived signed and was verified, the callee is ours):
  (d) the callee's unsigned UPDATE    -> signed by stird at the proxy (orig = callee,
                                         dest = caller, mky = the answer's fingerprints)
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kamailio.harness import (
    HOST,
    SIPP_DIR,
    Kamailio,
    Lab,
    Proc,
    Sipp,
    SippRun,
    body_of,
    free_ports,
    header_values,
    new_stird,
    stop_lab,
    udp_bound,
    wait_until,
)
from tests.kamailio.test_kamailio_e2e import MSEC, claims, mky_of, sdp_fingerprints, tampered

CALLER, CALLEE = "+15551110000", "+15552220000"
WINDOW = 2.0
HOLD = 4.0  # uac_100rel.xml holds the call this long before hanging up itself
UAC, UAS = "uac_100rel.xml", "uas_100rel.xml"


def fingerprints(scenario: str) -> list[tuple[str, str]]:
    return sorted(set(re.findall(r"a=fingerprint:(\S+) (\S+)", (SIPP_DIR / scenario).read_text())))


def sdp_of(scenario: str) -> str:
    return "v=0\r\n" + "".join(f"a=fingerprint:{a} {d}\r\n" for a, d in fingerprints(scenario))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """stird knows Kamailio's jsonrpcs (to end dialogs), so Kamailio's ports come first."""
    where = tmp_path_factory.mktemp("kamdlg")
    base = free_ports(5)
    stird = new_stird(
        where / "stird",
        f'[dialog]\npolicy = "mandatory"\nwindow = {WINDOW}\n\n'
        f'[kamailio]\nrpc_url = "http://{HOST}:{base + 1}/RPC"\nhealth_interval = 60\n',
    )
    kam = Kamailio(
        where / "kamailio",
        sip_port=base,
        rpc_port=base + 1,
        stird=stird,
        next_hop_port=base + 2,
        outbound_port=base + 3,
        defines={"STIRD_DIALOG_POLICY": "1"},
    )  # the events [dialog] policy needs
    try:
        kam.start()
    except BaseException:
        kam.stop()
        stird.stop()
        raise
    shared = Lab(stird, kam, base + 2, base + 3, base + 4)
    yield shared
    stop_lab(shared)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    runner.stop_all()


def uas(sipp: Sipp, lab: Lab, update_headers: str, scenario: str = UAS) -> Proc:
    """A UAS scenario on the next hop, with the UPDATE's extra header lines."""
    sipp.count += 1
    name = f"uas{sipp.count}"
    keys = {"update_headers": update_headers} if scenario == UAS else {}
    argv, _, _ = sipp._argv(name, scenario, lab.uas_port, keys, [])
    proc = Proc(name, argv, sipp.where / f"{name}.screen")
    sipp.running.append(proc)
    wait_until("SIPp UAS listening", lambda: proc.alive() and udp_bound(lab.uas_port), 10)
    return proc


def signed_lines(lab: Lab, orig: str, dest: str, scenario: str) -> list[str]:
    """Date + Identity header lines, signed by stird for ``scenario``'s fingerprints."""
    status, result = lab.stird.post(
        "/v1/sign", {"orig": orig, "dest": [dest], "sdp": sdp_of(scenario)}
    )
    assert status == 200, result
    return [f"Date: {result['date']}"] + [f"Identity: {v}" for v in result["identity"]]


def call(
    sipp: Sipp, lab: Lab, update_headers: list[str], *, incoming: list[str] | None = None
) -> tuple[SippRun, SippRun]:
    """One call through the proxy; (UAC run, UAS run)."""
    callee = uas(sipp, lab, "\r\n".join(update_headers))
    if incoming is None:  # from OUTBOUND_SRC: the proxy signs the INVITE
        run = sipp.uac(UAC, lab.outbound_port, lab.sip_port, {"headers": "Subject: outgoing"})
    else:  # from elsewhere, signed: the proxy verifies it
        run = sipp.uac(UAC, lab.inbound_port, lab.sip_port, {"headers": "\r\n".join(incoming)})
    return run, sipp.finish(callee)


def stamp(run: SippRun, prefix: str, direction: str = "received") -> float:
    messages = run.received() if direction == "received" else run.sent()
    return next(t for t, m in messages if m.startswith(prefix))


def answered_at(run: SippRun) -> float:
    """When the UAC received the 2xx to its INVITE (not the one to its PRACK)."""
    return next(
        t for t, m in run.received()
        if m.startswith("SIP/2.0 200 ") and header_values(m, "CSeq")[0].endswith("INVITE")
    )  # fmt: skip


def metric(lab: Lab, outcome: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{lab.stird.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(
        rf'stird_msec_dialogs_total\{{outcome="{outcome}",policy="mandatory"\}} (\S+)', text
    )
    return float(found[1]) if found else 0.0


def assert_ok(*runs: SippRun) -> None:
    for run in runs:
        assert run.returncode == 0, run.describe()


def test_a_valid_signed_backwards_update_keeps_the_dialog(lab: Lab, sipp: Sipp) -> None:
    before = metric(lab, "confirmed")
    update = signed_lines(lab, CALLEE, CALLER, UAS)
    uac, uas_run = call(sipp, lab, update)
    assert_ok(uac, uas_run)
    assert "UPDATE 200" in uas_run.logs  # verified and relayed to the caller
    [received] = uac.received_requests("UPDATE")
    assert header_values(received, "Identity") == [line.split(": ", 1)[1] for line in update[1:]]
    # held for HOLD > WINDOW + margin after the 200, then the caller hung up itself
    assert "BYE from the proxy" not in uac.logs and "BYE sent by the caller" in uac.logs
    assert stamp(uac, "BYE ", "sent") - answered_at(uac) >= WINDOW + 1.5
    [bye] = uas_run.received_requests("BYE")
    assert header_values(bye, "Reason") == []
    assert metric(lab, "confirmed") == before + 1


def test_b_no_signed_update_under_mandatory_ends_the_dialog_on_both_sides(
    lab: Lab, sipp: Sipp
) -> None:
    before = metric(lab, "timed-out")
    uac, uas_run = call(sipp, lab, ["Subject: no Identity from this callee"])
    assert_ok(uac, uas_run)
    assert "UPDATE 200" in uas_run.logs  # an unsigned UPDATE is relayed; it proves nothing
    assert "BYE from the proxy" in uac.logs and "BYE sent by the caller" not in uac.logs
    for run in (uac, uas_run):
        [bye] = run.received_requests("BYE")
        assert header_values(bye, "Reason") == ['STIR;cause=438;text="msec: timed-out"']
    # the window runs from the answer (Kamailio's dialog:start → stir.dialog answered)
    delay = stamp(uac, "BYE ") - answered_at(uac)
    assert WINDOW - 0.1 <= delay <= WINDOW + 1.0, delay
    assert metric(lab, "timed-out") == before + 1


def test_c_tampered_update_gets_438_and_the_dialog_ends(lab: Lab, sipp: Sipp) -> None:
    before = metric(lab, "invalid")
    lines = signed_lines(lab, CALLEE, CALLER, UAS)
    bad = [f"Identity: {tampered(v.split(': ', 1)[1])}" if v.startswith("Identity") else v
           for v in lines]  # fmt: skip
    uac, uas_run = call(sipp, lab, bad)
    assert_ok(uac, uas_run)
    assert "UPDATE 438" in uas_run.logs and 438 in uas_run.received_statuses()
    assert uac.received_requests("UPDATE") == []  # never reached the caller
    for run in (uac, uas_run):
        [bye] = run.received_requests("BYE")
        assert header_values(bye, "Reason") == ['STIR;cause=438;text="msec: invalid"']
    assert metric(lab, "invalid") == before + 1


def test_d_the_callee_side_signs_the_backwards_update(lab: Lab, sipp: Sipp) -> None:
    incoming = signed_lines(lab, CALLER, CALLEE, UAC)
    uac, uas_run = call(sipp, lab, ["Subject: please sign me"], incoming=incoming)
    assert_ok(uac, uas_run)
    assert "UPDATE 200" in uas_run.logs and "BYE sent by the caller" in uac.logs
    [update] = uac.received_requests("UPDATE")
    identities = header_values(update, "Identity")
    [msec] = [v for v in identities if MSEC.search(v)]
    [date] = header_values(update, "Date")  # the UPDATE had none: stird chose it
    passport: dict[str, Any] = claims(msec)
    assert passport["orig"] == {"tn": CALLEE[1:]} and passport["dest"] == {"tn": [CALLER[1:]]}
    assert passport["mky"] == mky_of(sdp_fingerprints(body_of(update)))
    assert sdp_fingerprints(body_of(update)) == fingerprints(UAS)
    # what the caller's side does with it: verify in the backwards direction
    status, verdict = lab.stird.post("/v1/verify", {
        "identity": identities, "from": header_values(update, "From")[0],
        "to": header_values(update, "To")[0], "date": date, "sdp": body_of(update),
        "direction": "backwards", "callid": "not-tracked",
    })  # fmt: skip
    assert status == 200, verdict
    assert verdict["verdict"] == "valid" and verdict["dialog"]["proof"] == "valid"


def test_e_signed_mid_dialog_request_refused_twice_ends_the_dialog(lab: Lab, sipp: Sipp) -> None:
    before = metric(lab, "rejected")
    callee = uas(sipp, lab, "", scenario="uas_refuse.xml")
    update = signed_lines(lab, CALLER, CALLEE, UAC)
    run = sipp.uac("uac_refused.xml", lab.outbound_port, lab.sip_port,
                   {"update_headers": "\r\n".join(update)})  # fmt: skip
    uas_run = sipp.finish(callee)
    assert_ok(run, uas_run)
    assert run.logs.count("UPDATE 438") == 2  # the request and its one retry
    for each in (run, uas_run):
        [bye] = each.received_requests("BYE")
        assert header_values(bye, "Reason") == ['STIR;cause=438;text="msec: rejected"']
    # well before the window would have ended it
    assert stamp(run, "BYE ") - answered_at(run) < WINDOW
    assert metric(lab, "rejected") == before + 1
