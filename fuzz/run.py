"""Run every atheris harness in fuzz/ for N inputs and write the counts to a JSON file.

    .venv/bin/python fuzz/run.py                       # all targets, 1,000,000 inputs each
    .venv/bin/python fuzz/run.py --runs 200000 identity tn
    .venv/bin/python fuzz/run.py --max-time 150 --ignore-known

Harnesses run one after another, each pinned to one CPU (``--cpu``, default 1) at a low
priority (``--nice``), with libFuzzer's per-input timeout (``-timeout``) and RSS cap
(``-rss_limit_mb``). A crash stops a harness; ``run.py`` records it (kind, signature,
artifact, traceback) and restarts the harness on its grown corpus, up to ``--restarts``
times, until the input count or time budget is spent. ``--ignore-known`` makes harnesses
count (not stop on) the crash signatures listed in ``fuzz/known_crashes.txt`` — bugs
already reported and waiting for a fix — so the rest of a parser keeps being fuzzed.

Output: ``fuzz/work/results.json`` (``--out``); logs, corpora and crash artifacts under
``fuzz/work/`` (``--workdir``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import seeds  # noqa: E402
from targets import TARGETS  # noqa: E402

MAX_LEN = {  # -max_len: large enough for the biggest real message of each kind
    "ami": 8192,
    "sdp": 16384,
    "identity": 20000,
    "cps": 16384,
    "oob": 16384,
    "oobkeys": 16384,
    "agi": 8192,
    "netstring": 8192,
    "certs": 8192,
    "jsonrpc": 8192,
    "requests": 8192,
    "hep": 65535,  # the HEP3 total length field's limit
}
DEFAULT_MAX_LEN = 4096

_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+).*?exec/s: (\d+) rss: (\d+)Mb", re.MULTILINE)
_KNOWN = re.compile(r"^KNOWN-CRASH (\S+) (\d+)$", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def _crash(log: str) -> dict[str, Any] | None:
    """What stopped a harness, from its libFuzzer/atheris output (None: a clean finish)."""
    if "=== Uncaught Python exception: ===" in log:
        kind = "exception"
        tail = log.split("=== Uncaught Python exception: ===", 1)[1]
    elif "libFuzzer: timeout" in log:
        kind, tail = "timeout", log.split("libFuzzer: timeout", 1)[1]
    elif "out-of-memory" in log:
        kind, tail = "out-of-memory", log.split("out-of-memory", 1)[1]
    elif "ERROR: libFuzzer" in log:
        kind, tail = "libfuzzer-error", log.split("ERROR: libFuzzer", 1)[1]
    else:
        return None
    artifact = _ARTIFACT.search(log)
    lines = tail.strip().splitlines()
    message = lines[0] if lines else ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', tail)
    ours = [f for f in frames if "/stird/" in f[0]] or frames
    where = f"{Path(ours[-1][0]).name}:{ours[-1][1]}" if ours else "?"
    exc_type = message.split(":", 1)[0] if kind == "exception" else kind
    return {
        "kind": kind,
        "signature": f"{exc_type}@{where}",
        "message": message[:300],
        "artifact": artifact.group(1) if artifact else None,
        "traceback": "\n".join(lines[:40]),
    }


def _preexec(cpu: int | None, nice: int) -> Any:
    def setup() -> None:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        os.nice(nice)

    return setup


def fuzz_one(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    corpus, seed_dir = workdir / "corpus" / name, workdir / "seeds" / name
    artifacts, log_path = workdir / "artifacts" / name, workdir / "logs" / f"{name}.log"
    for path in (corpus, artifacts, log_path.parent):
        path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED="0")
    if args.ignore_known:
        env["STIRD_FUZZ_IGNORE_KNOWN"] = "1"
    result: dict[str, Any] = {
        "inputs": 0,
        "seconds": 0.0,
        "execs_per_sec": 0,
        "crashes": [],
        "known_crash_hits": {},
        "max_rss_mb": 0,
        "slowest_input_s": 0,
        "coverage": 0,
        "restarts": 0,
        "max_len": MAX_LEN.get(name, DEFAULT_MAX_LEN),
    }
    started = time.monotonic()
    log_path.write_text("")
    for attempt in range(args.restarts + 1):
        runs_left = args.runs - result["inputs"]
        time_left = args.max_time - (time.monotonic() - started) if args.max_time else 0
        if runs_left <= 0 or (args.max_time and time_left < 5):
            break
        cmd = [
            sys.executable,
            str(HERE / f"fuzz_{name}.py"),
            f"-runs={runs_left}",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit_mb}",
            f"-max_len={result['max_len']}",
            f"-seed={attempt + 1}",
            "-print_final_stats=1",
            "-print_pcs=0",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
            str(seed_dir),
        ]
        if args.max_time:
            cmd.insert(3, f"-max_total_time={int(time_left)}")
        t0 = time.monotonic()
        with open(log_path, "a") as log:
            log.write(f"\n### attempt {attempt + 1}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                preexec_fn=_preexec(args.cpu, args.nice),
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - t0
        text = log_path.read_text("utf-8", "replace").rsplit("### attempt", 1)[-1]
        stats = {k: int(v) for k, v in _STAT.findall(text)}
        progress = _PROGRESS.findall(text)
        done = stats.get("number_of_executed_units") or (int(progress[-1][0]) if progress else 0)
        result["inputs"] += done
        result["seconds"] += elapsed
        result["max_rss_mb"] = max(
            result["max_rss_mb"], usage.ru_maxrss // 1024, stats.get("peak_rss_mb", 0)
        )
        result["slowest_input_s"] = max(
            result["slowest_input_s"], stats.get("slowest_unit_time_sec", 0)
        )
        if progress:
            result["coverage"] = max(result["coverage"], int(progress[-1][1]))
        for sig, count in _KNOWN.findall(text):
            hits = result["known_crash_hits"]
            hits[sig] = hits.get(sig, 0) + int(count)  # lower bound: printed at powers of 2
        crash = _crash(text)
        if crash is None:
            if proc.returncode != 0:
                result["crashes"].append(
                    {"kind": "exit", "signature": f"exit {proc.returncode}", "message": text[-500:]}
                )
            break
        crash["after_inputs"] = result["inputs"]
        result["crashes"].append(crash)
        result["restarts"] = attempt + 1
        print(f"  {name}: {crash['kind']} {crash['signature']} -> {crash['artifact']}", flush=True)
    result["seconds"] = round(result["seconds"], 1)
    result["execs_per_sec"] = int(result["inputs"] / result["seconds"]) if result["seconds"] else 0
    result["distinct_crashes"] = sorted({c["signature"] for c in result["crashes"]})
    return result


def markdown_table(report: dict[str, Any]) -> str:
    """The results as the table of docs/RELIABILITY.md."""
    rows = [
        "| Target | Inputs | Execs/s | Crashes (distinct) | Known-crash hits | Max RSS MB "
        "| Slowest input s |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, r in report.get("targets", {}).items():
        crashes = ", ".join(r.get("distinct_crashes", [])) or "0"
        hits = sum(r.get("known_crash_hits", {}).values())
        rows.append(
            f"| {name} | {r['inputs']:,} | {r['execs_per_sec']:,} | {crashes} | {hits:,} "
            f"| {r['max_rss_mb']} | {r['slowest_input_s']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--max-time", type=int, default=0, help="seconds per target (0: no limit)")
    parser.add_argument(
        "--total-time",
        type=int,
        default=0,
        help="seconds for all targets: each gets an equal share of what is "
        "left, so time a fast target does not need goes to the next",
    )
    parser.add_argument("--timeout", type=int, default=5, help="seconds per input (hang)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--restarts", type=int, default=10, help="restarts after crashes")
    parser.add_argument("--cpu", type=int, default=1, help="CPU to pin to (-1: any)")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument(
        "--ignore-known",
        action="store_true",
        help="count the signatures of fuzz/known_crashes.txt, do not stop",
    )
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=None, help="default: WORKDIR/results.json")
    parser.add_argument("--table", action="store_true", help="print the results as markdown")
    args = parser.parse_args()
    if args.table:
        out = args.out or args.workdir / "results.json"
        print(markdown_table(json.loads(out.read_text())))
        return 0
    args.cpu = None if args.cpu < 0 else args.cpu
    names = args.targets or list(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    workdir = args.workdir.resolve()
    out = (args.out or workdir / "results.json").resolve()
    counts = seeds.write(workdir / "seeds", names)
    try:
        from importlib.metadata import version

        import atheris  # noqa: F401

        atheris_version = version("atheris")
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report["meta"] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "atheris": atheris_version,
        "machine": platform.machine(),
        "cpu": args.cpu,
        "nice": args.nice,
        "runs_per_target": args.runs,
        "max_time_per_target": args.max_time,
        "total_time": args.total_time,
        "timeout_s": args.timeout,
        "rss_limit_mb": args.rss_limit_mb,
        "ignore_known": args.ignore_known,
    }
    report.setdefault("targets", {})
    started = time.monotonic()
    per_target = args.max_time
    for index, name in enumerate(names):
        if args.total_time:
            share = (args.total_time - (time.monotonic() - started)) / (len(names) - index)
            args.max_time = int(max(10, min(share, per_target or share)))
        print(f"{name}: {counts.get(name, 0)} seeds, up to {args.max_time or '-'} s...", flush=True)
        result = fuzz_one(name, args, workdir)
        result["seeds"] = counts.get(name, 0)
        report["targets"][name] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"  {name}: {result['inputs']:,} inputs in {result['seconds']} s "
            f"({result['execs_per_sec']:,}/s), crashes {len(result['crashes'])}, "
            f"max RSS {result['max_rss_mb']} MB",
            flush=True,
        )
    found = sum(len(report["targets"][n]["crashes"]) for n in names)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
