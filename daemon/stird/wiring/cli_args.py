"""Argument parser of the ``stird`` command (kept apart from the commands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Command = Callable[[argparse.Namespace], int]


def _epoch(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a POSIX time in seconds: {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"not a number of seconds in (0, 60]: {text!r}")
    return value


KEY_TYPES = ("p256", "x25519", "mlkem768-x25519")


def _keygen(sub: Any, run: Command) -> None:
    p = sub.add_parser("keygen", help="generate a signing or an encryption key pair")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    p.add_argument("--type", choices=KEY_TYPES, default="p256",
                   help="p256: STIR signing key (PEM, default); x25519, mlkem768-x25519: "
                        "out-of-band encryption key (JWK)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run)


def _cps(sub: Any, run: Command) -> None:
    p = sub.add_parser("cps", help="the Call Placement Service (RFC 8816 out of band)")
    cps = p.add_subparsers(dest="cps_command", metavar="COMMAND", required=True)
    serve = cps.add_parser("serve", help="run a standalone CPS")
    serve.add_argument("--config", metavar="FILE",
                       help="default: $STIRD_CONFIG, /etc/stird/stird.toml")  # fmt: skip
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8792",
                       help="listener (default 127.0.0.1:8792)")  # fmt: skip
    serve.add_argument("--state-dir", metavar="DIR",
                       help="default $STATE_DIRECTORY, else /var/lib/stird-cps")  # fmt: skip
    serve.add_argument("--redis", metavar="URL", help="shared store (default: [store] redis)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=run)


def _cert(sub: Any, run: Command) -> None:
    p = sub.add_parser("cert", help="make a STIR certificate (RFC 8226)")
    p.add_argument("--key", required=True, help="private key PEM of the subject")
    p.add_argument("--tn", action="append", default=[], help="a telephone number it covers")
    p.add_argument("--tn-range", action="append", default=[], metavar="START,COUNT")
    p.add_argument("--spc", action="append", default=[], help="service provider code")
    p.add_argument("--uri", action="append", default=[], help="SAN URI, e.g. sip:alice@example.com")
    p.add_argument(
        "--anonymous", action="store_true", help="one-time anonymous cert (RFC 8862 §4.2)"
    )
    p.add_argument("--days", type=_positive, default=365)
    p.add_argument("--ca", action="store_true", help="make a CA certificate")
    p.add_argument("--issuer-key", help="sign with this CA key instead of self-signing")
    p.add_argument("--issuer-cert", help="the CA certificate that goes with --issuer-key")
    p.add_argument("--out", required=True, metavar="CERT.pem")
    p.set_defaults(func=run)


def _sign(sub: Any, run: Command) -> None:
    p = sub.add_parser("sign", help="print an Identity header value")
    p.add_argument("--key", required=True)
    p.add_argument("--x5u", required=True, metavar="URL")
    p.add_argument("--orig", required=True, metavar="ID")
    p.add_argument("--dest", required=True, action="append", metavar="ID")
    p.add_argument("--ppt", choices=["msec", "shaken", "none"], default="msec")
    p.add_argument("--attest", choices=["A", "B", "C"])
    p.add_argument("--origid", metavar="UUID")
    p.add_argument("--sdp", metavar="FILE")
    p.add_argument("--iat", type=_epoch, metavar="EPOCH")
    p.add_argument("--compact", action="store_true")
    p.set_defaults(func=run)


def _verify(sub: Any, run: Command) -> None:
    p = sub.add_parser("verify", help="verify Identity headers; prints a JSON verdict")
    p.add_argument("--identity", required=True, action="append", metavar="VALUE")
    p.add_argument("--from", dest="from_", metavar="ID", help="TN, URI or From header value")
    p.add_argument("--to", metavar="ID", help="TN, URI or To header value")
    p.add_argument("--date", metavar="HTTP-DATE")
    p.add_argument("--sdp", metavar="FILE")
    p.add_argument("--cert", metavar="PEM", help="use this certificate (chain) for every info")
    p.add_argument("--trust-anchor", action="append", default=[], metavar="PEM")
    p.add_argument("--now", type=_epoch, metavar="EPOCH")
    p.add_argument("--max-age", type=_positive, default=60, metavar="SECONDS")
    p.add_argument("--region", default=None, help="region for national numbers, e.g. US")
    p.add_argument("--fetch", action="store_true", help="download credentials from info/x5u")
    p.add_argument("--timeout", type=_seconds, default=2.0, help="fetch timeout (default 2 s)")
    p.add_argument("--allow-http", action="store_true", help="also fetch http:// (labs)")
    p.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                   help="fetch from these otherwise refused addresses (labs)")  # fmt: skip
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="do not vet the addresses of this host name (labs)")  # fmt: skip
    p.add_argument("--tls-ca", metavar="PEM", help="trust this CA for https fetches (labs)")
    p.set_defaults(func=run)


def _decode(sub: Any, run: Command) -> None:
    p = sub.add_parser("decode", help="show header and claims without verifying")
    p.add_argument("value", help="an Identity header value or a PASSporT")
    p.set_defaults(func=run)


def _serve(sub: Any, run: Command) -> None:
    p = sub.add_parser("serve", help="run the daemon (HTTP, JSON-RPC, FastAGI)")
    p.add_argument("--config", metavar="FILE", help="default: $STIRD_CONFIG, /etc/stird/stird.toml")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP listener (default 127.0.0.1:8790)")
    p.add_argument("--jsonrpc", metavar="HOST:PORT", help="netstring JSON-RPC (127.0.0.1:8791)")
    p.add_argument("--agi", metavar="HOST:PORT", help="FastAGI listener (127.0.0.1:4573)")
    p.add_argument("--state-dir", metavar="DIR", help="default /var/lib/stird")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-file", metavar="FILE",
                   help="append the log here (reopened when rotated), not stderr")  # fmt: skip
    p.add_argument("--pid-file", metavar="FILE",
                   help="write the process id here at start, remove it at stop")  # fmt: skip
    p.set_defaults(func=run)


def _check_config(sub: Any, run: Command) -> None:
    p = sub.add_parser("check-config", help="validate the configuration and its files")
    p.add_argument("--config", metavar="FILE")
    p.set_defaults(func=run)


def _daemon_args(p: Any) -> None:
    p.add_argument("--config", metavar="FILE", help="where the daemon listens ([server] http)")
    p.add_argument("--url", metavar="URL", help="the daemon's HTTP API (default from --config)")
    p.add_argument(
        "--token-file", metavar="FILE", help="bearer token (default [server] token_file)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON as the daemon sent it")


def _status(sub: Any, run: Command) -> None:
    p = sub.add_parser("status", help="the running daemon: verdicts, credentials, peers")
    _daemon_args(p)
    p.set_defaults(func=run)


def _calls(sub: Any, run: Command) -> None:
    p = sub.add_parser("calls", help="the running daemon's most recent calls")
    _daemon_args(p)
    p.add_argument("--last", type=_positive, default=20, metavar="N", help="at most N (default 20)")
    p.add_argument("--call-id", metavar="ID", help="one call, with its decoded PASSporTs")
    p.add_argument("--verdict", metavar="V", help="valid, invalid, no-identity, signed, error...")
    p.add_argument("--search", metavar="TEXT", help="a number or part of a Call-ID")
    p.set_defaults(func=run)


def build_parser(**commands: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stird", description="STIR companion daemon tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in (("keygen", _keygen), ("cert", _cert), ("sign", _sign)):
        add(sub, commands[name])
    _verify(sub, commands["verify"])
    _decode(sub, commands["decode"])
    _serve(sub, commands["serve"])
    _check_config(sub, commands["check_config"])
    _cps(sub, commands["cps"])
    _status(sub, commands["status"])
    _calls(sub, commands["calls"])
    return parser
