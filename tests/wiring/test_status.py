"""The operator's view on a running daemon: /status (HTML, SVG charts, escaped call data),
/status.json, /status/call, the token rule of /metrics, `stird status` / `stird calls`,
and the certificate lifecycle (expiry metrics, warnings, /healthz degraded, check-config)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.adapters import keyfiles
from stird.core import certs
from stird.services.status_expiry import DAY
from stird.wiring.app import Daemon
from stird.wiring.cli import main
from stird.wiring.config import Config, CredentialConfig, HostPort
from tests.wiring.status_calls import HOSTILE_FROM, Driven, drive

TOKEN = "status-page-token-0123456789"


def config(tmp_path: Path, **server: Any) -> Config:
    base = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None, agi=None,
                   state_dir=tmp_path / "state", **server)  # fmt: skip
    return Config(server=base)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(config(tmp_path))
    await d.start()
    yield d
    await d.stop()


def base_of(daemon: Daemon) -> str:
    return "http://{}:{}".format(*daemon.http_address)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as answer,
    ):
        return answer.status, await answer.text(), answer.headers


@pytest.fixture
async def driven(daemon: Daemon) -> Driven:
    return await drive(base_of(daemon), daemon.config.server.state_dir)


async def test_status_json_counts_and_lists_the_calls(daemon: Daemon, driven: Driven) -> None:
    status, text, _ = await get(base_of(daemon) + "/status.json")
    assert status == 200
    facts = json.loads(text)
    assert facts["last_hour"] == {"signed": 2, "valid": 1, "fail 438": 1, "fail 403": 1,
                                  "no-identity": 1}  # fmt: skip
    by_id = {c["call_id"]: c for c in facts["calls"] if c["kind"] == "verify"}
    assert by_id[driven.valid]["trust"] == "anchor" and by_id[driven.valid]["ppts"] == ["shaken"]
    assert by_id[driven.tampered]["code"] == 438
    assert (by_id[driven.stale]["code"], by_id[driven.stale]["reason"]) == (403, "Stale Date")
    assert by_id[driven.hostile]["caller"] == HOSTILE_FROM  # kept as text, escaped on output
    assert by_id[driven.valid]["caller"] == "15551110000"  # the PASSporT's orig
    (cred,) = facts["credentials"]
    assert cred["name"] == "dev" and cred["level"] == "ok" and cred["x5u_ok"] is True
    assert facts["peers"]["event_loop_lag_ms"] is not None
    assert facts["peers"]["cert_cache_hit_ratio"] is None  # own credential: never fetched


async def test_filter_search_and_call_id(daemon: Daemon, driven: Driven) -> None:
    url = base_of(daemon) + "/status.json"
    _, text, _ = await get(url + "?verdict=invalid")
    assert {c["call_id"] for c in json.loads(text)["calls"]} == {driven.tampered, driven.stale}
    _, text, _ = await get(url + "?q=" + driven.stale.split("@")[0])
    assert [c["call_id"] for c in json.loads(text)["calls"]] == [driven.stale]
    _, text, _ = await get(url + "?call_id=" + driven.valid)
    calls = json.loads(text)["calls"]
    assert [c["kind"] for c in calls] == ["verify", "sign"]  # the call's both legs
    assert calls[0]["passports"][0]["claims"]["orig"] == {"tn": "15551110000"}
    signature = driven.signed_passport.rsplit(".", 1)[1]
    assert signature not in text and driven.signed_passport not in text


async def test_page_shows_charts_and_calls(daemon: Daemon, driven: Driven) -> None:
    status, page, headers = await get(base_of(daemon) + "/status")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
    assert page.count("<svg") == 2 and "<rect" in page
    for call_id in (driven.valid, driven.tampered, driven.stale, driven.hostile):
        assert call_id in page
    assert "Stale Date" in page and "Invalid Identity Header" in page
    assert "<script" not in page and "<img" not in page  # the From is inert text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    _, filtered, _ = await get(base_of(daemon) + "/status?verdict=valid")
    assert driven.valid in filtered and driven.tampered not in filtered


async def test_call_detail_is_escaped_and_shows_claims(daemon: Daemon, driven: Driven) -> None:
    status, page, _ = await get(f"{base_of(daemon)}/status/call?id={driven.valid}")
    assert status == 200 and "&quot;orig&quot;" in page and "15552220000" in page
    assert driven.signed_passport.rsplit(".", 1)[1] not in page
    status, page, _ = await get(f"{base_of(daemon)}/status/call?id={driven.hostile}")
    assert status == 200 and "<script" not in page and "&lt;script&gt;" in page
    status, page, _ = await get(f"{base_of(daemon)}/status/call?id=%3Cscript%3Ealert(1)")
    assert status == 404 and "<script" not in page


async def test_status_needs_the_token_like_metrics(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    d = Daemon(config(tmp_path, token_file=token))
    await d.start()
    try:
        for path in ("/status", "/status.json", "/status/call?id=x", "/metrics"):
            status, _, headers = await get(base_of(d) + path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        status, _, _ = await get(base_of(d) + "/status", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        out = await asyncio.to_thread(
            main, ["status", "--url", base_of(d), "--token-file", str(token), "--json"]
        )
        assert out == 0
        refused = await asyncio.to_thread(main, ["status", "--url", base_of(d)])
        assert refused == 2
    finally:
        await d.stop()


async def test_cli_status_and_calls(
    daemon: Daemon, driven: Driven, capsys: pytest.CaptureFixture[str]
) -> None:
    url = base_of(daemon)
    assert await asyncio.to_thread(main, ["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "status: ok" in out and "fail 438 1" in out and "dev" in out and "HTTP 200" in out
    assert await asyncio.to_thread(main, ["calls", "--url", url, "--last", "20"]) == 0
    out = capsys.readouterr().out
    assert driven.tampered in out and "Invalid Identity Header" in out
    assert "\x1b" not in out
    code = await asyncio.to_thread(main, ["calls", "--url", url, "--call-id", driven.stale])
    assert code == 0
    (call,) = json.loads(capsys.readouterr().out)
    assert call["reason"] == "Stale Date" and call["passports"][0]["claims"]["attest"] == "A"
    code = await asyncio.to_thread(main, ["calls", "--url", url, "--call-id", "nope"])
    assert code == 1


def test_cli_without_a_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 2
    assert "stird status: http://127.0.0.1:9/status.json" in capsys.readouterr().err


# --- certificate lifecycle -------------------------------------------------------------------


def short_credential(tmp_path: Path, days: int, name: str = "short") -> CredentialConfig:
    private, _ = keyfiles.write_keypair(tmp_path / name)
    key = keyfiles.load_private_key(private)
    cert = certs.make_stir_cert(key, now=int(time.time()) - 60, days=days, tns=["15551110000"])
    path = tmp_path / name / "cert.pem"
    keyfiles.write_public_file(path, certs.cert_to_pem(cert))
    return CredentialConfig(name=name, key=private, cert=path)


async def test_short_lived_credential_warns_degrades_and_exports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stird")
    cfg = replace(config(tmp_path), credentials=(short_credential(tmp_path, days=5),))
    d = Daemon(cfg)
    await d.start()
    try:
        warned = [r.getMessage() for r in caplog.records if "credential short" in r.getMessage()]
        assert len(warned) == 1 and "under 7 days" in warned[0]
        _, text, _ = await get(base_of(d) + "/healthz")
        health = json.loads(text)
        assert health["status"] == "degraded"
        assert any("credential short expires in" in item for item in health["degraded"])
        _, metrics, _ = await get(base_of(d) + "/metrics")
        (line,) = [m for m in metrics.splitlines()
                   if m.startswith('stird_credential_not_after_seconds{name="short"}')]  # fmt: skip
        assert abs(float(line.split()[-1]) - (time.time() + 5 * DAY)) < 300
        caplog.clear()
        assert await d.reload(cfg)  # a reload checks again: nothing new to say
        assert not [r for r in caplog.records if "credential short" in r.getMessage()]
        d.check_expiry(time.time() + 3 * DAY)  # the daily check, days later
        d.check_expiry(time.time() + 4.5 * DAY)
        d.check_expiry(time.time() + 4.6 * DAY)  # once per threshold
        d.check_expiry(time.time() + 6 * DAY)
        said = [r.getMessage() for r in caplog.records if "credential short" in r.getMessage()]
        assert len(said) == 3
        assert "under 3 days" in said[0] and "under 1 day)" in said[1]
        assert "expired" in said[2] and "refused" in said[2]
        _, page, _ = await get(base_of(d) + "/status")
        assert 'class="red"' in page  # days left shown red under 7
    finally:
        await d.stop()


def test_check_config_warns_of_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cred = short_credential(tmp_path, days=20)
    conf = tmp_path / "stird.toml"
    conf.write_text(f"[[credential]]\nname = 'short'\nkey = '{cred.key}'\ncert = '{cred.cert}'\n")
    assert main(["check-config", "--config", str(conf)]) == 0
    captured = capsys.readouterr()
    assert "warning: credential short expires in " in captured.err  # 20 days: under 30
    assert "OK" in captured.out


async def test_reload_picks_up_a_renewed_certificate_without_dropping_requests(
    tmp_path: Path,
) -> None:
    cred = short_credential(tmp_path, days=3)
    cfg = replace(config(tmp_path), credentials=(cred,))
    d = Daemon(cfg)
    await d.start()
    base = base_of(d)
    try:
        _, text, _ = await get(base + "/healthz")
        assert json.loads(text)["status"] == "degraded"
        key = keyfiles.load_private_key(cred.key)
        renewed = certs.make_stir_cert(key, now=int(time.time()) - 60, days=365,
                                       tns=["15551110000"])  # fmt: skip
        keyfiles.write_public_file(cred.cert, certs.cert_to_pem(renewed))
        body = json.dumps({"orig": "+15551110000", "dest": ["+15552220000"]}).encode()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def sign() -> int:
                async with session.post(base + "/v1/sign", data=body) as answer:
                    return answer.status

            async def signing(count: int) -> list[int]:
                results = []
                for _ in range(count):
                    results.append(await sign())
                return results

            batches = await asyncio.gather(signing(40), signing(40), d.reload(cfg))
        assert batches[2] is True
        assert batches[0] + batches[1] == [200] * 80  # no request dropped or refused
        _, text, _ = await get(base + "/healthz")
        assert json.loads(text)["status"] == "ok"
        _, metrics, _ = await get(base + "/metrics")
        (line,) = [m for m in metrics.splitlines()
                   if m.startswith('stird_credential_not_after_seconds{name="short"}')]  # fmt: skip
        assert float(line.split()[-1]) > time.time() + 300 * DAY
    finally:
        await d.stop()
