"""Issue #17, "Nothing starves it": the real daemon (``stird serve``, embedded defaults with
its in-process CPS) attacked in turn by 2,000 idle or trickling connections spread over its
HTTP, netstring and FastAGI listeners, by 300 connections each holding an unfinished
~1 MiB netstring frame, and by a CPS retrieval flood from 64 addresses, while valid verify
requests keep flowing on all three listeners (HTTP over a kept-alive connection, as a PBX).
With the default [server] connection policy no valid request fails, and the daemon's
memory returns within 20 MB of its start once the attackers are gone.

The attackers run in a process of their own (``bench/attack.py attackers``), so what the
daemon spends is its own. Latencies, memory and stird's CPU are printed (run with -s);
p99 < 50 ms is asserted only with STIRD_STRICT_LATENCY=1 (speed belongs to bench/:
``bench/attack.py`` reports the same figures).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.adapters.netstring import NetstringDecoder, encode
from tests.adapters.test_agi import asterisk_offer, inbound, with_date
from tests.asterisk_fakes import run_agi
from tests.peers import missing
from tests.wiring.test_daemon_api import FROM, SDP, TO, verify_body
from tests.wiring.test_serve import free_port

ROOT = Path(__file__).resolve().parents[2]
ATTACK = ROOT / "bench" / "attack.py"  # the attackers: a process of their own
ATTACK_SECONDS = 12
RSS_SLACK_KB = 20 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < want:
        missing(f"needs {want} open files, the hard limit allows {soft}")


class Legit:
    """Valid requests on every listener; every failure recorded, every latency kept."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"http": [], "jsonrpc": [], "agi": []}
        self.errors: list[str] = []
        self.running = True

    async def loop(self, kind: str, once: Callable[[], Awaitable[str | None]]) -> None:
        while self.running:
            started = time.monotonic()
            try:
                problem = await asyncio.wait_for(once(), 10)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                self.errors.append(f"{kind}: {problem}")
            else:
                self.latencies[kind].append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    def p99(self, kind: str) -> float:
        values = sorted(self.latencies[kind])
        return values[int(len(values) * 0.99)] if values else float("nan")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _one_cpu() -> None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])


@pytest.mark.parametrize("attack", ["idle", "frames", "cps"])
async def test_valid_requests_survive_the_attack(tmp_path: Path, attack: str) -> None:
    """``idle``: 2,000 idle or trickling connections over HTTP, netstring and FastAGI
    (bench/attack.py); ``frames``: 300 unfinished ~1 MiB netstring frames; ``cps``: a
    CPS retrieval flood from 64 addresses. Valid verify requests on all three listeners
    meet no error, and the RSS returns within 20 MB of its start once the attackers go."""
    raise_fd_limit(2_000 + 1024)
    ports = {name: free_port() for name in ("http", "jsonrpc", "agi")}
    argv = [sys.executable, "-m", "stird", "serve", "--state-dir", str(tmp_path / "state"),
            "--http", f"127.0.0.1:{ports['http']}", "--jsonrpc", f"127.0.0.1:{ports['jsonrpc']}",
            "--agi", f"127.0.0.1:{ports['agi']}"]  # fmt: skip  # no config: the embedded CPS
    log = (tmp_path / "stird.log").open("w")
    # one process under attack (its RSS, CPU and per-listener connection bound are what is
    # measured): on one CPU the default runs one worker, the embedded CPS included
    proc = subprocess.Popen(argv, stderr=log, preexec_fn=_one_cpu)  # noqa: PLW1509
    base = f"http://127.0.0.1:{ports['http']}"
    # kept-alive, as a PBX: a connection that completed requests outranks the attackers'
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4), timeout=aiohttp.ClientTimeout(total=10)
    )
    try:
        await wait_healthy(session, base, proc)
        legit = Legit()
        http_once, rpc_once, agi_once, rpc_close = await legit_requests(session, base, ports)
        for _ in range(20):  # warm: caches filled, every code path run once
            assert await http_once() is None and await rpc_once() is None
            assert await agi_once() is None
        await asyncio.sleep(1)
        start = rss_kb(proc.pid)
        peak = [start]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], rss_kb(proc.pid))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        flows = [asyncio.create_task(legit.loop(k, f)) for k, f in
                 (("http", http_once), ("jsonrpc", rpc_once), ("agi", agi_once))]  # fmt: skip
        ticks, began = cpu_ticks(proc.pid), time.monotonic()
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, str(ATTACK), "attackers", attack,
            *(str(ports[k]) for k in ("http", "jsonrpc", "agi")), str(ATTACK_SECONDS),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(attacker.communicate(), ATTACK_SECONDS + 60)
        cpu = (cpu_ticks(proc.pid) - ticks) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - began)
        under = {k: list(v) for k, v in legit.latencies.items()}
        await asyncio.sleep(2)  # valid requests after the attack too
        legit.running = False
        await asyncio.gather(*flows)
        sampler.cancel()
        after = await settled_rss(proc.pid, start)
        metrics = await closes(session, base)
        await rpc_close()
    finally:
        await session.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
            log.close()
    legit.latencies = under
    counts = {k: len(v) for k, v in under.items()}
    p99 = {k: legit.p99(k) * 1000 for k in counts}
    print(f"\n{attack}: attackers {out.decode().strip()}")
    # 503 "overloaded: event loop N ms late" is stird's load shedding ([server] max_loop_lag):
    # a timing outcome (on a host whose other work starves stird's core it sheds whatever
    # the attack), so it is counted apart and asserted only with STIRD_STRICT_LATENCY=1
    shed = [e for e in legit.errors if "overloaded: event loop" in e]
    errors = [e for e in legit.errors if e not in shed]
    print(f"valid requests under attack: {counts}, errors: {len(errors)}, shed: {len(shed)}")
    print("p99 ms: " + ", ".join(f"{k} {v:.1f}" for k, v in p99.items()))
    print(f"RSS MB: before {start / 1024:.1f}, peak {peak[0] / 1024:.1f}, after {after / 1024:.1f}")
    print(f"stird CPU during the attack: {cpu:.0%} of a core")
    print("closed by the policy: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(metrics.items())))
    assert attacker.returncode == 0
    assert errors == []
    assert all(counts.values())
    assert after <= start + RSS_SLACK_KB, f"RSS {after} kB after, {start} kB before"
    if attack == "frames":
        assert metrics.get("jsonrpc/budget", 0) > 0  # the frames were bounded by the budget
    if attack == "idle":
        assert sum(v for k, v in metrics.items() if k.endswith("/evicted")) > 0
    if os.environ.get("STIRD_STRICT_LATENCY") == "1":  # a benchmark's check, off in the suite
        assert shed == []
        assert max(p99.values()) < 50, p99


async def wait_healthy(session: aiohttp.ClientSession, base: str, proc: Any) -> None:
    for _ in range(200):
        assert proc.poll() is None, "stird exited"
        try:
            async with session.get(base + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("stird did not become healthy")


async def legit_requests(
    session: aiohttp.ClientSession, base: str, ports: dict[str, int]
) -> tuple[Callable[[], Awaitable[str | None]], ...]:
    async def sign(body: dict[str, Any]) -> dict[str, Any]:
        async with session.post(base + "/v1/sign", json=body) as response:
            assert response.status == 200
            return dict(await response.json())

    http_sign = await sign({"orig": FROM, "dest": [TO], "sdp": SDP})
    body = verify_body(http_sign)
    agi_sign = await sign({"orig": "+15552220000", "dest": ["+15557770002"],
                           "sdp": asterisk_offer("AB:" * 31 + "CD")})  # fmt: skip

    async def http_once() -> str | None:
        async with session.post(base + "/v1/verify", json=body) as response:  # kept alive
            verdict = await response.json()
        return None if verdict.get("verdict") == "valid" else f"{response.status} {verdict}"

    reader, writer = await asyncio.open_connection("127.0.0.1", ports["jsonrpc"])
    decoder = NetstringDecoder()
    request = {"jsonrpc": "2.0", "id": 1, "method": "stir.verify", "params": body}
    wire = encode(json.dumps(request).encode())

    async def rpc_once() -> str | None:
        writer.write(wire)
        answers: list[bytes] = []
        while not answers:
            data = await reader.read(65536)
            if not data:
                return "connection closed"
            answers = decoder.feed(data)
        answer = json.loads(answers[0])
        ok = answer.get("result", {}).get("verdict") == "valid"
        return None if ok else str(answer)[:200]

    async def agi_once() -> str | None:
        channel = with_date(inbound(agi_sign["identity"]), agi_sign["date"])
        await run_agi(("127.0.0.1", ports["agi"]), channel)
        verdict = channel.variables.get("STIRD_VERDICT")
        return None if verdict == "valid" else f"STIRD_VERDICT={verdict!r}"

    async def rpc_close() -> None:
        writer.close()

    return http_once, rpc_once, agi_once, rpc_close  # type: ignore[return-value]


async def settled_rss(pid: int, start: int, within: float = 20.0) -> int:
    """The daemon's RSS once it is back within the slack of ``start`` (or after ``within``)."""
    end = time.monotonic() + within
    while (rss := rss_kb(pid)) > start + RSS_SLACK_KB and time.monotonic() < end:
        await asyncio.sleep(0.25)
    return rss


async def closes(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(base + "/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("stird_connections_closed_total{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(p.split("=") for p in labels[labels.index("{") + 1 : -1].split(","))
            out[f"{fields['listener'].strip(chr(34))}/{fields['reason'].strip(chr(34))}"] = float(
                value
            )
    return out
