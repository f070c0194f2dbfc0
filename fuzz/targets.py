"""Fuzz targets: one function per parser family, fed raw bytes the way a peer sends them.

Each target turns the fuzzer's bytes into the parser's input (text via UTF-8 with
``surrogateescape``, so invalid bytes become lone surrogates — what ``json.loads`` can hand
stird from a ``"\\udc80"`` escape), calls the parser and lets through only the parser's
documented error family (``ALLOWED``). Anything else propagates and is a crash. A target
also fails when the code under test logs an unexpected exception (``log.exception`` in a
catch-all that would otherwise hide a bug) or breaks a contract checked here (JSON-RPC
answer shape, netstring chunking).

Multi-function targets read a selector from the first byte. The harness files
``fuzz_<name>.py`` import this module under atheris instrumentation; ``run.py`` runs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon")]

from stird.core.errors import StirError  # noqa: E402

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}
ALLOWED: dict[str, tuple[type[BaseException], ...]] = {}
NOW = 1795328781


class ContractError(AssertionError):
    """The code under test broke a contract the harness checks (not a parser error)."""


def target(name: str, *allowed: type[BaseException]) -> Callable[[Target], Target]:
    def register(fn: Target) -> Target:
        TARGETS[name] = fn
        ALLOWED[name] = allowed or (StirError,)
        return fn

    return register


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def split(data: bytes) -> tuple[int, bytes]:
    return (data[0], data[1:]) if data else (0, b"")


def json_or_none(data: bytes) -> Any:
    try:
        return json.loads(text(data))
    except (ValueError, RecursionError):  # not JSON: the transports answer it themselves
        return None


_LOOP: asyncio.AbstractEventLoop | None = None


def run(coro: Any) -> Any:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.set_event_loop(_LOOP)
    return _LOOP.run_until_complete(coro)


class _Errors(logging.Handler):
    """Collects log records that carry an exception: a catch-all swallowed a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.expected: tuple[str, ...] = ()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and not any(e in record.getMessage() for e in self.expected):
            self.records.append(record)


_ERRORS = _Errors()
logging.getLogger().handlers[:] = [_ERRORS]
logging.getLogger().setLevel(logging.ERROR)


def _check_log() -> None:
    if _ERRORS.records:
        record = _ERRORS.records[0]
        _ERRORS.records.clear()
        assert record.exc_info is not None
        exc = record.exc_info[1]
        detail = "".join(traceback.format_exception(*record.exc_info))
        raise ContractError(f"logged {record.getMessage()!r}:\n{detail}") from exc


# --- SIP text parsers --------------------------------------------------------------------


@target("identity")
def identity(data: bytes) -> None:
    from stird.core.identity import parse_identity

    for header in parse_identity(text(data)):
        header.format()
        header.passport_header()


@target("passport")
def passport(data: bytes) -> None:
    """0: a raw token; 1: the payload JSON under a valid header; 2: the header JSON."""
    from stird.core import jose, passport
    from stird.core.identity import IdentityHeader

    sel, data = split(data)
    head = jose.b64u_encode(b'{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"https://x/c"}')
    body = jose.b64u_encode(b'{"dest":{"tn":["1"]},"iat":1,"orig":{"tn":"2"}}')
    sig = "A" * 86
    if sel % 3 == 0:
        token = text(data)
    elif sel % 3 == 1:
        token = f"{head}.{jose.b64u_encode(data)}.{sig}"
    else:
        token = f"{jose.b64u_encode(data)}.{body}.{sig}"
    signed = passport.decode(token)
    # what verification does next with a decoded token (RFC 8224 §4.1 compact rebuild)
    rebuilt = passport.with_signature(signed.header, signed.claims, signed.signature)
    IdentityHeader(rebuilt.compact, signed.header.x5u, ppt=signed.ppt).format()


@target("sdp")
def sdp(data: bytes) -> None:
    """0: an SDP body (parse_sdp_keys); 1: a PASSporT mky claim as JSON (parse_mky)."""
    from stird.core.sdp import SdpKeys, mky_claim, mky_matches, parse_mky, parse_sdp_keys

    sel, data = split(data)
    if sel % 2 == 0:
        keys = parse_sdp_keys(text(data))
        mky_claim(keys.all_lines())
        for index in range(len(keys.media) + 1):
            keys.effective(index)  # StirError for the index past the end
    else:
        claim = json_or_none(data)
        fps = parse_mky(claim)
        mky_matches(claim, SdpKeys(fps, (), False))


@target("hep")
def hep(data: bytes) -> None:
    """0: a HEP3 datagram (decode_hep, then parse_sip of its payload and the accessors the
    collector uses; re-encoding a decoded packet must decode to the same packet);
    1: a bare SIP message (parse_sip)."""
    from stird.core.hep import decode_hep, encode_hep, parse_sip

    sel, data = split(data)
    if sel % 2 == 0:
        packet = decode_hep(data)
        payload = packet.payload
        if packet.src is None or ":" not in packet.src[0]:
            again = decode_hep(encode_hep(packet))
            if again.payload != packet.payload or again.correlation_id != packet.correlation_id:
                raise ContractError("encode_hep/decode_hep do not round-trip")
    else:
        payload = data
    message = parse_sip(payload)
    _ = (message.call_id, message.cseq, message.tag("from"), message.tag("to"), message.sdp)
    message.all("identity")


_REGIONS = (None, "US", "GB", "DE", "FR", "CH", "xx", "001")


@target("tn")
def tn(data: bytes) -> None:
    """Selector: which function (7) and which default region (8)."""
    from stird.core import tn

    sel, data = split(data)
    value, region = text(data), _REGIONS[(sel // 7) % len(_REGIONS)]
    which = sel % 7
    if which == 0:
        tn.party_from_header(value, default_region=region).claim()
    elif which == 1:
        tn.normalize_uri(value)
    elif which == 2:
        tn.addr_specs(value)
    elif which == 3:
        tn.parse_cli_id(value, default_region=region)
    elif which == 4:
        tn.party_from_pai(value, default_region=region)
    elif which == 5:
        party = tn.party_from_uri(value, default_region=region)
        tn.PartyId.from_claim(party.claim())
    else:
        tn.canonicalize_tn(value, default_region=region)
        tn.tn_matches(value, value[::-1])


@target("sipdate")
def sipdate(data: bytes) -> None:
    from stird.core.sipdate import format_sip_date, parse_sip_date

    format_sip_date(parse_sip_date(text(data)))


# --- certificates ------------------------------------------------------------------------


@target("tnauthlist")
def tnauthlist(data: bytes) -> None:
    from stird.core.tnauthlist import parse_tnauthlist

    tal = parse_tnauthlist(data)
    tal.covers_tn("15551110000")
    tal.covers_tn("*67", lambda spc, tn: True)
    tal.encompasses(tal)


_PKI: dict[str, Any] = {}


def _pki() -> dict[str, Any]:
    """The local trust anchor (a CA with a TNAuthList range, same key and name as the seed
    CA of seeds.py, so seed chains validate) and a leaf it issued: the mutation template."""
    if not _PKI:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from stird.core import certs
        from stird.core.tnauthlist import TnRange

        ca_key, leaf_key = (ec.derive_private_key(n, ec.SECP256R1()) for n in (0x5EED1, 0x5EED2))
        ca = certs.make_stir_cert(
            ca_key,
            now=NOW,
            ranges=(TnRange("15551110000", 10000),),
            spcs=("1234",),
            ca=True,
            path_length=0,
        )
        leaf = certs.make_stir_cert(
            leaf_key,
            now=NOW,
            tns=("15551110000",),
            ranges=(TnRange("15551110000", 100),),
            issuer_key=ca_key,
            issuer_cert=ca,
            uris=("sip:alice@example.com",),
        )
        _PKI.update(anchors=(ca,), ca=ca, template=leaf.public_bytes(serialization.Encoding.DER))
    return _PKI


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _tlvs(raw: bytes) -> list[bytes]:
    """Split concatenated DER TLVs (definite lengths; raises ValueError when malformed)."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 2 > len(raw):
            raise ValueError("short TLV")
        n, head = raw[pos + 1], 2
        if n & 0x80:
            width = n & 0x7F
            n, head = int.from_bytes(raw[pos + 2 : pos + 2 + width], "big"), 2 + width
        out.append(raw[pos : pos + head + n])
        pos += head + n
    return out


def _body(tlv: bytes) -> bytes:
    n = tlv[1]
    return tlv[2 + (n & 0x7F if n & 0x80 else 0) :]


def _mutated_certificate(data: bytes) -> bytes:
    """Structure-aware: rebuild the template leaf's extension list from fuzz-chosen
    operations (duplicate, drop, replace the value with fuzz bytes, flip critical) with
    correct DER lengths, so the mutation lands in X.509 extension parsing, not in framing."""
    cert_seq = _tlvs(_pki()["template"])[0]
    tbs, alg, sig = _tlvs(_body(cert_seq))
    fields = _tlvs(_body(tbs))
    ext_wrapper = fields[-1]  # [3] EXPLICIT Extensions
    exts = _tlvs(_body(_tlvs(_body(ext_wrapper))[0]))
    ops, rest = data[:4], data[4:]
    chunks = rest.split(b"\xff\xfe", 4)
    for i, op in enumerate(ops):
        index = (op >> 3) % len(exts)
        kind = op & 7
        chunk = chunks[i] if i < len(chunks) else b""
        parts = _tlvs(_body(exts[index]))  # OID [critical] OCTET STRING
        if kind == 0:
            exts.insert(index, exts[index])
        elif kind == 1 and len(exts) > 1:
            del exts[index]
        elif kind == 2:
            parts[-1] = _der(0x04, chunk)
            exts[index] = _der(0x30, b"".join(parts))
        elif kind == 3:
            flag = _der(0x01, b"\xff")
            parts = [parts[0], flag, parts[-1]] if len(parts) == 2 else [parts[0], parts[-1]]
            exts[index] = _der(0x30, b"".join(parts))
        elif kind == 4:
            exts[index] = _der(0x30, chunk)
        elif kind == 5:
            parts[0] = _der(0x06, chunk[:20] or b"\x2b\x06\x01\x05\x05\x07\x01\x1a")
            exts[index] = _der(0x30, b"".join(parts))
    fields[-1] = _der(0xA3, _der(0x30, b"".join(exts)))
    return _der(0x30, _der(0x30, b"".join(fields)) + alg + sig)


@target("certs")
def certs(data: bytes) -> None:
    """0: bytes as fetched from an x5u URL; 1: a leaf with fuzzed extensions, chained to
    the anchor. After loading, what verification does with a chain against the local
    anchor (every step StirError only)."""
    from stird.core import certs

    sel, data = split(data)
    pki = _pki()
    if sel % 2 == 0:
        chain = certs.load_pem_chain(data)
    else:
        try:
            der = _mutated_certificate(data)
        except (ValueError, IndexError):
            return
        chain = (*certs.load_pem_chain(der), pki["ca"])
    leaf = chain[0]
    for step in (
        lambda: certs.tnauthlist_of(leaf),
        lambda: certs.san_uris(leaf),
        lambda: certs.check_signing_key(leaf),
        lambda: certs.check_validity(leaf, NOW),
        lambda: certs.validate_chain(chain, pki["anchors"], NOW),
        lambda: certs.authorizes(chain, "tn", "15551110000"),
        lambda: certs.authorizes(chain, "uri", "sip:alice@example.com"),
    ):
        try:
            step()
        except StirError:
            continue


# --- Asterisk: FastAGI and AMI ------------------------------------------------------------


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


async def _agi_session(env_block: bytes, replies: bytes) -> None:
    from stird.adapters import agi_protocol as agi

    env = agi.parse_env(env_block)
    agi.agi_args(env)
    agi.known(env.get("agi_callerid", ""))
    reader = asyncio.StreamReader(limit=agi.MAX_LINE)
    reader.feed_data(replies)
    reader.feed_eof()
    request = agi.AgiRequest(None, env, reader, _Writer(), timeout=1.0)
    request.env  # noqa: B018
    request.channel  # noqa: B018
    try:
        for _ in range(agi.MAX_COMMANDS + 1):
            await request.get_full("${PJSIP_HEADER(read,Identity,1)}")
            await request.set_variable("STIRD_IDENTITY", "x;info=<https://x/c.pem>")
            await request.send_command("GET VARIABLE CALLERID(num)")
    except agi.PEER_ERRORS:
        return


@target("agi")
def agi(data: bytes) -> None:
    """0: one reply line (parse_reply); 1: an agi_* block (parse_env); 2: a whole session
    as Asterisk sends it — agi_* block, blank line, replies — read by AgiRequest."""
    from stird.adapters import agi_protocol as agi

    sel, data = split(data)
    if sel % 3 == 0:
        reply = agi.parse_reply(text(data))
        reply.variable  # noqa: B018
    elif sel % 3 == 1:
        agi.agi_args(agi.parse_env(data))
    else:
        env_block, sep, replies = data.partition(b"\n\n")
        run(_agi_session(env_block + sep, replies))


ALLOWED["agi"] = ()  # set below, once agi_protocol is importable under instrumentation


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Future:
    def __init__(self) -> None:
        self.result: Any = None

    def done(self) -> bool:
        return self.result is not None

    def set_result(self, value: Any) -> None:
        self.result = value

    def cancel(self) -> None:
        pass


class _Pending:
    def __init__(self) -> None:
        self.future = _Future()


_AMI: dict[str, Any] = {}


async def _ami_manager() -> Any:
    from stird.adapters.ami import AmiClient, AmiSettings, _Manager

    client = AmiClient(AmiSettings())
    return client, _Manager(client)


@target("ami")
def ami(data: bytes) -> None:
    """The byte stream Asterisk sends on the manager connection (banner, replies, events),
    delivered in reads of a fuzz-chosen size to stird's protocol (reply matching with
    actions pending, as after Login) and on to the call table."""
    from stird.adapters.ami import _Protocol

    if not _AMI:
        _AMI["client"], _AMI["manager"] = run(_ami_manager())
    sel, data = split(data)
    protocol = _Protocol()
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.factory = _AMI["manager"]
    protocol.encoding = "utf-8"
    protocol.responses = {f"stird-{i}": _Pending() for i in range(1, 16)}
    protocol.responses["action/1"] = _Pending()
    size = sel or len(data) or 1
    for start in range(0, len(data), size):
        if transport.aborted:
            break
        protocol.data_received(data[start : start + size])
    run(asyncio.sleep(0))  # run what the frames scheduled (panoramisk dispatches via call_soon)
    client = _AMI["client"]
    if len(client.calls) > 2 * 4096:
        raise ContractError("call table grew past its bound")
    _check_log()


# --- JSON API, JSON-RPC, netstrings --------------------------------------------------------


@target("requests")
def requests(data: bytes) -> None:
    """A JSON body as the HTTP API / JSON-RPC hand it over: sign_input, sip_facts, budget,
    wants_oob (FieldError only)."""
    from stird.adapters import requests

    sel, data = split(data)
    body = json_or_none(data)
    if sel % 4 == 0:
        requests.sign_input(body, _REGIONS[(sel // 4) % len(_REGIONS)])
    elif sel % 4 == 1:
        requests.sip_facts(body)
    elif sel % 4 == 2:
        requests.budget(body)
    else:
        requests.wants_oob(body)


_DISPATCHER: list[Any] = []


def _dispatcher() -> Any:
    if not _DISPATCHER:
        from stird.adapters import requests
        from stird.adapters.jsonrpc import Dispatcher
        from stird.core.errors import bad_request

        async def sign(params: Any) -> Any:
            inp = requests.sign_input(params, "US")
            requests.wants_oob(params)
            return {"orig": inp.orig.claim(), "dest": [d.claim() for d in inp.dest]}

        async def verify(params: Any) -> Any:
            facts = requests.sip_facts(params)
            return {"budget": requests.budget(params), "identity": list(facts.identity)}

        async def status(params: Any) -> Any:
            return {"ok": True}

        async def echo(params: Any) -> Any:
            return params

        async def boom_stir(params: Any) -> Any:
            raise bad_request("refused")

        async def boom_field(params: Any) -> Any:
            raise requests.FieldError("orig", "missing")

        async def boom_bug(params: Any) -> Any:
            raise RuntimeError("a bug in a method")

        _DISPATCHER.append(
            Dispatcher(
                {
                    "stir.sign": sign,
                    "stir.verify": verify,
                    "stir.status": status,
                    "echo": echo,
                    "boom.stir": boom_stir,
                    "boom.field": boom_field,
                    "boom.bug": boom_bug,
                }
            )
        )
        _ERRORS.expected = ("JSON-RPC method boom.bug failed",)
    return _DISPATCHER[0]


def _check_answer(answer: Any) -> None:
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0" or "id" not in answer:
        raise ContractError(f"not a JSON-RPC response object: {answer!r:.200}")
    if ("result" in answer) == ("error" in answer):
        raise ContractError(f"needs exactly one of result/error: {answer!r:.200}")
    if "error" in answer:
        err = answer["error"]
        if not (
            isinstance(err, dict)
            and isinstance(err.get("code"), int)
            and isinstance(err.get("message"), str)
        ):
            raise ContractError(f"malformed error member: {err!r:.200}")


@target("jsonrpc")
def jsonrpc(data: bytes) -> None:
    """A decoded JSON-RPC message (object or batch) → Dispatcher.handle, which must never
    raise and must answer a JSON-RPC response (or a batch of them), or None."""
    message = json_or_none(data)
    if message is None and data.strip() != b"null":
        return
    answer = run(_dispatcher().handle(message))
    if answer is not None:
        for item in answer if isinstance(answer, list) else [answer]:
            _check_answer(item)
        if isinstance(answer, list) and not answer:
            raise ContractError("an empty batch answer must be None")
        json.dumps(answer, separators=(",", ":"))  # what both transports do with it
    _check_log()


ALLOWED["jsonrpc"] = ()  # nothing may escape


@target("netstring")
def netstring(data: bytes) -> None:
    """Kamailio's byte stream: fed whole, then in reads of a fuzz-chosen size; both must
    agree (same payloads, or both a FramingError). Selector bit 7: a 64-byte message cap."""
    from stird.adapters.netstring import NetstringDecoder

    sel, data = split(data)
    cap = 64 if sel & 0x80 else 1 << 20
    size = (sel & 0x7F) or 1

    def feed(chunks: list[bytes]) -> tuple[list[bytes], bool]:
        decoder, out = NetstringDecoder(cap), []
        try:
            for chunk in chunks:
                out += decoder.feed(chunk)
        except FramingError:
            return out, True
        return out, False

    from stird.adapters.netstring import FramingError

    whole, whole_err = feed([data])
    parts, parts_err = feed([data[i : i + size] for i in range(0, len(data), size)])
    if whole_err != parts_err or (not whole_err and whole != parts):
        raise ContractError(
            f"chunking changes the result: {whole!r:.80} {whole_err} vs "
            f"{parts!r:.80} {parts_err} (read size {size})"
        )
    if any(len(p) > cap for p in parts):
        raise ContractError("payload larger than the cap")


ALLOWED["netstring"] = ()


# --- CPS and out-of-band --------------------------------------------------------------------


@target("cps")
def cps(data: bytes) -> None:
    """0/1: POST /cps/{tn}/ppts bodies (application/passport, JSON batch); 2: a GET list
    answer; 3: a {tn} path segment; 4: an entry id; 5: a body with any Content-Type."""
    from stird.core import cps

    sel, data = split(data)
    which = sel % 6
    if which == 0:
        cps.parse_store_body("application/passport", data)
    elif which == 1:
        cps.parse_store_body("application/json; charset=utf-8", data)
    elif which == 2:
        cps.parse_list_document(data)
    elif which == 3:
        cps.collection_path(cps.parse_tn(text(data)))
    elif which == 4:
        cps.parse_entry_id(text(data))
    else:
        content_type, _, body = data.partition(b"\n")
        cps.parse_store_body(text(content_type), body)


_OOB: list[Any] = []


def _oob_keys() -> list[Any]:
    if not _OOB:
        from stird.core import oob

        _OOB.extend(
            [
                oob.DecryptionKey(oob.OobSuite.X25519, bytes(range(32))),
                oob.DecryptionKey(oob.OobSuite.MLKEM768_X25519, bytes(range(96))),
            ]
        )
    return _OOB


@target("oob")
def oob(data: bytes) -> None:
    """0: decode_entry (base64url text); 1: entry_from_bytes; 2: open_entry of text with
    the recipient's keys; 3: any plaintext sealed to the recipient (a sender holding the
    public key), then opened; 4: a published JWK (key_from_jwk / private_key_from_jwk)."""
    from stird.core import oob

    keys = _oob_keys()
    sel, data = split(data)
    which = sel % 5
    if which == 0:
        oob.decode_entry(text(data)).text  # noqa: B018
    elif which == 1:
        oob.entry_from_bytes(data).to_bytes()
    elif which == 2:
        oob.open_entry(text(data), keys, "15551230001")
    elif which == 3:
        key = keys[(sel // 5) % 2].public_key()
        plain = data[: oob.BUCKETS[0]].ljust(oob.BUCKETS[0], b"\x00")
        entry = oob._seal_one(plain, key, oob.info_for("15551230001"))
        opened = oob.open_entry(entry.text, keys, "15551230001")
        if opened is None:
            raise ContractError("an entry sealed to the recipient's key did not open")
    else:
        jwk = json_or_none(data)
        if (sel // 5) % 2:
            oob.private_key_from_jwk(jwk)
        else:
            oob.key_from_jwk(jwk).jwk()


@target("oobkeys")
def oobkeys(data: bytes) -> None:
    """0: a publication token; 1: the payload JSON under a valid header; 2: the header."""
    from stird.core import jose, oobkeys

    sel, data = split(data)
    head = jose.b64u_encode(b'{"alg":"ES256","typ":"stir-oob-keys","x5u":"https://x/k.pem"}')
    body = jose.b64u_encode(b'{"exp":2,"iat":1,"keys":[],"tns":["15551230001"]}')
    if sel % 3 == 0:
        token = text(data)
    elif sel % 3 == 1:
        token = f"{head}.{jose.b64u_encode(data)}.AAAA"
    else:
        token = f"{jose.b64u_encode(data)}.{body}.AAAA"
    pub = oobkeys.read_publication(token)
    if pub.chain:
        pub.publisher  # noqa: B018


# --- the allowed families that need imports ----------------------------------------------


def _late_allowed() -> None:
    from stird.adapters.agi_protocol import PEER_ERRORS
    from stird.adapters.requests import FieldError

    ALLOWED["agi"] = PEER_ERRORS
    ALLOWED["requests"] = (FieldError,)


def preload() -> None:
    """Import every module under test. Call it inside ``atheris.instrument_imports()``:
    only modules imported there get coverage instrumentation."""
    import stird.adapters.agi_protocol
    import stird.adapters.ami
    import stird.adapters.ami_calls
    import stird.adapters.jsonrpc
    import stird.adapters.netstring
    import stird.adapters.requests
    import stird.core.certs
    import stird.core.cps
    import stird.core.identity
    import stird.core.jose
    import stird.core.oob
    import stird.core.oobkeys
    import stird.core.passport
    import stird.core.sdp
    import stird.core.sipdate
    import stird.core.tn
    import stird.core.tnauthlist  # noqa: F401


# --- running one input --------------------------------------------------------------------


def signature(exc: BaseException) -> str:
    """``Type@file:line`` of the innermost frame in stird (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/stird/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__}@{where}"


def make_runner(name: str, known: frozenset[str] = frozenset()) -> Callable[[bytes], None]:
    """The per-input function: the target, its allowed family swallowed; crashes whose
    signature is in ``known`` (already reported, waiting for a fix) are counted, not raised."""
    _late_allowed()
    fn, allowed = TARGETS[name], ALLOWED[name]
    seen: dict[str, int] = {}

    def one(data: bytes) -> None:
        try:
            fn(data)
        except allowed:
            pass
        except Exception as exc:
            sig = signature(exc)
            if sig not in known:
                raise
            seen[sig] = seen.get(sig, 0) + 1
            count = seen[sig]
            if count & (count - 1) == 0:  # 1, 2, 4, 8...: keep stderr small
                print(f"KNOWN-CRASH {sig} {count}", file=sys.stderr, flush=True)

    return one


def known_signatures() -> frozenset[str]:
    if os.environ.get("STIRD_FUZZ_IGNORE_KNOWN") != "1":
        return frozenset()
    path = Path(__file__).with_name("known_crashes.txt")
    if not path.exists():
        return frozenset()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return frozenset(line for line in lines if line)


def main(name: str) -> None:
    """Entry point of ``fuzz_<name>.py`` (after its instrumented import of this module)."""
    import atheris

    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    one = make_runner(name, known_signatures())
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
