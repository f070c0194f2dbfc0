"""Post-dial delay through Kamailio (issue #18): SIPp UAC -> Kamailio -> SIPp UAS.

    .venv/bin/python bench/pdd.py            # 15 s per rate and way: about 5 minutes
    .venv/bin/python bench/pdd.py --quick    # 5 s each: about 2.5 minutes
    .venv/bin/python bench/run.py --phase pdd [--quick]   # the same, from the bench runner

Four ways through the project's Kamailio configs (``integrations/kamailio/``), one after the
other in one run, at 200, 500 and 1,000 calls/s:

* ``relay``: ``-A BENCH_RELAY_ONLY``, every INVITE relayed untouched (the floor);
* ``stird``: the shipped config, stird.cfg asking stird (msec + shaken: two PASSporTs);
* ``secsipid``: ``-A BENCH_SECSIPID``, one shaken PASSporT signed inside the Kamailio
  worker by the secsipid module with stird's own development key.
* ``stird-http``: ``kamailio-http.cfg``, stird's ``POST /v1/sign`` called with
  http_client from the SIP workers (synchronous, 8 workers, no single I/O process).

Figures per way and rate: the INVITE->200 time at the UAC (SIPp ``-trace_rtt``, every
call), p50/p99, the added delay against ``relay`` at the same rate, calls/s completed,
failed calls (SIPp), unsigned calls (INVITEs the UAS received without Identity:
``bench/sipp/uas_count.xml``) and Kamailio's fail-open log lines. Also the CPU-seconds of
Kamailio (all processes) and of stird during the run.

Nothing is pinned: SIPp, Kamailio and stird share the machine's cores as they would on a
small host. Needs ``kamailio`` with ``kamailio-extra-modules`` (janssonrpcc) and ``sipp``
(Debian ``sip-tester``); the ``secsipid`` way needs ``kamailio-secsipid-modules``
(``apt-get install -y kamailio-secsipid-modules``); a missing piece is reported, not
installed. Prints a table and, as the last line, one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# STIRD_PDD_KAMAILIO_DIR: another integrations/kamailio (an A/B of a cfg change)
KAM_DIR = Path(os.environ.get("STIRD_PDD_KAMAILIO_DIR") or ROOT / "integrations" / "kamailio")
# STIRD_PDD_STIRD_CONFIG: a stird.toml for the daemon (e.g. [server] workers, [sign] add_shaken).
# Without one stird runs as `stird serve` alone does: the embedded development CPS (shared by
# the workers through SQLite) and one worker per core.
STIRD_CONFIG = os.environ.get("STIRD_PDD_STIRD_CONFIG")
# STIRD_PDD_KAMAILIO_ARGS: more Kamailio command-line options, e.g. "-x tlsf" (memory manager)
KAM_ARGS = os.environ.get("STIRD_PDD_KAMAILIO_ARGS", "").split()
HOST = "127.0.0.1"
RATES = (200, 500, 1000)
WAYS = ("relay", "stird", "secsipid", "stird-http")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    pass


def _free_port() -> int:
    import socket  # noqa: PLC0415

    for _ in range(100):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def _udp_bound(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind((HOST, port))
        except OSError:
            return True
    return False


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _cpu_seconds(pgid: int) -> float:
    """utime + stime of every live process in process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _pid_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def _kamailio_roles(rpc_port: int) -> dict[int, str]:
    """pid -> role of every Kamailio process (jsonrpcs ``core.psx`` over xhttp)."""
    body = json.dumps({"jsonrpc": "2.0", "method": "core.psx", "id": 1}).encode()
    req = urllib.request.Request(f"http://{HOST}:{rpc_port}/RPC", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:  # noqa: S310 - our own URL
            rows = json.loads(answer.read()).get("result", [])
    except (OSError, ValueError):
        return {}
    roles: dict[int, str] = {}
    for row in rows:
        desc = str(row.get("DSC", ""))
        if "jsonrpc io" in desc:
            role = "jsonrpc_io"
        elif "http_async" in desc or "async" in desc.lower():
            role = "async"
        elif "receiver" in desc and "udp" in desc:
            role = "sip_workers"
        else:
            role = "other"
        roles[int(row.get("PID", 0))] = role
    return roles


def _kamailio_modules(kamailio: str) -> Path:
    done = subprocess.run(  # noqa: S603 - the kamailio binary found on PATH
        [kamailio, "-I"], capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if "modules" in line.lower() and "/" in line:
            path = Path(line.split()[-1].strip("'\""))
            if path.is_dir():
                return path
    for guess in Path("/usr/lib").glob("*/kamailio/modules"):
        return guess
    raise Unavailable("Kamailio's module directory not found (kamailio -I)")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Pdd:
    def __init__(
        self, workdir: Path, seconds: float, rates: tuple[int, ...], ways: tuple[str, ...] = WAYS
    ) -> None:
        self.dir = workdir
        self.ways = ways
        self.seconds = seconds
        self.rates = rates
        self.children: list[Child] = []
        self.kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
        self.sipp = shutil.which("sipp") or "/usr/bin/sipp"
        for tool, package in ((self.kamailio, "kamailio"), (self.sipp, "sip-tester")):
            if not Path(tool).exists():
                raise Unavailable(f"{tool} missing (Debian package {package})")
        self.modules = _kamailio_modules(self.kamailio)
        if not (self.modules / "janssonrpcc.so").exists():
            raise Unavailable("janssonrpcc.so missing (kamailio-extra-modules)")
        self.http, self.rpc, self.agi = _free_port(), _free_port(), _free_port()
        self.kam_rpc = 0  # the running Kamailio's jsonrpcs-over-HTTP port

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Child:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv built here
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd or self.dir, start_new_session=True,
            )  # fmt: skip
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()

    # ------------------------------------------------------------------ stird, Kamailio

    def start_stird(self) -> Child:
        state = self.dir / "state"
        argv = [sys.executable, str(HERE / "servers.py"), "stird"]
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401, PLC0415

            argv.append("--uvloop")
        argv += ["--", "serve", "--state-dir", str(state)]
        if STIRD_CONFIG:
            argv += ["--config", STIRD_CONFIG]
        argv += ["--http", f"{HOST}:{self.http}", "--jsonrpc", f"{HOST}:{self.rpc}"]
        argv += ["--agi", f"{HOST}:{self.agi}"]
        stird = self.start("stird", argv)

        def healthy() -> bool:
            if stird.proc.poll() is not None:
                raise RuntimeError(f"stird exited:\n{stird.text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.http}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        _wait("stird /healthz", healthy, 30)
        return stird

    def start_kamailio(self, way: str, sip: int, uas: int, uac: int) -> Child:
        run = self.dir / f"kam-{way}"
        run.mkdir(exist_ok=True)
        defines = {
            "LISTEN": f"udp:{HOST}:{sip}",
            "RPC_LISTEN": f"tcp:{HOST}:{_free_port()}",
            "STIRD_ADDR": f'"{HOST}"',
            "STIRD_PORT": f'"{self.rpc}"',
            "NEXT_HOP": f'"sip:{HOST}:{uas}"',
            "OUTBOUND_SRC": f'"{HOST}:{uac}"',
            "CTL_SOCK": f'"unix:{run}/kamailio_ctl"',
        }
        if way == "relay":
            defines["BENCH_RELAY_ONLY"] = "1"
        elif way == "secsipid":
            if not (self.modules / "secsipid.so").exists():
                raise Unavailable(
                    "secsipid.so missing: apt-get install -y kamailio-secsipid-modules"
                )
            defines["BENCH_SECSIPID"] = "1"
            defines["SECSIPID_KEY"] = f'"{self.dir / "state" / "dev" / "private.pem"}"'
            defines["SECSIPID_X5U"] = f'"http://{HOST}:{self.http}/certs/dev.pem"'
        cfg = "kamailio.cfg"
        if way == "stird-http":
            cfg = "kamailio-http.cfg"  # http_client in the SIP workers, synchronous
            if not (self.modules / "http_client.so").exists():
                raise Unavailable("http_client.so missing (kamailio-utils-modules)")
            defines["STIRD_URL"] = f'"http://{HOST}:{self.http}"'
        argv = [self.kamailio, "-f", str(KAM_DIR / cfg), "-DD", "-E"]
        argv += ["-L", str(self.modules), "-Y", str(run), "-w", str(run), "-m", "512", "-M", "32"]
        argv += KAM_ARGS
        for name, value in defines.items():
            argv += ["-A", f"{name}={value}"]
        self.kam_rpc = int(defines["RPC_LISTEN"].rsplit(":", 1)[1])
        kam = self.start(f"kamailio-{way}", argv, cwd=run)
        want = f"Connected to host {HOST}:{self.rpc}"

        def ready() -> bool:
            if kam.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited:\n{kam.text()[-3000:]}")
            if way == "stird-http":
                return _udp_bound(sip)
            return way != "stird" or want in kam.text()

        _wait("Kamailio ready", ready, 20)
        time.sleep(1.5)  # the other janssonrpcc connections of stird.cfg
        return kam

    # ------------------------------------------------------------------ one SIPp run

    def sipp_run(self, way: str, rate: int, sip: int, uas_port: int, uac_port: int) -> Any:
        where = self.dir / f"{way}-{rate}"
        where.mkdir()
        scenario, uas_xml = _scenarios(where)
        uas_log = where / "uas.logs"
        calls = int(rate * self.seconds)
        uas = self.start(
            f"uas-{way}-{rate}",
            [self.sipp, "-sf", str(uas_xml), "-i", HOST,
             "-p", str(uas_port), "-mp", str(_free_port()), "-nostdin", "-trace_logs",
             "-log_file", str(uas_log), "-trace_err", "-error_file", str(where / "uas.err")],
            cwd=where,
        )  # fmt: skip
        time.sleep(0.3)
        stat = where / "uac_stat.csv"
        argv = [self.sipp, "-sf", str(scenario), "-s", "+15552220000", "-i", HOST]
        argv += ["-p", str(uac_port), "-mp", str(_free_port()), "-nostdin"]
        argv += ["-r", str(rate), "-m", str(calls), "-l", str(rate * 5), "-d", "0"]
        argv += ["-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-stf", str(stat), "-fd", "1"]
        argv += ["-trace_err", "-error_file", str(where / "uac.err")]
        argv += ["-timeout", f"{int(self.seconds + 30)}s", "-timeout_error"]
        argv += ["-recv_timeout", "10000", f"{HOST}:{sip}"]
        kam_cpu0 = stird_cpu0 = 0.0
        kam = next(c for c in self.children if c.name == f"kamailio-{way}")
        stird = next(c for c in self.children if c.name == "stird")
        kam_cpu0, stird_cpu0 = _cpu_seconds(kam.proc.pid), _cpu_seconds(stird.proc.pid)
        roles = _kamailio_roles(self.kam_rpc)
        role_cpu0 = {pid: _pid_cpu(pid) for pid in roles}
        fail_open0 = kam.text().count("failing open")
        started = time.monotonic()
        uac = self.start(f"uac-{way}-{rate}", argv, cwd=where)
        try:
            uac.proc.wait(self.seconds + 60)
        except subprocess.TimeoutExpired:
            uac.stop()
        elapsed = time.monotonic() - started
        kam_cpu = _cpu_seconds(kam.proc.pid) - kam_cpu0
        stird_cpu = _cpu_seconds(stird.proc.pid) - stird_cpu0
        by_role: dict[str, float] = {}
        for pid, role in roles.items():
            by_role[role] = by_role.get(role, 0.0) + _pid_cpu(pid) - role_cpu0[pid]
        busiest = max((_pid_cpu(p) - role_cpu0[p], p) for p in roles) if roles else (0.0, 0)
        time.sleep(0.5)
        uas.stop()
        rtts = []
        for path in where.glob("*_rtt.csv"):
            with path.open() as f:
                for row in csv.reader(f, delimiter=";"):
                    with contextlib.suppress(ValueError, IndexError):
                        rtts.append(float(row[1]))
        ok, failed = _sipp_counts(stat)
        uas_text = uas_log.read_text(errors="replace") if uas_log.exists() else ""
        unsigned = uas_text.count("UNSIGNED")
        transit = _transits(uas_text)
        if way == "relay":
            unsigned = 0  # relayed untouched on purpose
        return {
            "offered": rate,
            "calls": calls,
            "successful": ok,
            "failed": failed,
            "unsigned": unsigned,
            "kamailio_fail_open": kam.text().count("failing open") - fail_open0,
            "calls_per_s": round(ok / self.seconds, 1) if ok is not None else None,
            "elapsed_s": round(elapsed, 1),
            "p50_ms": _pct(rtts, 50),
            "p99_ms": _pct(rtts, 99),
            "max_ms": round(max(rtts), 2) if rtts else None,
            "samples": len(rtts),
            "transit_p50_ms": _pct(transit, 50),
            "transit_p99_ms": _pct(transit, 99),
            "transit_max_ms": round(max(transit), 3) if transit else None,
            "transit_samples": len(transit),
            "cpu_s": {"kamailio": round(kam_cpu, 2), "stird": round(stird_cpu, 2)},
            # per Kamailio role (core.psx), and the busiest single process
            "kamailio_cpu_s": {role: round(v, 2) for role, v in sorted(by_role.items())},
            "kamailio_busiest": {"role": roles.get(busiest[1]), "cpu_s": round(busiest[0], 2)},
        }

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.seconds, "ways": {}}
        self.start_stird()
        for way in self.ways:
            sip, uas, uac = _free_port(), _free_port(), _free_port()
            try:
                kam = self.start_kamailio(way, sip, uas, uac)
            except Unavailable as exc:
                out["ways"][way] = {"unavailable": str(exc)}
                continue
            out["ways"][way] = {
                str(rate): self.sipp_run(way, rate, sip, uas, uac) for rate in self.rates
            }
            kam.stop()
        out["added"] = added(out["ways"])
        out["targets"] = targets(out)
        return out


def _scenarios(where: Path) -> tuple[Path, Path]:
    """The UAC and UAS scenarios of one run, written into ``where``."""
    scenario = where / "uac_sign.xml"
    # the project's UAC, with its send time in a header the UAS logs (transit)
    text = (KAM_DIR / "sipp" / "uac_sign.xml").read_text()
    stamp = "Max-Forwards: 70\n      X-Bench-T: [timestamp]\n"
    scenario.write_text(text.replace("Max-Forwards: 70\n", stamp, 1))
    # the UAS answers 200 without a 180: Kamailio's workers relay the two responses in
    # parallel and a 180 arriving after the 200 made SIPp's UAC abort the call
    # ("unexpected message while pausing"), 15-60 "failed" calls per 5,000 at 1,000
    # calls/s in every way, relay included; the INVITE's transit is not affected
    uas_xml = where / "uas_count.xml"
    ringing = re.compile(r"<send>\s*<!\[CDATA\[\s*SIP/2.0 180 .*?</send>\s*", re.S)
    uas_xml.write_text(ringing.sub("", (HERE / "sipp" / "uas_count.xml").read_text(), count=1))
    return scenario, uas_xml


def _pct(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1], 2)


# SIPp's [timestamp]: "YYYY-MM-DD<TAB>HH:MM:SS.uuuuuu<TAB>EPOCH.uuuuuu"
_STAMP = re.compile(r"INV [^|]*?(\d+\.\d{6})\s*\| [^\n]*?(\d+\.\d{6})\s*$", re.M)


def _transits(text: str) -> list[float]:
    """ms from the UAC's send to the UAS's handling of each INVITE ([timestamp] pairs)."""
    out = []
    for sent, got in _STAMP.findall(text):
        out.append((float(got) - float(sent)) * 1000)
    return out


def _sipp_counts(stat: Path) -> tuple[int | None, int | None]:
    """(successful, failed) cumulated calls from the last line of SIPp's -trace_stat file."""
    if not stat.exists():
        return None, None
    rows = list(csv.reader(stat.open(), delimiter=";"))
    if len(rows) < 2:
        return None, None
    head, last = rows[0], rows[-1]
    try:
        return int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")])
    except (ValueError, IndexError):
        return None, None


def added(ways: dict[str, Any]) -> dict[str, Any]:
    """Transit p50/p99 of each way minus relay's at the same rate (the added delay)."""
    out: dict[str, Any] = {}
    relay = ways.get("relay", {})
    for way in ("stird", "secsipid", "stird-http"):
        for rate, doc in ways.get(way, {}).items():
            base = relay.get(rate, {})
            if not isinstance(doc, dict) or doc.get("transit_p50_ms") is None:
                continue
            if base.get("transit_p50_ms") is None:
                continue
            out.setdefault(way, {})[rate] = {
                "p50_ms": round(doc["transit_p50_ms"] - base["transit_p50_ms"], 2),
                "p99_ms": round(doc["transit_p99_ms"] - base["transit_p99_ms"], 2),
            }
    return out


def targets(out: dict[str, Any]) -> dict[str, Any]:
    add = out.get("added", {}).get("stird", {})
    at1000 = out.get("ways", {}).get("stird", {}).get("1000", {})

    def verdict(value: Any, limit: float) -> dict[str, Any]:
        if value is None:
            return {"value": None, "target": limit, "met": None}
        return {"value": value, "target": limit, "met": value <= limit}

    return {
        "added_p50_ms_500": verdict(add.get("500", {}).get("p50_ms"), 2.0),
        "added_p99_ms_500": verdict(add.get("500", {}).get("p99_ms"), 5.0),
        "added_p99_ms_1000": verdict(add.get("1000", {}).get("p99_ms"), 20.0),
        "failed_1000": verdict(at1000.get("failed"), 0),
        "unsigned_1000": verdict(at1000.get("unsigned"), 0),
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        "way       offered  calls/s  failed  unsigned  fail-open  transit p50/p99 ms  "
        "added p50/p99 ms  INVITE-200 p50/p99 ms  CPU s kam/stird  kam CPU s by role"
    ]
    for way, rates in out["ways"].items():
        if "unavailable" in rates:
            lines.append(f"{way:9} not available: {rates['unavailable']}")
            continue
        for rate, d in rates.items():
            add = out["added"].get(way, {}).get(rate)
            added_txt = f"{add['p50_ms']:+.2f}/{add['p99_ms']:+.2f}" if add else "-"
            lines.append(
                f"{way:9} {rate:>7}  {d['calls_per_s']!s:>7}  {d['failed']!s:>6}  "
                f"{d['unsigned']!s:>8}  {d['kamailio_fail_open']!s:>9}  "
                f"{d['transit_p50_ms']!s:>8}/{d['transit_p99_ms']!s:<8}  {added_txt:>16}  "
                f"{d['p50_ms']!s:>10}/{d['p99_ms']!s:<10}  "
                f"{d['cpu_s']['kamailio']}/{d['cpu_s']['stird']}  "
                + " ".join(f"{k}={v}" for k, v in d.get("kamailio_cpu_s", {}).items())
            )
    for name, v in out["targets"].items():
        state = "n/a" if v["met"] is None else ("MET" if v["met"] else "NOT MET")
        lines.append(f"target {name}: {v['value']} (<= {v['target']}) {state}")
    return "\n".join(lines)


def run_phase(
    quick: bool, rates: tuple[int, ...] = RATES, ways: tuple[str, ...] = WAYS
) -> dict[str, Any]:
    # bench/run.py pins itself to its load core; SIPp, Kamailio and stird must not inherit
    # that (all of them on one core was the 1,000 calls/s collapse of run.py's pdd phase)
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="stird-pdd-") as tmp:
        bench = Pdd(Path(tmp), 5.0 if quick else 15.0, rates, ways)
        try:
            return bench.run()
        finally:
            bench.stop_all()
            os.sched_setaffinity(0, pinned)
            keep = os.environ.get("STIRD_PDD_KEEP")
            if keep:
                shutil.copytree(tmp, keep, dirs_exist_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per rate and way")
    parser.add_argument("--rates", help="comma-separated calls/s (default 200,500,1000)")
    parser.add_argument("--ways", help="comma-separated subset of " + ",".join(WAYS))
    parser.add_argument("--out", metavar="FILE", help="also write the JSON document here")
    args = parser.parse_args()
    rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else RATES
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ways = tuple(args.ways.split(",")) if args.ways else WAYS
        out = run_phase(args.quick, rates, ways)
    except Unavailable as exc:
        print(f"pdd: not available: {exc}", file=sys.stderr)
        return 2
    out["loadavg_start"] = os.getloadavg()
    print(table(out))
    line = json.dumps(out, separators=(",", ":"))
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
