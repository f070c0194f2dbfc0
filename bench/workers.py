"""``workers`` phase: HTTP /v1/sign throughput and stird's CPU-seconds per 1,000 sign
requests against ``[server] workers`` (1, 2, ...), and how the connections spread.

    python bench/workers.py [--workers 1,2] [--seconds 10] [--connections 16]
                            [--rate 2000] [--repeat 1]

stird's CPU time is the sum of utime+stime (/proc/PID/stat) over the supervisor and its
workers, read before and after each run. Two loads, both over kept-alive connections
from one Python process:

* saturation (closed loop): each connection sends its next request as soon as the last
  is answered. On a small machine the generator competes with stird for the cores, so
  the throughput figures are a floor, and CPU per request there mixes the work with
  the cost of three busy processes sharing two cores (preemption, cold caches) and with
  how many requests one worker finds per loop turn;
* fixed rate (open loop, wrk2-style): every connection sends on its own schedule, the
  connections together ``--rate`` requests/s (well below saturation), latency counted
  from the scheduled send time. Every process has idle time, so CPU per request is the
  work a request costs at a given load, which is what the target compares. It includes
  waking up: N workers split the load, each sleeps longer between requests, and a
  process woken after a longer sleep costs more (cold caches; on the 2-core VM of
  docs/PERFORMANCE.md a bare asyncio timer costs ~26 us of CPU per wake-up after 1 ms
  asleep, ~134 us after 20 ms). So one worker also runs at ``rate / N``, as busy as each
  of the N: its CPU per request against theirs separates the cost of the workers
  themselves from the cost of each one idling more.

Target (issue #18): CPU per request with 2 workers within 10 % of 1 worker.
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
# STIRD_BENCH_DAEMON: measure another source tree (e.g. the commit before a change)
DAEMON = os.environ.get("STIRD_BENCH_DAEMON") or str(ROOT / "daemon")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def tree_cpu(pids: list[int]) -> float:
    return sum(_cpu(p) for p in pids)


def _switches(pids: list[int]) -> tuple[int, int]:
    """Voluntary (the loop slept in epoll and was woken) and involuntary (preempted)
    context switches of ``pids``."""
    counts = [0, 0]
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                counts[line.startswith("non")] += int(line.split()[1])
    return counts[0], counts[1]


def _machine() -> tuple[float, float]:
    """CPU-seconds the whole machine spent busy, and stolen by the hypervisor."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (incl. steal)
    return busy / TICKS, fields[7] / TICKS


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _head() -> bytes:
    return (
        f"POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()


async def _client(port: int, until: float, seen: collections.Counter[str]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head, done = _head(), 0
    while time.monotonic() < until:
        seen[await _exchange(reader, writer, head)] += 1
        done += 1
    writer.close()
    return done


async def _load(port: int, connections: int, seconds: float) -> tuple[int, dict[str, int]]:
    seen: collections.Counter[str] = collections.Counter()
    until = time.monotonic() + seconds
    counts = await asyncio.gather(*(_client(port, until, seen) for _ in range(connections)))
    return sum(counts), dict(seen)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> str:
    """One sign request; the answering worker (``Stird-Worker``)."""
    writer.write(head + BODY)
    lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    await reader.readexactly(int(headers["content-length"]))
    if not lines[0].startswith("HTTP/1.1 200"):
        raise RuntimeError(lines[0])
    return headers.get("stird-worker", "single")


async def _paced(
    port: int, first: float, every: float, count: int, *,
    seen: collections.Counter[str], latencies: list[float],
) -> None:  # fmt: skip
    """``count`` requests on one connection, the i-th due at ``first + i * every``; one
    answered late delays the next send, and its latency counts from the due time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = _head()
    for i in range(count):
        due = first + i * every
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        seen[await _exchange(reader, writer, head)] += 1
        latencies.append(time.monotonic() - due)
    writer.close()


async def _fixed_rate(
    port: int, connections: int, seconds: float, rate: float
) -> tuple[int, dict[str, int], list[float]]:
    """Open loop: ``rate`` requests/s over ``connections``, their schedules interleaved."""
    seen: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    every = connections / rate  # one connection's interval
    count = int(seconds * rate / connections)
    start = time.monotonic() + 0.05
    await asyncio.gather(
        *(_paced(port, start + c / rate, every, count, seen=seen, latencies=latencies)
          for c in range(connections))
    )  # fmt: skip
    return len(latencies), dict(seen), sorted(latencies)


def _ms(latencies: list[float], q: float) -> float:
    return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)


def measure(
    workers: int, seconds: float, connections: int, rate: float | None = None
) -> dict[str, Any]:
    """One stird with ``workers``: saturation (``rate`` None) or a fixed ``rate``."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "stird.toml"
        config.write_text(f"[server]\nworkers = {workers}\n")  # a file: no in-process CPS
        port = free_port()
        argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
                "--http", f"127.0.0.1:{port}", "--jsonrpc", "off", "--agi", "off",
                "--state-dir", str(Path(tmp) / "state"), "--log-level", "warning"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=DAEMON)
        every_core = ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}"]  # run.py pins itself
        proc = subprocess.Popen([*every_core, *argv], env=env)  # noqa: S603 - our own argv
        try:
            wait_port(port, proc)
            asyncio.run(_load(port, 4, 1.0))  # warm-up: imports, caches, every worker
            time.sleep(0.5)
            pids = _tree(proc.pid)
            before, start = tree_cpu(pids), time.monotonic()
            busy0, steal0 = _machine()
            gen0, switches0 = _self_cpu(), _switches(pids)
            latencies: list[float] = []
            if rate is None:
                done, spread = asyncio.run(_load(port, connections, seconds))
            else:
                done, spread, latencies = asyncio.run(_fixed_rate(port, connections, seconds, rate))
            elapsed, cpu = time.monotonic() - start, tree_cpu(pids) - before
            busy1, steal1 = _machine()
            generator = _self_cpu() - gen0
            woken, preempted = (b - a for a, b in zip(switches0, _switches(pids), strict=True))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    row: dict[str, Any] = {
        "workers": workers,
        "load": "saturation" if rate is None else f"{rate:g}/s",
        "requests": done,
        "rate_per_s": round(done / elapsed),
        "cpu_s_per_1000": round(1000 * cpu / max(done, 1), 3),
        "requests_by_worker": sorted(spread.values(), reverse=True),
        "wakeups_per_request": round(woken / max(done, 1), 3),
        "preemptions_per_1000": round(1000 * preempted / max(done, 1), 1),
    }
    if latencies:
        row["p50_ms"], row["p99_ms"] = _ms(latencies, 0.5), _ms(latencies, 0.99)
    # noise: cores kept busy by everything else on the machine meanwhile (other helpers'
    # tests...), and stolen by the hypervisor; a run with either well above 0 is suspect
    others = (busy1 - busy0) - (steal1 - steal0) - cpu - generator
    row["stird_cores"] = round(cpu / elapsed, 2)
    row["generator_cores"] = round(generator / elapsed, 2)
    row["other_cores"] = round(max(others, 0.0) / elapsed, 2)
    row["steal_cores"] = round((steal1 - steal0) / elapsed, 2)
    return row


def _relative(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``cpu_vs_first``: each row's CPU per request over the first row's (1 worker)."""
    base = rows[0]["cpu_s_per_1000"] if rows else 0
    for row in rows:
        row["cpu_vs_first"] = round(row["cpu_s_per_1000"] / base, 3) if base else None
    return rows


def compare(
    counts: tuple[int, ...], seconds: float, connections: int, rate: float, repeat: int = 1
) -> dict[str, Any]:
    """Saturation and fixed-rate rows for each worker count, ``repeat`` rounds (each
    round runs every count in turn, so slow drift of the machine hits them alike)."""
    saturation: list[list[dict[str, Any]]] = []
    fixed: list[list[dict[str, Any]]] = []
    density: list[dict[str, Any]] = []
    most = max(counts)
    for _ in range(repeat):
        saturation.append(_relative([measure(n, seconds, connections) for n in counts]))
        fixed.append(_relative([measure(n, seconds, connections, rate) for n in counts]))
        if most > 1:  # one worker as busy as each of ``most`` workers at ``rate``
            density.append(measure(1, seconds, connections, rate / most))
    return {
        "saturation": [row for rows in saturation for row in rows],
        "fixed_rate": [row for rows in fixed for row in rows],
        "one_worker_at_rate_per_worker": density,
        "rate": rate,
        "cores": os.cpu_count(),  # stird runs on all of them (run.py pins only itself)
        "target": "CPU per request with 2 workers within 10 % of 1 worker",
    }


def run_phase(quick: bool, counts: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """The ``workers`` phase of bench/run.py: throughput and CPU-seconds per 1,000 sign
    requests against the number of workers, at saturation and at a fixed 2,000/s."""
    return compare(counts, 4.0 if quick else 10.0, 16, 2000.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2000.0, help="fixed-rate load, req/s")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every count")
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.workers.split(","))
    print(json.dumps(compare(counts, args.seconds, args.connections, args.rate, args.repeat),
                     indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
