"""One table from the one error family to every transport's answer.

A :class:`~stird.core.errors.StirError` (a bad request field is one:
:class:`~stird.adapters.requests.FieldError`) becomes an HTTP status, a JSON-RPC error
code and, for FastAGI, its SIP code and reason (``STIRD_CODE``/``STIRD_REASON``) here and
nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stird.core.errors import SipStatus, StirError

# JSON-RPC 2.0 error codes (https://www.jsonrpc.org/specification#error_object)
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL = (
    -32700, -32600, -32601, -32602, -32603,
)  # fmt: skip
STIR_ERROR = -32000  # server error: the request was understood and refused (data: SIP code)

#: SipStatus -> (HTTP status, JSON-RPC error code); anything else: (422, STIR_ERROR)
TABLE: dict[SipStatus, tuple[int, int]] = {
    SipStatus.BAD_REQUEST: (400, INVALID_PARAMS),
    SipStatus.FORBIDDEN: (403, STIR_ERROR),
    SipStatus.STALE_DATE: (403, STIR_ERROR),
    SipStatus.SERVICE_UNAVAILABLE: (503, STIR_ERROR),
}
OTHER = (422, STIR_ERROR)


@dataclass(frozen=True, slots=True)
class Mapped:
    """How every transport answers one StirError."""

    http: int
    jsonrpc: int
    sip: int  # FastAGI STIRD_CODE
    reason: str  # FastAGI STIRD_REASON
    detail: str
    field: str | None  # the request field at fault, if one is

    def data(self) -> dict[str, Any]:
        """The HTTP error body's extra members and the JSON-RPC error's ``data``."""
        out: dict[str, Any] = {"code": self.sip, "reason": self.reason, "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        return out

    @property
    def retry_after(self) -> str | None:
        """RFC 9110 §10.2.3: when to try again after a 503 (stird behind)."""
        return "1" if self.http == 503 else None


def mapped(exc: StirError) -> Mapped:
    http, jsonrpc = TABLE.get(exc.status, OTHER)
    field = getattr(exc, "field", None)
    return Mapped(http, jsonrpc, exc.code, exc.reason, exc.detail,
                  field if isinstance(field, str) else None)  # fmt: skip


__all__ = ["INVALID_PARAMS", "STIR_ERROR", "TABLE", "Mapped", "mapped"]
