"""Soak (issue #9): stird at a steady call rate for a long time, on every path at once.

    .venv/bin/python bench/soak.py                        # 600 s at 500 calls/s
    .venv/bin/python bench/soak.py --duration 60 --rate 200 --json-out /tmp/soak.json

One stird (embedded default, uvloop) runs pinned to core 0; this generator runs on core 1.
Calls arrive on a fixed schedule (open loop: latency counts from the scheduled time, so a
stall shows in full) and are spread over the three ways a PBX reaches stird:

* HTTP (40 %): ``POST /v1/sign`` then ``POST /v1/verify`` of that PASSporT, with the call's
  Call-ID (so the replay cache fills as in production), on keep-alive connections;
* Kamailio JSON-RPC over netstrings (40 %): ``stir.sign`` then ``stir.verify``, many calls
  multiplexed on a few connections, as ``janssonrpcc`` does;
* FastAGI (20 %): a PASSporT signed over JSON-RPC, then a whole ``/verify`` session from a
  fake Asterisk channel answering exactly like the transcripts (tests/asterisk_fakes.py).

Every ``--window`` seconds it records, per path and operation, the rate, errors (an
unexpected answer or verdict, a timeout, a connection error) and p50/p99/max latency, with
stird's RSS and open file descriptors. Pass criteria (exit status 0 only if all hold):

1. zero errors;
2. p99 of every window and path ≤ ``--p99-bound`` ms (50), and the last window's overall
   p99 ≤ 2 × the first measured window's + 1 ms (stable, not creeping);
3. RSS flat: ≤ 10 MB growth from the first measured window to the last, ≤ 5 MB over the
   second half; open fds grow by ≤ 16.

The first window is warm-up (caches, the replay window filling): reported, not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "daemon")]

import loadgen  # noqa: E402
from procs import LOAD_CORE, Processes, free_port, rss_bytes, wait_port  # noqa: E402

ORIG, DEST = "+12025550100", "+12025550101"
FROM, TO = "sip:+12025550100@pbx.example.com;user=phone", "tel:+12025550101"
AGI_FROM = "<sip:+12025550100@pbx.example.com;user=phone>;tag=soak"
AGI_TO = "<sip:+12025550101@pbx.example.com;user=phone>"
AGI_RURI = "sip:+12025550101@pbx.example.com"
MIX = ("http", "http", "rpc", "rpc", "agi")  # 40 / 40 / 20 %
MAX_IN_FLIGHT = 512
TIMEOUT = 5.0  # per request: an answer later than this is an error


@dataclass
class Window:
    started: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)

    def error(self, op: str, why: str) -> None:
        self.errors[op] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{op}: {why}")


class Soak:
    def __init__(self, ports: dict[str, int], window_s: float) -> None:
        self.ports, self.window_s = ports, window_s
        self.window = Window(time.perf_counter())
        self.closed: list[Window] = []
        self.calls = itertools.count()
        self.http_pool: asyncio.Queue[loadgen.Http] = asyncio.Queue()
        self.rpcs: list[loadgen.NetstringRpc] = []
        self.gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def connect(self) -> None:
        for _ in range(64):
            self.http_pool.put_nowait(await loadgen.Http(self.ports["http"]).connect())
        self.rpcs = [await loadgen.NetstringRpc(self.ports["rpc"]).connect() for _ in range(4)]

    async def timed(self, op: str, scheduled: float, coro: Any) -> Any:
        """Run one request; its latency counts from ``scheduled``. None on error."""
        window = self.window
        try:
            result = await asyncio.wait_for(coro, TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            window.error(op, f"{type(exc).__name__}: {exc}"[:200])
            return None
        window.latencies[op].append((time.perf_counter() - scheduled) * 1e3)
        return result

    async def call(self, n: int, scheduled: float) -> None:
        async with self.gate:
            path, call_id = MIX[n % len(MIX)], f"soak-{n}@127.0.0.1"
            if path == "http":
                await self.http_call(call_id, scheduled)
            elif path == "rpc":
                await self.rpc_call(call_id, scheduled)
            else:
                await self.agi_call(call_id, scheduled)

    async def http_call(self, call_id: str, scheduled: float) -> None:
        conn = await self.http_pool.get()
        try:
            signed = await self.timed(
                "http.sign", scheduled, conn.post_json("/v1/sign", {"orig": ORIG, "dest": [DEST]})
            )
            identity = self.identity_of("http.sign", signed)
            if identity is None:
                return
            body = {"identity": [identity], "from": FROM, "to": TO, "call_id": call_id}
            answer = await self.timed(
                "http.verify", time.perf_counter(), conn.post_json("/v1/verify", body)
            )
            if answer is not None and (answer[0] != 200 or answer[1].get("verdict") != "valid"):
                self.window.error("http.verify", f"{answer[0]} {str(answer[1])[:150]}")
        finally:
            self.http_pool.put_nowait(conn)

    def identity_of(self, op: str, answer: tuple[int, Any] | None) -> str | None:
        if answer is None:
            return None
        status, doc = answer
        if status != 200 or not (doc or {}).get("identity"):
            self.window.error(op, f"{status} {str(doc)[:150]}")
            return None
        return str(doc["identity"][0])

    async def rpc_sign(self, op: str, scheduled: float, rpc: loadgen.NetstringRpc) -> str | None:
        answer = await self.timed(
            op, scheduled, rpc.call("stir.sign", {"orig": ORIG, "dest": [DEST]})
        )
        if answer is None:
            return None
        result = answer.get("result") or {}
        return self.identity_of(op, (200 if result else 500, result or answer))

    async def rpc_call(self, call_id: str, scheduled: float) -> None:
        rpc = self.rpcs[hash(call_id) % len(self.rpcs)]
        identity = await self.rpc_sign("rpc.sign", scheduled, rpc)
        if identity is None:
            return
        body = {"identity": [identity], "from": FROM, "to": TO, "call_id": call_id}
        answer = await self.timed("rpc.verify", time.perf_counter(), rpc.call("stir.verify", body))
        if answer is not None and (answer.get("result") or {}).get("verdict") != "valid":
            self.window.error("rpc.verify", str(answer)[:200])

    async def agi_call(self, call_id: str, scheduled: float) -> None:
        from tests.asterisk_fakes import FakeChannel, inbound_env  # noqa: PLC0415

        identity = await self.rpc_sign("agi.sign", scheduled, self.rpcs[0])
        if identity is None:
            return
        headers = [
            ("Identity", identity),
            ("From", AGI_FROM),
            ("To", AGI_TO),
            ("Call-ID", call_id),
            ("Date", ""),
        ]
        channel = FakeChannel(
            inbound_env("verify"), {"CHANNEL(pjsip,request_uri)": AGI_RURI}, headers=headers
        )
        done = await self.timed(
            "agi.verify", time.perf_counter(), loadgen.agi_session(self.ports["agi"], channel)
        )
        if done is not None and channel.variables.get("STIRD_VERDICT") != "valid":
            verdict = {k: v for k, v in channel.variables.items() if k.startswith("STIRD_")}
            self.window.error("agi.verify", str(verdict)[:200])

    async def run(self, rate: float, duration: float, sample: Any) -> None:
        """Issue calls on schedule; close a window every ``window_s`` seconds."""
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        total, sent = int(rate * duration), 0
        next_window = start + self.window_s
        while sent < total:
            now = time.perf_counter()
            if now >= next_window:
                self.rotate(sample)
                next_window += self.window_s
            due = min(total, int((now - start) * rate) + 1)
            while sent < due:
                task = asyncio.get_running_loop().create_task(
                    self.call(next(self.calls), start + sent / rate)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        if tasks:
            await asyncio.wait(tasks, timeout=TIMEOUT * 3)
        self.rotate(sample)

    def rotate(self, sample: Any) -> None:
        window, self.window = self.window, Window(time.perf_counter())
        window.__dict__["sample"] = sample()
        window.__dict__["ended"] = time.perf_counter()
        self.closed.append(window)


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(loadgen.percentile(ordered, 0.50), 2),
        "p99_ms": round(loadgen.percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
    }


def report_window(index: int, window: Window, t0: float) -> dict[str, Any]:
    seconds = window.__dict__["ended"] - window.started
    ops = sorted(set(window.latencies) | set(window.errors))
    every = [x for op in ops for x in window.latencies.get(op, [])]
    return {
        "window": index,
        "t_s": round(window.__dict__["ended"] - t0, 1),
        "requests_per_s": round(len(every) / seconds, 1) if seconds > 0 else 0,
        "errors": sum(window.errors.values()),
        "error_samples": window.error_samples,
        "all": stats(every),
        "ops": {
            op: {
                "per_s": round(len(window.latencies.get(op, [])) / seconds, 1),
                "errors": window.errors.get(op, 0),
                **stats(window.latencies.get(op, [])),
            }
            for op in ops
        },
        **window.__dict__["sample"],
    }


def judge(windows: list[dict[str, Any]], p99_bound: float) -> dict[str, Any]:
    measured = windows[1:] or windows
    first, last = measured[0], measured[-1]
    half = measured[len(measured) // 2]
    worst = max(op["p99_ms"] for w in measured for op in w["ops"].values())
    checks = {
        "zero_errors": sum(w["errors"] for w in windows) == 0,
        "p99_bounded": worst <= p99_bound,
        "p99_stable": last["all"]["p99_ms"] <= 2 * first["all"]["p99_ms"] + 1.0,
        "rss_growth_le_10mb": last["rss_mb"] - first["rss_mb"] <= 10.0,
        "rss_second_half_le_5mb": last["rss_mb"] - half["rss_mb"] <= 5.0,
        "fds_flat": last["fds"] - first["fds"] <= 16,
    }
    return {"checks": checks, "worst_p99_ms": worst, "passed": all(checks.values())}


def print_table(windows: list[dict[str, Any]]) -> None:
    ops = sorted({op for w in windows for op in w["ops"]})
    print(
        f"{'win':>3} {'t s':>6} {'req/s':>7} {'err':>4} {'p50':>6} {'p99':>6} {'max':>7} "
        f"{'RSS MB':>7} {'fds':>4}  " + "  ".join(f"{op} p99" for op in ops)
    )
    for w in windows:
        per_op = "  ".join(
            f"{w['ops'].get(op, {}).get('p99_ms', float('nan')):>{len(op) + 4}}" for op in ops
        )
        a = w["all"]
        print(
            f"{w['window']:>3} {w['t_s']:>6} {w['requests_per_s']:>7} {w['errors']:>4} "
            f"{a['p50_ms']:>6} {a['p99_ms']:>6} {a['max_ms']:>7} {w['rss_mb']:>7} "
            f"{w['fds']:>4}  {per_op}"
        )
        for sample in w["error_samples"]:
            print(f"      error: {sample}")


def start_stird(procs: Processes, workdir: Path) -> tuple[Any, dict[str, int]]:
    ports = {"http": free_port(), "rpc": free_port(), "agi": free_port()}
    argv = [
        sys.executable,
        str(HERE / "servers.py"),
        "stird",
        "--",
        "serve",
        "--state-dir",
        str(workdir / "state"),
        "--http",
        f"127.0.0.1:{ports['http']}",
        "--jsonrpc",
        f"127.0.0.1:{ports['rpc']}",
        "--agi",
        f"127.0.0.1:{ports['agi']}",
    ]
    config = workdir / "stird.toml"
    config.write_text("# embedded defaults\n")
    proc = procs.start("stird", [*argv, "--config", str(config)])
    for port in ports.values():
        wait_port(port, proc)
    return proc, ports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--rate", type=float, default=500.0, help="calls per second (500)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per window (30)")
    parser.add_argument("--p99-bound", type=float, default=50.0, help="ms (50)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    with tempfile.TemporaryDirectory(prefix="stird-soak-") as tmp:
        procs = Processes(Path(tmp))
        try:
            proc, ports = start_stird(procs, Path(tmp))
            sample = lambda: {  # noqa: E731
                "rss_mb": round(rss_bytes(proc.pid) / 2**20, 1),
                "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
            }
            soak = Soak(ports, args.window)

            async def go() -> None:
                await soak.connect()
                await soak.run(args.rate, args.duration, sample)

            t0 = time.perf_counter()
            asyncio.run(go())
            alive = proc.poll() is None
        finally:
            procs.stop_all()
    windows = [report_window(i, w, t0) for i, w in enumerate(soak.closed)]
    verdict = judge(windows, args.p99_bound)
    verdict["checks"]["stird_alive"] = alive
    verdict["passed"] = verdict["passed"] and alive
    print_table(windows)
    print(
        "criteria:",
        ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdict["checks"].items()),
    )
    out = {
        "soak": "stird",
        "rate": args.rate,
        "duration_s": args.duration,
        "window_s": args.window,
        "mix": "http 40% / netstring 40% / fastagi 20%",
        "windows": windows,
        "verdict": verdict,
    }
    line = json.dumps(out, separators=(",", ":"))
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
