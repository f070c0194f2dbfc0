"""[asterisk] hep, hep_password, hep_wait, msec_without_sdp (issue 19): parsed and checked
once, loopback only like FastAGI, and the daemon's collector feeding the verify route."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.wiring.app import Daemon
from stird.wiring.asterisk import check_hep
from stird.wiring.config import AsteriskConfig, Config, ConfigError, HostPort, parse_config
from tests.asterisk_fakes import FakeChannel, inbound_env, run_agi
from tests.hep_captures import replayed

SECRET = "hep-capture-s3cret"


def test_hep_keys() -> None:
    ast = parse_config({"asterisk": {"hep": "127.0.0.1:9060", "hep_password": SECRET,
                                     "hep_wait": 0.03, "msec_without_sdp": "ignore"}}).asterisk  # fmt: skip
    assert (ast.hep, ast.hep_password, ast.hep_wait, ast.msec_without_sdp) == (
        HostPort("127.0.0.1", 9060), SECRET, 0.03, "ignore")  # fmt: skip
    assert SECRET not in repr(ast)
    default = AsteriskConfig()
    assert (default.hep, default.hep_wait, default.msec_without_sdp) == (None, 0.05, "unchecked")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"hep_wait": 5}, r"\[asterisk\] hep_wait: must be <= 1"),
        ({"hep_wait": -1}, r"\[asterisk\] hep_wait: must be >= 0"),
        ({"msec_without_sdp": "accept"}, r"\[asterisk\] msec_without_sdp: must be one of"),
        ({"hep": "nowhere"}, r"\[asterisk\] hep"),
    ],
)
def test_hep_key_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"asterisk": table})


def test_hep_off_loopback_is_refused_unless_insecure_expose() -> None:
    config = parse_config({"asterisk": {"hep": "0.0.0.0:9060"}})
    with pytest.raises(ConfigError, match=r"\[asterisk\] hep: .* not loopback"):
        check_hep(config)
    check_hep(replace(config, server=replace(config.server, insecure_expose=True)))
    check_hep(parse_config({"asterisk": {"hep": "[::1]:9060"}}))


async def test_daemon_collects_hep_and_reports_it(tmp_path: Path) -> None:
    server = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None,
                     agi=HostPort("127.0.0.1", 0), state_dir=tmp_path / "state")  # fmt: skip
    asterisk = AsteriskConfig(hep=HostPort("127.0.0.1", 0), hep_password="s3cret")
    daemon = Daemon(Config(server=server, asterisk=asterisk))
    await daemon.start()
    sock = socket.socket(type=socket.SOCK_DGRAM)
    try:
        link = daemon.asterisk
        assert link.hep is not None and link.hep_address is not None
        sock.sendto(replayed("32"), link.hep_address)  # variant B: capture_password s3cret
        sock.sendto(replayed("01"), link.hep_address)  # no password chunk: dropped
        deadline = time.monotonic() + 5
        while link.hep.health["datagrams"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        assert link.hep.store.offer("1-21592@127.0.0.1") is not None
        assert link.hep.store.offer("1-20556@127.0.0.1") is None
        assert daemon.agi_address is not None
        channel = FakeChannel(inbound_env("verify"), headers=[("From", "<sip:+15552220000@x>"),
                                                              ("To", "<sip:+15557770002@y>")])  # fmt: skip
        await run_agi(daemon.agi_address, channel)
        assert channel.variables["STIRD_MKY"] == ""  # no msec PASSporT: nothing waited for
        host, port = daemon.http_address
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as response:
                health = json.loads(await response.text())
            async with session.get(f"http://{host}:{port}/metrics") as response:
                metrics = await response.text()
        assert health["hep"]["datagrams"] == 2 and health["hep"]["rejected"] == 1
        assert 'stird_hep_datagrams_total{result="accepted"} 1.0' in metrics
        assert 'stird_hep_datagrams_total{result="auth-failed"} 1.0' in metrics
    finally:
        sock.close()
        await daemon.stop()
