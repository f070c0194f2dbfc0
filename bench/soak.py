"""Soak (issue #9): stird at a steady call rate for a long time, on every path at once.

    .venv/bin/python bench/soak.py                        # 600 s at 500 calls/s
    .venv/bin/python bench/soak.py --duration 60 --rate 200 --window 10 --warmup 20
    .venv/bin/python bench/soak.py --redis --json-out /tmp/soak.json   # [store] redis

One stird (embedded defaults: development credential, loopback listeners) runs pinned to
core 0; this generator runs on core 1. Calls arrive on a fixed schedule (open loop: a
call's first request counts its latency from the scheduled time, so a stall shows in
full; at most ``MAX_IN_FLIGHT`` calls run at once, later ones queue and their wait
counts). Each call signs and then verifies that fresh PASSporT with its own Call-ID (the
replay cache fills as in production), over one of the three ways a PBX reaches stird:

* ``http`` (40 %): ``POST /v1/sign`` then ``POST /v1/verify`` on keep-alive connections;
* ``rpc`` (40 %): ``stir.sign`` then ``stir.verify``, JSON-RPC over netstrings, many calls
  multiplexed on a few connections as Kamailio's ``janssonrpcc`` does;
* ``agi`` (20 %): a FastAGI ``/sign`` session (pre-dial handler) then a ``/verify`` session
  (inbound channel), each from a fake Asterisk answering like the transcripts
  (tests/asterisk_fakes.py).

Every ``--window`` seconds it records per path and operation the rate, the errors (an
unexpected status, answer or verdict, a timeout after ``TIMEOUT`` s, a connection error)
and p50/p99/max latency, with stird's RSS (VmRSS), open fds and CPU. Windows ending
within ``--warmup`` seconds (the replay cache fills for max_age + max_skew = 70 s) are
reported but not judged. Pass (exit status 0) only if all hold:

1. zero errors, warm-up included, and stird still running at the end;
2. every measured window's p99 ≤ ``--p99-bound`` ms (50) on every operation;
3. p99 stable: the last window's overall p99 ≤ 2 × the first measured one's + 1 ms;
4. RSS flat: ≤ ``--rss-growth`` MB (10) from the first measured window to the last,
   ≤ half that over the second half of the measured windows, and (with ≥ 3 windows in that
   half) a least-squares RSS slope over it ≤ ``--rss-slope`` MB/min (0.5);
5. open fds grow by ≤ 16;
6. with ``--redis``: stird never fell back to its local store (``stird_store_fallback_total``
   is 0 at the end), so every replay check really was shared;
7. no SYN dropped at a full accept queue (``TcpExtListenOverflows`` of this network
   namespace, per window as ``listen_drops``): a dropped FastAGI connect costs its caller a
   1 s, 3 s, … SYN retransmission, which latency figures alone would show only as a tail.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "daemon")]

import loadgen  # noqa: E402
from procs import LOAD_CORE, Processes, free_port, rss_bytes, wait_port  # noqa: E402
from tests.asterisk_fakes import FakeChannel, inbound_env, predial_env  # noqa: E402

T = TypeVar("T")
ORIG, DEST = "+12025550100", "+12025550101"
FROM, TO = "sip:+12025550100@pbx.example.com;user=phone", "tel:+12025550101"
AGI_FROM = "<sip:+12025550100@pbx.example.com;user=phone>;tag=soak"
AGI_TO = "<sip:+12025550101@pbx.example.com;user=phone>"
AGI_RURI = "sip:+12025550101@pbx.example.com"
MIX = ("http", "rpc", "http", "rpc", "agi")  # 40 / 40 / 20 %
MAX_IN_FLIGHT = 512  # calls running at once
MAX_QUEUED = 4096  # calls waiting for a slot; beyond that a call is dropped (an error)
TIMEOUT = 5.0  # per request: an answer later than this is an error
HTTP_CONNECTIONS, RPC_CONNECTIONS = 64, 4
CLK_TCK = os.sysconf("SC_CLK_TCK")

Sample = dict[str, float]


class Abandoned(Exception):
    """A request failed; its error is already counted and the call goes no further."""


@dataclass
class Window:
    started: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    ended: float = 0.0
    sample: Sample = field(default_factory=dict)

    def error(self, op: str, why: str) -> None:
        self.errors[op] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{op}: {why}"[:240])


# --- the generator -----------------------------------------------------------------------


class Soak:
    """Open-loop calls over HTTP, netstring JSON-RPC and FastAGI, tallied per window."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.window = Window(time.perf_counter())
        self.closed: list[Window] = []
        self.http_pool: asyncio.Queue[loadgen.Http] = asyncio.Queue()
        self.rpcs: list[loadgen.NetstringRpc] = []
        self.gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.started = 0.0  # when the schedule started

    async def connect(self) -> None:
        for _ in range(HTTP_CONNECTIONS):
            self.http_pool.put_nowait(await loadgen.Http(self.ports["http"]).connect())
        self.rpcs = [
            await loadgen.NetstringRpc(self.ports["rpc"]).connect() for _ in range(RPC_CONNECTIONS)
        ]

    async def step(
        self, op: str, started: float, request: Awaitable[T], check: Callable[[T], str | None]
    ) -> T:
        """One request: its latency counts from ``started``; ``check`` names what is wrong
        with the answer (None: as expected). Raises :class:`Abandoned` on any failure."""
        try:
            answer = await asyncio.wait_for(request, TIMEOUT)
        except Exception as exc:  # a timeout, a reset, a malformed answer: all errors
            self.window.error(op, f"{type(exc).__name__}: {exc or f'no answer in {TIMEOUT} s'}")
            raise Abandoned from exc
        if (wrong := check(answer)) is not None:
            self.window.error(op, wrong)
            raise Abandoned
        self.window.latencies[op].append((time.perf_counter() - started) * 1e3)
        return answer

    def launch(self, n: int, scheduled: float) -> None:
        path = MIX[n % len(MIX)]
        if len(self.tasks) >= MAX_IN_FLIGHT + MAX_QUEUED:
            self.window.error(f"{path}.sign", "dropped: generator queue full (stird behind)")
            return
        task = asyncio.get_running_loop().create_task(self.call(n, path, scheduled))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(self, n: int, path: str, scheduled: float) -> None:
        run = {"http": self.http_call, "rpc": self.rpc_call, "agi": self.agi_call}[path]
        async with self.gate:
            try:
                await run(f"soak-{n}@127.0.0.1", scheduled)
            except Abandoned:
                return
            except Exception as exc:  # a generator bug must not pass unnoticed
                self.window.error(f"{path}.call", f"{type(exc).__name__}: {exc}")
                return
        self.window.calls[path] += 1

    # --- HTTP ---

    async def http_call(self, call_id: str, scheduled: float) -> None:
        conn = await self.http_pool.get()
        try:
            await self.http_pair(conn, call_id, scheduled)
        except Abandoned:
            conn.close()  # mid-answer state unknown: the next call opens a fresh connection
            raise
        finally:
            self.http_pool.put_nowait(conn)

    async def http_pair(self, conn: loadgen.Http, call_id: str, scheduled: float) -> None:
        signed = await self.step(
            "http.sign",
            scheduled,
            conn.post_json("/v1/sign", {"orig": ORIG, "dest": [DEST]}),
            lambda a: None if a[0] == 200 and _identity(a[1]) else f"{a[0]} {a[1]}",
        )
        body = {"identity": [_identity(signed[1])], "from": FROM, "to": TO, "call_id": call_id}
        await self.step(
            "http.verify",
            time.perf_counter(),
            conn.post_json("/v1/verify", body),
            lambda a: None if a[0] == 200 and _valid(a[1]) else f"{a[0]} {a[1]}",
        )

    # --- netstring JSON-RPC ---

    async def rpc_call(self, call_id: str, scheduled: float) -> None:
        rpc = self.rpcs[hash(call_id) % len(self.rpcs)]
        signed = await self.step(
            "rpc.sign",
            scheduled,
            rpc.call("stir.sign", {"orig": ORIG, "dest": [DEST]}),
            lambda a: None if _identity(a.get("result")) else str(a),
        )
        identity = _identity(signed["result"])
        body = {"identity": [identity], "from": FROM, "to": TO, "call_id": call_id}
        await self.step(
            "rpc.verify",
            time.perf_counter(),
            rpc.call("stir.verify", body),
            lambda a: None if _valid(a.get("result")) else str(a),
        )

    # --- FastAGI ---

    async def agi_call(self, call_id: str, scheduled: float) -> None:
        outgoing = FakeChannel(predial_env("sign"), {"STIRD_DEST": DEST, "STIRD_ORIG": ORIG})
        await self.step(
            "agi.sign",
            scheduled,
            loadgen.agi_session(self.ports["agi"], outgoing),
            lambda _: _agi_wrong(outgoing, "STIRD_IDENTITY", None),
        )
        headers = [
            ("Identity", outgoing.variables["STIRD_IDENTITY"]),
            ("From", AGI_FROM),
            ("To", AGI_TO),
            ("Call-ID", call_id),
            ("Date", outgoing.variables.get("STIRD_DATE", "")),
        ]
        incoming = FakeChannel(
            inbound_env("verify"), {"CHANNEL(pjsip,request_uri)": AGI_RURI}, headers=headers
        )
        await self.step(
            "agi.verify",
            time.perf_counter(),
            loadgen.agi_session(self.ports["agi"], incoming),
            lambda _: _agi_wrong(incoming, "STIRD_VERDICT", "valid"),
        )

    # --- schedule and windows ---

    async def run(self, rate: float, duration: float, window_s: float, sample: Sampler) -> None:
        """Issue ``rate × duration`` calls on schedule; close a window every ``window_s``."""
        start = self.started = time.perf_counter()
        self.window = Window(start)
        rotator = asyncio.get_running_loop().create_task(
            self.rotate_every(start, window_s, duration, sample)
        )
        for n in range(int(rate * duration)):
            scheduled = start + n / rate
            if (wait := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            self.launch(n, scheduled)
        await rotator
        await self.drain()
        self.rotate(sample)

    async def rotate_every(
        self, start: float, window_s: float, duration: float, sample: Sampler
    ) -> None:
        """Close windows at ``start + k × window_s``; the last one also takes the drain."""
        for k in itertools.count(1):
            boundary = start + k * window_s
            if boundary >= start + duration - 1e-6:
                return
            await asyncio.sleep(max(0.0, boundary - time.perf_counter()))
            self.rotate(sample)

    async def drain(self) -> None:
        """Wait for the calls in flight; one still unfinished after that is an error."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=3 * TIMEOUT + 1)
        for task in pending:
            task.cancel()
            self.window.error("unfinished", "no answer long after the last call was sent")

    def rotate(self, sample: Sampler) -> None:
        window, self.window = self.window, Window(time.perf_counter())
        window.ended, window.sample = time.perf_counter(), sample()
        self.closed.append(window)

    async def close(self) -> None:
        while not self.http_pool.empty():
            self.http_pool.get_nowait().close()
        for rpc in self.rpcs:
            await rpc.close()


def _identity(doc: Any) -> str | None:
    identity = (doc or {}).get("identity") if isinstance(doc, dict) else None
    return str(identity[0]) if isinstance(identity, list) and identity else None


def _valid(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("verdict") == "valid"


def _agi_wrong(channel: FakeChannel, name: str, expected: str | None) -> str | None:
    """What is wrong with a finished FastAGI session (None: continue, ``name`` as expected)."""
    v = channel.variables
    value = v.get(name, "")
    if v.get("STIRD_ACTION") == "continue" and (value == expected or (not expected and value)):
        return None
    return str({k: x[:60] for k, x in v.items() if k.startswith("STIRD_")})


# --- stird's side --------------------------------------------------------------------------


def listen_overflows() -> int:
    """``TcpExtListenOverflows`` of this network namespace: connections refused because a
    listener's accept queue was full (any listener; stird's are the only ones here)."""
    names, values = [
        line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
        if line.startswith("TcpExt:")
    ][:2]  # fmt: skip
    return int(dict(zip(names, values, strict=True)).get("ListenOverflows", 0))


class Sampler:
    """stird's RSS, open fds and CPU share since the previous sample; this generator's
    CPU share too (near 100 %, the generator and not stird would be the bottleneck)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last = (time.perf_counter(), self.stird_cpu(), self.own_cpu())
        self.overflows = listen_overflows()

    def stird_cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    @staticmethod
    def own_cpu() -> float:
        times = os.times()
        return times.user + times.system

    def __call__(self) -> Sample:
        now = (time.perf_counter(), self.stird_cpu(), self.own_cpu())
        seconds = max(now[0] - self.last[0], 1e-9)
        shares = [
            round(100 * (b - a) / seconds, 1) for a, b in zip(self.last[1:], now[1:], strict=True)
        ]
        self.last, overflows = now, listen_overflows()
        drops, self.overflows = overflows - self.overflows, overflows
        return {
            "rss_mb": round(rss_bytes(self.pid) / 2**20, 1),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
            "stird_cpu_pct": shares[0],
            "gen_cpu_pct": shares[1],
            "listen_drops": drops,
        }


def start_redis(procs: Processes) -> str:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("--redis: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    # On the generator's core, standing in for a Redis host of its own: its CPU is not stird's.
    wait_port(port, procs.start("redis", argv, core=LOAD_CORE))
    return f"redis://127.0.0.1:{port}/0"


def start_stird(
    procs: Processes, workdir: Path, redis: str | None, max_loop_lag: float | None = None
) -> tuple[Any, dict[str, int]]:
    ports = {"http": free_port(), "rpc": free_port(), "agi": free_port()}
    config = workdir / "stird.toml"
    config.write_text(
        "# embedded defaults: development credential, loopback listeners\n"
        + (f"[server]\nmax_loop_lag = {max_loop_lag}\n" if max_loop_lag is not None else "")
        + (f'[store]\nredis = "{redis}"\n' if redis else "")
    )
    argv = [
        *(sys.executable, str(HERE / "servers.py"), "stird", "--", "serve"),
        *("--config", str(config), "--state-dir", str(workdir / "state")),
        *("--http", f"127.0.0.1:{ports['http']}", "--jsonrpc", f"127.0.0.1:{ports['rpc']}"),
        *("--agi", f"127.0.0.1:{ports['agi']}"),
    ]
    proc = procs.start("stird", argv)
    try:
        for port in ports.values():
            wait_port(port, proc)
    except RuntimeError as exc:
        raise SystemExit(f"{exc}\n{procs.log_tail('stird')}") from None
    return proc, ports


# --- figures and verdict -----------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float | None]:
    """p50/p99/max in ms; None when nothing was answered (JSON null, not NaN)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {
        "p50_ms": round(loadgen.percentile(ordered, 0.50), 2),
        "p99_ms": round(loadgen.percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
    }


def report_window(index: int, window: Window, t0: float, warmup: float) -> dict[str, Any]:
    """One window's figures; ``t0`` is when the schedule started. A window that started
    within the warm-up is marked so (reported, not judged)."""
    seconds = max(window.ended - window.started, 1e-9)
    ops = sorted(set(window.latencies) | set(window.errors))
    every = [x for op in ops for x in window.latencies.get(op, [])]
    return {
        "window": index,
        "t_s": round(window.ended - t0, 1),
        "warmup": window.started - t0 < warmup,
        "requests_per_s": round(len(every) / seconds, 1),
        "calls_per_s": {p: round(c / seconds, 1) for p, c in sorted(window.calls.items())},
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
        **window.sample,
    }


def slope_mb_per_min(points: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS over time; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    xs, ys = [p["t_s"] / 60 for p in points], [p["rss_mb"] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return (
        round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var, 3)
        if var
        else None
    )


@dataclass(frozen=True)
class Criteria:
    p99_bound_ms: float = 50.0
    rss_growth_mb: float = 10.0
    rss_slope_mb_per_min: float = 0.5
    fd_growth: int = 16


def judge(
    windows: list[dict[str, Any]], c: Criteria, alive: bool, fallbacks: int | None = 0
) -> dict[str, Any]:
    measured = [w for w in windows if not w["warmup"]] or windows[-1:]
    first, last = measured[0], measured[-1]
    second_half = measured[len(measured) // 2 :]
    p99s = [op["p99_ms"] for w in measured for op in w["ops"].values()]
    worst = max((p for p in p99s if p is not None), default=None)
    p99_first, p99_last = first["all"]["p99_ms"], last["all"]["p99_ms"]
    slope = slope_mb_per_min(second_half)
    checks = {
        "stird_alive": alive,
        "zero_errors": sum(w["errors"] for w in windows) == 0,
        "p99_bounded": None not in p99s and worst is not None and worst <= c.p99_bound_ms,
        "p99_stable": None not in (p99_first, p99_last) and p99_last <= 2 * p99_first + 1.0,
        "rss_growth": last["rss_mb"] - first["rss_mb"] <= c.rss_growth_mb,
        "rss_second_half": last["rss_mb"] - second_half[0]["rss_mb"] <= c.rss_growth_mb / 2,
        "rss_slope": slope is None or slope <= c.rss_slope_mb_per_min,
        "fds_flat": last["fds"] - first["fds"] <= c.fd_growth,
        "no_store_fallback": fallbacks == 0,
        "no_listen_drops": sum(w.get("listen_drops", 0) for w in windows) == 0,
    }
    return {
        "checks": checks,
        "measured_windows": [first["window"], last["window"]],
        "worst_p99_ms": worst,
        "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "rss_slope_second_half_mb_per_min": slope,
        "store_fallbacks": fallbacks,
        "passed": all(checks.values()),
    }


def print_table(windows: list[dict[str, Any]]) -> None:
    ops = sorted({op for w in windows for op in w["ops"]})
    print(
        f"{'win':>3} {'t s':>6} {'req/s':>7} {'err':>4} {'p50':>6} {'p99':>6} {'max':>7} "
        f"{'RSS MB':>7} {'fds':>4} {'cpu%':>5} {'gen%':>5} {'drops':>5}  "
        + "  ".join(f"{op}" for op in ops)
    )
    for w in windows:
        per_op = "  ".join(f"{_op_cell(w['ops'].get(op)):>{len(op)}}" for op in ops)
        a, mark = w["all"], "*" if w["warmup"] else " "
        print(
            f"{w['window']:>2}{mark} {w['t_s']:>6} {w['requests_per_s']:>7} {w['errors']:>4} "
            f"{_ms(a['p50_ms']):>6} {_ms(a['p99_ms']):>6} {_ms(a['max_ms']):>7} {w['rss_mb']:>7} "
            f"{w['fds']:>4} {w['stird_cpu_pct']:>5} {w['gen_cpu_pct']:>5} "
            f"{w.get('listen_drops', 0):>5}  {per_op}"
        )
        for sample in w["error_samples"]:
            print(f"      error: {sample}")
    print(
        "(* warm-up, not judged; per operation: p99 ms, /errors if any; cpu% = stird; "
        "drops = SYNs dropped at a full accept queue)"
    )


def _op_cell(op: dict[str, Any] | None) -> str:
    if op is None:
        return "-"
    return _ms(op["p99_ms"]) + (f"/{op['errors']}e" if op["errors"] else "")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value}"


# --- main --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=600.0, help="seconds of load (600)")
    add("--rate", type=float, default=500.0, help="calls per second, each a sign + a verify (500)")
    add("--window", type=float, default=30.0, help="seconds per window (30)")
    add("--warmup", type=float, default=90.0, help="windows ending by then are not judged (90)")
    add("--p99-bound", type=float, default=50.0, help="ms (50)")
    add("--rss-growth", type=float, default=10.0, help="MB after the warm-up (10)")
    add("--rss-slope", type=float, default=0.5, help="MB/min over the second half (0.5)")
    add("--redis", action="store_true", help="run stird with [store] redis on a local redis")
    add("--max-loop-lag", type=float, help="stird's [server] max_loop_lag, s (0: no shedding)")
    add("--json-out", type=Path, help="also write the JSON line to this file")
    return parser.parse_args()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """The generator on uvloop when importable (less of core 1 per request)."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def counters(http_port: int) -> dict[str, int] | None:
    """From /metrics (None if it could not be read): ``fallbacks``, times Redis failed and
    stird went on with its local store (``stird_store_fallback_total``; 0 without Redis),
    and ``shed``, requests refused while stird was behind (``stird_overload_shed_total``)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = {"fallbacks": 0, "shed": 0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "stird_store_fallback_total":
            found["fallbacks"] = int(float(value))
        elif name.startswith("stird_overload_shed_total{"):
            found["shed"] += int(float(value))
    return found


def soak(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[dict[str, Any]], bool, dict[str, int] | None]:
    procs = Processes(workdir)
    try:
        redis = start_redis(procs) if args.redis else None
        proc, ports = start_stird(procs, workdir, redis, args.max_loop_lag)
        sampler, soak = Sampler(proc.pid), Soak(ports)

        async def go() -> None:
            await soak.connect()
            try:
                await soak.run(args.rate, args.duration, args.window, sampler)
            finally:
                await soak.close()

        run_loop(go())
        alive = proc.poll() is None
        found = counters(ports["http"]) if alive else None
        if not alive:
            print(procs.log_tail("stird"), file=sys.stderr)
    finally:
        procs.stop_all()
    return (
        [report_window(i, w, soak.started, args.warmup) for i, w in enumerate(soak.closed)],
        alive,
        found,
    )


def main() -> int:
    args = parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    loadavg = os.getloadavg()  # how idle the machine was: the figures depend on it
    with tempfile.TemporaryDirectory(prefix="stird-soak-") as tmp:
        windows, alive, found = soak(args, Path(tmp))
    criteria = Criteria(args.p99_bound, args.rss_growth, args.rss_slope)
    verdict = judge(windows, criteria, alive, None if found is None else found["fallbacks"])
    verdict["shed"] = None if found is None else found["shed"]
    print_table(windows)
    print(
        "criteria:",
        ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in verdict["checks"].items()),
    )
    print(f"refused while behind (503): {verdict['shed']}")
    print("verdict:", "PASS" if verdict["passed"] else "FAIL")
    out = {
        "soak": "stird",
        "rate": args.rate,
        "duration_s": args.duration,
        "window_s": args.window,
        "warmup_s": args.warmup,
        "store": "redis" if args.redis else "memory",
        "max_loop_lag": args.max_loop_lag,  # None: stird's default (0.25 s)
        "mix": "http 40% / netstring json-rpc 40% / fastagi 20%; each call a sign + a verify",
        "criteria": dataclasses.asdict(criteria),
        "loadavg_start": [round(x, 2) for x in loadavg],
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
