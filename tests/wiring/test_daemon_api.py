"""The daemon's API over real listening sockets: /v1/sign, /v1/verify, /jsonrpc, the
netstring JSON-RPC listener, health, metrics and certificates; malformed bodies; reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.adapters.netstring import NetstringDecoder, encode
from stird.adapters.sdnotify import SystemdNotifier
from stird.core.sipdate import format_sip_date
from stird.wiring.app import Daemon
from stird.wiring.config import Config, HostPort, VerifyConfig
from tests.listen_check import queued_connections

FP = "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1"
SDP = f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 20000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:SHA-256 {FP}\r\n"
FROM = '"Alice" <sip:+15551110000@127.0.0.1:5190>;tag=14396SIPpTag001'
TO = "<sip:+15552220000@127.0.0.1:5060>"


def config(tmp_path: Path, **verify: Any) -> Config:
    server = replace(
        Config().server,
        http=HostPort("127.0.0.1", 0),
        jsonrpc=HostPort("127.0.0.1", 0),
        agi=None,
        state_dir=tmp_path / "state",
    )
    return Config(server=server, verify=VerifyConfig(**verify))


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(config(tmp_path))
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    host, port = daemon.http_address
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session, f"http://{host}:{port}"


async def post(http: tuple[aiohttp.ClientSession, str], path: str, body: Any) -> tuple[int, Any]:
    session, base = http
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(base + path, data=data) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def signed(http: tuple[aiohttp.ClientSession, str], **extra: Any) -> dict[str, Any]:
    status, body = await post(http, "/v1/sign", {"orig": FROM, "dest": [TO], "sdp": SDP, **extra})
    assert status == 200, body
    return dict(body)


def verify_body(sign: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"identity": sign["identity"], "from": FROM, "to": TO, "date": sign["date"],
            "sdp": SDP, "callid": "1-14396@127.0.0.1", "dlg_h_entry": 1, "dlg_h_id": 2, **extra}  # fmt: skip


async def test_sign_then_verify(http: tuple[aiohttp.ClientSession, str]) -> None:
    sign = await signed(http)
    assert len(sign["identity"]) == 2 and ";ppt=msec" in sign["identity"][0]
    assert sign["credential"] == "dev" and sign["passport"].count(".") == 2
    status, verdict = await post(
        http, "/v1/verify", verify_body(sign, pai="<sip:+15551110000@127.0.0.1;user=phone>")
    )
    assert status == 200
    assert (verdict["verdict"], verdict["action"], verdict["verstat"]) == (
        "valid",
        "continue",
        "TN-Validation-Passed",
    )
    assert verdict["pai"] == "<sip:+15551110000;verstat=TN-Validation-Passed@127.0.0.1;user=phone>"
    # the embedded default's own credential is a configured anchor, not a first use
    assert (verdict["trust"], verdict["replay"]) == ("anchor", "checked")
    assert {p["trust"] for p in verdict["passports"]} == {"anchor"}


@pytest.mark.parametrize(
    ("orig", "dest"),
    [("+15551110000", "+15552220000"), ("15551110000", "15552220000"),
     ("+1 555 111 0000", "tel:+15552220000")],
)  # fmt: skip
async def test_verify_takes_bare_telephone_numbers(
    http: tuple[aiohttp.ClientSession, str], orig: str, dest: str
) -> None:
    """README "IDs": a telephone number may stand for From/To/PAI/R-URI; it is compared,
    not waved through: another number is not the signed one."""
    sign = await signed(http)
    body = verify_body(sign, **{"from": orig, "to": dest, "pai": orig, "ruri": dest})
    status, verdict = await post(http, "/v1/verify", body)
    assert (status, verdict["verdict"]) == (200, "valid"), verdict
    other = verify_body(sign, **{"from": "+15551110001", "to": dest})
    status, verdict = await post(http, "/v1/verify", other)
    assert status == 200 and verdict["verdict"] != "valid", verdict


async def test_tampered_is_438_reject(http: tuple[aiohttp.ClientSession, str]) -> None:
    sign = await signed(http)
    token, rest = sign["identity"][0].split(";", 1)
    bad = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    status, verdict = await post(http, "/v1/verify", verify_body(sign, identity=[f"{bad};{rest}"]))
    assert status == 200
    assert (verdict["code"], verdict["action"], verdict["verstat"]) == (
        438,
        "reject",
        "TN-Validation-Failed",
    )
    assert verdict["reason_header"].startswith("SIP ;cause=438")


async def test_stale_date_refused_when_signing(http: tuple[aiohttp.ClientSession, str]) -> None:
    status, body = await post(http, "/v1/sign", {"orig": FROM, "dest": [TO], "sdp": SDP,
                                                 "date": "Fri, 25 Sep 2015 19:12:25 GMT"})  # fmt: skip
    assert (status, body["code"], body["reason"]) == (403, 403, "Stale Date")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/sign", b"{not json", "body"),
        ("/v1/sign", [], "body"),
        ("/v1/sign", {"dest": [TO]}, "orig"),
        ("/v1/sign", {"orig": FROM}, "dest"),
        ("/v1/sign", {"orig": FROM, "dest": "x" * 10}, "dest"),
        ("/v1/sign", {"orig": FROM, "dest": [TO], "ppt": "div"}, "ppt"),
        ("/v1/sign", {"orig": FROM, "dest": [TO], "attest": "D"}, "attest"),
        ("/v1/sign", {"orig": "<<<", "dest": [TO]}, "orig"),
        ("/v1/sign", {"orig": FROM, "dest": [TO], "oob": "yes"}, "oob"),
        ("/v1/verify", {"to": TO}, "from"),
        ("/v1/verify", {"from": FROM}, "to"),
        ("/v1/verify", {"from": FROM, "to": TO, "identity": [1]}, "identity"),
        ("/v1/verify", {"from": FROM, "to": TO, "dialog_forming": "yes"}, "dialog_forming"),
        ("/v1/verify", {"from": FROM, "to": TO, "timeout_ms": 5}, "timeout_ms"),
    ],
)
async def test_malformed_bodies_name_the_field(
    http: tuple[aiohttp.ClientSession, str], path: str, body: Any, field: str
) -> None:
    status, answer = await post(http, path, body)
    assert status == 400, answer
    assert answer["field"] == field


async def test_uncovered_caller_is_403(http: tuple[aiohttp.ClientSession, str]) -> None:
    status, body = await post(http, "/v1/sign", {"orig": "sip:alice@example.com", "dest": [TO]})
    assert (status, body["code"]) == (403, 403)


async def test_oversized_body_is_413(http: tuple[aiohttp.ClientSession, str]) -> None:
    status, _ = await post(http, "/v1/sign", b"x" * (300 * 1024))
    assert status == 413


@pytest.mark.parametrize(
    ("path", "method", "params", "field"),
    [
        ("/v1/sign", "stir.sign", {"orig": FROM}, "dest"),
        ("/v1/sign", "stir.sign", {"orig": "not a number", "dest": [TO]}, "orig"),
        ("/v1/sign", "stir.sign", {"orig": FROM, "dest": [TO], "callid": ""}, "callid"),
        ("/v1/sign", "stir.sign", {"orig": FROM, "dest": [TO], "dlg_h_entry": 1}, "dlg_h_id"),
        ("/v1/verify", "stir.verify", {"to": TO}, "from"),
        ("/v1/verify", "stir.verify", {"from": FROM, "to": TO, "timeout_ms": 1}, "timeout_ms"),
        ("/v1/dialog", "stir.dialog", {"event": "answered"}, "call_id"),
        ("/v1/dialog", "stir.dialog", {"event": "maybe", "callid": "c"}, "event"),
        ("/v1/dialog", "stir.dialog", [], "body"),
    ],
)
async def test_a_bad_field_is_400_on_every_transport(
    http: tuple[aiohttp.ClientSession, str], path: str, method: str, params: Any, field: str
) -> None:
    """One error family, one table: HTTP 400 and JSON-RPC -32602, both naming the field
    (FastAGI: STIRD_CODE=400, tests/adapters/test_agi.py)."""
    status, body = await post(http, path, params)
    assert (status, body["code"], body["reason"], body["field"]) == (
        400, 400, "Bad Request", field)  # fmt: skip
    assert body["error"].startswith(f"{field}: ")
    call = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    status, answer = await post(http, "/jsonrpc", call)
    error = answer["error"]
    assert (status, error["code"], error["data"]["code"], error["data"]["field"]) == (
        200, -32602, 400, field)  # fmt: skip
    assert error["message"] == f"400 Bad Request: {body['error']}"


async def test_a_bad_field_is_on_the_status_page(
    daemon: Daemon, http: tuple[aiohttp.ClientSession, str]
) -> None:
    """A request refused for a bad field is a call the operator must see (an error)."""
    assert (await post(http, "/v1/sign", {"orig": "+12025550100"}))[0] == 400
    assert (await post(http, "/v1/verify", {"identity": [], "from": FROM}))[0] == 400
    kinds = [(r.kind, r.code) for r in daemon.api.calls.recent(5)]
    assert kinds == [("verify", 400), ("sign", 400)]


async def test_jsonrpc_over_http(http: tuple[aiohttp.ClientSession, str]) -> None:
    sign = await signed(http)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "stir.verify", "params": verify_body(sign)},
        {"jsonrpc": "2.0", "id": "two", "method": "stir.status"},
        {"jsonrpc": "2.0", "method": "stir.status"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": 3, "method": "stir.sign", "params": {"orig": FROM}},
        {"jsonrpc": "2.0", "id": 4, "method": "nope"},
        {"id": 5},
    ]
    status, answers = await post(http, "/jsonrpc", batch)
    assert status == 200
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["result"]["verdict"] == "valid"
    assert by_id["two"]["result"]["status"] == "ok"
    assert by_id[3]["error"]["code"] == -32602 and "dest" in by_id[3]["error"]["message"]
    assert by_id[4]["error"]["code"] == -32601
    assert any(a["id"] is None and a["error"]["code"] == -32600 for a in answers)
    assert len(answers) == 5
    status, parse = await post(http, "/jsonrpc", b"{oops")
    assert parse["error"]["code"] == -32700


async def test_netstring_listener(daemon: Daemon, http: tuple[aiohttp.ClientSession, str]) -> None:
    assert daemon.jsonrpc_address is not None
    reader, writer = await asyncio.open_connection(*daemon.jsonrpc_address)
    params = {"orig": FROM, "dest": [TO], "sdp": SDP, "callid": "x"}
    writer.write(
        encode(
            json.dumps(
                {"id": 2, "jsonrpc": "2.0", "method": "stir.sign", "params": params}
            ).encode()
        )
    )
    decoder, answers = NetstringDecoder(), []
    while not answers:
        answers = decoder.feed(await asyncio.wait_for(reader.read(65536), 5))
    answer = json.loads(answers[0])
    assert answer["id"] == 2 and len(answer["result"]["identity"]) == 2
    writer.close()


async def test_health_metrics_and_certificates(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, base = http
    await signed(http)
    async with session.get(base + "/healthz") as response:
        health = await response.json()
    assert response.status == 200 and health["credentials"] == ["dev"]
    assert "development" in health["notes"][0]
    async with session.get(base + "/metrics") as response:
        text = await response.text()
    assert (
        'stird_requests_total{code="",kind="sign",ppt="msec,shaken",verdict="signed"} 1.0' in text
    )
    assert "stird_request_seconds_bucket" in text
    async with session.get(base + "/certs/dev.pem") as response:
        assert response.status == 200
        assert response.content_type == "application/pem-certificate-chain"
        assert (await response.read()).startswith(b"-----BEGIN CERTIFICATE-----")
    for name in ("nope.pem", "..%2F..%2Fetc%2Fpasswd"):
        async with session.get(base + "/certs/" + name) as response:
            assert response.status == 404


async def test_dev_credential_survives_restart(tmp_path: Path) -> None:
    first = Daemon(config(tmp_path))
    await first.start()
    pem = first.built.runtime.certificates["dev"]
    await first.stop()
    second = Daemon(config(tmp_path))
    await second.start()
    assert second.built.runtime.certificates["dev"] == pem  # created once, then reused
    assert (tmp_path / "state" / "dev" / "private.pem").stat().st_mode & 0o077 == 0
    await second.stop()


async def test_reload_changes_policy(
    daemon: Daemon, http: tuple[aiohttp.ClientSession, str], tmp_path: Path
) -> None:
    body = {"identity": [], "from": FROM, "to": TO, "date": format_sip_date(0)}
    status, verdict = await post(http, "/v1/verify", body)
    assert (status, verdict["verdict"], verdict["action"]) == (200, "no-identity", "continue")
    await daemon.reload(config(tmp_path, require_identity=True))
    status, verdict = await post(http, "/v1/verify", body)
    assert (status, verdict["code"], verdict["action"]) == (200, 428, "reject")


async def test_uptime_survives_reload(
    daemon: Daemon, http: tuple[aiohttp.ClientSession, str], tmp_path: Path
) -> None:
    """/healthz uptime counts from the daemon's start (monotonic clock), not the last SIGHUP."""
    daemon.api.started -= 1000.0  # as if started 1000 s ago: no waiting in the test
    session, base = http
    await daemon.reload(config(tmp_path, require_identity=True))
    async with session.get(base + "/healthz") as response:
        health = await response.json()
    assert health["uptime"] >= 1000.0, health


async def test_failed_reload_keeps_running_config(daemon: Daemon, tmp_path: Path) -> None:
    before = daemon.api.runtime
    broken = replace(
        config(tmp_path), verify=VerifyConfig(trust_anchors=(tmp_path / "missing.pem",))
    )
    assert await daemon.reload(broken) is False
    assert daemon.api.runtime is before


async def test_any_reload_failure_keeps_serving_and_answers_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever breaks during a reload (here a bug in loading, not a ConfigError), the
    running configuration stays, the failure is logged with its traceback and counted,
    and systemd hears READY=1 again (never left in "reloading")."""
    sent: list[dict[str, object]] = []

    class Notifier(SystemdNotifier):
        def send(self, **fields: object) -> bool:
            sent.append(fields)
            return True

    daemon = Daemon(config(tmp_path), notifier=Notifier({}))
    await daemon.start()
    try:
        before = daemon.api.runtime

        def load() -> Config:
            raise RuntimeError("a bug while loading")

        assert await daemon.reload(load) is False
        assert daemon.api.runtime is before
        assert [next(iter(m)) for m in sent[-2:]] == ["RELOADING", "READY"]
        assert str(sent[-1]["STATUS"]).startswith("reload failed, running the previous")
        assert "a bug while loading" in str(sent[-1]["STATUS"])
        assert any(r.exc_info for r in caplog.records if "reload failed" in r.getMessage())
        assert "stird_reload_failures_total 1.0" in daemon.metrics.render().decode()
        assert await daemon.reload(config(tmp_path, require_identity=True)) is True
        assert daemon.api.runtime is not before and sent[-1]["READY"] == 1
    finally:
        await daemon.stop()


async def test_kamailio_health_in_healthz(tmp_path: Path) -> None:
    from stird.wiring.config import KamailioConfig

    cfg = replace(
        config(tmp_path),
        kamailio=KamailioConfig(rpc_socket=str(tmp_path / "none.sock"), timeout=0.2),
    )
    d = Daemon(cfg)
    await d.start()
    try:
        host, port = d.http_address
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                async with session.get(f"http://{host}:{port}/healthz") as response:
                    health = await response.json()
                if "kamailio" in health:
                    break
                await asyncio.sleep(0.05)
        assert health["kamailio"]["reachable"] is False
    finally:
        await d.stop()


async def test_every_listener_queues_a_burst_of_connections(daemon: Daemon) -> None:
    """A pause in stird must not make the kernel drop new connections' SYNs (HTTP held
    512, the netstring and FastAGI listeners asyncio's default 100)."""
    assert daemon.jsonrpc_address is not None
    ports = [daemon.http_address[1], daemon.jsonrpc_address[1]]
    ports += [daemon.agi_address[1]] if daemon.agi_address is not None else []
    for port in ports:
        assert queued_connections(port, count=600) == 600, port


async def test_behind_it_refuses_sign_and_verify_with_503_at_once(
    daemon: Daemon, http: tuple[aiohttp.ClientSession, str]
) -> None:
    """While the event loop runs late, new work gets 503 + Retry-After (JSON-RPC: the SIP
    code in ``data``) at once, so the PBX applies its fail policy instead of waiting out
    its timeout; status, health and metrics still answer."""
    sign = await signed(http)
    await daemon.supervisor.cancel("loop-lag")  # the lag is set by hand below, not measured
    daemon.shedder.observe(1.0)
    status, body = await post(http, "/v1/verify", verify_body(sign))
    assert (status, body["code"], body["reason"]) == (503, 503, "Service Unavailable")
    assert "1000 ms late" in body["error"]
    session, base = http
    async with session.post(base + "/v1/sign", data=json.dumps({"orig": FROM})) as response:
        assert (response.status, response.headers["Retry-After"]) == (503, "1")
    calls = [{"jsonrpc": "2.0", "id": 1, "method": "stir.sign", "params": {"orig": FROM}},
             {"jsonrpc": "2.0", "id": 2, "method": "stir.status"}]  # fmt: skip
    status, (refused, answered) = await post(http, "/jsonrpc", calls)
    assert (refused["error"]["code"], refused["error"]["data"]["code"]) == (-32000, 503)
    assert answered["result"]["status"] == "ok"
    async with session.get(base + "/metrics") as response:
        assert 'stird_overload_shed_total{interface="api"} 3.0' in await response.text()
    daemon.shedder.observe(0.0)
    assert (await post(http, "/v1/verify", verify_body(await signed(http))))[0] == 200


async def test_require_call_id_is_400_and_without_it_replay_is_unchecked(
    daemon: Daemon, http: tuple[aiohttp.ClientSession, str], tmp_path: Path
) -> None:
    sign = await signed(http)
    body = verify_body(sign)
    body.pop("call_id", None)
    body.pop("callid", None)
    status, verdict = await post(http, "/v1/verify", body)
    assert (status, verdict["verdict"], verdict["replay"]) == (200, "valid", "unchecked")
    assert verdict["replay_unchecked"] == "no-call-id"
    async with aiohttp.ClientSession() as session:
        base = "http://{}:{}".format(*daemon.http_address)
        async with session.get(base + "/metrics") as answer:
            text = await answer.text()
    # two valid PASSporTs (msec and shaken), neither checked
    assert 'stird_replay_checks_total{reason="no-call-id",result="unchecked"} 2.0' in text
    await daemon.reload(config(tmp_path, require_call_id=True))
    status, answer_body = await post(http, "/v1/verify", body)
    assert status == 400 and "call_id" in str(answer_body)


def _cyclic_garbage() -> list[str]:
    """The types of objects that only a full garbage collection would free."""
    import gc

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_evicted_and_aborted_connections_leave_no_cycles(tmp_path: Path) -> None:
    """Each connection the policy closes (or the peer resets) must be freed by reference
    counting: a cycle per closed connection made the full collections that free them
    pause the event loop 30-130 ms under a connection flood (issue #17)."""
    import gc

    cfg = config(tmp_path)
    server = replace(cfg.server, agi=HostPort("127.0.0.1", 0), max_connections=8)
    d = Daemon(replace(cfg, server=server))
    await d.start()
    try:
        targets = {
            "http": (d.http_address, b"POST /v1/verify HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"),
            "jsonrpc": (d.jsonrpc_address, b"1000:{"),
            "agi": (d.agi_address, b"agi_network: yes\n"),
        }  # fmt: skip
        gc.collect()  # what start-up left
        gc.disable()
        writers = []
        for address, data in targets.values():
            for _ in range(24):  # three times the cap: most are evicted
                _, writer = await asyncio.open_connection(*address)
                writer.write(data)
                writers.append(writer)
                await asyncio.sleep(0.005)
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(0.5)
        leftovers = _cyclic_garbage()
    finally:
        gc.enable()
        await d.stop()
    server_side = {"_PolicedHandler", "Connection", "Request", "AgiRequest", "Task"}
    assert server_side.isdisjoint(leftovers), leftovers
