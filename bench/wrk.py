"""wrk (Debian package) with a Lua script for the POST body: closed loop, N connections,
one thread, pinned to the load core; figures parsed from ``--latency`` output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from procs import LOAD_CORE

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_LATENCY = re.compile(r"^\s+(50|75|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)


def lua_post(path: Path, body: str, content_type: str | None = "application/json") -> Path:
    """A wrk script that POSTs ``body`` (long bracket quoting: no escaping needed)."""
    if "]==]" in body:
        raise ValueError("body contains the Lua long-bracket terminator")
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    if content_type:
        lines.append(f'wrk.headers["Content-Type"] = "{content_type}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def run(url: str, script: Path, connections: int, seconds: float) -> dict[str, float | int]:
    """One wrk run; rate, p50/p99 (ms), requests and non-2xx answers."""
    argv = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(  # noqa: S603 - fixed argv
        argv, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    out = done.stdout
    if done.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({done.returncode}): {out[-500:]} {done.stderr[-500:]}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {p: _ms(v, u) for p, v, u in _LATENCY.findall(out)}
    return {
        "rps": round(rate),
        "p50_ms": round(lat.get("50", float("nan")), 3),
        "p99_ms": round(lat.get("99", float("nan")), 3),
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }
