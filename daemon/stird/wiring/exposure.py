"""Who may reach stird's listeners (issue #9).

Every listener binds to loopback by default. Off loopback:

* the HTTP API needs ``[server] token_file``: clients then send
  ``Authorization: Bearer <token>`` (RFC 6750) for ``/v1/*``, ``/jsonrpc`` and
  ``/metrics`` (adapters/http_api.py);
* the JSON-RPC netstring listener (Kamailio ``janssonrpcc``) and FastAGI (Asterisk
  ``AGI(agi://…)``) carry no credentials at all — neither protocol has a place for
  them that the PBX side fills in — so they stay on loopback, beside the PBX they serve;
  a remote PBX uses the HTTP API with the token instead.

``[server] insecure_expose = true`` lifts both rules (stird then logs a warning at every
start): for a private network the operator controls by other means.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from stird.adapters import keyfiles
from stird.wiring.config import ConfigError, HostPort, ServerConfig

log = logging.getLogger("stird")
MIN_TOKEN = 16  # characters: at least 96 bits from a base64 generator


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def exposed(server: ServerConfig) -> list[tuple[str, HostPort]]:
    """The listeners bound off loopback."""
    listeners = {"http": server.http, "jsonrpc": server.jsonrpc, "agi": server.agi}
    return [(name, where) for name, where in listeners.items()
            if where is not None and not is_loopback(where.host)]  # fmt: skip


def check_exposure(server: ServerConfig) -> None:
    """Refuse a listener off loopback that nothing protects; raises :class:`ConfigError`."""
    if server.insecure_expose:
        return
    for name, where in exposed(server):
        if name == "http" and server.token_file is None:
            raise ConfigError(
                f"[server] http: {where} is not loopback: set token_file (a bearer token) "
                "or insecure_expose = true"
            )
        if name != "http":
            raise ConfigError(
                f"[server] {name}: {where} is not loopback and this protocol carries no "
                "credentials: keep it on loopback beside the PBX (or insecure_expose = true)"
            )


def warn_if_insecure(server: ServerConfig) -> None:
    for name, where in exposed(server):
        if server.insecure_expose and (name != "http" or server.token_file is None):
            log.warning("[server] %s listens on %s WITHOUT authentication (insecure_expose)",
                        name, where)  # fmt: skip


def load_token(path: Path) -> str:
    """The bearer token: the file's first line, refused when group/world-accessible
    (like private keys) or shorter than :data:`MIN_TOKEN` characters."""
    try:
        text = keyfiles.read_private_file(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"[server] token_file: {path} is not UTF-8 text") from None
    except keyfiles.KeyFileError as exc:
        raise ConfigError(f"[server] token_file: {exc}") from None
    token = text.splitlines()[0] if text else ""
    if len(token) < MIN_TOKEN or not token.isprintable() or " " in token:
        raise ConfigError(
            f"[server] token_file: {path} must hold one token of at least {MIN_TOKEN} "
            "printable characters without spaces"
        )
    return token
