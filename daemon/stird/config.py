"""stird.toml: loading and validation. Every error names the key and the problem.

Lookup order: ``--config FILE``, ``$STIRD_CONFIG``, ``/etc/stird/stird.toml``; with none of
them, the embedded default (development credential, everything on loopback).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/stird/stird.toml")
DEFAULT_STATE_DIR = Path("/var/lib/stird")


class ConfigError(Exception):
    """A configuration problem, phrased as ``[section] key: problem``."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# host-port = ( IPv4address / "[" IPv6address "]" / hostname ) ":" port
_HOSTPORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})"
)


def parse_hostport(text: str) -> HostPort:
    match = _HOSTPORT.fullmatch(text.strip())
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return HostPort(match["v6"] or match["host"], int(match["port"]))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    http: HostPort = HostPort("127.0.0.1", 8790)
    jsonrpc: HostPort | None = HostPort("127.0.0.1", 8791)
    agi: HostPort | None = HostPort("127.0.0.1", 4573)
    state_dir: Path = DEFAULT_STATE_DIR
    public_url: str | None = None  # how others reach GET /certs/ (default: the HTTP listener)
    max_body: int = 256 * 1024
    token_file: Path | None = None  # bearer token for the HTTP API (stird.exposure)
    insecure_expose: bool = False  # allow unprotected listeners off loopback
    max_loop_lag: float = 0.25  # s the event loop may run late before work is refused; 0: never
    # every listener's connections (stird.adapters.connpolicy.ConnectionPolicy)
    header_timeout: float = 10.0  # s for a request head (HTTP head, agi_* block, netstring length)
    body_timeout: float = 20.0  # s from a complete head to a complete body
    idle_timeout: float = 75.0  # s a kept-alive connection may wait for its next request
    max_connections: int = 512  # per listener; at the cap the longest-waiting one is closed
    partial_frame_budget: int = 64 << 20  # bytes of unfinished frames, all listeners together


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    require_identity: bool = False
    max_age: int = 60
    max_skew: int = 10
    role: str = "endpoint"
    on_failure: str = "reject"
    min_attest: str | None = None
    trust_anchors: tuple[Path, ...] = ()
    pins: tuple[str, ...] = ()
    tofu: bool = True
    replay: bool = True
    default_region: str | None = "US"
    fetch_timeout: float = 2.0
    deadline: float = 3.0
    allow_http: bool = False
    allow_networks: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SignConfig:
    ppt: str = "msec"
    add_shaken: bool = True
    compact: bool = False
    uncovered: str = "refuse"
    uncovered_attest: str = "C"
    max_date_skew: int = 60


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    name: str
    key: Path
    cert: Path
    x5u: str | None = None
    attest: str = "A"
    tns: tuple[str, ...] = ()
    tn_ranges: tuple[str, ...] = ()
    tn_prefixes: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    redis: str | None = None  # e.g. redis://127.0.0.1:6379/0, shared by several instances


@dataclass(frozen=True, slots=True)
class AsteriskConfig:
    """[asterisk]: the FastAGI routes (listener: [server] agi) and the AMI client."""

    agi_timeout: float = 2.0  # seconds for each FastAGI exchange
    fail_action: str = "reject"  # what the dialplan is told when stird cannot sign/verify
    dtls_certs: tuple[tuple[str, Path], ...] = ()  # endpoint -> its pjsip dtls_cert_file
    dtls_fingerprint: str = "SHA-256"  # as pjsip.conf dtls_fingerprint
    ami_enabled: bool = False
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "stird"
    ami_secret: str | None = None
    ami_secret_file: Path | None = None


@dataclass(frozen=True, slots=True)
class KamailioConfig:
    """[kamailio]: stird → Kamailio control and health through jsonrpcs."""

    rpc_url: str | None = None  # http://127.0.0.1:5081/RPC (xhttp)
    rpc_socket: str | None = None  # /run/kamailio/kamailio_rpc.sock (UNIX datagram)
    timeout: float = 1.0
    health_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class DialogConfig:
    """[dialog]: the msec dialog policy (RFC 8862 §4.3–4.4): after the answer to an
    msec-signed INVITE the callee must prove its keys with a signed backwards request
    within ``window`` seconds; "mandatory" ends the dialog otherwise, "opportunistic"
    only records it, "off" tracks nothing."""

    policy: str = "off"
    window: float = 5.0


@dataclass(frozen=True, slots=True)
class OobConfig:
    """[oob]: out-of-band PASSporTs through Call Placement Services (RFC 8816)."""

    enabled: bool = True
    cps: str | None = None  # default CPS; unset on the embedded default: stird's own listener
    cps_by_prefix: tuple[tuple[str, str], ...] = ()  # called-number prefix (digits) -> URL
    profile_by_cps: tuple[tuple[str, str], ...] = ()  # URL -> "rfc8816" | "atis"
    publish_for: tuple[str, ...] = ()  # called-number prefixes always sent out of band
    retrieve: str = "absent"  # "absent" | "always" | "never"
    timeout: float = 1.0
    decryption_keys: tuple[Path, ...] = ()
    atis_spc: str | None = None
    atis_credential: str | None = None  # a [[credential]] name (default: the first)
    allow_http: bool = False
    allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    sign: SignConfig = field(default_factory=SignConfig)
    credentials: tuple[CredentialConfig, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    asterisk: AsteriskConfig = field(default_factory=AsteriskConfig)
    kamailio: KamailioConfig = field(default_factory=KamailioConfig)
    oob: OobConfig = field(default_factory=OobConfig)
    dialog: DialogConfig = field(default_factory=DialogConfig)
    log_level: str = "info"
    source: Path | None = None  # the file it came from; None = embedded default


Check = Callable[[Any], Any]


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


def _positive(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _not_negative(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError("must be a number, 0 or more")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _paths(value: Any) -> tuple[Path, ...]:
    return tuple(Path(v) for v in _strings(value))


def _networks(value: Any) -> tuple[str, ...]:
    for item in _strings(value):
        ipaddress.ip_network(item, strict=False)
    return _strings(value)


def _typed(kind: type | tuple[type, ...]) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"must be {getattr(kind, '__name__', kind)}")
        if not isinstance(value, kind):
            raise ValueError(f"must be {getattr(kind, '__name__', kind)}")
        return value

    return check


def _optional_hostport(value: Any) -> HostPort | None:
    if value in ("", "off"):
        return None
    return parse_hostport(_typed(str)(value))


_SERVER: dict[str, Check] = {
    "http": lambda v: parse_hostport(_typed(str)(v)),
    "jsonrpc": _optional_hostport,
    "agi": _optional_hostport,
    "state_dir": lambda v: Path(_typed(str)(v)),
    "public_url": _typed(str),
    "max_body": _positive,
    "token_file": lambda v: Path(_typed(str)(v)),
    "insecure_expose": _typed(bool),
    "max_loop_lag": _not_negative,
    "header_timeout": _positive,
    "body_timeout": _positive,
    "idle_timeout": _positive,
    "max_connections": lambda v: _positive(_typed(int)(v)),
    "partial_frame_budget": lambda v: _positive(_typed(int)(v)),
}
_VERIFY: dict[str, Check] = {
    "require_identity": _typed(bool), "max_age": _positive, "max_skew": _typed(int),
    "role": _one_of("endpoint", "intermediary"),
    "on_failure": _one_of("reject", "continue", "continue-with-reason"),
    "min_attest": _one_of("A", "B", "C"), "trust_anchors": _paths, "pins": _strings,
    "tofu": _typed(bool), "replay": _typed(bool), "default_region": _typed(str),
    "fetch_timeout": _positive, "deadline": _positive, "allow_http": _typed(bool),
    "allow_networks": _networks, "allow_hosts": _strings,
}  # fmt: skip
_SIGN: dict[str, Check] = {
    "ppt": _one_of("msec", "shaken", "none"), "add_shaken": _typed(bool),
    "compact": _typed(bool), "uncovered": _one_of("refuse", "unsigned", "sign"),
    "uncovered_attest": _one_of("A", "B", "C"), "max_date_skew": _positive,
}  # fmt: skip
_CREDENTIAL: dict[str, Check] = {
    "name": _typed(str), "key": lambda v: Path(_typed(str)(v)),
    "cert": lambda v: Path(_typed(str)(v)), "x5u": _typed(str),
    "attest": _one_of("A", "B", "C"), "tns": _strings, "tn_ranges": _strings,
    "tn_prefixes": _strings, "domains": _strings,
}  # fmt: skip
_STORE: dict[str, Check] = {"redis": _typed(str)}


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError("must be a port number (1-65535)")
    return value


def _dtls_certs(value: Any) -> tuple[tuple[str, Path], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ValueError('must be a table of endpoint = "/path/to/dtls_cert_file"')
    return tuple((name, Path(path)) for name, path in value.items())


_ASTERISK: dict[str, Check] = {
    "agi_timeout": _positive, "fail_action": _one_of("reject", "continue"),
    "dtls_certs": _dtls_certs, "dtls_fingerprint": _one_of("SHA-256", "SHA-1"),
    "ami_enabled": _typed(bool), "ami_host": _typed(str), "ami_port": _port,
    "ami_user": _typed(str), "ami_secret": _typed(str),
    "ami_secret_file": lambda v: Path(_typed(str)(v)),
}  # fmt: skip


def _asterisk(table: Any) -> AsteriskConfig:
    fields = _section(table, "[asterisk]", _ASTERISK)
    if "ami_secret" in fields and "ami_secret_file" in fields:
        raise ConfigError("[asterisk] ami_secret: give ami_secret or ami_secret_file, not both")
    if fields.get("ami_enabled") and not ("ami_secret" in fields or "ami_secret_file" in fields):
        raise ConfigError("[asterisk] ami_secret: required when ami_enabled = true")
    return AsteriskConfig(**fields)


def _section(table: Any, where: str, spec: Mapping[str, Check]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in spec:
            raise ConfigError(f"{where} {key}: unknown key (known: {', '.join(sorted(spec))})")
        try:
            out[key] = spec[key](value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    return out


def _credentials(items: Any) -> tuple[CredentialConfig, ...]:
    if not isinstance(items, list):
        raise ConfigError("[[credential]]: must be an array of tables")
    out: list[CredentialConfig] = []
    for index, item in enumerate(items):
        where = f"[[credential]] #{index + 1}"
        fields = _section(item, where, _CREDENTIAL)
        for required in ("name", "key", "cert"):
            if required not in fields:
                raise ConfigError(f"{where} {required}: missing")
        if fields["name"] in {c.name for c in out} or not re.fullmatch(r"[\w.-]+", fields["name"]):
            raise ConfigError(f"{where} name: must be unique and made of letters, digits, . _ -")
        out.append(CredentialConfig(**fields))
    return tuple(out)


_KAMAILIO: dict[str, Check] = {
    "rpc_url": _typed(str), "rpc_socket": _typed(str), "timeout": _positive,
    "health_interval": _positive,
}  # fmt: skip


def _kamailio(table: Any) -> KamailioConfig:
    fields = _section(table, "[kamailio]", _KAMAILIO)
    if fields.get("rpc_url") and fields.get("rpc_socket"):
        raise ConfigError("[kamailio] rpc_url: give rpc_url or rpc_socket, not both")
    return KamailioConfig(**fields)


def _url(value: Any) -> str:
    text: str = _typed(str)(value)
    if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", text):
        raise ValueError(f"must be an http(s) URL without query or userinfo, got {text!r}")
    return text.rstrip("/")


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\+?[0-9]{1,15}", value):
        raise ValueError(f"telephone-number prefixes are digits with an optional '+': {value!r}")
    return value.lstrip("+")


def _table(key: Check, value: Check) -> Check:
    def check(table: Any) -> tuple[tuple[Any, Any], ...]:
        if not isinstance(table, dict):
            raise ValueError("must be a table")
        return tuple((key(k), value(v)) for k, v in table.items())

    return check


_OOB: dict[str, Check] = {
    "enabled": _typed(bool), "cps": _url, "cps_by_prefix": _table(_prefix, _url),
    "profile_by_cps": _table(_url, _one_of("rfc8816", "atis")),
    "publish_for": lambda v: tuple(_prefix(p) for p in _strings(v)),
    "retrieve": _one_of("absent", "always", "never"), "timeout": _positive,
    "decryption_keys": _paths, "atis_spc": _typed(str), "atis_credential": _typed(str),
    "allow_http": _typed(bool), "allow_networks": _networks,
}  # fmt: skip


def _oob(table: Any, credentials: tuple[CredentialConfig, ...]) -> OobConfig:
    oob = OobConfig(**_section(table, "[oob]", _OOB))
    if oob.timeout > 10:
        raise ConfigError("[oob] timeout: at most 10 seconds (signing waits for it)")
    if "atis" in dict(oob.profile_by_cps).values() and not oob.atis_spc:
        raise ConfigError("[oob] atis_spc: required when a CPS uses the atis profile")
    names = [c.name for c in credentials]
    if oob.atis_credential is not None and oob.atis_credential not in names:
        raise ConfigError(f"[oob] atis_credential: no [[credential]] named {oob.atis_credential!r}")
    return oob


_DIALOG: dict[str, Check] = {
    "policy": _one_of("mandatory", "opportunistic", "off"), "window": _positive,
}  # fmt: skip


def _dialog(table: Any) -> DialogConfig:
    dialog = DialogConfig(**_section(table, "[dialog]", _DIALOG))
    if dialog.window > 300:
        raise ConfigError("[dialog] window: at most 300 seconds")
    return dialog


_TOP = {"server", "verify", "sign", "credential", "store", "asterisk", "kamailio", "oob",
        "dialog", "log_level"}  # fmt: skip


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(
            f"{sorted(unknown)[0]}: unknown section (known: {', '.join(sorted(_TOP))})"
        )
    level = data.get("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level: must be one of debug, info, warning, error")
    credentials = _credentials(data.get("credential", []))
    return Config(
        server=ServerConfig(**_section(data.get("server", {}), "[server]", _SERVER)),
        verify=VerifyConfig(**_section(data.get("verify", {}), "[verify]", _VERIFY)),
        sign=SignConfig(**_section(data.get("sign", {}), "[sign]", _SIGN)),
        credentials=credentials,
        store=StoreConfig(**_section(data.get("store", {}), "[store]", _STORE)),
        asterisk=_asterisk(data.get("asterisk", {})),
        kamailio=_kamailio(data.get("kamailio", {})),
        oob=_oob(data.get("oob", {}), credentials),
        dialog=_dialog(data.get("dialog", {})),
        log_level=level,
        source=source,
    )


def config_path(explicit: str | None) -> Path | None:
    """The file to load, or None for the embedded default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("STIRD_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_config(explicit: str | None = None) -> Config:
    path = config_path(explicit)
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, path)


def with_overrides(config: Config, **listeners: str | None) -> Config:
    """Apply ``--http``, ``--jsonrpc``, ``--agi`` and ``--state-dir`` from the command line."""
    server = config.server
    try:
        if listeners.get("http"):
            server = replace(server, http=parse_hostport(str(listeners["http"])))
        if listeners.get("jsonrpc") is not None:
            server = replace(server, jsonrpc=_optional_hostport(listeners["jsonrpc"]))
        if listeners.get("agi") is not None:
            server = replace(server, agi=_optional_hostport(listeners["agi"]))
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None
    if listeners.get("state_dir"):
        server = replace(server, state_dir=Path(str(listeners["state_dir"])))
    return replace(config, server=server)
