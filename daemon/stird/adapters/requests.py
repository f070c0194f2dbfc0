"""JSON request bodies of the API (HTTP and JSON-RPC) → service inputs.

One field parser (:class:`Fields`) for the API and the dialog requests; every problem
raises :class:`FieldError` (a 400 :class:`StirError`) naming the field, so every
transport answers 400 / JSON-RPC -32602 / STIRD_CODE=400 with a message a PBX
administrator can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stird.core.errors import Check, SipStatus, StirError
from stird.core.passport import Ppt
from stird.core.tn import PartyId, parse_cli_id, party_from_header
from stird.core.verdict import SipFacts
from stird.services.authentication import SignInput

MAX_LIST = 16
MAX_TEXT = 65536
MAX_CALL_ID = 1024


class FieldError(StirError):
    """A missing or bad request field: a 400 Bad Request of the one error family, so every
    transport maps it through :mod:`stird.adapters.errors` (HTTP 400, JSON-RPC -32602,
    FastAGI ``STIRD_CODE=400``). ``detail`` names the field."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(SipStatus.BAD_REQUEST, f"{name}: {problem}", check=Check.SYNTAX)
        self.field = name
        self.problem = problem


class Fields:
    """One JSON request body (API and dialog requests alike): typed getters, each
    problem a :class:`FieldError` naming the field."""

    def __init__(self, raw: Any) -> None:
        if isinstance(raw, Fields):
            raw = raw.body
        if not isinstance(raw, dict):
            raise FieldError("body", "must be a JSON object")
        self.body: Mapping[str, Any] = raw

    def get(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default)

    def text(self, name: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise FieldError(name, "missing")
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise FieldError(name, f"must be a string of at most {limit} characters")
        return value

    def texts(self, name: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.body.get(name)
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

    def flag(self, name: str, default: bool) -> bool:
        value = self.body.get(name, default)
        if not isinstance(value, bool):
            raise FieldError(name, "must be true or false")
        return value

    def integer(self, name: str, low: int, high: int, problem: str | None = None) -> int | None:
        """An integer from ``low`` to ``high`` (never a bool), or None when absent."""
        value = self.body.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FieldError(name, problem or f"must be an integer from {low} to {high}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.body.get(name, default)
        if value not in choices:
            raise FieldError(name, f"must be one of {', '.join(choices)}")
        return str(value)

    def call_id(self, *, required: bool = False) -> str | None:
        """``call_id``, or ``callid`` as Kamailio sends it."""
        for name in ("call_id", "callid"):
            value = self.body.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not 0 < len(value) <= MAX_CALL_ID:
                raise FieldError(name, f"must be a string of 1 to {MAX_CALL_ID} characters")
            return value
        if required:
            raise FieldError("call_id", "missing (call_id or callid)")
        return None


def party(text: str, name: str, region: str | None) -> PartyId:
    """A caller/callee given as a TN, a URI or a raw From/To/PAI header value."""
    try:
        if ":" in text or "<" in text:
            return party_from_header(text, default_region=region)
        return parse_cli_id(text, default_region=region)
    except StirError as exc:
        raise FieldError(name, exc.detail) from None


def _ppt(body: Fields) -> tuple[Ppt | None, bool]:
    if "ppt" not in body.body:
        return None, False
    value = body.get("ppt")
    if value is None or value == "none":
        return None, True
    if value not in ("msec", "shaken"):
        raise FieldError("ppt", "must be msec, shaken or null")
    return Ppt(value), True


def sign_input(raw: Any, region: str | None) -> SignInput:
    body = Fields(raw)
    orig = body.text("orig", required=True) or ""
    dests = body.texts("dest", required=True)
    ppt, given = _ppt(body)
    attest = body.text("attest")
    if attest is not None and attest not in ("A", "B", "C"):
        raise FieldError("attest", "must be A, B or C")
    return SignInput(
        orig=party(orig, "orig", region),
        dest=tuple(party(d, "dest", region) for d in dests),
        sdp=body.text("sdp"),
        date=body.text("date"),
        ppt=ppt,
        ppt_given=given,
        attest=attest,
        call_id=body.call_id(),
        add_shaken=body.flag("add_shaken", True) if "add_shaken" in body.body else None,
    )


def wants_oob(raw: Any) -> bool:
    return Fields(raw).flag("oob", False)


def wants_flat(raw: Any) -> bool:
    """``"reply": "flat"`` (stird.cfg): a result without nested objects or arrays, read
    with one ``jansson_xdecode`` in Kamailio's single janssonrpcc I/O process."""
    return Fields(raw).choice("reply", ("full", "flat"), "full") == "flat"


def sip_facts(raw: Any) -> SipFacts:
    body = Fields(raw)
    return SipFacts(
        identity=body.texts("identity"),
        from_=body.text("from", required=True),
        pai=body.text("pai"),
        to=body.text("to", required=True),
        ruri=body.text("ruri"),
        date=body.text("date"),
        sdp=body.text("sdp"),
        call_id=body.call_id(),
        dialog_forming=body.flag("dialog_forming", True),
        sdp_unavailable=body.flag("sdp_unavailable", False),
    )


def budget(raw: Any) -> float | None:
    """``timeout_ms``: how long the PBX waits for the answer (Kamailio's janssonrpc
    timeout); verification then gives up on credentials a little before that."""
    value = Fields(raw).integer("timeout_ms", 50, 60000)
    return None if value is None else max(0.02, value / 1000 - 0.05)
