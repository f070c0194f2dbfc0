"""The CPS REST interface of RFC 8816 §9, made concrete [design]: paths, bodies, ids.

    POST /cps/{tn}/ppts        store. Body either one entry,
                                 Content-Type: application/passport, base64url text
                                 (stird.core.oob wire format; line folding allowed),
                               or a batch (one entry per key of the callee, §8.1 step 4),
                                 Content-Type: application/json, {"ppts": ["<entry>", ...]}
                               → 201, Location: /cps/{tn}/ppts/{id} (the first entry),
                                 {"ids": [...], "locations": [...], "ttl": 60}
    GET  /cps/{tn}/ppts        → 200 {"tn": tn, "ppts": [{"id", "location", "ppt"}, ...]}
                                 real entries and at least one dummy, shuffled (§6.2);
                                 entries are inline so a retrieval is one round trip
    GET  /cps/{tn}/ppts/{id}   → 200 application/passport, the entry, with
                                 Link: </cps/{tn}/ppts>; rel="collection" (§9). An unknown
                                 or aged-out id gets a fresh dummy, not 404, so ids cannot
                                 be probed.
    PUT|POST /keys/{tn}        a signed key publication (stird.core.oobkeys) naming {tn}
    GET  /keys/{tn}            → 200 {"tn", "keys": [JWK...], "publications": [JWS...]}

``tn`` is the called number as E.164 digits without ``+`` (1–15 digits); ids are 128
random bits in base64url (22 characters). Pure; every parser raises only StirError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from stird.core import jose, oob
from stird.core.errors import StirError, bad_request

PASSPORT_TYPE = "application/passport"
JSON_TYPE = "application/json"
MAX_BATCH = 16
ID_BYTES = 16
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_MAX_LIST = 1024


def parse_tn(text: object) -> str:
    """A ``{tn}`` path segment: digits only, 1–15."""
    if not isinstance(text, str):
        raise bad_request("telephone number must be text")
    return oob.check_tn(text)


def parse_entry_id(text: object) -> str:
    if not isinstance(text, str) or not _ID.fullmatch(text):
        raise bad_request("entry id must be 22 base64url characters")
    return text


def new_entry_id(rng: oob.Random) -> str:
    return jose.b64u_encode(rng(ID_BYTES))


def collection_path(tn: str) -> str:
    return f"/cps/{parse_tn(tn)}/ppts"


def entry_path(tn: str, entry_id: str) -> str:
    return f"{collection_path(tn)}/{parse_entry_id(entry_id)}"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request(f"{what} is not JSON") from None


def parse_store_body(
    content_type: str, body: bytes, max_batch: int = MAX_BATCH
) -> tuple[oob.SealedEntry, ...]:
    """The entries of a ``POST /cps/{tn}/ppts`` body."""
    media = _media_type(content_type)
    if media == PASSPORT_TYPE:
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise bad_request("application/passport body must be base64url text") from None
        return (oob.decode_entry(text),)
    if media != JSON_TYPE:
        raise bad_request(f"Content-Type must be {PASSPORT_TYPE} or {JSON_TYPE}")
    doc = _json(body, "batch")
    ppts = doc.get("ppts") if isinstance(doc, dict) else None
    if not isinstance(ppts, list) or not 1 <= len(ppts) <= max_batch:
        raise bad_request(f'a batch is {{"ppts": [...]}} with 1 to {max_batch} entries')
    return tuple(oob.decode_entry(item) for item in ppts)


def store_body(entries: Sequence[oob.SealedEntry]) -> tuple[str, bytes]:
    """(Content-Type, body) for storing ``entries``: one alone, several as a batch."""
    if len(entries) == 1:
        return PASSPORT_TYPE, entries[0].text.encode("ascii")
    body = json.dumps({"ppts": [e.text for e in entries]}, separators=(",", ":"))
    return JSON_TYPE, body.encode("ascii")


def list_document(tn: str, items: Sequence[tuple[str, oob.SealedEntry]]) -> dict[str, Any]:
    return {
        "tn": tn,
        "ppts": [{"id": i, "location": entry_path(tn, i), "ppt": entry.text} for i, entry in items],
    }


def parse_list_document(body: bytes) -> tuple[tuple[str, oob.SealedEntry], ...]:
    """The ``(id, entry)`` pairs of a ``GET /cps/{tn}/ppts`` answer (for CPS clients).
    Malformed items are skipped; a malformed document raises :class:`StirError`."""
    doc = _json(body, "CPS list")
    ppts = doc.get("ppts") if isinstance(doc, dict) else None
    if not isinstance(ppts, list) or len(ppts) > _MAX_LIST:
        raise bad_request('a CPS list is {"ppts": [...]}')
    out: list[tuple[str, oob.SealedEntry]] = []
    for item in ppts:
        try:
            ppt = item.get("ppt") if isinstance(item, dict) else None
            if not isinstance(ppt, str):
                raise bad_request("list item without ppt")
            out.append((parse_entry_id(item.get("id")), oob.decode_entry(ppt)))
        except StirError:
            continue
    return tuple(out)
