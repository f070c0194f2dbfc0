"""JSON-RPC 2.0 dispatch (https://www.jsonrpc.org/specification), shared by the HTTP
endpoint and the netstring transport Kamailio's janssonrpcc speaks.

Ids are echoed exactly as received (Kamailio drops an answer whose integer id came back
as a string); notifications get no answer; batches are answered as arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from stird.adapters.errors import (
    INTERNAL,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    STIR_ERROR,
    mapped,
)
from stird.core.errors import StirError

log = logging.getLogger(__name__)

Method = Callable[[Any], Awaitable[Any]]
MAX_BATCH = 64

__all__ = ["INVALID_PARAMS", "PARSE_ERROR", "STIR_ERROR", "Dispatcher", "Method", "error"]


def error(code: int, message: str, id_: Any = None, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "error": body, "id": id_}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


class Dispatcher:
    def __init__(self, methods: Mapping[str, Method]) -> None:
        self._methods = dict(methods)

    async def handle(self, message: Any) -> Any:
        """Answer one decoded message (object or batch); None when nothing is owed."""
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                return error(INVALID_REQUEST, f"batch must hold 1 to {MAX_BATCH} requests")
            answers = [await self._one(item) for item in message]
            return [a for a in answers if a is not None] or None
        return await self._one(message)

    async def _one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return error(INVALID_REQUEST, "not a JSON-RPC 2.0 request")
        id_ = request.get("id")
        notification = "id" not in request
        if not _valid_id(id_) or not isinstance(request.get("method"), str):
            return error(INVALID_REQUEST, "bad id or method")
        answer = await self._call(request["method"], request.get("params"), id_)
        return None if notification else answer

    async def _call(self, name: str, params: Any, id_: Any) -> dict[str, Any]:
        method = self._methods.get(name)
        if method is None:
            return error(METHOD_NOT_FOUND, f"method not found: {name}", id_)
        try:
            return {"jsonrpc": "2.0", "result": await method(params), "id": id_}
        except StirError as exc:  # a bad field too: -32602 (stird.adapters.errors)
            answer = mapped(exc)
            message = f"{exc.code} {exc.reason}: {exc.detail}"
            return error(answer.jsonrpc, message, id_, answer.data())
        except Exception:  # a bug must not take the connection down
            log.exception("JSON-RPC method %s failed", name)
            return error(INTERNAL, "internal error", id_)
