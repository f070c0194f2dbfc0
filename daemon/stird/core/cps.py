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

A store may be signed [design]: ``Authorization: Bearer <JWS>``, ES256 by a STIR
credential carried in ``x5c`` (RFC 7515 §4.1.6), ``typ`` ``stir-cps-store``, payload
``{"iat", "jti", "tn", "body": B64U(SHA-256(body))}``. The signer (the SHA-256 of its
public key, :func:`stird.core.oobkeys.publisher_id`) then gets a quota of its own, apart
from anonymous storers (:func:`read_store_token`, :func:`check_store_token`).

:class:`RateTable` is the token-bucket table of the CPS's admission: one bucket per key
(client address, signer), at most ``max_keys`` of them (least recently used evicted).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs, jose, oob, oobkeys
from stird.core.errors import Check, SipStatus, StirError, bad_request

PASSPORT_TYPE = "application/passport"
JSON_TYPE = "application/json"
MAX_BATCH = 16
ID_BYTES = 16
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_MAX_LIST = 1024
STORE_TOKEN_TYP = "stir-cps-store"  # noqa: S105 - a JOSE typ, not a secret
MAX_STORE_TOKEN = 16 * 1024
STORE_TOKEN_SKEW = 60  # seconds either side of ``now`` (RFC 8816 §7.5 freshness)


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


# --- signed stores ---------------------------------------------------------------------


def body_digest(body: bytes) -> str:
    return jose.b64u_encode(hashlib.sha256(body).digest())


@functools.lru_cache(maxsize=16)  # one per signing chain: a pure function
def _store_token_header(chain: tuple[x509.Certificate, ...]) -> str:
    """The encoded JOSE header of a store token: the same for every token of one chain
    (DER, base64 and canonical JSON of the x5c were a third of each token's cost)."""
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")
           for c in chain]  # fmt: skip
    header = {"alg": "ES256", "typ": STORE_TOKEN_TYP, "x5c": x5c}
    return jose.b64u_encode(jose.canonical_json(header))


def store_token(
    tn: str,
    body: bytes,
    *,
    key: ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate],
    now: int,
    jti: str,
) -> str:
    """The Bearer token signing one ``POST /cps/{tn}/ppts`` body."""
    payload = {"iat": now, "jti": jti, "tn": parse_tn(tn), "body": body_digest(body)}
    head = _store_token_header(tuple(chain))
    claims = jose.b64u_encode(jose.canonical_json(payload))
    signature = jose.es256_sign(key, f"{head}.{claims}".encode("ascii"))
    return f"{head}.{claims}.{jose.b64u_encode(signature)}"


@dataclass(frozen=True, slots=True)
class StoreSigner:
    """Who signed a store: ``signer`` is the credential's key hash; ``jti`` and ``iat``
    let the caller refuse replays."""

    signer: str
    jti: str
    iat: int


def _forbidden(detail: str) -> StirError:
    return StirError(SipStatus.FORBIDDEN, detail, check=Check.SIGNATURE)


def check_store_token(
    token: str, tn: str, body: bytes, policy: oobkeys.PublicationPolicy, now: int
) -> StoreSigner:
    """Verify a store token against ``policy`` (anchors, pins) for this ``tn`` and
    ``body``; raises StirError (400 malformed, 403 untrusted, wrong number or body,
    stale)."""
    parts = token.split(".") if isinstance(token, str) and len(token) <= MAX_STORE_TOKEN else []
    if len(parts) != 3 or not all(parts):
        raise bad_request("store token must be a JWS compact serialisation")
    header = jose.strict_json_object(jose.b64u_decode(parts[0], "header"), "header")
    claims = jose.strict_json_object(jose.b64u_decode(parts[1], "claims"), "claims")
    if header.get("alg") != "ES256" or header.get("typ") != STORE_TOKEN_TYP:
        raise bad_request(f"store token must be ES256 with typ {STORE_TOKEN_TYP!r}")
    chain = oobkeys.read_x5c(header)  # the one x5c reader
    if not chain:
        raise bad_request("store token carries its credential in x5c")
    oobkeys.check_publisher_trust(chain, policy, now)  # trust as for publications
    signature = jose.b64u_decode(parts[2], "signature")
    jose.es256_verify(certs.check_signing_key(chain[0]), f"{parts[0]}.{parts[1]}".encode(),
                      signature)  # fmt: skip
    iat, jti = claims.get("iat"), claims.get("jti")
    if not isinstance(iat, int) or isinstance(iat, bool) or not isinstance(jti, str):
        raise bad_request("store token needs integer iat and string jti")
    if not 0 < len(jti) <= 64:
        raise bad_request("store token jti is 1 to 64 characters")
    if claims.get("tn") != tn:
        raise _forbidden("store token is for another number")
    if claims.get("body") != body_digest(body):
        raise _forbidden("store token signs another body")
    if abs(iat - now) > STORE_TOKEN_SKEW:
        raise StirError(SipStatus.FORBIDDEN, "store token is stale", check=Check.FRESHNESS)
    return StoreSigner(oobkeys.publisher_id(chain[0]), jti, iat)


# --- admission -------------------------------------------------------------------------


class RateTable:
    """Token buckets by key: ``rate`` tokens a second up to ``burst``; at most
    ``max_keys`` buckets (the least recently used is forgotten first — a forgotten key
    starts again with a full bucket, so size the table beyond the clients you expect)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need rate > 0, burst >= 1, max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 when ``cost`` tokens were taken; else the seconds until they would be."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (min(cost, self.burst) - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
            self.evictions += 1
        return wait
