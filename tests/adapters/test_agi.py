"""FastAGI server against a fake Asterisk that behaves like the 22.10.1 transcripts:
sign in the pre-dial handler and on the caller channel (mky from the configured DTLS
certificate), verify valid / tampered / 1,900 characters / comma-joined, HANGUP notices,
the reply forms, and peers that close early, send garbage or say nothing."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry

from stird.adapters.agi import AgiServer, FailAction, split_identity
from stird.adapters.agi_protocol import AgiProtocolError, AgiReply, AgiRequest, parse_reply, quote
from stird.adapters.api import StirApi
from stird.adapters.connpolicy import ConnectionPolicy, Listeners
from stird.adapters.dtls import DtlsCertificates, DtlsError
from stird.adapters.metrics import Metrics
from stird.adapters.overload import LoadShedder
from stird.adapters.store_memory import MemoryStore
from stird.wiring.app import build_runtime
from stird.wiring.config import Config
from tests.asterisk_fakes import (
    USAGE_1,
    USAGE_2,
    FakeChannel,
    env_chunks,
    inbound_env,
    predial_env,
    run_agi,
)
from tests.listen_check import BURST, queued_connections

CALLER, CALLEE = "+15551110000", "+15551230001"
FROM = '"Carrier (Main) <x>" <sip:+15552220000@carrier.example;user=phone>;tag=6629SIPpTag001'
TO = '"Bob Callee" <sip:+15557770002@pbx.example;user=phone>'
RURI = "sip:+15557770002@127.0.0.1:5080;user=phone"


def make_api(tmp_path: Path, base: str = "http://127.0.0.1:8790") -> StirApi:
    config = Config(server=replace(Config().server, state_dir=tmp_path / "state"))
    built = build_runtime(config, MemoryStore(), base, int(time.time()))
    return StirApi(built.runtime, Metrics())


@pytest.fixture(scope="module")
def module_api(tmp_path_factory: pytest.TempPathFactory) -> StirApi:
    return make_api(tmp_path_factory.mktemp("agi"))


@pytest.fixture
def api(module_api: StirApi) -> StirApi:
    return module_api


def write_dtls_cert(path: Path, name: str = "asterisk-dtls") -> str:
    """A self-signed ECDSA certificate (+ SEC1 key) as a dtls_cert_file; its fingerprint
    computed the way openssl prints it (fact 18)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem + key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))  # fmt: skip
    os.replace(tmp, path)  # atomic, as the README asks (fact 22)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def asterisk_offer(fingerprint: str, streams: int = 1) -> str:
    """The SDP of Asterisk's DTLS offer (facts 16, 19, 21): one fingerprint per m= line."""
    head = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    media = ("m=audio 20032 UDP/TLS/RTP/SAVP 0 8 101\r\na=connection:new\r\na=setup:actpass\r\n"
             f"a=fingerprint:SHA-256 {fingerprint}\r\n")  # fmt: skip
    return head + media * streams


def claims(identity: str) -> dict[str, Any]:
    payload = identity.split(";", 1)[0].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture
async def serve(api: StirApi) -> AsyncIterator[Callable[..., Awaitable[tuple[str, int]]]]:
    servers: list[AgiServer] = []

    async def start(dtls: DtlsCertificates | None = None, **options: Any) -> tuple[str, int]:
        server = AgiServer(options.pop("api", api), dtls or DtlsCertificates({}), **options)
        servers.append(server)
        return await server.start("127.0.0.1", 0)

    yield start
    for server in servers:
        await server.close()


def inbound(identity: list[str], **extra: Any) -> FakeChannel:
    headers = [("From", FROM), ("To", TO), ("Call-ID", "1-6629@127.0.0.1"), ("Date", "")]
    headers += [("Identity", value) for value in identity]
    return FakeChannel(
        inbound_env("verify"), variables={"CHANNEL(pjsip,request_uri)": RURI}, headers=headers,
        **extra,
    )  # fmt: skip


async def signed(api: StirApi, fingerprint: str = "AB:" * 31 + "CD") -> dict[str, Any]:
    return await api.sign({"orig": "+15552220000", "dest": ["+15557770002"],
                           "sdp": asterisk_offer(fingerprint)})  # fmt: skip


def with_date(channel: FakeChannel, date: str) -> FakeChannel:
    channel.headers = [(k, date if k == "Date" else v) for k, v in channel.headers]
    return channel


# --- sign --------------------------------------------------------------------------------


async def test_sign_clears_a_stale_action_first_and_overwrites_stale_results(
    api: StirApi, serve: Any
) -> None:
    """A second sign on the same channel: the earlier session's results never survive."""
    stale = {"STIRD_ACTION": "reject", "STIRD_CODE": "503", "STIRD_REASON": "Service Unavailable",
             "STIRD_IDENTITY_2": "old", "STIRD_DATE": "old"}  # fmt: skip
    variables = {"ARG1": CALLEE, "ARG2": CALLER, **stale}
    channel = await run_agi(await serve(), FakeChannel(predial_env("sign"), variables))
    v = channel.variables
    assert channel.commands[1] == 'SET VARIABLE STIRD_ACTION ""'  # right after the read
    assert (v["STIRD_ACTION"], v["STIRD_CODE"], v["STIRD_REASON"]) == ("continue", "", "")
    assert v["STIRD_IDENTITY_2"] != "old" and v["STIRD_DATE"] != "old"
    assert ";ppt=shaken" in v["STIRD_IDENTITY"]


async def test_sign_in_predial_handler_verifies_with_the_offered_fingerprint(
    tmp_path: Path, api: StirApi, serve: Any
) -> None:
    fingerprint = write_dtls_cert(tmp_path / "trunk.crt")
    address = await serve(DtlsCertificates({"trunk": tmp_path / "trunk.crt"}))
    variables = {"ARG1": CALLEE, "ARG2": CALLER, "CONNECTEDLINE(num)": CALLER,
                 "CALLERID(num)": CALLEE, "CHANNEL(endpoint)": "trunk"}  # fmt: skip
    channel = await run_agi(address, FakeChannel(predial_env("sign"), variables))
    v = channel.variables
    assert (v["STIRD_ACTION"], v.get("STIRD_CODE", "")) == ("continue", "")
    assert ";ppt=msec" in v["STIRD_IDENTITY"] and ";ppt=shaken" in v["STIRD_IDENTITY_2"]
    # a fresh channel: one read, the three results that change, the action last
    assert channel.commands[0].startswith("GET FULL VARIABLE ")
    assert [c.split()[2] for c in channel.commands[1:]] == [
        "STIRD_IDENTITY", "STIRD_IDENTITY_2", "STIRD_DATE", "STIRD_ACTION"]  # fmt: skip
    assert channel.commands[-1] == 'SET VARIABLE STIRD_ACTION "continue"'  # last: all set
    assert not any(c.startswith("GET VARIABLE") for c in channel.commands)
    assert claims(v["STIRD_IDENTITY"])["mky"] == [
        {"alg": "sha-256", "dig": fingerprint.replace(":", "")}
    ]
    # the INVITE Asterisk then sends, audio + video: the same fingerprint twice (fact 21)
    verdict = await api.verify({
        "identity": [v["STIRD_IDENTITY"], v["STIRD_IDENTITY_2"]],
        "from": f'"Lab Phone" <sip:{CALLER}@127.0.0.1:5080>;tag=a', "to": f"<sip:{CALLEE}@x>",
        "date": v["STIRD_DATE"], "sdp": asterisk_offer(fingerprint, 2), "call_id": "c1",
    })  # fmt: skip
    assert verdict["verdict"] == "valid"
    assert [p["valid"] for p in verdict["passports"]] == [True, True]


async def test_sign_reads_connected_line_on_the_outgoing_channel(
    tmp_path: Path, serve: Any
) -> None:
    """No ARG2 / STIRD_ORIG: CALLERID(num) is the dialled number there (fact 4)."""
    address = await serve()
    variables = {"STIRD_DEST": CALLEE, "CONNECTEDLINE(num)": CALLER, "CALLERID(num)": CALLEE}
    channel = await run_agi(address, FakeChannel(predial_env("sign"), variables))
    v = channel.variables
    assert (
        v["STIRD_ACTION"] == "continue" and v.get("STIRD_IDENTITY_2", "") == ""
    )  # unset reads as empty
    assert claims(v["STIRD_IDENTITY"])["orig"] == {"tn": CALLER[1:]}  # shaken only: no cert
    assert claims(v["STIRD_IDENTITY"])["dest"] == {"tn": [CALLEE[1:]]}


async def test_sign_on_the_caller_channel_with_agi_arguments(tmp_path: Path, serve: Any) -> None:
    """The bounded shape of fact 32: AGI(agi://…/sign,${EXTEN},${CALLERID(num)},trunk)."""
    fingerprint = write_dtls_cert(tmp_path / "t.crt")
    address = await serve(DtlsCertificates({"trunk": tmp_path / "t.crt"}))
    env = predial_env("sign", agi_callerid=CALLER, agi_extension=CALLEE, agi_arg_1=CALLEE,
                      agi_arg_2=CALLER, agi_arg_3="trunk")  # fmt: skip
    channel = await run_agi(address, FakeChannel(env, {"CHANNEL(endpoint)": "phone"}))
    mky = claims(channel.variables["STIRD_IDENTITY"])["mky"]
    assert mky == [{"alg": "sha-256", "dig": fingerprint.replace(":", "")}]


async def test_sign_fails_closed_without_the_certificate_file(tmp_path: Path, serve: Any) -> None:
    """Asterisk would offer an empty fingerprint (fact 23): never sign an mky for it."""
    address = await serve(DtlsCertificates({"trunk": tmp_path / "missing.crt"}))
    variables = {"ARG1": CALLEE, "ARG2": CALLER, "CHANNEL(endpoint)": "trunk"}
    channel = await run_agi(address, FakeChannel(predial_env("sign"), variables))
    v = channel.variables
    assert (v["STIRD_ACTION"], v["STIRD_CODE"], v.get("STIRD_IDENTITY", "")) == (
        "reject",
        "500",
        "",
    )


def test_dtls_certificates_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.crt"
    first = write_dtls_cert(path)
    certs = DtlsCertificates({"trunk": path})
    assert certs.fingerprint("trunk") == first == certs.fingerprint("trunk")
    assert certs.fingerprint("phone") is None and certs.sdp("phone") is None
    second = write_dtls_cert(path, "replaced")  # atomic rename: a new inode
    assert second != first and certs.fingerprint("trunk") == second
    sdp = certs.sdp("trunk", streams=2) or ""
    assert sdp.count(f"a=fingerprint:SHA-256 {second}\r\n") == 2
    sha1 = DtlsCertificates({"trunk": path}, "sha-1").fingerprint("trunk") or ""
    assert len(sha1.split(":")) == 20
    path.write_text("not a certificate")
    with pytest.raises(DtlsError, match="no PEM certificate"):
        certs.fingerprint("trunk")
    path.unlink()
    with pytest.raises(DtlsError, match="cannot read"):
        certs.fingerprint("trunk")


# --- verify ------------------------------------------------------------------------------


async def test_verify_valid_reads_every_identity_header(api: StirApi, serve: Any) -> None:
    sign = await signed(api)
    address = await serve()
    channel = with_date(inbound(sign["identity"]), sign["date"])
    await run_agi(address, channel)
    v = channel.variables
    assert (v["STIRD_VERDICT"], v["STIRD_VERSTAT"], v["STIRD_ACTION"]) == (
        "valid", "TN-Validation-Passed", "continue")  # fmt: skip
    assert (v["STIRD_CODE"], v["STIRD_ATTEST"], v["STIRD_REASON"]) == ("", "A", "")
    reads = [c for c in channel.commands if c.startswith("GET")]
    assert reads == [  # lines 1, 2 and the other headers at once; then line 3 (empty)
        "GET FULL VARIABLE ${PJSIP_HEADER(read,Identity,1)}|${PJSIP_HEADER(read,Identity,2)}"
        "|${PJSIP_HEADER(read,From)}|${PJSIP_HEADER(read,P-Asserted-Identity)}"
        "|${PJSIP_HEADER(read,To)}|${PJSIP_HEADER(read,Date)}|${CHANNEL(pjsip,call-id)}"
        "|${CHANNEL(pjsip,request_uri)}",
        "GET FULL VARIABLE ${PJSIP_HEADER(read,Identity,3)}",
    ]
    assert len(channel.commands) == 12  # + clear, 8 results, STIRD_ACTION
    assert v["STIRD_MKY"] == "unchecked"  # no HEP here: the msec header's mky unchecked


async def test_verify_one_identity_line_is_one_read(api: StirApi, serve: Any) -> None:
    sign = await signed(api)
    channel = with_date(inbound([", ".join(sign["identity"])]), sign["date"])
    await run_agi(await serve(), channel)
    assert channel.variables["STIRD_VERDICT"] == "valid"
    assert [c for c in channel.commands if c.startswith("GET")] == [channel.commands[1]]


@pytest.mark.parametrize("where", ["From", "Identity"])
async def test_verify_a_value_holding_a_bar_is_read_on_its_own(
    api: StirApi, serve: Any, where: str
) -> None:
    """'|' inside a value (a quoted display name) breaks the batch's field count: every
    read is redone one by one and the values arrive whole."""
    sign = await signed(api)
    identity = [f'{sign["identity"][0]};x-note="a|b"', *sign["identity"][1:]]
    channel = with_date(inbound(identity if where == "Identity" else sign["identity"]),
                        sign["date"])  # fmt: skip
    if where == "From":
        channel.headers = [
            (k, v.replace("Carrier (Main)", "Carrier|Main") if k == "From" else v)
            for k, v in channel.headers
        ]
    await run_agi(await serve(), channel)
    assert channel.variables["STIRD_VERDICT"] == "valid"
    reads = [c.removeprefix("GET FULL VARIABLE ") for c in channel.commands if "GET" in c]
    assert reads[1:] == [
        "${PJSIP_HEADER(read,Identity,1)}", "${PJSIP_HEADER(read,Identity,2)}",
        "${PJSIP_HEADER(read,Identity,3)}", "${PJSIP_HEADER(read,From)}",
        "${PJSIP_HEADER(read,P-Asserted-Identity)}", "${PJSIP_HEADER(read,To)}",
        "${PJSIP_HEADER(read,Date)}", "${CHANNEL(pjsip,call-id)}",
        "${CHANNEL(pjsip,request_uri)}",
    ]  # fmt: skip


async def test_verify_splits_a_comma_joined_line(api: StirApi, serve: Any) -> None:
    sign = await signed(api)
    channel = with_date(inbound([", ".join(sign["identity"])]), sign["date"])
    await run_agi(await serve(), channel)
    assert channel.variables["STIRD_VERDICT"] == "valid"


async def test_verify_tampered_is_438_reject(api: StirApi, serve: Any) -> None:
    sign = await signed(api)
    token, rest = sign["identity"][1].split(";", 1)
    bad = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    channel = with_date(inbound([f"{bad};{rest}"]), sign["date"])
    await run_agi(await serve(), channel)
    v = channel.variables
    assert (v["STIRD_CODE"], v["STIRD_ACTION"], v["STIRD_VERSTAT"]) == (
        "438", "reject", "TN-Validation-Failed")  # fmt: skip
    assert v["STIRD_REASON"] == "Invalid Identity Header"
    assert v["STIRD_REASON_HEADER"].startswith("SIP ;cause=438")


async def test_verify_an_identity_header_of_1900_characters(tmp_path: Path, serve: Any) -> None:
    """GET VARIABLE would read it as unset (fact 5); GET FULL VARIABLE reads it whole."""
    long_api = make_api(tmp_path, "http://127.0.0.1:8790/" + "x" * 720)
    sign = await long_api.sign({"orig": "+15552220000", "dest": ["+15557770002"],
                                "ppt": "shaken"})  # fmt: skip
    (identity,) = sign["identity"]
    assert len(identity) >= 1900
    channel = with_date(inbound([identity]), sign["date"])
    assert channel.answer("GET VARIABLE PJSIP_HEADER(read,Identity)") == [b"200 result=0\n"]
    await run_agi(await serve(api=long_api), channel)
    assert channel.variables["STIRD_VERDICT"] == "valid"


async def test_unsolicited_hangup_is_a_notice_not_the_reply(api: StirApi, serve: Any) -> None:
    """Session D: HANGUP arrives mid-session, GET/SET still answer 200 afterwards."""
    sign = await signed(api)
    channel = with_date(inbound(sign["identity"], hangup_before=2), sign["date"])
    await run_agi(await serve(), channel)
    assert channel.dead and channel.variables["STIRD_VERDICT"] == "valid"
    assert channel.variables["STIRD_ACTION"] == "continue"


async def test_a_missing_field_is_400_and_applies_the_fail_action(api: StirApi, serve: Any) -> None:
    """A bad field is the caller's fault, mapped like HTTP 400 and JSON-RPC -32602 (one
    table, stird.adapters.errors), never stird's 500."""
    channel = inbound([])
    channel.headers = [(k, v) for k, v in channel.headers if k != "From"]  # not PJSIP-like
    await run_agi(await serve(fail_action=FailAction.CONTINUE), channel)
    v = channel.variables
    assert (v["STIRD_ACTION"], v["STIRD_CODE"], v["STIRD_REASON"], v["STIRD_VERDICT"],
            v["STIRD_VERSTAT"]) == ("continue", "400", "Bad Request", "error",
                                    "No-TN-Validation")  # fmt: skip
    # the call goes on unverified on stird's word: counted for the operator (issue #18)
    text = api.metrics.render().decode()
    assert 'stird_fail_open_total{code="400",interface="agi",route="verify"} 1.0' in text


# --- the wire ----------------------------------------------------------------------------

SIGN_VALUE = (
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0"
    "LmV4YW1wbGUuaW52YWxpZC9zdGlyZC5wZW0ifQ.eyJhdHRlc3QiOiJBIn0.ZHVtbXk;info=<https://cert.exa"
    "mple.invalid/stird.pem>;alg=ES256;ppt=shaken"
)


async def test_reply_forms_of_the_sign_transcript(api: StirApi) -> None:
    replies: list[AgiReply] = []
    commands = [
        "GET VARIABLE CALLERID(num)", "GET FULL VARIABLE ${STIRD_ORIG}->${STIRD_DEST}",
        "GET VARIABLE NO_SUCH_VARIABLE", f"SET VARIABLE STIRD_IDENTITY {quote(SIGN_VALUE)}",
        'VERBOSE "stird sign done" 1', "NOOP", "STIRD_UNKNOWN_COMMAND foo", "GET VARIABLE",
        "GET FULL VARIABLE ${PJSIP_HEADER(read,From)}",
    ]  # fmt: skip

    async def probe(request: AgiRequest) -> None:
        for command in commands:
            replies.append(await request.send_command(command))

    server = AgiServer(api, DtlsCertificates({}))
    server.add_route("probe", probe)
    address = await server.start("127.0.0.1", 0)
    variables = {"CALLERID(num)": CALLEE, "STIRD_ORIG": CALLER, "STIRD_DEST": CALLEE}
    channel = FakeChannel(predial_env("probe"), variables, headers=[("From", FROM)])
    try:
        await run_agi(address, channel)
    finally:
        await server.close()
    assert channel.commands == commands
    assert [(r.code, r.result, r.value) for r in replies[:3]] == [
        (200, "1", CALLEE), (200, "1", f"{CALLER}->{CALLEE}"), (200, "0", None)]  # fmt: skip
    assert channel.variables["STIRD_IDENTITY"] == SIGN_VALUE
    assert [(r.code, r.result) for r in replies[3:6]] == [(200, "1"), (200, "1"), (200, "0")]
    assert replies[6].code == 510 and replies[7].code == 520
    assert replies[7].text.encode() + b"\n" == USAGE_1 + USAGE_2 and len(USAGE_1) == 51
    assert replies[8].variable == FROM  # parentheses and <> inside the value


def test_the_fake_sends_the_transcript_bytes() -> None:
    """Byte counts of fastagi-sign.txt / fastagi-verify.txt: the block in 398 + 100 and
    408 + 100 bytes, the 520 text in 51 + 278."""
    assert [len(c) for c in env_chunks(predial_env("sign"))] == [398, 100]
    assert [len(c) for c in env_chunks(inbound_env("verify"))] == [408, 100]
    assert (len(USAGE_1), len(USAGE_2)) == (51, 278)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=1 (+15551230001)", AgiReply(200, "1", "+15551230001")),
        ("200 result=1 ()", AgiReply(200, "1", "")),
        ("200 result=0", AgiReply(200, "0", None)),
        ("200 result=1 (a (b) <c;d=e>)", AgiReply(200, "1", "a (b) <c;d=e>")),
        ("510 Invalid or unknown command", AgiReply(510)),
        ("511 Command Not Permitted on a dead channel or intercept routine", AgiReply(511)),
    ],
)
def test_parse_reply(line: str, expected: AgiReply) -> None:
    reply = parse_reply(line)
    assert (reply.code, reply.result, reply.value) == (expected.code, expected.result,
                                                       expected.value)  # fmt: skip


@pytest.mark.parametrize("line", ["hello", "20 result=1", "200 nothing", ""])
def test_parse_reply_refuses_garbage(line: str) -> None:
    with pytest.raises(AgiProtocolError):
        parse_reply(line)


def test_quote_and_split() -> None:
    assert quote('a "b" \\c\r\n') == '"a \\"b\\" \\\\c"'
    assert split_identity('A;info=<https://x/a,b>;p="x,y", B;info=<u>, ') == [
        'A;info=<https://x/a,b>;p="x,y"', "B;info=<u>"]  # fmt: skip


# --- peers that misbehave ----------------------------------------------------------------


async def wait_until(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def read_to_eof(reader: asyncio.StreamReader, within: float = 2.0) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionError:
        return b""


async def test_early_close_and_garbage_neither_spin_nor_leak(api: StirApi) -> None:
    server = AgiServer(api, DtlsCertificates({}), timeout=0.5)
    address = await server.start("127.0.0.1", 0)
    first, second = env_chunks(inbound_env("verify"))
    cpu = time.process_time()
    try:
        peers = [b"", first, first + second, b"x" * 70000, b"garbage\nmore\n\n"]
        for data in peers:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(data)
            if data == first + second:  # closes before answering the first command
                assert (await reader.readline()).startswith(b"SET VARIABLE STIRD_ACTION")
            writer.close()
        reader, writer = await asyncio.open_connection(*address)
        writer.write(first + second)
        await reader.readline()
        writer.write(b"hello\n")  # not an AGI reply
        assert await read_to_eof(reader) == b""
        writer.close()
        await wait_until(lambda: server.active == 0, 1.0)
        await asyncio.sleep(0.3)  # a spinning handler would burn CPU here
        assert time.process_time() - cpu < 0.4
        assert server.health["peer_errors"] >= 2
    finally:
        await server.close()


async def test_silent_peer_is_dropped_within_the_timeout(api: StirApi) -> None:
    listeners = Listeners.build(ConnectionPolicy(max_connections=2))
    server = AgiServer(api, DtlsCertificates({}), timeout=0.3, listeners=listeners)
    address = await server.start("127.0.0.1", 0)
    first, second = env_chunks(inbound_env("verify"))
    try:
        cpu, started = time.process_time(), time.monotonic()
        silent_reader, silent_writer = await asyncio.open_connection(*address)  # says nothing
        mute_reader, mute_writer = await asyncio.open_connection(*address)
        mute_writer.write(first + second)  # then never answers
        await wait_until(lambda: server.active == 2, 1.0)
        # at the cap: the silent connection (no session yet) makes room for a new one
        extra_reader, extra_writer = await asyncio.open_connection(*address)
        assert await read_to_eof(silent_reader, 0.2) == b""
        extra_writer.write(first + second)  # a second session: both slots are sessions now
        assert (await extra_reader.readline()).startswith(b"SET VARIABLE STIRD_ACTION")
        refused_reader, refused_writer = await asyncio.open_connection(*address)
        assert await read_to_eof(refused_reader, 0.2) == b""  # every slot busy: refused
        assert (await read_to_eof(mute_reader)).startswith(b"SET VARIABLE STIRD_ACTION")
        assert await read_to_eof(extra_reader) == b""
        assert time.monotonic() - started < 0.3 + 0.4
        await wait_until(lambda: server.active == 0, 0.5)
        assert time.process_time() - cpu < 0.3 and server.health["refused"] == 1
        for writer in (silent_writer, mute_writer, extra_writer, refused_writer):
            writer.close()
        channel = await run_agi(address, FakeChannel(inbound_env("nope")))
        assert channel.commands == []  # unknown script: closed without a command
    finally:
        await server.close()


async def test_accept_queue_holds_a_burst_of_sessions(serve: Any) -> None:
    """One connection per AGI() call: a pause in stird must not make the kernel drop new
    sessions' SYNs (each dropped caller waits out a 1 s, 3 s … retransmission)."""
    _, port = await serve()
    assert queued_connections(port) == BURST  # asyncio's default backlog held 101


async def test_behind_it_applies_the_fail_action_before_reading_the_channel(
    api: StirApi, serve: Any
) -> None:
    """A refusal while the loop runs late: STIRD_CODE 503 and the fail action, without
    the channel reads (each a round trip stird cannot afford just then)."""
    sign = await signed(api)
    api.shedder = LoadShedder(0.25, registry=CollectorRegistry())
    api.shedder.observe(0.5)
    try:
        channel = with_date(inbound(sign["identity"]), sign["date"])
        await run_agi(await serve(fail_action=FailAction.CONTINUE), channel)
    finally:
        api.shedder = None
    v = channel.variables
    assert (v["STIRD_ACTION"], v["STIRD_CODE"], v["STIRD_VERDICT"], v["STIRD_REASON"]) == (
        "continue", "503", "error", "Service Unavailable")  # fmt: skip
    assert not [c for c in channel.commands if c.startswith("GET")]


async def test_verify_batch_longer_than_a_line_fails_closed(api: StirApi, serve: Any) -> None:
    """Hostile Identity headers whose batched read overruns MAX_LINE (64 KiB): the session
    ends at once without a result (STIRD_ACTION stays empty: the dialplan fails closed)."""
    channel = inbound(["x" * 40_000, "y" * 40_000])
    started = time.monotonic()
    await run_agi(await serve(), channel)
    assert time.monotonic() - started < 2
    assert channel.variables["STIRD_ACTION"] == ""
    assert "STIRD_VERDICT" not in channel.variables


async def test_idle_connections_do_not_block_legitimate_sessions(api: StirApi, serve: Any) -> None:
    """Issue #17: a local process holding 200 idle connections made 40 of 50 sessions
    fail closed. At the cap a connection without a session makes room for a new one."""
    sign = await signed(api)
    listeners = Listeners.build(ConnectionPolicy(max_connections=64))
    address = await serve(listeners=listeners, timeout=5.0)
    idle = []
    for _ in range(200):
        idle.append(await asyncio.open_connection(*address))
    await asyncio.sleep(0.1)
    channels = [with_date(inbound(sign["identity"]), sign["date"]) for _ in range(50)]
    await asyncio.gather(*(run_agi(address, channel) for channel in channels))
    verdicts = [c.variables.get("STIRD_VERDICT") for c in channels]
    assert verdicts == ["valid"] * 50
    assert listeners.stats.closed.labels("agi", "refused")._value.get() == 0
    for _, writer in idle:
        writer.close()
