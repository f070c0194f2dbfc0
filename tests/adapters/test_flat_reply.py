"""``"reply": "flat"`` (stird.cfg): sign's result is the header lines to append, one
string, verify's its scalar members only, so Kamailio's single janssonrpcc I/O process
decodes one small object per call; without it the full result is unchanged."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.api import StirApi
from stird.adapters.metrics import Metrics
from stird.adapters.requests import FieldError
from stird.adapters.store_memory import MemoryStore
from stird.wiring.app import build_runtime
from stird.wiring.config import Config

FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
SDP = f"v=0\r\nm=audio 1 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {FP}\r\n"
FROM = "<sip:+15552220000@carrier.example;user=phone>;tag=1"
TO = "<sip:+15557770002@pbx.example;user=phone>"
SIGN = {"callid": "f-1@h", "orig": FROM, "dest": TO, "sdp": SDP}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> StirApi:
    tmp: Path = tmp_path_factory.mktemp("flat")
    config = Config(server=replace(Config().server, state_dir=tmp / "state"))
    built = build_runtime(config, MemoryStore(), "http://127.0.0.1:8790", int(time.time()))
    return StirApi(built.runtime, Metrics())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def scalar_only(body: dict[str, Any]) -> bool:
    return not any(isinstance(v, dict | list) for v in body.values())


def test_flat_sign_is_the_header_lines_identity_then_date(api: StirApi) -> None:
    full = run(api.sign(dict(SIGN)))
    flat = run(api.sign_rpc({**SIGN, "reply": "flat"}))
    assert isinstance(flat, str) and flat.endswith("\r\n")
    lines = flat.split("\r\n")
    ids = [line for line in lines if line.startswith("Identity: ")]
    assert len(ids) == len(full["identity"]) == 2  # msec + shaken (ECDSA: other signatures)
    assert ids[0].endswith(";ppt=msec") and ids[1].endswith(";ppt=shaken")
    assert ";ppt=msec" in ids[0] and lines[2].startswith("Date: ")


def test_flat_sign_leaves_out_date_when_the_request_had_one(api: StirApi) -> None:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    flat = run(api.sign_rpc({**SIGN, "date": date, "reply": "flat"}))
    assert "Date:" not in flat and flat.count("Identity: ") == 2


def test_flat_verify_keeps_the_scalar_members(api: StirApi) -> None:
    signed = run(api.sign({**SIGN, "reply": "full"}))
    req = {"from": FROM, "to": TO, "identity": signed["identity"], "sdp": SDP}
    full = run(api.verify(dict(req)))
    flat = run(api.verify({**req, "reply": "flat"}))
    assert scalar_only(flat)
    assert flat == {k: v for k, v in full.items() if not isinstance(v, dict | list)}
    assert flat["action"] == "continue" and flat["pai"] and flat["verstat"]


def test_flat_verify_of_a_backwards_request_carries_the_dialog_decision(api: StirApi) -> None:
    signed = run(api.sign({**SIGN}))
    req = {"from": FROM, "to": TO, "identity": signed["identity"][0], "sdp": SDP,
           "direction": "backwards", "dialog_forming": False, "reply": "flat"}  # fmt: skip
    flat = run(api.verify(req))
    assert scalar_only(flat) and "dialog" in flat


@pytest.mark.parametrize("bad", ["FLAT", "", 1, True, None, ["flat"]])
def test_a_bad_reply_form_is_a_field_error(api: StirApi, bad: Any) -> None:
    with pytest.raises(FieldError) as err:
        run(api.sign_rpc({**SIGN, "reply": bad}))
    assert err.value.field == "reply"


def test_the_http_and_agi_sign_keeps_the_full_result(api: StirApi) -> None:
    body = run(api.sign({**SIGN, "reply": "flat"}))
    assert isinstance(body, dict) and len(body["identity"]) == 2


def test_json_rpc_stir_sign_is_the_flat_form_when_asked(api: StirApi) -> None:
    method = api.methods()["stir.sign"]
    assert isinstance(run(method({**SIGN, "reply": "flat"})), str)
    assert isinstance(run(method(dict(SIGN))), dict)


@pytest.mark.parametrize(("given", "count"), [({}, 2), ({"add_shaken": False}, 1),
                                              ({"add_shaken": True}, 2)])  # fmt: skip
def test_add_shaken_in_the_request_says_one_passport_or_two(
    api: StirApi, given: dict[str, Any], count: int
) -> None:
    assert len(run(api.sign({**SIGN, **given}))["identity"]) == count


@pytest.mark.parametrize("bad", [0, 1, "false", None])
def test_add_shaken_must_be_a_boolean(api: StirApi, bad: Any) -> None:
    with pytest.raises(FieldError) as err:
        run(api.sign({**SIGN, "add_shaken": bad}))
    assert err.value.field == "add_shaken"
