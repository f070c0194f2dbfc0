"""JSON of the API bodies (HTTP, JSON-RPC over HTTP and netstrings): orjson.

Parsing is RFC 8259 strict — no NaN/Infinity, no lone surrogates, no BOM, nesting
bounded (orjson refuses beyond 1,024 levels instead of exhausting the stack); every
refusal is a ``ValueError``. Encoding falls back to the standard library for what orjson
does not take (non-str keys, ints beyond 64 bits), which stird's answers never contain.
PASSporT JSON is not this module's business: core/jose.py keeps RFC 8225 §9 exact.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """A request body; raises ``ValueError`` when it is not JSON."""
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """An answer body, compact UTF-8."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
