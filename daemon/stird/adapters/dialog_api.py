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

from typing import Any

from stird.adapters.requests import FieldError, Fields
from stird.core.passport import Ppt
from stird.services.authentication import SignOutput
from stird.services.dialogs import Decision, DialogHandle, DialogPolicy, Phase
from stird.services.verdicts import CallVerdict

EVENTS = ("answered", "ended", "refused")
DIRECTIONS = ("forwards", "backwards")
MAX_CHANNEL = 256
_DIALOG_ID = "must be a non-negative integer (Kamailio $dlg(h_entry)/h_id)"


def handle_of(raw: Any) -> DialogHandle | None:
    """The PBX's name for the dialog in sign params, or None when none is given."""
    body = Fields(raw)
    h_entry = body.integer("dlg_h_entry", 0, (1 << 32) - 1, _DIALOG_ID)
    h_id = body.integer("dlg_h_id", 0, (1 << 32) - 1, _DIALOG_ID)
    if (h_entry is None) != (h_id is None):
        raise FieldError("dlg_h_id" if h_id is None else "dlg_h_entry", "give both dialog ids")
    channel = body.text("asterisk_channel", limit=MAX_CHANNEL)
    if channel is not None and (not channel or any(ch in channel for ch in "\r\n\0")):
        raise FieldError("asterisk_channel", "must be an Asterisk channel name")
    kamailio = (h_entry, h_id) if h_entry is not None and h_id is not None else None
    if kamailio is None and channel is None:
        return None
    return DialogHandle(kamailio=kamailio, asterisk_channel=channel)


def is_backwards(raw: Any) -> bool:
    """``direction``: "forwards" (default) or "backwards" (the callee's in-dialog request)."""
    return Fields(raw).choice("direction", DIRECTIONS, "forwards") == "backwards"


def _dialog_forming(body: Fields) -> bool:
    return body.flag("dialog_forming", True) and body.get("direction") != "backwards"


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
        body = Fields(params)
        handle = handle_of(body)
        call_id = body.call_id()
        forming = _dialog_forming(body)
        if self.policy is None or handle is None or call_id is None or not forming:
            return None
        if not any(p.header.ppt == Ppt.MSEC for p in out.passports):
            return None
        self.policy.offered(call_id, handle)
        return self._state(call_id)

    async def backwards(self, params: Any, verdict: CallVerdict) -> dict[str, Any]:
        """After ``stir.verify`` of a backwards request: feed the policy, answer its say."""
        call_id = Fields(params).call_id(required=self.policy is not None)
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
        body = Fields(params)
        event = body.choice("event", EVENTS)
        call_id = body.call_id(required=True) or ""
        refused_with = 0
        if event == "refused":
            problem = "must be the SIP status code (300-699) of the refusal"
            refused_with = body.integer("code", 300, 699, problem) or 0
            if not refused_with:
                raise FieldError("code", problem)
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
