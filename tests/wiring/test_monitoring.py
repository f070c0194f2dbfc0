"""integrations/monitoring ships ready: the alert rules pass `promtool check rules`, and
every metric the rules and the Grafana dashboard name is exported by a live daemon (with
Redis, AMI, Kamailio, FastAGI and a trust anchor configured, so that each exists)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters import keyfiles
from stird.core import certs
from stird.wiring.app import Daemon
from stird.wiring.config import (
    AsteriskConfig,
    Config,
    HostPort,
    KamailioConfig,
    StoreConfig,
    VerifyConfig,
)
from tests.fixtures_redis import free_port
from tests.peers import require_peer
from tests.wiring.status_calls import drive

MONITORING = Path(__file__).resolve().parents[2] / "integrations" / "monitoring"
RULES = MONITORING / "stird-alerts.yml"
DASHBOARD = MONITORING / "stird-dashboard.json"
NOT_STIRD = {"up"}  # Prometheus' own series
_NAME = re.compile(r"\b(stird_[a-z0-9_]+|up)\b")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def test_promtool_checks_the_rules() -> None:
    promtool = require_peer("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def rule_metrics() -> set[str]:
    exprs = re.findall(r"^\s+expr:\s*(\|?.*(?:\n\s{12,}.*)*)", RULES.read_text(), re.M)
    assert len(exprs) >= 10
    return {n for e in exprs for n in _NAME.findall(e)}


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    return {n for e in exprs for n in _NAME.findall(e)}


def exported(text: str) -> set[str]:
    """Sample names, and each family's names with the suffixes it takes."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names.add(family)
            names.update(family.removesuffix("_total") + s for s in _SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def anchor_file(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = certs.make_stir_cert(key, now=int(time.time()), days=30, ca=True, common_name="Lab CA")
    path = tmp_path / "anchor.pem"
    keyfiles.write_public_file(path, certs.cert_to_pem(ca))
    return path


async def live_metrics(tmp_path: Path, redis_url: str) -> str:
    dead = free_port()  # nothing listens: AMI and Kamailio show as down, not absent
    server = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None,
                     agi=HostPort("127.0.0.1", 0), state_dir=tmp_path / "state")  # fmt: skip
    config = Config(
        server=server,
        store=StoreConfig(redis=redis_url),
        verify=VerifyConfig(trust_anchors=(anchor_file(tmp_path),)),
        asterisk=AsteriskConfig(ami_enabled=True, ami_port=dead, ami_secret="x"),
        kamailio=KamailioConfig(rpc_url=f"http://127.0.0.1:{dead}/RPC", timeout=0.5),
    )
    daemon = Daemon(config)
    await daemon.start()
    try:
        base = "http://{}:{}".format(*daemon.http_address)
        await drive(base, server.state_dir)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for _ in range(100):  # the first Kamailio probe: within 5 s
                async with session.get(base + "/metrics") as answer:
                    text = await answer.text()
                if "stird_kamailio_reachable " in text:
                    break
                await asyncio.sleep(0.05)
        return text
    finally:
        await daemon.stop()


async def test_rules_and_dashboard_name_only_live_metrics(tmp_path: Path, redis_url: str) -> None:
    text = await live_metrics(tmp_path, redis_url)
    live = exported(text)
    wanted = (rule_metrics() | dashboard_metrics()) - NOT_STIRD
    assert not sorted(wanted - live), f"not exported by stird: {sorted(wanted - live)}"
    # the lifecycle and peer gauges the alerts rely on have values
    assert 'stird_credential_not_after_seconds{name="dev"}' in text
    assert 'stird_trust_anchor_not_after_seconds{subject="CN=Lab CA"}' in text
    assert "stird_ami_connected 0.0" in text and "stird_kamailio_reachable 0.0" in text


def test_every_alert_group_is_covered() -> None:
    """The issue's list: expiry, verify failures, fail-open/shed, loop lag, Redis
    fallback, AMI and Kamailio disconnected."""
    names = rule_metrics()
    for metric in ("stird_credential_not_after_seconds", "stird_requests_total",
                   "stird_overload_shed_total", "stird_agi_sessions_total",
                   "stird_event_loop_lag_seconds", "stird_store_fallback_total",
                   "stird_ami_connected", "stird_kamailio_reachable"):  # fmt: skip
        assert metric in names
