"""Out-of-band STIR end to end on loopback (RFC 8816 §8): ``stird serve`` signing with
``"oob": true`` into its in-process CPS and verifying a call without Identity header from
it; a standalone CPS; two CPS servers sharing one real redis-server used by two daemons;
a CPS down or slow costing signing no more than the bound; the ATIS profile; the retrieve
policies; FastAGI verify going out of band; ``[oob]`` configuration; the CLI."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters import enckeys, keyfiles
from stird.adapters.cps_memory import MemoryCpsStore
from stird.adapters.cps_server import build_cps_app
from stird.adapters.store_memory import MemoryStore
from stird.core.oobkeys import PublicationPolicy
from stird.services.cps import CpsService
from stird.services.keydir import KeyDirectory
from stird.wiring.app import Daemon, ensure_dev_credential
from stird.wiring.config import Config, ConfigError, HostPort, OobConfig, VerifyConfig, parse_config
from stird.wiring.cps_app import build_cps, ensure_dev_enc_key, run_cps
from tests.asterisk_fakes import FakeChannel, inbound_env, run_agi
from tests.atis_fake import FakeAtisCps
from tests.conftest import Cli
from tests.listen_check import queued_connections

LAB = {"allow_http": True, "allow_networks": ("127.0.0.0/8",)}


def numbers() -> tuple[str, str]:
    """A fresh caller and callee (the Redis store is shared by the whole session)."""
    n = random.randrange(10**6, 10**7)
    return f"+1202{n}", f"+1303{n}"


def config(
    tmp: Path, name: str = "a", agi: bool = False, anchors: tuple[Path, ...] = (), **oob: Any
) -> Config:
    server = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None,
                     agi=HostPort("127.0.0.1", 0) if agi else None,
                     state_dir=tmp / name)  # fmt: skip
    verify = VerifyConfig(allow_http=True, allow_networks=("127.0.0.0/8",), trust_anchors=anchors)
    return Config(server=server, verify=verify, oob=OobConfig(**oob))


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[tuple[Daemon, str]]:
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        yield daemon, "http://{}:{}".format(*daemon.http_address)
    finally:
        await daemon.stop()


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield "http://{}:{}".format(*runner.addresses[0][:2])
    finally:
        await runner.cleanup()


async def call(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(base + path, json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def sign(base: str, caller: str, callee: str, **extra: Any) -> dict[str, Any]:
    return await call(base, "/v1/sign", {"orig": caller, "dest": [callee], **extra})


async def verify(base: str, caller: str, callee: str, **extra: Any) -> dict[str, Any]:
    body = {
        "from": f"<sip:{caller}@pstn.example;user=phone>",
        "to": f"<sip:{callee}@pbx.example;user=phone>",
        "call_id": str(random.random()),
    }
    return await call(base, "/v1/verify", {**body, **extra})  # fmt: skip


async def metrics(base: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as response:
        return await response.text()


async def test_serve_signs_into_its_own_cps_and_verifies_out_of_band(tmp_path: Path) -> None:
    caller, callee = numbers()
    async with running(config(tmp_path)) as (_, base):
        signed = await sign(base, caller, callee, oob=True)
        assert signed["identity"] and signed["oob"]["stored"] is True
        assert (signed["oob"]["cps"], signed["oob"]["entries"]) == (base, 1)
        verdict = await verify(base, caller, callee)
        assert (verdict["verdict"], verdict["oob"], verdict["attest"]) == ("valid", True, "A")
        assert verdict["passports"][0]["ppt"] == "shaken"
        other = await verify(base, "+12025550199", callee)  # §8.2 step 3: another caller
        assert (other["verdict"], other["oob"]) == ("no-identity", False)
        plain = await sign(base, caller, callee)
        assert "oob" not in plain
        text = await metrics(base)
    assert 'stird_cps_operations_total{op="publish",result="stored"} 1.0' in text
    assert 'stird_cps_operations_total{op="retrieve",result="found"} 2.0' in text


async def test_standalone_cps_and_publish_for(tmp_path: Path) -> None:
    caller, callee = numbers()
    _, public = ensure_dev_enc_key(tmp_path / "a")  # the daemon's development key
    directory = KeyDirectory(MemoryStore(), PublicationPolicy(),
                             dev_wildcard=enckeys.load_recipient_keys(public))  # fmt: skip
    service = CpsService(MemoryCpsStore(), suites=directory.suites)
    async with serving(build_cps_app(service, directory)) as cps:
        cfg = config(tmp_path, cps=cps, publish_for=[callee[1:5]], **LAB)
        async with running(cfg) as (daemon, base):
            assert daemon.cps is None  # [oob] cps given: nothing mounted in-process
            signed = await sign(base, caller, callee)  # no "oob": publish_for matches
            assert signed["oob"] == {"stored": True, "cps": cps, "entries": 1, "error": None}
            assert service.stored == 1
            verdict = await verify(base, caller, callee)
            assert (verdict["verdict"], verdict["oob"]) == ("valid", True)


async def test_two_cps_servers_share_one_redis_for_two_daemons(
    tmp_path: Path, redis_url: str
) -> None:
    caller, callee = numbers()
    shared = tmp_path / "cps"
    one, two = build_cps(Config(), shared, redis_url), build_cps(Config(), shared, redis_url)
    key = shared / "dev" / "enc-private.jwk"
    # b trusts a's (self-signed) development credential as an anchor: shaken PASSporTs
    # are never trusted on first use (issue #16)
    _, a_cert = ensure_dev_credential(tmp_path / "a", int(time.time()))
    try:
        async with serving(one.app) as cps1, serving(two.app) as cps2:
            a = config(tmp_path, "a", cps=cps1, **LAB)
            b = config(tmp_path, "b", anchors=(a_cert,), cps=cps2, decryption_keys=[key], **LAB)
            async with running(a) as (_, base_a), running(b) as (_, base_b):
                signed = await sign(base_a, caller, callee, oob=True)
                assert signed["oob"]["stored"] and signed["oob"]["cps"] == cps1
                verdict = await verify(base_b, caller, callee)
                assert (verdict["verdict"], verdict["oob"]) == ("valid", True)
                assert verdict["passports"][0]["info"].startswith(base_a)
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("kind", ["slow", "down"])
async def test_cps_down_or_slow_costs_signing_at_most_the_bound(tmp_path: Path, kind: str) -> None:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(0.9)
        return web.json_response({"keys": []})

    app = web.Application()
    app.router.add_get("/keys/{tn}", stall)
    caller, callee = numbers()
    async with serving(app) as slow:
        cps = slow if kind == "slow" else "http://127.0.0.1:9"
        async with running(config(tmp_path, cps=cps, timeout=0.5, **LAB)) as (_, base):
            started = time.monotonic()
            signed = await sign(base, caller, callee, oob=True)
            assert time.monotonic() - started < 0.5 + 0.5
            assert signed["identity"] and signed["oob"]["stored"] is False
            expected = "within 0.5 s" if kind == "slow" else "connection failed"
            assert expected in signed["oob"]["error"]
            result = "timeout" if kind == "slow" else "error"
            assert f'op="publish",result="{result}"}} 1.0' in await metrics(base)


async def test_atis_profile_end_to_end(tmp_path: Path) -> None:
    async def key_for(url: str) -> ec.EllipticCurvePublicKey:
        async with aiohttp.ClientSession() as s, s.get(url) as response:
            pem = await response.read()
        path = tmp_path / "x5u.pem"
        path.write_bytes(pem)
        public = keyfiles.load_certs(path)[0].public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return public

    fake = FakeAtisCps("1234", key_for)
    caller, callee = numbers()
    async with serving(fake.app()) as cps:
        cfg = config(tmp_path, cps=cps, profile_by_cps=((cps, "atis"),), atis_spc="1234", **LAB)
        async with running(cfg) as (_, base):
            signed = await sign(base, caller, callee, oob=True)
            assert signed["oob"]["stored"], signed
            assert fake.stored[(callee[1:], caller[1:])] == [signed["passport"]]
            verdict = await verify(base, caller, callee)
            assert (verdict["verdict"], verdict["oob"]) == ("valid", True)
    assert fake.refusals == [] and [c["action"] for c in fake.claims] == ["publish", "retrieve"]


async def test_retrieve_policies_never_and_always(tmp_path: Path) -> None:
    caller, callee = numbers()
    garbage = "e30.e30.c2ln;info=<http://127.0.0.1:9/c.pem>;ppt=shaken"
    async with running(config(tmp_path, retrieve="never")) as (daemon, base):
        assert (await sign(base, caller, callee, oob=True))["oob"]["stored"]
        never = await verify(base, caller, callee, call_id="1")
        assert (never["verdict"], never["oob"]) == ("no-identity", False)
        absent = await verify(base, caller, callee, identity=[garbage], call_id="1")
        assert (absent["verdict"], absent["oob"]) == ("invalid", False)  # in band only
        await daemon.reload(replace(daemon.config, oob=OobConfig(retrieve="always")))
        always = await verify(base, caller, callee, identity=[garbage], call_id="1")
        assert (always["verdict"], always["oob"]) == ("valid", True)
        assert 'op="retrieve"' in await metrics(base)


async def test_fastagi_verify_without_identity_goes_out_of_band(tmp_path: Path) -> None:
    async with running(config(tmp_path, agi=True)) as (daemon, base):
        assert daemon.agi_address is not None
        await sign(base, "+15552220000", "+15557770001", oob=True)
        channel = FakeChannel(inbound_env("verify"), headers=[
            ("From", "<sip:+15552220000@carrier.example;user=phone>"),
            ("To", "<sip:+15557770001@pbx.example;user=phone>"), ("Call-ID", "agi-oob-1")])  # fmt: skip
        await run_agi(daemon.agi_address, channel)
    assert channel.variables["STIRD_VERDICT"] == "valid"
    assert channel.variables["STIRD_ATTEST"] == "A"
    assert "TN-Validation-Passed" in channel.variables["STIRD_VERSTAT"]


def test_oob_section_errors_name_the_key() -> None:
    cfg = parse_config({"oob": {"cps": "https://cps.example/", "retrieve": "always",
                                "cps_by_prefix": {"+44": "https://uk.example"}}})  # fmt: skip
    assert (cfg.oob.cps, cfg.oob.cps_by_prefix) == (
        "https://cps.example",
        (("44", "https://uk.example"),),
    )
    for table, message in [
        ({"cps": "ftp://x"}, r"\[oob\] cps: must be an http\(s\) URL"),
        ({"retrieve": "sometimes"}, r"\[oob\] retrieve: must be one of absent, always, never"),
        ({"profile_by_cps": {"https://a.example": "atis"}}, r"\[oob\] atis_spc: required"),
        (
            {"atis_credential": "x", "atis_spc": "1"},
            r"\[oob\] atis_credential: no \[\[credential\]\]",
        ),
        ({"publish_for": ["1-202"]}, r"\[oob\] publish_for: item 1 .*telephone-number prefixes"),
        ({"timeout": 0}, r"\[oob\] timeout: must be > 0"),
        ({"cps_url": "x"}, r"\[oob\] cps_url: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({"oob": table})


def test_keygen_types_and_cps_cli(cli: Cli, tmp_path: Path) -> None:
    out = cli("keygen", "--out", tmp_path / "enc", "--type", "mlkem768-x25519")
    assert out.code == 0 and json.loads(out.out)["private_key"].endswith("enc-private.jwk")
    assert len(enckeys.load_decryption_keys(tmp_path / "enc" / "enc-private.jwk")) == 1
    assert cli("keygen", "--out", tmp_path / "sig").code == 0
    assert (tmp_path / "sig" / "private.pem").exists()
    bad = cli("cps", "serve", "--listen", "nowhere", "--state-dir", tmp_path / "cps")
    assert bad.code == 2 and "HOST:PORT" in bad.err


async def test_no_cps_configured_means_off(tmp_path: Path) -> None:
    cfg = replace(config(tmp_path), source=tmp_path / "stird.toml")  # a file without [oob] cps
    caller, callee = numbers()
    async with running(cfg) as (daemon, base):
        assert daemon.cps is None and daemon.built.runtime.oob is None
        signed = await sign(base, caller, callee, oob=True)
        assert signed["identity"] and signed["oob"]["stored"] is False
        assert signed["oob"]["error"] == "out-of-band STIR is off ([oob] cps)"
        assert (await verify(base, caller, callee))["verdict"] == "no-identity"


async def test_standalone_cps_queues_a_burst_of_connections(tmp_path: Path) -> None:
    """``stird cps``'s listener: a pause must not make the kernel drop callers' SYNs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(run_cps(build_cps(Config(), tmp_path), "127.0.0.1", port, stop))
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.01)
        assert queued_connections(port, count=600) == 600  # aiohttp's default held 128
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
