"""``stird status`` and ``stird calls``: the running daemon's ``/status.json`` as readable
tables. The daemon is found through the configuration's ``[server] http`` (or ``--url``);
its bearer token through ``[server] token_file`` (or ``--token-file``)."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stird.wiring.config import ConfigError, load_config
from stird.wiring.exposure import load_token
from stird.wiring.oob_app import own_url

TIMEOUT = 5.0  # seconds for the one request to the daemon
MAX_BODY = 8 << 20


class StatusError(Exception):
    """The daemon could not be asked (reported as a usage error, exit status 2)."""


def _base(args: argparse.Namespace) -> tuple[str, str | None]:
    token_file = Path(args.token_file) if args.token_file else None
    url = args.url
    if url is None or token_file is None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise StatusError(str(exc)) from None
        if url is None:  # a wildcard listener is reached on loopback
            url = own_url((config.server.http.host or "0.0.0.0", config.server.http.port))  # noqa: S104
        token_file = token_file or config.server.token_file
    try:
        token = load_token(token_file) if token_file is not None else None
    except ConfigError as exc:
        raise StatusError(str(exc)) from None
    return url.rstrip("/"), token


def fetch(args: argparse.Namespace, **query: str) -> dict[str, Any]:
    base, token = _base(args)
    url = f"{base}/status.json?{urllib.parse.urlencode({k: v for k, v in query.items() if v})}"
    if not url.startswith(("http://", "https://")):
        raise StatusError(f"--url: want http:// or https://, not {base!r}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 - http(s) only
            body: dict[str, Any] = json.loads(answer.read(MAX_BODY))
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatusError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    return body


def table(rows: Sequence[Sequence[object]], head: Sequence[str]) -> str:
    """Columns padded to their widest cell; control characters never reach the terminal."""
    cells = [[_clean(c) for c in row] for row in [head, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _clean(value: object, limit: int = 60) -> str:
    text = "" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _counts(title: str, counts: Mapping[str, int]) -> str:
    items = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    return f"{title}: {items}"


def _peer(value: object) -> object:
    return "-" if value is None else json.dumps(value) if isinstance(value, dict) else value


def render_status(facts: Mapping[str, Any]) -> str:
    out = [
        f"status: {facts['status']}",
        _counts("last hour", facts["last_hour"]),
        _counts("last 24 h", facts["last_day"]),
        f"sign rate: {facts['sign_rate_per_min']}/min   errors (1 h): "
        f"{facts['errors_last_hour']}   fail-open (AGI): {facts['fail_open']}   "
        f"shed: {int(facts['shed'])}",
        "",
        table(
            [
                [
                    c["name"], c["subject"], c["covers"],
                    time.strftime("%Y-%m-%d", time.gmtime(c["not_after"])),
                    f"{c['days_left']}{' !' if c['level'] != 'ok' else ''}", c["x5u"] or "",
                    "" if c["x5u_ok"] is None else c["x5u_detail"],
                ]
                for c in facts["credentials"]
            ],
            ["credential", "subject", "covers", "not after", "days", "x5u", "answers"],
        ),
        "",
        table(
            [[name, _peer(value)] for name, value in facts["peers"].items()],
            ["peer", "state"],
        ),
    ]  # fmt: skip
    return "\n".join(out)


def render_calls(calls: Sequence[Mapping[str, Any]], *, full: bool = False) -> str:
    if full:
        return json.dumps(list(calls), indent=2, ensure_ascii=False)
    rows = [
        [
            time.strftime("%H:%M:%S", time.gmtime(c["at"])), c["call_id"],
            f"{c['caller']} -> {c['callee']}", c["direction"], c["verdict"], c["code"] or "",
            c["reason"] or "", ",".join(c["ppts"]), c["trust"] or "",
        ]
        for c in calls
    ]  # fmt: skip
    head = ["time", "call-id", "caller -> callee", "dir", "verdict", "code", "reason", "ppt",
            "trust"]  # fmt: skip
    return table(rows, head)


def cmd_status(args: argparse.Namespace) -> int:
    facts = fetch(args, last="1")
    print(json.dumps(facts, indent=2) if args.json else render_status(facts))
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    facts = fetch(args, last=str(args.last), call_id=args.call_id or "",
                  verdict=args.verdict or "", q=args.search or "")  # fmt: skip
    calls = facts["calls"]
    if args.json:
        print(json.dumps(calls, indent=2, ensure_ascii=False))
    elif args.call_id and not calls:
        print(f"no call {args.call_id!r} among the recent calls")
        return 1
    else:
        print(render_calls(calls, full=bool(args.call_id)))
    return 0


__all__ = ["StatusError", "cmd_calls", "cmd_status", "render_calls", "render_status", "table"]
