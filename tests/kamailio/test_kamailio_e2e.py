"""Issue 4 acceptance, end to end: SIPp UAC → Kamailio 5.6 (integrations/kamailio/
kamailio.cfg + stird.cfg, janssonrpcc) ⇄ stird → SIPp UAS, all real, all on 127.0.0.1.

Every case asserts on what the SIP endpoints saw: SIPp's exit code, the final response
the UAC received, the INVITE (headers and SDP) the UAS received.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kamailio.harness import (
    SIPP_DIR,
    Lab,
    Sipp,
    body_of,
    header_values,
    new_lab,
    stop_lab,
    wait_until,
)

CALLER, CALLEE = "+15551110000", "+15552220000"
MSEC = re.compile(r";\s*ppt=\"?msec\"?", re.IGNORECASE)


# ---------------------------------------------------------------------------- helpers


def scenario_fingerprints(scenario: str = "uac_verify.xml") -> list[tuple[str, str]]:
    """The (hash-func, fingerprint) pairs of a UAC scenario's SDP."""
    text = (SIPP_DIR / scenario).read_text()
    return re.findall(r"a=fingerprint:(\S+) (\S+)", text)


def sdp_fingerprints(sdp: str) -> list[tuple[str, str]]:
    return re.findall(r"a=fingerprint:(\S+) (\S+)", sdp)


def mky_of(fingerprints: list[tuple[str, str]]) -> list[dict[str, str]]:
    """RFC 8225 §5.2.2: hash-func lower-case, digest upper-case hex without colons."""
    return sorted(
        ({"alg": alg.lower(), "dig": dig.replace(":", "").upper()} for alg, dig in fingerprints),
        key=lambda item: (item["alg"], item["dig"]),
    )


def claims(identity: str) -> dict[str, Any]:
    payload = identity.split(";", 1)[0].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def tampered(identity: str) -> str:
    """The same Identity value with one character of the signature changed."""
    jws, params = identity.split(";", 1)
    head, payload, sig = jws.split(".")
    at = len(sig) // 2
    flipped = "A" if sig[at] != "A" else "B"
    return f"{head}.{payload}.{sig[:at]}{flipped}{sig[at + 1 :]};{params}"


def identity_lines(values: list[str]) -> str:
    """The uac_verify.xml key: complete header lines joined by a real CRLF."""
    return "\r\n".join(f"Identity: {value}" for value in values)


def sign_for_uac(lab: Lab) -> dict[str, Any]:
    """A fresh, valid signature for uac_verify.xml's call (its SDP fingerprints)."""
    sdp = "".join(f"a=fingerprint:{alg} {dig}\r\n" for alg, dig in scenario_fingerprints())
    status, result = lab.stird.post(
        "/v1/sign", {"orig": CALLER, "dest": [CALLEE], "sdp": "v=0\r\n" + sdp}
    )
    assert status == 200, result
    assert len(result["identity"]) >= 1
    return dict(result)


def only_invite(run: Any) -> str:
    invites = run.received_requests("INVITE")
    assert len(invites) == 1, run.describe()
    return str(invites[0])


def call_verify(lab: Lab, sipp: Sipp, identities: list[str], date: str) -> tuple[Any, Any]:
    """An incoming call with these Identity headers; (UAC run, UAS run)."""
    uas = sipp.uas(lab.uas_port)
    keys = {"identity_headers": identity_lines(identities), "date": date}
    uac = sipp.uac("uac_verify.xml", lab.inbound_port, lab.sip_port, keys)
    return uac, sipp.finish(uas, timeout=3 if uac.finals() == [200] else 0.2)


def assert_rejected(uac: Any, uas: Any, code: int) -> None:
    assert uac.returncode == 0, uac.describe()
    assert uac.finals() == [code], uac.describe()
    assert code in uac.received_statuses()
    assert uas.received_requests("INVITE") == [], f"the INVITE was relayed:\n{uas.describe()}"


def response_delay(uac: Any, code: int) -> float:
    """Seconds between the UAC sending its INVITE and receiving the final ``code``."""
    sent = next(t for t, m in uac.sent() if m.startswith("INVITE "))
    got = next(t for t, m in uac.received() if m.startswith(f"SIP/2.0 {code} "))
    return float(got - sent)


# ---------------------------------------------------------------------------- (a)–(e)


def test_a_outgoing_dtls_invite_leaves_with_msec_identity_that_verifies(
    lab: Lab, sipp: Sipp
) -> None:
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
    uas_run = sipp.finish(uas)

    assert uac.returncode == 0, uac.describe()
    assert uac.finals() == [200]
    assert uas_run.returncode == 0, uas_run.describe()
    invite = only_invite(uas_run)
    identities = header_values(invite, "Identity")
    msec = [value for value in identities if MSEC.search(value)]
    assert len(msec) == 1, invite
    assert "Identity#1=eyJ" in uas_run.logs  # the UAS logged what it received
    # Date added because the INVITE had none; the SDP went through untouched
    [date] = header_values(invite, "Date")
    sdp = body_of(invite)
    assert len(sdp_fingerprints(sdp)) == 2
    assert sdp_fingerprints(sdp) == scenario_fingerprints("uac_sign.xml")

    passport = claims(msec[0])
    assert sorted(passport["mky"], key=lambda i: (i["alg"], i["dig"])) == mky_of(
        sdp_fingerprints(sdp)
    )
    assert passport["iat"] == int(parsedate_to_datetime(date).timestamp())  # Date = iat
    assert passport["orig"] == {"tn": CALLER[1:]}
    assert passport["dest"] == {"tn": [CALLEE[1:]]}

    # the header exactly as the next hop got it verifies (against the headers it got)
    status, verdict = lab.stird.post(
        "/v1/verify",
        {
            "identity": msec,
            "from": header_values(invite, "From")[0],
            "to": header_values(invite, "To")[0],
            "date": date,
            "sdp": sdp,
        },
    )
    assert status == 200, verdict
    assert verdict["verdict"] == "valid", verdict
    assert verdict["verstat"] == "TN-Validation-Passed"


def test_b_valid_incoming_invite_reaches_uas_with_verstat_passed(lab: Lab, sipp: Sipp) -> None:
    signed = sign_for_uac(lab)
    uac, uas = call_verify(lab, sipp, signed["identity"], signed["date"])

    assert uac.returncode == 0, uac.describe()
    assert uac.finals() == [200]
    assert uas.returncode == 0, uas.describe()
    invite = only_invite(uas)
    [pai] = header_values(invite, "P-Asserted-Identity")
    assert pai == f"<sip:{CALLER};verstat=TN-Validation-Passed@127.0.0.1;user=phone>"
    assert "verstat=TN-Validation-Passed" in uas.logs
    # the Identity headers travel on unchanged, no Reason for a valid call
    assert header_values(invite, "Identity") == signed["identity"]
    assert header_values(invite, "Reason") == []


def test_c_tampered_identity_gets_438(lab: Lab, sipp: Sipp) -> None:
    signed = sign_for_uac(lab)
    uac, uas = call_verify(lab, sipp, [tampered(v) for v in signed["identity"]], signed["date"])
    assert_rejected(uac, uas, 438)


def test_d_stale_identity_gets_403(lab: Lab, sipp: Sipp, tmp_path: Path) -> None:
    fresh = sign_for_uac(lab)
    x5u = re.search(r";info=<([^>]+)>", fresh["identity"][0])
    assert x5u is not None
    sdp = tmp_path / "offer.sdp"
    sdp.write_text(
        "v=0\r\n" + "".join(f"a=fingerprint:{a} {d}\r\n" for a, d in scenario_fingerprints())
    )
    iat = int(time.time()) - 600
    stale = lab.stird.cli(
        "sign", "--key", str(lab.stird.dev_key), "--x5u", x5u[1],
        "--orig", CALLER, "--dest", CALLEE, "--iat", str(iat), "--sdp", str(sdp),
    ).strip()  # fmt: skip
    uac, uas = call_verify(lab, sipp, [stale], formatdate(iat, usegmt=True))
    assert_rejected(uac, uas, 403)


def test_e_no_identity_with_require_identity_gets_428(lab: Lab, sipp: Sipp) -> None:
    # uac_sign.xml carries no Identity; from a source other than OUTBOUND_SRC it is an
    # incoming call and is verified
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_sign.xml", lab.inbound_port, lab.sip_port)
    assert_rejected(uac, sipp.finish(uas, timeout=0.2), 428)


def test_c_tampered_identity_continues_with_reason_when_stird_says_so(
    own_lab: Any, sipp: Sipp
) -> None:
    """[verify] on_failure = "continue-with-reason": the call goes on, marked failed,
    with the RFC 9410 Reason stird gives as reason_header. (A failed msec PASSporT
    always rejects a dialog-forming request, RFC 8862 §4.4: only shaken is sent.)"""
    lab = own_lab('[verify]\non_failure = "continue-with-reason"\n')
    signed = sign_for_uac(lab)
    shaken = [v for v in signed["identity"] if not MSEC.search(v)]
    assert len(shaken) == 1
    uac, uas = call_verify(lab, sipp, [tampered(shaken[0])], signed["date"])
    assert uac.returncode == 0, uac.describe()
    assert uac.finals() == [200]
    invite = only_invite(uas)
    [pai] = header_values(invite, "P-Asserted-Identity")
    assert pai == f"<sip:{CALLER};verstat=TN-Validation-Failed@127.0.0.1;user=phone>"
    [reason] = header_values(invite, "Reason")
    assert reason.startswith("STIR") and "cause=438" in reason.replace(" ", ""), reason


# ---------------------------------------------------------------------------- (f)

TIMEOUT_MS = 500


@pytest.fixture
def own_lab(tmp_path: Path) -> Any:
    """A stird + Kamailio pair of the test's own (to stop stird, to configure it)."""
    labs: list[Lab] = []

    def make(stird_config: str | None = None, cfg: str = "kamailio.cfg", **defines: str) -> Lab:
        labs.append(new_lab(tmp_path / f"lab{len(labs)}", stird_config, defines, cfg))
        return labs[-1]

    yield make
    for item in labs:
        stop_lab(item)


def test_f_stird_stopped_fail_open_relays_then_fail_closed_503(own_lab: Any, sipp: Sipp) -> None:
    lab = own_lab(STIRD_TIMEOUT_MS=str(TIMEOUT_MS))
    signed = sign_for_uac(lab)
    assert lab.kamailio.kamcli("rpc", "cfg.get", "stird", "fail_open")["result"] == 1
    lab.stird.stop()
    wait_until(
        "Kamailio noticing that stird is gone",
        lambda: "Connection error for 127.0.0.1" in lab.kamailio.log(),
        5,
    )

    # fail-open, outgoing: relayed without Identity
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
    uas_run = sipp.finish(uas)
    assert uac.returncode == 0, uac.describe()
    assert uac.finals() == [200]
    assert header_values(only_invite(uas_run), "Identity") == []

    # fail-open, incoming: relayed with verstat=No-TN-Validation
    uac, uas_run = call_verify(lab, sipp, signed["identity"], signed["date"])
    assert uac.finals() == [200], uac.describe()
    [pai] = header_values(only_invite(uas_run), "P-Asserted-Identity")
    assert "verstat=No-TN-Validation" in pai
    # never silent: counted (counters module, group "script") and logged with the cause
    assert script_counter(lab, "stird_fail_open") == 2
    assert lab.kamailio.log().count("failing open (no answer)") == 2

    # switched live to fail-closed with kamcli (jsonrpcs datagram socket): 503, at once
    assert lab.kamailio.kamcli("rpc", "cfg.seti", "stird", "fail_open", "i:0")["result"] == {}
    for scenario, port in (("uac_sign.xml", lab.outbound_port), ("uac_verify.xml", None)):
        if port is None:
            uac, uas_run = call_verify(lab, sipp, signed["identity"], signed["date"])
        else:
            uas = sipp.uas(lab.uas_port)
            uac = sipp.uac(scenario, port, lab.sip_port)
            uas_run = sipp.finish(uas, timeout=0.2)
        assert_rejected(uac, uas_run, 503)
        assert response_delay(uac, 503) < TIMEOUT_MS / 1000
    assert script_counter(lab, "stird_fail_closed") == 2
    assert script_counter(lab, "stird_fail_open") == 2


def script_counter(lab: Lab, name: str) -> int:
    """A stird.cfg counter, read as a scraper would: jsonrpcs ``cnt.get script NAME``."""
    return int(lab.kamailio.kamcli("rpc", "cnt.get", "script", name)["result"])


def test_f_stird_hung_fail_closed_503_after_the_timeout(own_lab: Any, sipp: Sipp) -> None:
    lab = own_lab(STIRD_TIMEOUT_MS=str(TIMEOUT_MS), STIRD_FAIL_OPEN="0")
    assert lab.stird.proc is not None
    lab.stird.proc.signal(signal.SIGSTOP)  # connected but silent: only the timeout helps
    try:
        uas = sipp.uas(lab.uas_port)
        uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
        assert_rejected(uac, sipp.finish(uas, timeout=0.2), 503)
        delay = response_delay(uac, 503)
        assert TIMEOUT_MS / 1000 - 0.05 <= delay < TIMEOUT_MS / 1000 + 0.5, delay

        # fail-open: the same wait, then relayed unsigned
        lab.kamailio.kamcli("rpc", "cfg.seti", "stird", "fail_open", "i:1")
        uas = sipp.uas(lab.uas_port)
        uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
        uas_run = sipp.finish(uas)
        assert uac.finals() == [200], uac.describe()
        assert header_values(only_invite(uas_run), "Identity") == []
        assert response_delay(uac, 200) >= TIMEOUT_MS / 1000 - 0.05
    finally:
        lab.stird.proc.signal(signal.SIGCONT)


# ---------------------------------------------------------------------------- control


def test_dialog_ended_from_outside_with_kamcli(lab: Lab, sipp: Sipp) -> None:
    """What stird (or an operator) does to end a call: dlg.end_dlg h_entry h_id."""
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_hold.xml", lab.outbound_port, lab.sip_port, background=True)

    def confirmed() -> Any:
        dialogs = lab.kamailio.kamcli("dialog", "list")["result"]
        return [d for d in dialogs if d["state"] == 4]

    [dialog] = wait_until("a confirmed dialog", confirmed, 10, step=0.2)
    answer = lab.kamailio.kamcli(
        "rpc", "dlg.end_dlg", f"i:{dialog['h_entry']}", f"i:{dialog['h_id']}"
    )
    assert answer["result"] == {}
    uac_run, uas_run = sipp.finish(uac), sipp.finish(uas)
    assert uac_run.returncode == 0, uac_run.describe()
    assert "BYE from the proxy" in uac_run.logs
    assert uas_run.returncode == 0, uas_run.describe()
    assert len(uac_run.received_requests("BYE")) == 1


# ---------------------------------------------------------------------------- http_client


def test_http_client_alternative_signs_and_verifies(own_lab: Any, sipp: Sipp) -> None:
    """kamailio-http.cfg: the synchronous POST /v1/sign and /v1/verify variant."""
    lab = own_lab(cfg="kamailio-http.cfg")
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
    uas_run = sipp.finish(uas)
    assert uac.finals() == [200], uac.describe()
    invite = only_invite(uas_run)
    msec = [v for v in header_values(invite, "Identity") if MSEC.search(v)]
    assert len(msec) == 1
    assert claims(msec[0])["mky"] == mky_of(sdp_fingerprints(body_of(invite)))
    assert header_values(invite, "Date")

    signed = sign_for_uac(lab)
    uac, uas_run = call_verify(lab, sipp, signed["identity"], signed["date"])
    assert uac.finals() == [200], uac.describe()
    [pai] = header_values(only_invite(uas_run), "P-Asserted-Identity")
    assert "verstat=TN-Validation-Passed" in pai

    signed = sign_for_uac(lab)
    uac, uas_run = call_verify(lab, sipp, [tampered(v) for v in signed["identity"]], signed["date"])
    assert_rejected(uac, uas_run, 438)


def test_one_passport_define_signs_msec_only_and_the_shipped_config_two(
    own_lab: Any, lab: Lab, sipp: Sipp
) -> None:
    """-A STIRD_ONE_PASSPORT: stir.sign with "add_shaken": false, one msec Identity (the
    SDP has fingerprints); as shipped, msec + shaken. Both answers come back as the
    "reply": "flat" header text and are appended as they are."""
    for where, expected in ((own_lab(STIRD_ONE_PASSPORT="1"), 1), (lab, 2)):
        uas = sipp.uas(where.uas_port)
        uac = sipp.uac("uac_sign.xml", where.outbound_port, where.sip_port)
        uas_run = sipp.finish(uas)
        assert uac.finals() == [200], uac.describe()
        invite = only_invite(uas_run)
        identities = header_values(invite, "Identity")
        assert len(identities) == expected, invite
        assert MSEC.search(identities[0]) and header_values(invite, "Date")
        assert "json encoding failed" not in where.kamailio.log()  # params encoded once


# ---------------------------------------------------------------------------- pitfalls


def test_non_utf8_from_still_signs_and_fails_open_on_verify(lab: Lab, sipp: Sipp) -> None:
    """A Latin-1 display name cannot go into JSON: the originator for signing comes
    from P-Asserted-Identity; verification cannot be asked and fails open."""
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_latin1.xml", lab.outbound_port, lab.sip_port)
    uas_run = sipp.finish(uas)
    assert uac.finals() == [200], uac.describe()
    assert any(MSEC.search(v) for v in header_values(only_invite(uas_run), "Identity"))

    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_latin1.xml", lab.inbound_port, lab.sip_port)
    uas_run = sipp.finish(uas)
    assert uac.finals() == [200], uac.describe()
    [pai] = header_values(only_invite(uas_run), "P-Asserted-Identity")
    # stird.cfg's own verstat rewrite (route STIRD_VERSTAT), parameters kept
    assert pai == f"<sip:{CALLER};verstat=No-TN-Validation@127.0.0.1;user=phone>"
    assert "not UTF-8" in lab.kamailio.log()
    # jansson_xencode refused the whole object; the field-by-field way left out "from"
    assert "json encoding failed" in lab.kamailio.log()
