"""Property tests for the parsers that had none (issue 9), and regressions found by fuzzing.

Every parser that reads peer input promises one error family: StirError for the core
parsers, FieldError for JSON API bodies, FramingError for netstrings, the PEER_ERRORS of
agi_protocol for FastAGI; the AMI protocol and the JSON-RPC dispatcher promise never to
raise. These tests feed SIP-ish and JSON-ish text and byte mutations of real captured
messages (../shared transcripts, copied below) and check that nothing else escapes.

Parsers whose property tests live elsewhere are not repeated here: Identity
(tests/core/test_identity.py), PASSporT (test_passport.py), SDP and mky (test_sdp.py),
TN/URIs (test_tn.py), TNAuthList (test_certs.py), CPS/OOB/key publications (test_oob.py),
netstring round trip and error family (tests/adapters/test_netstring.py), HEP3 on the
captured Asterisk datagrams (tests/core/test_hep.py; structure-aware chunks below).

The coverage-guided fuzzers with the million-input runs are in fuzz/ (fuzz/README.md).
Tests marked ``# FOUND BY FUZZING`` reproduce crashes those fuzzers found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stird.adapters import agi_protocol as agi
from stird.adapters.ami import AmiClient, AmiSettings, _Manager, _Protocol
from stird.adapters.jsonrpc import Dispatcher
from stird.adapters.netstring import FramingError, NetstringDecoder
from stird.adapters.requests import FieldError, budget, sign_input, sip_facts, wants_oob
from stird.core import certs, identity, passport, tn
from stird.core.errors import SipStatus, StirError, bad_request
from stird.core.sdp import parse_sdp_keys
from stird.core.sipdate import format_sip_date, parse_sip_date
from stird.core.tnauthlist import TnRange
from tests.asterisk_fakes import FakeAmi, channel_fields, event, frame

FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = 1795328781  # 2026-11-22, when the transcripts were captured

# --- real captured messages (../shared/asterisk and ../shared/kamailio transcripts) -------

AMI_STREAM = (  # ami-session.txt: banner, Login reply, FullyBooted, a Newchannel, a VarSet
    b"Asterisk Call Manager/11.0.0\r\n"
    b"Response: Success\r\nActionID: stird-1\r\nMessage: Authentication accepted\r\n\r\n"
    b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 336\r\nLastReload: 336\r\n"
    b"Status: Fully Booted\r\n\r\n"
    b"Event: Newchannel\r\nPrivilege: call,all\r\nSystemName: stird-lab\r\n"
    b"Channel: PJSIP/phone-0000000f\r\nChannelState: 4\r\nChannelStateDesc: Ring\r\n"
    b"CallerIDNum: +15551110000\r\nCallerIDName: Lab Phone\r\nConnectedLineNum: <unknown>\r\n"
    b"ConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: stird-outbound\r\n"
    b"Exten: +15551230001\r\nPriority: 1\r\nUniqueid: stird-lab-1795328781.15\r\n"
    b"Linkedid: stird-lab-1795328781.15\r\n\r\n"
    b"Event: VarSet\r\nPrivilege: dialplan,all\r\nChannel: PJSIP/trunk-00000010\r\n"
    b"Uniqueid: stird-lab-1795328781.16\r\nVariable: STIRD_IDENTITY\r\n"
    b"Value: eyJhbGciOiJFUzI1NiJ9.e30.c2ln;info=<https://cert.example.invalid/stird.pem>\r\n\r\n"
    b"Response: Error\r\nActionID: stird-9\r\nMessage: No such channel\r\n\r\n"
    b"Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/carrier-00000012\r\n"
    b"Uniqueid: stird-lab-1795328785.18\r\nCause: 127\r\nCause-txt: Interworking, unspecified\r\n"
    b"TechCause: 428\r\n\r\n"
)
AGI_ENV = (  # fastagi-sign.txt: the agi_* block (arrives in two reads) and the blank line
    b"agi_network: yes\nagi_network_script: sign\nagi_request: agi://127.0.0.1:4573/sign\n"
    b"agi_channel: PJSIP/trunk-00000010\nagi_language: en\nagi_type: PJSIP\n"
    b"agi_uniqueid: stird-lab-1795328781.16\nagi_version: 22.10.1\nagi_callerid: +15551230001\n"
    b"agi_calleridname: unknown\nagi_callingpres: 0\nagi_dnid: unknown\nagi_rdnis: unknown\n"
    b"agi_context: stird-predial\nagi_extension: s\nagi_priority: 2\nagi_enhanced: 0.0\n"
    b"agi_accountcode: \nagi_threadid: 140245367400128\nagi_arg_1: +15551230001\n\n"
)
AGI_REPLIES = (  # fastagi-*.txt replies, a HANGUP notice and a 520 usage text
    b"200 result=1 (+15551230001)\n"
    b"HANGUP\n"
    b"200 result=1 (eyJhbGciOiJFUzI1NiJ9.e30.c2ln;info=<https://x/c.pem>;alg=ES256;ppt=shaken)\n"
    b"200 result=0\n"
    b"100 result=0 Trying...\n"
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: GET FULL VARIABLE <variablename> [<channel name>]\n"
    b"520 End of proper usage.\n"
    b"511 Command Not Permitted on a dead channel or intercept routine\n"
)
KAMAILIO_PARAMS: dict[str, Any] = {  # janssonrpcc-netstring.txt, stir.verify params
    "callid": "1-14391@127.0.0.1",
    "from": '"Alice" <sip:+15551110000@127.0.0.1:5190>;tag=14391SIPpTag001',
    "to": "<sip:+15552220000@127.0.0.1:5060>",
    "ruri": "sip:+15552220000@127.0.0.1:5060",
    "pai": "<sip:+15551110000@127.0.0.1;user=phone>",
    "date": "Sat, 22 Nov 2026 06:40:00 GMT",
    "identity": [
        "eyJhbGciOiJFUzI1NiJ9.eyJvcmlnIjp7InRuIjoiMTU1NTExMTAwMDAifX0.bad;"
        "info=<https://cert.example.org/a.pem>;alg=ES256;ppt=shaken"
    ],
    "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 32100 UDP/TLS/RTP/SAVP 0 8\r\na=setup:actpass\r\na=fingerprint:sha-256 "
    "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3C:F7:30:E6:82:86:71:75:34:27:98:5E\r\n",
    "dlg_h_entry": 2676,
    "dlg_h_id": 2713,
}
KAMAILIO_NETSTRINGS = (  # janssonrpcc-netstring.txt: two requests in one recv()
    b'108:{"jsonrpc":"2.0","result":{"verdict":"valid","action":"continue","verstat":"TN-Validation-Passed"},"id":"8"},'
    b'78:{"jsonrpc":"2.0","method":"stir.status","id":3,"params":{"timeout_ms":1500,"x":[]}},'
)


# --- strategies -----------------------------------------------------------------------------


def mutations(sample: bytes) -> st.SearchStrategy[bytes]:
    """Byte mutations of a real message: flip, insert, delete, duplicate a slice (which
    repeats header lines), truncate — a handful applied in sequence."""
    n = len(sample)
    op = st.one_of(
        st.tuples(st.just("set"), st.integers(0, n), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.integers(0, n), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, n), st.integers(1, 64)),
        st.tuples(st.just("dup"), st.integers(0, n), st.integers(1, 200)),
        st.tuples(st.just("cut"), st.integers(0, n), st.just(0)),
    )

    def apply(ops: list[tuple[str, int, Any]]) -> bytes:
        data = bytearray(sample)
        for kind, where, arg in ops:
            at = min(where, len(data))
            if kind == "set" and at < len(data):
                data[at] = arg
            elif kind == "insert":
                data[at:at] = arg
            elif kind == "delete":
                del data[at : at + arg]
            elif kind == "dup":
                data[at:at] = data[at : at + arg]
            elif kind == "cut":
                del data[at:]
        return bytes(data)

    return st.lists(op, max_size=6).map(apply)


def lines_mutations(sample: bytes, sep: bytes) -> st.SearchStrategy[bytes]:
    """Line-level mutations: lines dropped, repeated (a header twice) or swapped."""
    lines = sample.split(sep)
    return st.lists(st.integers(0, len(lines) - 1), min_size=1, max_size=len(lines) + 4).map(
        lambda picks: sep.join(lines[i] for i in picks)
    )


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
name_addr = st.from_regex(
    r'(?:"[^"\\\r\n]{0,12}" |[A-Za-z ]{0,8})?<(?:sips?|tel|https?|x-[a-z]{1,5}):[-+%0-9A-Za-z.@;=:_*#]{0,40}>'
    r"(?:;[a-z]{1,6}(?:=[A-Za-z0-9.]{0,8})?){0,3}",
    fullmatch=True,
)
tn_text = st.from_regex(r"\+?[-0-9 ().#*]{0,24}", fullmatch=True)
sip_value = st.one_of(name_addr, tn_text, st.text(max_size=60))


def fields_of(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


# --- SIP Date (stird.core.sipdate) ---------------------------------------------------------

sip_dates = st.from_regex(
    r"\s{0,2}(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun|Xyz), [0-9]{1,3} [A-Z][a-z]{2} [0-9]{4,5} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} (?:GMT|UTC)\s{0,2}",
    fullmatch=True,
)


@FAST
@given(
    st.one_of(
        sip_dates,
        st.text(max_size=80),
        mutations(b"Sat, 22 Nov 2026 06:40:00 GMT").map(
            lambda b: b.decode("utf-8", "surrogateescape")
        ),
    )
)
def test_sip_date_raises_only_stir_error(value: str) -> None:
    try:
        epoch = parse_sip_date(value)
    except StirError as exc:
        assert exc.code == 400
        return
    assert parse_sip_date(format_sip_date(epoch)) == epoch


# --- certificates (stird.core.certs.load_pem_chain and the chain checks) -------------------


def _pki() -> tuple[x509.Certificate, bytes]:
    ca_key, leaf_key = (ec.derive_private_key(n, ec.SECP256R1()) for n in (0x5EED1, 0x5EED2))
    ca = certs.make_stir_cert(ca_key, now=NOW, ranges=(TnRange("15551110000", 10000),), ca=True)
    leaf = certs.make_stir_cert(
        leaf_key,
        now=NOW,
        tns=("15551110000",),
        issuer_key=ca_key,
        issuer_cert=ca,
        uris=("sip:alice@example.com",),
        common_name="STIR*",
    )
    return ca, leaf.public_bytes(serialization.Encoding.DER)


CA, LEAF_DER = _pki()
LEAF_PEM = certs.cert_to_pem(x509.load_der_x509_certificate(LEAF_DER))


def check_chain_only_stir_error(data: bytes) -> None:
    """What verification does with the bytes behind an x5u URL (RFC 8224 §6.2 step 3)."""
    try:
        chain = certs.load_pem_chain(data)
    except StirError:
        return
    for step in (
        lambda: certs.tnauthlist_of(chain[0]),
        lambda: certs.san_uris(chain[0]),
        lambda: certs.check_signing_key(chain[0]),
        lambda: certs.validate_chain(chain, (CA,), NOW),
        lambda: certs.authorizes(chain, "tn", "15551110000"),
        lambda: certs.authorizes(chain, "uri", "sip:alice@example.com"),
    ):
        try:
            step()
        except StirError:
            continue


@FAST
@given(st.one_of(st.binary(max_size=300), mutations(LEAF_DER), mutations(LEAF_PEM)))
def test_certificate_chain_raises_only_stir_error(data: bytes) -> None:
    check_chain_only_stir_error(data)


# --- FastAGI (stird.adapters.agi_protocol) -------------------------------------------------

reply_lines = st.from_regex(
    r"(?:[0-9]{3}[ -]?(?:result=[-0-9A-Za-z]{0,4}(?: \([^\n]{0,20}\))?)?[^\n]{0,20}|HANGUP)",
    fullmatch=True,
)


@FAST
@given(st.one_of(reply_lines, st.text(max_size=60)))
def test_agi_reply_raises_only_protocol_error(line: str) -> None:
    try:
        reply = agi.parse_reply(line)
    except agi.AgiProtocolError:
        return
    assert isinstance(reply.variable, str) and 0 <= reply.code <= 999


@FAST
@given(st.one_of(mutations(AGI_ENV), lines_mutations(AGI_ENV, b"\n"), st.binary(max_size=200)))
def test_agi_env_never_raises(raw: bytes) -> None:
    env = agi.parse_env(raw)
    assert all(
        isinstance(k, str) and k.startswith("agi_") and isinstance(v, str) for k, v in env.items()
    )
    assert all(isinstance(a, str) for a in agi.agi_args(env))


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


@FAST
@given(st.one_of(mutations(AGI_REPLIES), lines_mutations(AGI_REPLIES, b"\n")))
def test_agi_session_raises_only_peer_errors(replies: bytes) -> None:
    """The replies of one session, as Asterisk sends them, read by stird's AgiRequest."""

    async def session() -> None:
        reader = asyncio.StreamReader(limit=agi.MAX_LINE)
        reader.feed_data(replies)
        reader.feed_eof()
        request = agi.AgiRequest(None, agi.parse_env(AGI_ENV), reader, _Writer(), timeout=1.0)
        for _ in range(agi.MAX_COMMANDS + 1):
            await request.get_full("${PJSIP_HEADER(read,Identity,1)}")
            await request.set_variable("STIRD_IDENTITY", "x;info=<https://x/c.pem>")

    started = time.monotonic()
    with contextlib.suppress(*agi.PEER_ERRORS):
        asyncio.run(session())
    assert time.monotonic() - started < 2  # no spinning on a closed or silent peer


# --- AMI (stird.adapters.ami protocol and ami_calls.CallTable) ------------------------------


class _Transport:
    aborted = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class _Pending:
    def __init__(self) -> None:
        self.future = asyncio.get_running_loop().create_future()


async def feed_ami(stream: bytes, read_size: int) -> AmiClient:
    """Deliver ``stream`` to stird's AMI protocol in reads of ``read_size`` bytes, with
    actions awaiting replies (as after Login); nothing may raise out of data_received."""
    client = AmiClient(AmiSettings())
    protocol, transport = _Protocol(), _Transport()
    protocol.connection_made(transport)
    protocol.factory, protocol.encoding = _Manager(client), "utf-8"
    protocol.responses = {f"stird-{i}": _Pending() for i in range(1, 10)}
    for start in range(0, len(stream), read_size):
        if transport.aborted:
            break
        protocol.data_received(stream[start : start + read_size])
    return client


@FAST
@given(st.one_of(mutations(AMI_STREAM), lines_mutations(AMI_STREAM, b"\r\n")), st.integers(1, 400))
def test_ami_stream_never_raises(stream: bytes, read_size: int) -> None:
    client = asyncio.run(feed_ami(stream, read_size))
    assert len(client.calls) <= client.calls.max_calls


# --- JSON API bodies (stird.adapters.requests) ---------------------------------------------

sign_bodies = fields_of(
    ["orig", "dest", "sdp", "date", "ppt", "attest", "call_id", "callid", "oob"],
    st.one_of(
        sip_value,
        st.lists(sip_value, max_size=3),
        json_values,
        st.sampled_from(["msec", "shaken", "none", "A", "B", "C"]),
    ),
)
verify_bodies = st.one_of(
    fields_of(
        [*KAMAILIO_PARAMS, "timeout_ms", "dialog_forming"],
        st.one_of(sip_value, st.lists(sip_value, max_size=3), json_values, st.integers(0, 70000)),
    ),
    st.builds(
        lambda drop, extra: {
            **{k: v for k, v in KAMAILIO_PARAMS.items() if k not in drop},
            **extra,
        },
        st.sets(st.sampled_from(list(KAMAILIO_PARAMS))),
        fields_of(list(KAMAILIO_PARAMS), json_values),
    ),
)


@FAST
@given(st.one_of(sign_bodies, verify_bodies, json_values), st.sampled_from([None, "US", "GB"]))
def test_request_bodies_raise_only_field_error(body: Any, region: str | None) -> None:
    for parse in (
        lambda: sign_input(body, region),
        lambda: sip_facts(body),
        lambda: budget(body),
        lambda: wants_oob(body),
    ):
        try:
            parse()
        except FieldError as exc:
            assert exc.field and isinstance(exc.problem, str)


# --- JSON-RPC (stird.adapters.jsonrpc.Dispatcher) ------------------------------------------


async def _sign(params: Any) -> Any:
    request = sign_input(params, "US")
    wants_oob(params)
    return {"orig": request.orig.claim()}


async def _verify(params: Any) -> Any:
    return {"identity": list(sip_facts(params).identity), "budget": budget(params)}


async def _echo(params: Any) -> Any:
    return params


async def _refuse(params: Any) -> Any:
    raise bad_request("refused")


async def _bug(params: Any) -> Any:
    raise RuntimeError("a bug")


METHODS = {
    "stir.sign": _sign,
    "stir.verify": _verify,
    "echo": _echo,
    "refuse": _refuse,
    "bug": _bug,
}
rpc_ids = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63),
    st.text(max_size=8),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
rpc_requests = st.builds(
    dict,
    st.lists(
        st.one_of(
            st.tuples(st.just("jsonrpc"), st.sampled_from(["2.0", "1.0", 2.0, None])),
            st.tuples(
                st.just("method"),
                st.one_of(st.sampled_from([*sorted(METHODS), "nope"]), json_values),
            ),
            st.tuples(st.just("params"), st.one_of(sign_bodies, verify_bodies, json_values)),
            st.tuples(st.just("id"), rpc_ids),
        ),
        max_size=5,
    ),
)


def check_rpc_answer(answer: Any) -> None:
    assert isinstance(answer, dict) and answer["jsonrpc"] == "2.0" and "id" in answer
    assert ("result" in answer) != ("error" in answer)
    if "error" in answer:
        assert isinstance(answer["error"]["code"], int)
        assert isinstance(answer["error"]["message"], str)


@FAST
@given(st.one_of(rpc_requests, st.lists(rpc_requests, max_size=4), json_values))
def test_jsonrpc_dispatcher_always_answers(message: Any) -> None:
    answer = asyncio.run(Dispatcher(METHODS).handle(message))
    if answer is not None:
        for item in answer if isinstance(answer, list) else [answer]:
            check_rpc_answer(item)
        json.dumps(answer)  # both transports serialise the answer


# --- netstrings: chunking of real Kamailio traffic ------------------------------------------


@FAST
@given(mutations(KAMAILIO_NETSTRINGS), st.integers(1, 64))
def test_netstring_chunking_does_not_change_the_outcome(wire: bytes, step: int) -> None:
    def decode(chunks: list[bytes]) -> tuple[list[bytes], bool]:
        decoder, out = NetstringDecoder(), []
        try:
            for chunk in chunks:
                out += decoder.feed(chunk)
        except FramingError:
            return out, True
        return out, False

    whole, whole_failed = decode([wire])
    parts, parts_failed = decode([wire[i : i + step] for i in range(0, len(wire), step)])
    assert whole_failed == parts_failed
    if not whole_failed:
        assert whole == parts


# --- no hang at the size caps ----------------------------------------------------------------
# The fuzzers rarely grow inputs to the parsers' length caps; these are the worst shapes
# found by hand for each regex-driven parser, at the cap: each must answer quickly.

AT_THE_CAPS: list[tuple[str, Callable[[str], object], str]] = [
    ("identity-params", identity.parse_identity, "a" + ";x" * 8000),
    ("identity-quoted", identity.parse_identity, 'a;x="' + "\\a" * 8000),
    ("identity-folding", identity.parse_identity, "a" + "\r\n " * 5000 + ";"),
    ("sdp-blanks", parse_sdp_keys, "a=fingerprint:" + " " * 65000),
    ("sdp-lines", parse_sdp_keys, "m=\r\n" * 16000),
    ("sdp-cr", parse_sdp_keys, "\r" * 65000),
    ("addr-brackets", tn.addr_specs, "<" * 8000),
    ("addr-quotes", tn.party_from_header, '"' + '\\"' * 4000 + '" <sip:a@b>'),
    ("addr-display", tn.addr_specs, "a " * 4000 + "<sip:a@b>"),
    ("uri-no-at", tn.party_from_header, "sip:" + "a;" * 1000),
    ("uri-escapes", tn.party_from_header, "sip:" + "%41" * 680 + "@h"),
    ("tel-params", tn.party_from_header, "tel:1" + ";a" * 1000),
    ("passport", passport.decode, "a" * 4000 + "." + "b" * 4000 + ".c"),
]


@pytest.mark.parametrize(
    ("parse", "value"), [c[1:] for c in AT_THE_CAPS], ids=[c[0] for c in AT_THE_CAPS]
)
def test_worst_shapes_at_the_size_caps_answer_quickly(
    parse: Callable[[str], object], value: str
) -> None:
    started = time.perf_counter()
    with contextlib.suppress(StirError):
        parse(value)
    assert time.perf_counter() - started < 0.5


# --- regressions: crashes found by the fuzzers in fuzz/ --------------------------------------


def _tlvs(raw: bytes) -> list[bytes]:
    """Split concatenated DER TLVs (definite lengths)."""
    out, pos = [], 0
    while pos < len(raw):
        n, head = raw[pos + 1], 2
        if n & 0x80:
            n, head = int.from_bytes(raw[pos + 2 : pos + 2 + (n & 0x7F)], "big"), 2 + (n & 0x7F)
        out.append(raw[pos : pos + head + n])
        pos += head + n
    return out


def _inner(tlv: bytes) -> bytes:
    n = tlv[1]
    return tlv[2 + (n & 0x7F if n & 0x80 else 0) :]


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _with_first_extension_twice(der: bytes) -> bytes:
    tbs, alg, sig = _tlvs(_inner(der))
    fields = _tlvs(_inner(tbs))
    exts = _tlvs(_inner(_tlvs(_inner(fields[-1]))[0]))
    fields[-1] = _der(0xA3, _der(0x30, b"".join([exts[0], *exts])))
    return _der(0x30, _der(0x30, b"".join(fields)) + alg + sig)


def _patched(der: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and der.count(old) >= 1
    return der.replace(old, new, 1)


def test_fuzz_found_load_pem_chain_invalid_version() -> None:
    # FOUND BY FUZZING: fuzz_certs (raw DER, version INTEGER 0x02 mutated to 0x30 / 0x06):
    # load_pem_chain lets cryptography.x509.InvalidVersion escape (certs.py:95), it only
    # catches ValueError/TypeError/UnsupportedAlgorithm. Input: any DER certificate with
    # bytes "a0 03 02 01 02" changed to "a0 03 02 01 30".
    bad = _patched(LEAF_DER, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x30")
    with pytest.raises(StirError):
        certs.load_pem_chain(bad)


def test_fuzz_found_duplicate_extension() -> None:
    # FOUND BY FUZZING: fuzz_certs (structure-aware mode, extension list with one entry
    # repeated): cryptography.x509.DuplicateExtension (an Exception, not a ValueError)
    # escapes certs._ext (certs.py:63) via tnauthlist_of / san_uris / _check_issuer, and
    # certs._check_cert's list(cert.extensions).
    # Fixed by decoding every lazily parsed field in load_pem_chain: the certificate is
    # refused there, so nothing downstream ever sees it.
    with pytest.raises(StirError):
        certs.load_pem_chain(_with_first_extension_twice(LEAF_DER))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # namedCurve OID prime256v1 (1.2.840.10045.3.1.7) changed to an unknown curve:
        # cryptography raises UnsupportedAlgorithm at cert.public_key()
        (b"\x2a\x86\x48\xce\x3d\x03\x01\x07", b"\x2a\x86\x48\xce\x3d\x03\x01\x7f"),
        # the EC point's 0x04 (uncompressed) prefix changed: ValueError at cert.public_key()
        (b"\x03\x42\x00\x04", b"\x03\x42\x00\x07"),
    ],
    ids=["unknown-curve", "bad-point"],
)
def test_fuzz_found_key_publication_unusable_key(old: bytes, new: bytes) -> None:
    # FOUND BY FUZZING: fuzz_oobkeys (header JSON mode, x5c with a mutated certificate):
    # read_publication loaded x5c with plain load_der_x509_certificate and
    # KeyPublication.publisher let cryptography's ValueError / UnsupportedAlgorithm escape
    # publisher_id (oobkeys.py:64). Fixed: x5c goes through certs.load_pem_chain and
    # publisher_id maps an unusable key to 400.
    import base64

    from stird.core import jose, oobkeys

    der = base64.b64encode(_patched(LEAF_DER, old, new)).decode()
    head = jose.b64u_encode(
        json.dumps({"alg": "ES256", "typ": "stir-oob-keys", "x5c": [der]}).encode()
    )
    body = jose.b64u_encode(b'{"exp":2,"iat":1,"keys":[],"tns":["15551230001"]}')

    def publisher() -> str:
        return oobkeys.read_publication(f"{head}.{body}.AAAA").publisher

    with pytest.raises(StirError) as caught:
        publisher()
    assert caught.value.status is SipStatus.BAD_REQUEST


CA_CN = CA.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value.encode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # subject CN UTF8String "STIR*" with invalid UTF-8: ValueError at cert.subject
        (b"\x0c\x05STIR*", b"\x0c\x05\xff\xfeIR*"),
        # subject attribute as BIT STRING with the CN OID: TypeError at cert.subject
        (b"\x0c\x05STIR*", b"\x03\x05\x00TIR*"),
        # issuer CN (the CA's name, first in the TBS) with invalid UTF-8: ValueError at
        # cert.issuer in _path_to_anchor
        (bytes([0x0C, len(CA_CN)]) + CA_CN, bytes([0x0C, len(CA_CN)]) + b"\xff" + CA_CN[1:]),
    ],
    ids=["subject-invalid-utf8", "subject-bitstring", "issuer-invalid-utf8"],
)
def test_fuzz_found_malformed_names_escape_validate_chain(old: bytes, new: bytes) -> None:
    # FOUND BY FUZZING: fuzz_certs (raw mode, byte flips in a name): cryptography parses
    # Name lazily, so load_pem_chain succeeds and validate_chain raises ValueError /
    # TypeError from cert.subject / cert.issuer (certs.py:149 _is_anchor, :163
    # _path_to_anchor, :200 _check_link) instead of StirError.
    with pytest.raises(StirError):  # now refused at load_pem_chain (lazy fields decoded)
        certs.validate_chain(certs.load_pem_chain(_patched(LEAF_DER, old, new)), (CA,), NOW)


UNIQUEID = "stird-lab-1795328781.15"
PHONE = channel_fields("PJSIP/phone-0000000f", UNIQUEID, caller=("+15551110000", "Lab Phone"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeAmi]:
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeAmi) -> AsyncIterator[AmiClient]:
    ami = AmiClient(
        AmiSettings(
            port=fake.port,
            secret="stird-ami-secret",
            timeout=0.5,
            backoff_min=0.05,
            backoff_max=0.2,
            ping_interval=5.0,
        )
    )
    await ami.start()
    assert await ami.wait_connected(2.0)
    yield ami
    await ami.close()


async def wait_until(check: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_fuzz_found_ami_repeated_event_header(fake: FakeAmi, client: AmiClient) -> None:
    # FOUND BY FUZZING: fuzz_ami. A frame with the Event header twice
    # ("Event: Hangup\r\nEvent: Newchannel\r\n\r\n") becomes a Message whose event is a
    # list; panoramisk's Manager.dispatch does regexp.match(list) -> TypeError, raised out
    # of _Protocol.data_received (ami.py:130). asyncio then drops the connection, losing
    # the frames after it in the same read, and stird logs in again.
    bad = b"Event: Hangup\r\nEvent: Newchannel\r\n\r\n"
    await fake.send(bad + event("Newchannel", "call,all", *PHONE))
    assert await wait_until(lambda: client.calls.get(UNIQUEID) is not None), "event lost"
    assert client.health["logins"] == 1 and client.connected


async def test_fuzz_found_ami_repeated_action_id(fake: FakeAmi, client: AmiClient) -> None:
    # FOUND BY FUZZING: fuzz_ami. A reply with the ActionID header twice while an action
    # is pending: message.action_id is a list and self.responses.pop(list) raises
    # TypeError: unhashable type: 'list' out of _Protocol.handle_message (ami.py:126);
    # the connection is dropped as above.
    fake.silent.add("pjsiphangup")
    pending = asyncio.create_task(client.pjsip_hangup("PJSIP/carrier-00000012", 428))
    assert await wait_until(lambda: any(a.get("Action") == "PJSIPHangup" for a in fake.received))
    aid = next(a["ActionID"] for a in fake.received if a.get("Action") == "PJSIPHangup")
    reply = frame(
        ("Response", "Success"), ("ActionID", aid), ("ActionID", aid), ("Message", "Channel Hungup")
    )
    await fake.send(reply + event("Newchannel", "call,all", *PHONE))
    await pending
    assert await wait_until(lambda: client.calls.get(UNIQUEID) is not None), "event lost"
    assert client.health["logins"] == 1 and client.connected


# --- HEP3 (issue 19): well-framed datagrams with arbitrary chunks --------------------------

_HEP_CHUNK = st.tuples(
    st.sampled_from([0, 0, 0, 0x0BEE]),
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 0x99]),
    st.binary(max_size=40) | st.sampled_from([b"", b"INVITE sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n"]),
)


@FAST
@given(st.lists(_HEP_CHUNK, max_size=16))
def test_hep_framed_chunks_raise_only_hep_errors(chunks: list[tuple[int, int, bytes]]) -> None:
    import struct

    from stird.core.hep import HepError, decode_hep, parse_sip

    body = b"".join(struct.pack("!HHH", v, t, 6 + len(value)) + value for v, t, value in chunks)
    try:
        packet = decode_hep(b"HEP3" + struct.pack("!H", 6 + len(body)) + body)
        message = parse_sip(packet.payload)
        _ = (message.cseq, message.tag("to"), message.sdp, message.call_id)
    except HepError:
        pass
