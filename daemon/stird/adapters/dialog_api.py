"""The API side of the msec dialog policy (RFC 8862 §4.3–4.4, RFC 4916), independent of
transport: what ``stir.sign``, ``stir.verify`` and ``stir.dialog`` tell the
:class:`~stird.services.dialogs.DialogPolicy`.

* ``stir.sign`` of a dialog-forming request that produced an msec PASSporT, with the
  PBX's name for the dialog (Kamailio ``dlg_h_entry``/``dlg_h_id``, or an Asterisk
  ``asterisk_channel``) and a Call-ID: the dialog is *offered*.
* ``stir.dialog`` ``{"event": "answered"|"ended"|"refused", "callid"|"call_id", "code"?}``:
  the 2xx arrived (the window starts), the dialog is over, or our signed mid-dialog
  request was refused with ``code`` (428/436/437/438: one retry, then the policy).
* ``stir.verify`` with ``"direction": "backwards"``: the callee's in-dialog UPDATE/PRACK
  carrying the answer SDP (never dialog-forming). Its msec PASSporT, valid or not, is
  fed to the policy; the answer carries the decision under ``"dialog"``.

With no policy (``[dialog] policy = "off"``) nothing is tracked and every decision is
``continue``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stird.adapters.requests import FieldError
from stird.core.passport import Ppt
from stird.services.authentication import SignOutput
from stird.services.dialogs import Decision, DialogHandle, DialogPolicy, Phase
from stird.services.verdicts import CallVerdict

EVENTS = ("answered", "ended", "refused")
DIRECTIONS = ("forwards", "backwards")
MAX_CALL_ID = 1024
MAX_CHANNEL = 256


def _body(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise FieldError("body", "must be a JSON object")
    return raw


def _call_id(body: Mapping[str, Any], required: bool) -> str | None:
    for name in ("call_id", "callid"):  # Kamailio sends "callid"
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= MAX_CALL_ID:
            raise FieldError(name, f"must be a string of 1 to {MAX_CALL_ID} characters")
        return value
    if required:
        raise FieldError("call_id", "missing (call_id or callid)")
    return None


def _dialog_id(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise FieldError(name, "must be a non-negative integer (Kamailio $dlg(h_entry)/h_id)")
    return value


def handle_of(raw: Any) -> DialogHandle | None:
    """The PBX's name for the dialog in sign params, or None when none is given."""
    body = _body(raw)
    h_entry, h_id = _dialog_id(body, "dlg_h_entry"), _dialog_id(body, "dlg_h_id")
    if (h_entry is None) != (h_id is None):
        raise FieldError("dlg_h_id" if h_id is None else "dlg_h_entry", "give both dialog ids")
    channel = body.get("asterisk_channel")
    if channel is not None and (
        not isinstance(channel, str)
        or not 0 < len(channel) <= MAX_CHANNEL
        or any(ch in channel for ch in "\r\n\0")
    ):
        raise FieldError("asterisk_channel", "must be an Asterisk channel name")
    kamailio = (h_entry, h_id) if h_entry is not None and h_id is not None else None
    if kamailio is None and channel is None:
        return None
    return DialogHandle(kamailio=kamailio, asterisk_channel=channel)


def is_backwards(raw: Any) -> bool:
    """``direction``: "forwards" (default) or "backwards" (the callee's in-dialog request)."""
    value = _body(raw).get("direction", "forwards")
    if value not in DIRECTIONS:
        raise FieldError("direction", "must be forwards or backwards")
    return bool(value == "backwards")


def _dialog_forming(body: Mapping[str, Any]) -> bool:
    value = body.get("dialog_forming", True)
    if not isinstance(value, bool):
        raise FieldError("dialog_forming", "must be true or false")
    return value and body.get("direction", "forwards") != "backwards"


def msec_proof(verdict: CallVerdict) -> bool | None:
    """Did the request prove the callee's keys? None when it carried no msec PASSporT."""
    msec = [p for p in verdict.passports if p.ppt == Ppt.MSEC]
    if not msec:
        return None
    return any(p.valid for p in msec)


class DialogApi:
    """What the API transports call; ``policy`` None means ``[dialog] policy = "off"``."""

    def __init__(self, policy: DialogPolicy | None = None) -> None:
        self.policy = policy

    @property
    def policy_name(self) -> str:
        return self.policy.policy.value if self.policy is not None else "off"

    def _state(self, call_id: str | None, decision: Decision = Decision.CONTINUE) -> dict[str, Any]:
        phase: Phase | None = None
        if self.policy is not None and call_id is not None:
            phase = self.policy.phase(call_id)
        return {
            "policy": self.policy_name,
            "decision": decision.value,
            "phase": phase.value if phase is not None else None,
        }

    def signed(self, params: Any, out: SignOutput) -> dict[str, Any] | None:
        """After ``stir.sign``: track an msec-signed dialog-forming request."""
        body = _body(params)
        handle = handle_of(body)
        call_id = _call_id(body, required=False)
        forming = _dialog_forming(body)
        if self.policy is None or handle is None or call_id is None or not forming:
            return None
        if not any(p.header.ppt == Ppt.MSEC for p in out.passports):
            return None
        self.policy.offered(call_id, handle)
        return self._state(call_id)

    async def backwards(self, params: Any, verdict: CallVerdict) -> dict[str, Any]:
        """After ``stir.verify`` of a backwards request: feed the policy, answer its say."""
        call_id = _call_id(_body(params), required=self.policy is not None)
        proof = msec_proof(verdict)
        answer: dict[str, Any]
        if self.policy is None or call_id is None or proof is None:
            answer = self._state(call_id)  # nothing to judge: the window decides
        else:
            answer = self._state(call_id, await self.policy.backwards(call_id, proof))
        answer["proof"] = {None: "none", True: "valid", False: "invalid"}[proof]
        return answer

    async def event(self, params: Any) -> dict[str, Any]:
        """``stir.dialog``: answered / ended / refused."""
        body = _body(params)
        event = body.get("event")
        if event not in EVENTS:
            raise FieldError("event", f"must be one of {', '.join(EVENTS)}")
        call_id = _call_id(body, required=True)
        assert call_id is not None
        code = body.get("code")
        if event == "refused" and (
            isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 699
        ):
            raise FieldError("code", "must be the SIP status code (300-699) of the refusal")
        refused_with = code if isinstance(code, int) else 0
        decision = Decision.CONTINUE
        if self.policy is not None:
            if event == "answered":
                self.policy.answered(call_id)
            elif event == "ended":
                self.policy.ended(call_id)
            else:
                decision = await self.policy.refused(call_id, refused_with)
        return {"event": event, "call_id": call_id, **self._state(call_id, decision)}


__all__ = ["DialogApi", "handle_of", "is_backwards", "msec_proof"]
