"""stird.toml: one declaration of every key, used by ``check-config``, ``serve`` and SIGHUP.

Each key is a dataclass field declared with :func:`setting`: its default and the check that
turns the TOML value into the typed value (or says what is wrong). :func:`parse_config`
walks those declarations, so adding a key is one line in its section's dataclass, e.g.
``idle_timeout: float = setting(60.0, seconds)`` in :class:`ServerConfig`. Cross-key rules of a
section live in ``_RULES``. Every problem is phrased ``[section] key: problem`` and all of
them are collected: :class:`ConfigError` carries the full list.

Lookup order: ``--config FILE``, ``$STIRD_CONFIG``, ``/etc/stird/stird.toml``; with none of
them, the embedded default (development credential, everything on loopback).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import phonenumbers

from stird.core.errors import StirError
from stird.core.tn import parse_cli_id

DEFAULT_PATH = Path("/etc/stird/stird.toml")
DEFAULT_STATE_DIR = Path("/var/lib/stird")


class ConfigError(Exception):
    """Configuration problems, each phrased as ``[section] key: problem``."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


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


# ------------------------------------------------------------------ checks ----
# A check takes the TOML value and returns the typed value or raises ValueError.

Check = Callable[[Any], Any]
_NO_DEFAULT: Any = dataclasses.MISSING


def setting(default: Any, check: Check, *, secret: bool = False) -> Any:
    """Declare a key: its default (``_NO_DEFAULT``: required) and its check; a ``secret``
    never shows in ``repr`` (logs, tracebacks)."""
    if default is _NO_DEFAULT:
        return field(metadata={"check": check}, repr=not secret)
    return field(default=default, metadata={"check": check}, repr=not secret)


def typed(kind: type) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
            raise ValueError(f"must be {kind.__name__}")
        return value

    return check


boolean, text = typed(bool), typed(str)


def number(*, minimum: float = 0, above: bool = False, integer: bool = False,
           maximum: float | None = None) -> Check:  # fmt: skip
    """A number (an integer if ``integer``) ``>= minimum`` (``> minimum`` if ``above``)."""

    def check(value: Any) -> Any:
        kinds = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError("must be an integer" if integer else "must be a number")
        if value < minimum or (above and value == minimum):
            raise ValueError(f"must be {'>' if above else '>='} {minimum:g}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum:g}")
        return value

    return check


seconds = number()  # a duration, 0 or more
positive_seconds = number(above=True)


def one_of(*choices: str) -> Check:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return check


def strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def each(check: Check) -> Check:
    """A list of strings, each passed through ``check`` (problems name the item)."""

    def check_all(value: Any) -> tuple[Any, ...]:
        out = []
        for index, item in enumerate(strings(value)):
            try:
                out.append(check(item))
            except ValueError as exc:
                raise ValueError(f"item {index + 1} ({item[:64]!r}): {exc}") from None
        return tuple(out)

    return check_all


def path(value: Any) -> Path:
    if not text(value):
        raise ValueError("must not be empty")
    return Path(value)


paths = each(path)


def network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("not an IP network") from None
    return value


def hostport(value: Any) -> HostPort:
    return parse_hostport(text(value))


def optional_hostport(value: Any) -> HostPort | None:
    if value in ("", "off"):
        return None
    return hostport(value)


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError("must be a port number (1-65535)")
    return value


_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?")


def http_url(value: Any) -> str:
    """An http(s) URL without query, fragment or userinfo, trailing "/" dropped."""
    if not _URL.fullmatch(text(value)):
        raise ValueError(f"must be an http(s) URL without query or userinfo, got {value!r}")
    return str(value).rstrip("/")


def document_url(value: Any) -> str:
    """An http(s) URL kept as written (x5u: the exact string goes into PASSporTs)."""
    http_url(value)
    return str(value)


def redis_url(value: Any) -> str:
    if not re.fullmatch(r"(rediss?|unix)://\S+", text(value)):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {value!r}")
    return str(value)


def region(value: Any) -> str | None:
    """A region code phonenumbers knows (ISO 3166 alpha-2, e.g. "US"); "" for none."""
    if text(value) == "":
        return None
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"not a region code phonenumbers knows (e.g. US, GB, FR), got {value!r}")
    return str(value)


def pin(value: str) -> str:
    """A SHA-256 fingerprint: 64 hex digits, colons allowed between byte pairs."""
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", value.replace(":", "")):
        raise ValueError("must be a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return value


def telephone_number(value: str) -> str:
    try:
        parse_cli_id(value)
    except StirError as exc:
        raise ValueError(exc.detail) from None
    return value


def tn_range(value: str) -> str:
    """``START,COUNT``: a number and how many numbers from it on."""
    start, comma, count = value.partition(",")
    if not comma or not count.strip().isdigit() or int(count) < 1:
        raise ValueError("want START,COUNT with COUNT a positive integer")
    telephone_number(start)
    return value


def tn_prefix(value: str) -> str:
    if not re.fullmatch(r"\+?[0-9]{1,15}", value):
        raise ValueError("telephone-number prefixes are digits with an optional '+'")
    return value


def digits_prefix(value: Any) -> str:
    return tn_prefix(text(value)).lstrip("+")


def table(of_key: Check, of_value: Check) -> Check:
    def check(value: Any) -> tuple[tuple[Any, Any], ...]:
        if not isinstance(value, dict):
            raise ValueError("must be a table")
        return tuple((of_key(k), of_value(v)) for k, v in value.items())

    return check


def dtls_certs(value: Any) -> tuple[tuple[str, Path], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ValueError('must be a table of endpoint = "/path/to/dtls_cert_file"')
    return tuple((name, Path(p)) for name, p in value.items())


def credential_name(value: Any) -> str:
    if not re.fullmatch(r"[\w.-]+", text(value)):
        raise ValueError("must be made of letters, digits, . _ -")
    return str(value)


# ---------------------------------------------------------------- sections ----


@dataclass(frozen=True, slots=True)
class ServerConfig:
    http: HostPort = setting(HostPort("127.0.0.1", 8790), hostport)
    jsonrpc: HostPort | None = setting(HostPort("127.0.0.1", 8791), optional_hostport)
    agi: HostPort | None = setting(HostPort("127.0.0.1", 4573), optional_hostport)
    state_dir: Path = setting(DEFAULT_STATE_DIR, path)
    public_url: str | None = setting(None, http_url)  # how others reach GET /certs/ (default: HTTP)
    max_body: int = setting(256 * 1024, number(integer=True, above=True))
    token_file: Path | None = setting(None, path)  # bearer token for the HTTP API (exposure)
    insecure_expose: bool = setting(False, boolean)  # allow unprotected listeners off loopback
    max_loop_lag: float = setting(
        0.25, seconds
    )  # s the loop may run late before refusing; 0: never
    # every listener's connections (stird.adapters.connpolicy.ConnectionPolicy)
    header_timeout: float = setting(10.0, positive_seconds)  # request head (HTTP, agi_*, netstring)
    body_timeout: float = setting(20.0, positive_seconds)  # from a complete head to a full body
    idle_timeout: float = setting(75.0, positive_seconds)  # kept-alive wait for the next request
    max_connections: int = setting(512, number(integer=True, above=True))  # per listener
    partial_frame_budget: int = setting(64 << 20, number(integer=True, above=True))  # all, bytes
    # worker processes sharing the listeners (stird.wiring.workers); 0: one per core,
    # 1: a single process (no supervisor). The embedded CPS and [dialog] tracking are
    # shared among them (SQLite files), and [asterisk] hep's state (shared memory)
    workers: int = setting(0, number(integer=True, maximum=256))


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    require_identity: bool = setting(False, boolean)
    max_age: int = setting(60, number(integer=True, above=True))
    max_skew: int = setting(10, number(integer=True))
    role: str = setting("endpoint", one_of("endpoint", "intermediary"))
    on_failure: str = setting("reject", one_of("reject", "continue", "continue-with-reason"))
    min_attest: str | None = setting(None, one_of("A", "B", "C"))
    trust_anchors: tuple[Path, ...] = setting((), paths)
    pins: tuple[str, ...] = setting((), each(pin))
    tofu: bool = setting(True, boolean)
    replay: bool = setting(True, boolean)
    # PASSporTs/s the replay cache holds for a whole window; when full: refuse (503) or
    # let calls through marked "replay": "unchecked"
    replay_peak_rate: int = setting(2000, number(integer=True, above=True))
    replay_overflow: str = setting("refuse", one_of("refuse", "unchecked"))
    require_call_id: bool = setting(False, boolean)  # a verify request without call_id: 400
    default_region: str | None = setting("US", region)
    fetch_timeout: float = setting(2.0, positive_seconds)
    deadline: float = setting(3.0, positive_seconds)
    allow_http: bool = setting(False, boolean)
    allow_networks: tuple[str, ...] = setting((), each(network))
    allow_hosts: tuple[str, ...] = setting((), strings)


@dataclass(frozen=True, slots=True)
class SignConfig:
    ppt: str = setting("msec", one_of("msec", "shaken", "none"))
    add_shaken: bool = setting(True, boolean)
    compact: bool = setting(False, boolean)
    uncovered: str = setting("refuse", one_of("refuse", "unsigned", "sign"))
    uncovered_attest: str = setting("C", one_of("A", "B", "C"))
    max_date_skew: int = setting(60, number(integer=True, above=True))


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    name: str = setting(_NO_DEFAULT, credential_name)
    key: Path = setting(_NO_DEFAULT, path)
    cert: Path = setting(_NO_DEFAULT, path)
    x5u: str | None = setting(None, document_url)
    attest: str = setting("A", one_of("A", "B", "C"))
    tns: tuple[str, ...] = setting((), each(telephone_number))
    tn_ranges: tuple[str, ...] = setting((), each(tn_range))
    tn_prefixes: tuple[str, ...] = setting((), each(tn_prefix))
    domains: tuple[str, ...] = setting((), strings)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # e.g. redis://127.0.0.1:6379/0, shared by several instances; may carry a password
    redis: str | None = setting(None, redis_url, secret=True)


@dataclass(frozen=True, slots=True)
class AsteriskConfig:
    """[asterisk]: the FastAGI routes (listener: [server] agi) and the AMI client."""

    agi_timeout: float = setting(2.0, positive_seconds)  # each FastAGI exchange
    fail_action: str = setting("reject", one_of("reject", "continue"))  # when stird cannot answer
    dtls_certs: tuple[tuple[str, Path], ...] = setting((), dtls_certs)  # endpoint -> dtls_cert_file
    dtls_fingerprint: str = setting("SHA-256", one_of("SHA-256", "SHA-1"))  # as pjsip.conf
    ami_enabled: bool = setting(False, boolean)
    ami_host: str = setting("127.0.0.1", text)
    ami_port: int = setting(5038, port)
    ami_user: str = setting("stird", text)
    ami_secret: str | None = setting(None, text, secret=True)
    ami_secret_file: Path | None = setting(None, path)
    # HEP3 collector for res_hep_pjsip (the SDP of inbound msec calls, connected identity)
    hep: HostPort | None = setting(None, optional_hostport)  # UDP, loopback like FastAGI
    hep_password: str | None = setting(None, text, secret=True)  # hep.conf capture_password
    hep_wait: float = setting(0.05, number(maximum=1.0))  # verify waits this long for the SDP
    msec_without_sdp: str = setting("unchecked", one_of("unchecked", "ignore", "reject"))


@dataclass(frozen=True, slots=True)
class KamailioConfig:
    """[kamailio]: stird → Kamailio control and health through jsonrpcs."""

    rpc_url: str | None = setting(None, http_url)  # http://127.0.0.1:5081/RPC (xhttp)
    rpc_socket: str | None = setting(None, text)  # /run/kamailio/kamailio_rpc.sock (datagram)
    timeout: float = setting(1.0, positive_seconds)
    health_interval: float = setting(10.0, positive_seconds)


@dataclass(frozen=True, slots=True)
class DialogConfig:
    """[dialog]: the msec dialog policy (RFC 8862 §4.3–4.4): after the answer to an
    msec-signed INVITE the callee must prove its keys with a signed backwards request
    within ``window`` seconds; "mandatory" ends the dialog otherwise, "opportunistic"
    only records it, "off" tracks nothing. With several workers the dialogs are shared
    (a SQLite file): any worker may see the sign, the answer or the proof."""

    policy: str = setting("off", one_of("mandatory", "opportunistic", "off"))
    window: float = setting(5.0, number(above=True, maximum=300))


@dataclass(frozen=True, slots=True)
class OobConfig:
    """[oob]: out-of-band PASSporTs through Call Placement Services (RFC 8816)."""

    enabled: bool = setting(True, boolean)
    cps: str | None = setting(None, http_url)  # default CPS; embedded default: stird's own listener
    cps_by_prefix: tuple[tuple[str, str], ...] = setting((), table(digits_prefix, http_url))
    profile_by_cps: tuple[tuple[str, str], ...] = setting(
        (), table(http_url, one_of("rfc8816", "atis"))
    )
    publish_for: tuple[str, ...] = setting((), each(digits_prefix))  # always sent out of band
    retrieve: str = setting("absent", one_of("absent", "always", "never"))
    timeout: float = setting(1.0, number(above=True, maximum=10))  # signing waits for it
    decryption_keys: tuple[Path, ...] = setting((), paths)
    atis_spc: str | None = setting(None, text)
    atis_credential: str | None = setting(None, text)  # a [[credential]] name (default: the first)
    allow_http: bool = setting(False, boolean)
    allow_networks: tuple[str, ...] = setting((), each(network))


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


# ------------------------------------------------------------------ parsing ----

# [table] name in the file -> its dataclass; "credential" is an array of tables
_SECTIONS: dict[str, type] = {
    "server": ServerConfig, "verify": VerifyConfig, "sign": SignConfig,
    "store": StoreConfig, "asterisk": AsteriskConfig, "kamailio": KamailioConfig,
    "oob": OobConfig, "dialog": DialogConfig,
}  # fmt: skip
_LOG_LEVELS = ("debug", "info", "warning", "error")
_TOP = {*_SECTIONS, "credential", "log_level"}


def _asterisk_rules(ast: AsteriskConfig, given: set[str]) -> Iterable[str]:
    if "ami_secret" in given and "ami_secret_file" in given:
        yield "ami_secret: give ami_secret or ami_secret_file, not both"
    if ast.ami_enabled and not given & {"ami_secret", "ami_secret_file"}:
        yield "ami_secret: required when ami_enabled = true"


def _kamailio_rules(kam: KamailioConfig, given: set[str]) -> Iterable[str]:
    if kam.rpc_url and kam.rpc_socket:
        yield "rpc_url: give rpc_url or rpc_socket, not both"


def _oob_rules(oob: OobConfig, given: set[str]) -> Iterable[str]:
    if "atis" in dict(oob.profile_by_cps).values() and not oob.atis_spc:
        yield "atis_spc: required when a CPS uses the atis profile"


# cross-key rules of a section: (value, keys given) -> "key: problem" lines
_RULES: dict[type, Callable[[Any, set[str]], Iterable[str]]] = {
    AsteriskConfig: _asterisk_rules, KamailioConfig: _kamailio_rules, OobConfig: _oob_rules,
}  # fmt: skip


def _section(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """``cls`` built from one TOML table; problems appended (then the default instance,
    or None for a section with required keys)."""
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a table")
        return None
    declared = {f.name: f for f in dataclasses.fields(cls) if "check" in f.metadata}
    values: dict[str, Any] = {}
    before = len(problems)
    for name, value in data.items():
        if name not in declared:
            problems.append(f"{where} {name}: unknown key (known: {', '.join(sorted(declared))})")
            continue
        try:
            values[name] = declared[name].metadata["check"](value)
        except (ValueError, TypeError) as exc:
            problems.append(f"{where} {name}: {exc}")
    for name, decl in declared.items():
        if decl.default is dataclasses.MISSING and name not in data:
            problems.append(f"{where} {name}: missing")
    if len(problems) > before:
        return None
    built = cls(**values)
    problems.extend(f"{where} {line}" for line in _RULES.get(cls, _none)(built, set(values)))
    return built


def _none(value: Any, given: set[str]) -> Iterable[str]:
    return ()


def _credentials(items: Any, problems: list[str]) -> tuple[CredentialConfig, ...]:
    if not isinstance(items, list):
        problems.append("[[credential]]: must be an array of tables")
        return ()
    out: list[CredentialConfig] = []
    for index, item in enumerate(items):
        where = f"[[credential]] #{index + 1}"
        cred = _section(CredentialConfig, item, where, problems)
        if cred is None:
            continue
        if cred.name in {c.name for c in out}:
            problems.append(f"{where} name: must be unique, {cred.name!r} is taken")
        out.append(cred)
    return tuple(out)


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    """The configuration in ``data`` (parsed TOML); raises :class:`ConfigError` with every
    problem found."""
    problems = [
        f"{name}: unknown section (known: {', '.join(sorted(_TOP))})"
        for name in sorted(set(data) - _TOP)
    ]
    level = data.get("log_level", "info")
    if level not in _LOG_LEVELS:
        problems.append(f"log_level: must be one of {', '.join(_LOG_LEVELS)}")
    credentials = _credentials(data.get("credential", []), problems)
    sections = {
        name: _section(cls, data.get(name, {}), f"[{name}]", problems)
        for name, cls in _SECTIONS.items()
    }
    oob = sections["oob"]
    wanted = oob.atis_credential if oob is not None else None
    if wanted is not None and wanted not in {c.name for c in credentials}:
        problems.append(f"[oob] atis_credential: no [[credential]] named {wanted!r}")
    if problems:
        raise ConfigError(*problems)
    return Config(credentials=credentials, log_level=level, source=source, **sections)


def config_path(explicit: str | None) -> Path | None:
    """The file to load, or None for the embedded default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("STIRD_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_config(explicit: str | None = None) -> Config:
    path_ = config_path(explicit)
    if path_ is None:
        return Config()
    try:
        data = tomllib.loads(path_.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path_}: cannot read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path_}: not valid TOML ({exc})") from None
    return parse_config(data, path_)


def with_overrides(config: Config, **listeners: str | None) -> Config:
    """Apply ``--http``, ``--jsonrpc``, ``--agi`` and ``--state-dir`` from the command line."""
    server = config.server
    try:
        if listeners.get("http"):
            server = replace(server, http=parse_hostport(str(listeners["http"])))
        if listeners.get("jsonrpc") is not None:
            server = replace(server, jsonrpc=optional_hostport(listeners["jsonrpc"]))
        if listeners.get("agi") is not None:
            server = replace(server, agi=optional_hostport(listeners["agi"]))
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None
    if listeners.get("state_dir"):
        server = replace(server, state_dir=Path(str(listeners["state_dir"])))
    return replace(config, server=server)
