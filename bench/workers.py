"""``workers`` phase: HTTP /v1/sign throughput and stird's CPU-seconds per 1,000 sign
requests against ``[server] workers`` (1, 2, ...), and how the connections spread.

    python bench/workers.py [--workers 1,2] [--seconds 10] [--connections 16]

stird's CPU time is the sum of utime+stime (/proc/PID/stat) over the supervisor and its
workers, read before and after the run. The load generator is one Python process of
keep-alive connections (closed loop); on a small machine it competes with stird for the
cores, so the throughput figures are a floor; CPU per request is the efficiency figure
(target: 2 workers within 10 % of 1 worker, docs issue #18).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"orig": "+12025550100", "dest": ["+12025550101"]}).encode()
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def tree_cpu(pids: list[int]) -> float:
    return sum(_cpu(p) for p in pids)


async def _client(port: int, until: float, seen: collections.Counter[str]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    done = 0
    while time.monotonic() < until:
        writer.write(head + BODY)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        await reader.readexactly(int(headers["content-length"]))
        if not lines[0].startswith("HTTP/1.1 200"):
            raise RuntimeError(lines[0])
        seen[headers.get("stird-worker", "single")] += 1
        done += 1
    writer.close()
    return done


async def _load(port: int, connections: int, seconds: float) -> tuple[int, dict[str, int]]:
    seen: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + seconds
    counts = await asyncio.gather(*(_client(port, until, seen) for _ in range(connections)))
    return sum(counts), dict(seen)


def measure(workers: int, seconds: float, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "stird.toml"
        config.write_text(f"[server]\nworkers = {workers}\n")  # a file: no in-process CPS
        port = free_port()
        argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
                "--http", f"127.0.0.1:{port}", "--jsonrpc", "off", "--agi", "off",
                "--state-dir", str(Path(tmp) / "state"), "--log-level", "warning"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT / "daemon"))
        every_core = ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}"]  # run.py pins itself
        proc = subprocess.Popen([*every_core, *argv], env=env)  # noqa: S603 - our own argv
        try:
            wait_port(port, proc)
            asyncio.run(_load(port, 4, 1.0))  # warm-up: imports, caches, every worker
            time.sleep(0.5)
            pids = _tree(proc.pid)
            before, start = tree_cpu(pids), time.monotonic()
            done, spread = asyncio.run(_load(port, connections, seconds))
            elapsed, cpu = time.monotonic() - start, tree_cpu(pids) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return {
        "workers": workers,
        "requests": done,
        "rate_per_s": round(done / elapsed),
        "cpu_s_per_1000": round(1000 * cpu / max(done, 1), 3),
        "requests_by_worker": sorted(spread.values(), reverse=True),
    }


def run_phase(quick: bool, counts: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """The ``workers`` phase of bench/run.py: throughput and CPU-seconds per 1,000 sign
    requests against the number of workers."""
    seconds = 4.0 if quick else 10.0
    rows = [measure(n, seconds, 16) for n in counts]
    base = rows[0]["cpu_s_per_1000"]
    for row in rows:
        row["cpu_vs_first"] = round(row["cpu_s_per_1000"] / base, 3) if base else None
    return {"rows": rows, "cores": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    rows = [measure(int(n), args.seconds, args.connections) for n in args.workers.split(",")]
    base = rows[0]["cpu_s_per_1000"]
    for row in rows:
        row["cpu_vs_first"] = round(row["cpu_s_per_1000"] / base, 3) if base else None
    print(json.dumps({"workers": rows, "cores": len(os.sched_getaffinity(0))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
