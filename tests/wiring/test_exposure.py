"""Listeners off loopback (issue #9): the bearer token of the HTTP API, the refusals, and
what the logs may never hold (keys, tokens, whole PASSporTs)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.wiring.app import Daemon
from stird.wiring.config import Config, ConfigError, HostPort, ServerConfig
from stird.wiring.exposure import MIN_TOKEN, check_exposure, is_loopback, load_token

LOOP = HostPort("127.0.0.1", 0)
WIDE = HostPort("0.0.0.0", 0)


def token_file(tmp_path: Path, token: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api.token"
    path.write_text(token + "\n")
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("pbx.example", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("http", "jsonrpc", "agi", "token", "insecure", "refused"),
    [
        (LOOP, LOOP, LOOP, False, False, None),  # the embedded default
        (WIDE, LOOP, LOOP, False, False, "http"),
        (WIDE, LOOP, LOOP, True, False, None),
        (LOOP, WIDE, LOOP, True, False, "jsonrpc"),  # no token can protect netstrings
        (LOOP, None, WIDE, True, False, "agi"),
        (WIDE, WIDE, WIDE, False, True, None),  # the operator's explicit choice
    ],
)
def test_exposure_rules(
    tmp_path: Path,
    http: HostPort,
    jsonrpc: HostPort | None,
    agi: HostPort | None,
    token: bool,
    insecure: bool,
    refused: str | None,
) -> None:
    server = ServerConfig(http=http, jsonrpc=jsonrpc, agi=agi, insecure_expose=insecure,
                          token_file=tmp_path / "t" if token else None)  # fmt: skip
    if refused is None:
        check_exposure(server)
        return
    with pytest.raises(ConfigError, match=rf"\[server\] {refused}: .*not loopback"):
        check_exposure(server)


@pytest.mark.parametrize(
    ("content", "mode", "error"),
    [
        ("x" * MIN_TOKEN, 0o640, "accessible by group or others"),
        ("short", 0o600, "at least"),
        ("with space " + "x" * MIN_TOKEN, 0o600, "without spaces"),
        ("", 0o600, "at least"),
    ],
)
def test_bad_token_files(tmp_path: Path, content: str, mode: int, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_token(token_file(tmp_path, content, mode))


def test_missing_token_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "absent")


TOKEN = secrets.token_urlsafe(32)


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)  # the default level, from the daemon's start on
    return caplog


@pytest.fixture
async def guarded(tmp_path: Path, info_logs: pytest.LogCaptureFixture) -> AsyncIterator[str]:
    server = replace(ServerConfig(), http=LOOP, jsonrpc=None, agi=None,
                     state_dir=tmp_path / "state", token_file=token_file(tmp_path, TOKEN))  # fmt: skip
    daemon = Daemon(Config(server=server))
    await daemon.start()
    host, port = daemon.http_address
    yield f"http://{host}:{port}"
    await daemon.stop()


SIGN = {"orig": "+12025550100", "dest": ["+12025550101"], "ppt": "shaken"}


async def call(base: str, method: str, path: str, auth: str | None) -> tuple[int, Any, str]:
    headers = {"Authorization": auth} if auth is not None else {}
    body = SIGN if path == "/v1/sign" else {"jsonrpc": "2.0", "method": "stir.sign",
                                             "params": SIGN, "id": 1}  # fmt: skip
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(
            method, base + path, headers=headers, json=body if method == "POST" else None
        ) as response,  # fmt: skip
    ):
        return response.status, await response.read(), response.headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize("path", ["/v1/sign", "/jsonrpc"])
@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (None, 401),
        ("Bearer wrong-" + "x" * 30, 401),
        (f"bearer {TOKEN}", 401),  # RFC 6750's scheme name is matched exactly, as sent
        (f"Basic {TOKEN}", 401),
        (f"Bearer {TOKEN}", 200),
    ],
)
async def test_bearer_token_guards_the_operations(
    guarded: str, path: str, auth: str | None, status: int
) -> None:
    code, _, challenge = await call(guarded, "POST", path, auth)
    assert code == status
    assert (challenge == 'Bearer realm="stird"') is (status == 401)


@pytest.mark.parametrize(
    ("path", "status"), [("/healthz", 200), ("/metrics", 401), ("/certs/dev.pem", 200)]
)
async def test_health_and_certificates_stay_open(guarded: str, path: str, status: int) -> None:
    code, _, _ = await call(guarded, "GET", path, None)
    assert code == status


def test_serve_refuses_an_unprotected_wide_listener(tmp_path: Path) -> None:
    from stird.wiring.cli import main

    config = tmp_path / "stird.toml"
    config.write_text('[server]\nhttp = "0.0.0.0:0"\njsonrpc = "off"\nagi = "off"\n')
    assert main(["serve", "--config", str(config), "--state-dir", str(tmp_path / "s")]) == 2
    assert main(["check-config", "--config", str(config)]) == 2


# --- logs ---------------------------------------------------------------------------------


async def test_no_secret_or_whole_passport_in_the_logs(
    guarded: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(guarded + "/v1/sign", json=SIGN, headers=headers) as response:
            identity = (await response.json())["identity"][0]
        oob = {**SIGN, "oob": True}  # out of band through the in-process CPS, too
        async with session.post(guarded + "/v1/sign", json=oob, headers=headers) as response:
            assert (await response.json())["oob"]["stored"] is True
        token = identity.split(";")[0]
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for value in (identity, tampered + identity[len(token) :], "garbage;info=<x>"):
            verify = {"identity": [value], "from": "<tel:+12025550100>",
                      "to": "<tel:+12025550101>", "call_id": "c1"}  # fmt: skip
            async with session.post(guarded + "/v1/verify", json=verify, headers=headers) as r:
                assert r.status == 200
        async with session.post(guarded + "/v1/sign", json=SIGN, headers={"Authorization":
                                "Bearer " + "y" * 40}) as r:  # fmt: skip
            assert r.status == 401
    key_pem = (tmp_path / "state" / "dev" / "private.pem").read_text()
    secrets_ = [TOKEN, token, token.split(".")[2], tampered, "y" * 40,
                *key_pem.splitlines()[1:-1]]  # fmt: skip
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert any(r.levelno == logging.INFO for r in records), "nothing at INFO: proves nothing"
    for record in records:
        text = record.getMessage()
        for secret in secrets_:
            assert secret not in text, f"{record.name}: {text[:200]}"
