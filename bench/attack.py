"""Issue #17 under a benchmark: stird attacked while valid verify requests flow.

    .venv/bin/python bench/attack.py               # the three attacks, about 1.5 minutes
    .venv/bin/python bench/attack.py --seconds 10  # shorter phases

One ``stird serve`` (embedded defaults: development credential, embedded CPS) pinned to
core 0; the attackers run in a process of their own on core 1 (``attackers`` below), the
valid load in this process (core 1 too), so the daemon's own cost is what is measured.
Phases, each ``--seconds`` long, with valid verify requests on HTTP (keep-alive),
netstring JSON-RPC and FastAGI all along:

1. ``idle``: 2,000 idle or trickling connections (a byte every ~1 s) over the HTTP,
   netstring and FastAGI listeners, each reopened 0.2 s after stird closes it;
2. ``frames``: 300 connections each sending an unfinished ~1 MiB netstring frame;
3. ``cps``: a CPS retrieval flood (``GET /cps/{tn}/ppts``, keep-alive, closed loop) from
   64 source addresses 127.0.0.2-65.

Per phase it reports the valid requests' p50/p99 and errors, stird's RSS (before, peak,
after the attackers went) and stird's CPU (share of one core, from /proc/PID/stat). The
last line is one JSON document. Nothing is asserted (tests/wiring/test_starvation.py
asserts errors and RSS); the target is p99 < 50 ms under each attack.

``python bench/attack.py attackers KIND HTTP RPC AGI SECONDS`` runs one attack alone (what
the test and the phases above start as a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), os.environ.get("STIRD_BENCH_DAEMON") or str(ROOT / "daemon")]

IDLE = {"http": 700, "rpc": 650, "agi": 650}  # 2,000 in all
FRAMES = 300
FRAME = b"1048576:" + b"x" * 1_000_000  # unfinished: ~48 KiB and the comma never come
CPS_CLIENTS = 64
CPS_PATH = "/cps/15550001111/ppts"

# --- the attackers (a process of their own) ----------------------------------------------


class _Slot(asyncio.Protocol):
    """One attacker connection slot: open, send ``opener``, then a byte every ~1 s
    (``trickle``, at most ``trickle`` bytes) or silence; reopened 0.2 s after stird closes
    it, until the attack ends. No per-byte busy loop: one timer per connection."""

    def __init__(self, port: int, opener: bytes, trickle: bytes, stop: asyncio.Event) -> None:
        self.port, self.opener, self.trickle, self.stop = port, opener, trickle, stop
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.opened = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            lost = loop.create_future()
            try:
                await loop.create_connection(lambda: _Conn(self, lost), "127.0.0.1", self.port)  # noqa: B023
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.opened += 1
            stop = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait([lost, stop], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self.timer is not None:
                self.timer.cancel()
            if self.transport is not None:
                self.transport.abort()
            await asyncio.sleep(0.2)


class _Conn(asyncio.Protocol):
    def __init__(self, slot: _Slot, lost: asyncio.Future[None]) -> None:
        self.slot, self.lost = slot, lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        slot = self.slot
        slot.transport = transport  # type: ignore[assignment]
        slot.sent = 0
        if slot.opener:
            transport.write(slot.opener)  # type: ignore[attr-defined]
        if slot.trickle:
            delay = random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
            slot.timer = asyncio.get_running_loop().call_later(delay, self.tick)

    def tick(self) -> None:
        slot = self.slot
        if slot.transport is None or slot.transport.is_closing() or self.lost.done():
            return
        slot.transport.write(slot.trickle[slot.sent % len(slot.trickle) :][:1])
        slot.sent += 1
        delay = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
        slot.timer = asyncio.get_running_loop().call_later(delay, self.tick)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _idle_slots(ports: dict[str, int], stop: asyncio.Event) -> list[_Slot]:
    head = b"POST /v1/verify HTTP/1.1\r\nHost: x\r\n"
    shapes = {  # (opener, trickle) alternately for each listener
        "http": [(head + b"X-a: ", b"a"), (head + b"Content-Length: 1000\r\n\r\n", b"")],
        "rpc": [(b"", b""), (b"1", b"0")],  # silence; a length field a digit a second
        "agi": [(b"", b""), (b"agi_network: yes\n", b"agi_x: " + b"a" * 200)],
    }
    return [
        _Slot(ports[kind], *shapes[kind][i % 2], stop)
        for kind, count in IDLE.items()
        for i in range(count)
    ]


async def _frame(port: int, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(FRAME)
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(writer.drain(), 20)
        read = asyncio.ensure_future(reader.read(1))
        await asyncio.wait(
            [read, asyncio.ensure_future(stop.wait())], return_when="FIRST_COMPLETED"
        )
        read.cancel()
    finally:
        writer.transport.abort()


async def _cps_client(port: int, index: int, stop: asyncio.Event, counts: dict[int, int]) -> None:
    """A retrieval flood from 127.0.0.{2+index}: keep-alive, the next request as soon as
    the answer is in (whatever it is: 200, 404, 429 or 503)."""
    from loadgen import Http  # noqa: PLC0415

    client = Http(port, local_host=f"127.0.0.{2 + index}")
    while not stop.is_set():
        try:
            status, _ = await asyncio.wait_for(client.request("GET", CPS_PATH), 10)
            counts[status] = counts.get(status, 0) + 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            client.close()
            counts[0] = counts.get(0, 0) + 1
            await asyncio.sleep(0.1)
    client.close()


async def attack(kind: str, ports: dict[str, int], seconds: float) -> dict[str, Any]:
    """Run one attack for ``seconds``; what it did (connections opened, answers)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    if kind == "idle":
        slots = _idle_slots(ports, stop)
        tasks = []
        for i, slot in enumerate(slots):  # ramp up over ~2 s, as a botnet would not all at once
            tasks.append(asyncio.create_task(slot.run()))
            if i % 100 == 99:
                await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
        return {"slots": len(slots), "opened": sum(s.opened for s in slots)}
    if kind == "frames":
        tasks = []
        for i in range(FRAMES):  # 100 a second
            tasks.append(asyncio.create_task(_frame(ports["rpc"], stop)))
            if i % 10 == 9:
                await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
        return {"frames": FRAMES}
    if kind == "cps":
        counts: dict[int, int] = {}
        await asyncio.gather(*(_cps_client(ports["http"], i, stop, counts)
                               for i in range(CPS_CLIENTS)))  # fmt: skip
        return {"answers": {str(k): v for k, v in sorted(counts.items())}}
    raise SystemExit(f"unknown attack {kind!r}")


def attackers_main(argv: list[str]) -> int:
    kind, http, rpc, agi, seconds = argv
    import resource  # noqa: PLC0415

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ports = {"http": int(http), "rpc": int(rpc), "agi": int(agi)}
    done = asyncio.run(attack(kind, ports, float(seconds)))
    print(json.dumps(done), flush=True)
    return 0


# --- the benchmark -----------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def _phase(kind: str, stird: Any, ports: dict[str, int], seconds: float) -> dict[str, Any]:
    from loadgen import percentile  # noqa: PLC0415
    from procs import LOAD_CORE, rss_bytes  # noqa: PLC0415

    legit = _Legit(ports)
    await legit.start()
    await asyncio.sleep(1)
    before = rss_bytes(stird.pid)
    argv = [sys.executable, __file__, "attackers", kind,
            *(str(ports[k]) for k in ("http", "rpc", "agi")), str(seconds)]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", str(LOAD_CORE), *argv, stdout=asyncio.subprocess.PIPE
    )
    legit.reset()
    legit.closed0 = await _closed(ports["http"])
    ticks0, t0 = cpu_ticks(stird.pid), time.monotonic()
    peak = before
    while proc.returncode is None:
        peak = max(peak, rss_bytes(stird.pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.2)
    cpu = (cpu_ticks(stird.pid) - ticks0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    out = (await proc.stdout.read()).decode() if proc.stdout else ""
    closed = await _closed(ports["http"])
    under = legit.reset()
    await asyncio.sleep(3)
    await legit.stop()
    after = rss_bytes(stird.pid)
    settle = time.monotonic() + 20
    while after > before + (20 << 20) and time.monotonic() < settle:
        await asyncio.sleep(0.5)
        after = rss_bytes(stird.pid)
    result: dict[str, Any] = {"attack": kind, "attackers": json.loads(out or "{}")}
    for name, values in under.items():
        lat = sorted(values)
        result[name] = {"requests": len(lat), "p50_ms": round(percentile(lat, 0.5), 2),
                        "p99_ms": round(percentile(lat, 0.99), 2),
                        "max_ms": round(lat[-1], 2) if lat else None}  # fmt: skip
    result["errors"] = legit.errors
    result["rss_mb"] = {"before": round(before / 2**20, 1), "peak": round(peak / 2**20, 1),
                        "after": round(after / 2**20, 1)}  # fmt: skip
    result["stird_cpu"] = round(cpu, 3)
    result["closed"] = {k: v - legit.closed0.get(k, 0) for k, v in closed.items()}
    return result


async def _closed(port: int) -> dict[str, float]:
    """stird_connections_closed_total by listener/reason."""
    from loadgen import Http  # noqa: PLC0415

    client = Http(port)
    try:
        _, text = await client.request("GET", "/metrics")
    finally:
        client.close()
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("stird_connections_closed_total{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(p.split("=") for p in labels[labels.index("{") + 1 : -1].split(","))
            key = "/".join(fields[k].strip('"') for k in ("listener", "reason"))
            out[key] = float(value)
    return out


class _Legit:
    """Valid verify requests, one after another on each path: HTTP on one keep-alive
    connection, netstring JSON-RPC on one connection, a FastAGI session each."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.latencies: dict[str, list[float]] = {"http": [], "rpc": [], "agi": []}
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.running = True
        self.closed0: dict[str, float] = {}

    async def start(self) -> None:
        from loadgen import Http, NetstringRpc, agi_session  # noqa: PLC0415
        from tests.adapters.test_agi import asterisk_offer, inbound, with_date  # noqa: PLC0415
        from tests.wiring.test_daemon_api import FROM, SDP, TO, verify_body  # noqa: PLC0415

        http = await Http(self.ports["http"]).connect()
        _, signed = await http.post_json("/v1/sign", {"orig": FROM, "dest": [TO], "sdp": SDP})
        body = verify_body(signed)
        _, agi_signed = await http.post_json("/v1/sign", {
            "orig": "+15552220000", "dest": ["+15557770002"],
            "sdp": asterisk_offer("AB:" * 31 + "CD")})  # fmt: skip
        rpc = await NetstringRpc(self.ports["rpc"]).connect()

        async def http_once() -> str | None:
            status, doc = await http.post_json("/v1/verify", body)
            return None if doc and doc.get("verdict") == "valid" else f"{status} {doc}"

        async def rpc_once() -> str | None:
            answer = await rpc.call("stir.verify", body)
            ok = (answer.get("result") or {}).get("verdict") == "valid"
            return None if ok else str(answer)[:200]

        async def agi_once() -> str | None:
            channel = with_date(inbound(agi_signed["identity"]), agi_signed["date"])
            await agi_session(self.ports["agi"], channel)
            verdict = channel.variables.get("STIRD_VERDICT")
            return None if verdict == "valid" else f"STIRD_VERDICT={verdict!r}"

        self.closers = [http.close, rpc.close]
        for name, once in (("http", http_once), ("rpc", rpc_once), ("agi", agi_once)):
            self.tasks.append(asyncio.create_task(self._loop(name, once)))

    async def _loop(self, name: str, once: Any) -> None:
        while self.running:
            started = time.monotonic()
            try:
                problem = await asyncio.wait_for(once(), 10)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                self.errors.append(f"{name}: {problem}")
            else:
                self.latencies[name].append((time.monotonic() - started) * 1000)
            await asyncio.sleep(0.01)

    def reset(self) -> dict[str, list[float]]:
        out, self.latencies = self.latencies, {k: [] for k in self.latencies}
        return out

    async def stop(self) -> None:
        self.running = False
        await asyncio.gather(*self.tasks)
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close() if asyncio.iscoroutinefunction(close) else close()


async def bench(seconds: float, kinds: list[str]) -> list[dict[str, Any]]:
    from procs import Processes, free_port, wait_port  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="stird-attack-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        ports = {"http": free_port(), "rpc": free_port(), "agi": free_port()}
        argv = [
            *(sys.executable, str(HERE / "servers.py"), "stird", "--", "serve"),
            *("--state-dir", str(work / "state")),  # no --config: the embedded CPS is mounted
            *("--http", f"127.0.0.1:{ports['http']}", "--jsonrpc", f"127.0.0.1:{ports['rpc']}"),
            *("--agi", f"127.0.0.1:{ports['agi']}"),
        ]
        try:
            stird = procs.start("stird", argv)
            for port in ports.values():
                wait_port(port, stird)
            results = []
            for kind in kinds:
                results.append(await _phase(kind, stird, ports, seconds))
                print(_line(results[-1]), flush=True)
            return results
        finally:
            if os.environ.get("STIRD_ATTACK_LOG"):
                print(procs.log_tail("stird", 400), file=sys.stderr)
            procs.stop_all()


def _line(r: dict[str, Any]) -> str:
    p99 = ", ".join(f"{k} {r[k]['p99_ms']}" for k in ("http", "rpc", "agi"))
    rss = r["rss_mb"]
    memory = f"RSS MB {rss['before']} / {rss['peak']} / {rss['after']}"
    return (f"{r['attack']:>6}: p99 ms {p99}; errors {len(r['errors'])}; {memory}; "
            f"stird CPU {r['stird_cpu']:.0%}")  # fmt: skip


def main() -> int:
    if sys.argv[1:2] == ["attackers"]:
        return attackers_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", choices=["idle", "frames", "cps"], action="append")
    args = parser.parse_args()
    import resource  # noqa: PLC0415

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = asyncio.run(bench(args.seconds, args.only or ["idle", "frames", "cps"]))
    print(json.dumps({"attacks": results, "loadavg": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
