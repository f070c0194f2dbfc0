"""JSON request bodies of the API (HTTP and JSON-RPC) → service inputs.

Every problem raises :class:`FieldError` naming the field, so callers can answer
400 / JSON-RPC -32602 with a message a PBX administrator can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stird.core.errors import StirError
from stird.core.passport import Ppt
from stird.core.tn import PartyId, parse_cli_id, party_from_header
from stird.core.verdict import SipFacts
from stird.services.authentication import SignInput

MAX_LIST = 16
MAX_TEXT = 65536


class FieldError(ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.field = name
        self.problem = problem


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise FieldError("body", "must be a JSON object")
    return body


def _text(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise FieldError(name, "missing")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise FieldError(name, f"must be a string of at most {MAX_TEXT} characters")
    return value


def _texts(body: Mapping[str, Any], name: str, *, required: bool = False) -> tuple[str, ...]:
    value = body.get(name)
    if value is None and not required:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise FieldError(name, f"must be an array of at most {MAX_LIST} strings")
    if required and not value:
        raise FieldError(name, "must not be empty")
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_TEXT:
            raise FieldError(name, "must hold strings")
    return tuple(value)


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise FieldError(name, "must be true or false")
    return value


def party(text: str, name: str, region: str | None) -> PartyId:
    """A caller/callee given as a TN, a URI or a raw From/To/PAI header value."""
    try:
        if ":" in text or "<" in text:
            return party_from_header(text, default_region=region)
        return parse_cli_id(text, default_region=region)
    except StirError as exc:
        raise FieldError(name, exc.detail) from None


def _call_id(body: Mapping[str, Any]) -> str | None:
    return _text(body, "call_id") or _text(body, "callid")  # Kamailio sends "callid"


def _ppt(body: Mapping[str, Any]) -> tuple[Ppt | None, bool]:
    if "ppt" not in body:
        return None, False
    value = body["ppt"]
    if value is None or value == "none":
        return None, True
    if value not in ("msec", "shaken"):
        raise FieldError("ppt", "must be msec, shaken or null")
    return Ppt(value), True


def sign_input(raw: Any, region: str | None) -> SignInput:
    body = _object(raw)
    orig = _text(body, "orig", required=True) or ""
    dests = _texts(body, "dest", required=True)
    ppt, given = _ppt(body)
    attest = _text(body, "attest")
    if attest is not None and attest not in ("A", "B", "C"):
        raise FieldError("attest", "must be A, B or C")
    return SignInput(
        orig=party(orig, "orig", region),
        dest=tuple(party(d, "dest", region) for d in dests),
        sdp=_text(body, "sdp"),
        date=_text(body, "date"),
        ppt=ppt,
        ppt_given=given,
        attest=attest,
        call_id=_call_id(body),
    )


def wants_oob(raw: Any) -> bool:
    return _flag(_object(raw), "oob", False)


def sip_facts(raw: Any) -> SipFacts:
    body = _object(raw)
    return SipFacts(
        identity=_texts(body, "identity"),
        from_=_text(body, "from", required=True),
        pai=_text(body, "pai"),
        to=_text(body, "to", required=True),
        ruri=_text(body, "ruri"),
        date=_text(body, "date"),
        sdp=_text(body, "sdp"),
        call_id=_call_id(body),
        dialog_forming=_flag(body, "dialog_forming", True),
    )


def budget(raw: Any) -> float | None:
    """``timeout_ms``: how long the PBX waits for the answer (Kamailio's janssonrpc
    timeout); verification then gives up on credentials a little before that."""
    value = _object(raw).get("timeout_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 50 <= value <= 60000:
        raise FieldError("timeout_ms", "must be an integer from 50 to 60000")
    return max(0.02, value / 1000 - 0.05)
