"""stird.toml validation: every error names the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stird.wiring.config import (
    Config,
    ConfigError,
    HostPort,
    load_config,
    parse_config,
    with_overrides,
)

GOOD = """
log_level = "debug"
[server]
http = "127.0.0.1:9000"
jsonrpc = "off"
state_dir = "/tmp/stird-test"
[verify]
require_identity = true
max_age = 30
on_failure = "continue-with-reason"
allow_networks = ["10.0.0.0/8"]
[sign]
ppt = "shaken"
uncovered = "sign"
[store]
redis = "redis://127.0.0.1:6379/0"
[[credential]]
name = "main"
key = "/etc/stird/main.key"
cert = "/etc/stird/main.pem"
x5u = "https://certs.example.com/main.pem"
tn_ranges = ["+12025550000,1000"]
"""


def test_good_file(tmp_path: Path) -> None:
    path = tmp_path / "stird.toml"
    path.write_text(GOOD)
    config = load_config(str(path))
    assert config.server.http == HostPort("127.0.0.1", 9000)
    assert config.server.jsonrpc is None
    assert config.verify.require_identity and config.verify.max_age == 30
    assert config.credentials[0].tn_ranges == ("+12025550000,1000",)
    assert config.source == path
    assert config.server.max_loop_lag == 0.25
    no_shedding = parse_config(__import__("tomllib").loads("[server]\nmax_loop_lag = 0"))
    assert no_shedding.server.max_loop_lag == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nhttp = 'nowhere'", "[server] http: expected HOST:PORT"),
        ("[server]\nhttp = '127.0.0.1:70000'", "[server] http"),
        ("[verify]\nmax_age = -1", "[verify] max_age: must be > 0"),
        ("[verify]\nrequire_identity = 'yes'", "[verify] require_identity: must be bool"),
        ("[verify]\nrole = 'boss'", "[verify] role: must be one of endpoint, intermediary"),
        ("[verify]\nallow_networks = ['10.0.0.0/33']", "[verify] allow_networks"),
        ("[verify]\nmaxage = 5", "[verify] maxage: unknown key"),
        ("[sign]\nppt = 'div'", "[sign] ppt: must be one of msec, shaken, none"),
        ("[[credential]]\nname = 'a'\nkey = 'k'", "[[credential]] #1 cert: missing"),
        (
            "[[credential]]\nname='a'\nkey='k'\ncert='c'\n[[credential]]\nname='a'\nkey='k'\ncert='c'",
            "[[credential]] #2 name: must be unique",
        ),
        ("[bogus]\nx = 1", "bogus: unknown section"),
        ("log_level = 'loud'", "log_level: must be one of"),
        ("[server]\nmax_loop_lag = -0.1", "[server] max_loop_lag: must be >= 0"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(__import__("tomllib").loads(text))
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))


def test_embedded_default_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STIRD_CONFIG", raising=False)
    config = with_overrides(Config(), http="127.0.0.1:0", jsonrpc="127.0.0.1:0", agi="off",
                            state_dir=str(tmp_path))  # fmt: skip
    assert config.server.http.port == 0 and config.server.agi is None
    assert config.server.state_dir == tmp_path
    assert config.credentials == ()
    with pytest.raises(ConfigError, match="command line"):
        with_overrides(Config(), http="oops")


def test_kamailio_section() -> None:
    import tomllib

    config = parse_config(
        tomllib.loads("[kamailio]\nrpc_socket = '/run/kamailio/kamailio_rpc.sock'\n")
    )
    assert config.kamailio.rpc_socket == "/run/kamailio/kamailio_rpc.sock"
    with pytest.raises(ConfigError, match=r"\[kamailio\] rpc_url"):
        parse_config(tomllib.loads("[kamailio]\nrpc_url = 'http://x/RPC'\nrpc_socket = '/s'\n"))


CREDENTIAL = "[[credential]]\nname = 'main'\nkey = 'k.pem'\ncert = 'c.pem'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # each of these was accepted and failed later: at reload, or on every call
        (CREDENTIAL + "tn_ranges = ['abc,100']", "[[credential]] #1 tn_ranges: item 1 ('abc,100')"),
        (CREDENTIAL + "tn_ranges = ['+12025550000']", "[[credential]] #1 tn_ranges: item 1"),
        (CREDENTIAL + "tn_ranges = ['+12025550000,0']", "want START,COUNT"),
        (CREDENTIAL + "tns = ['call me']", "[[credential]] #1 tns: item 1"),
        (CREDENTIAL + "tn_prefixes = ['1-202']", "[[credential]] #1 tn_prefixes: item 1"),
        (CREDENTIAL + "x5u = 'ftp://x/c.pem'", "[[credential]] #1 x5u: must be an http(s) URL"),
        ("[verify]\nmax_skew = -30", "[verify] max_skew: must be >= 0"),
        ("[verify]\nmax_age = 0.5", "[verify] max_age: must be an integer"),
        ("[verify]\nmax_age = 0", "[verify] max_age: must be > 0"),
        ("[verify]\ndefault_region = 'XX'", "[verify] default_region: not a region code"),
        (
            "[verify]\npins = ['not-a-pin']",
            "[verify] pins: item 1 ('not-a-pin'): must be a SHA-256",
        ),
        ("[verify]\npins = ['" + "ab" * 31 + "']", "[verify] pins: item 1"),
        ("[verify]\nfetch_timeout = true", "[verify] fetch_timeout: must be a number"),
        ("[sign]\nmax_date_skew = 1.5", "[sign] max_date_skew: must be an integer"),
        ("[server]\nmax_body = 0", "[server] max_body: must be > 0"),
        ("[server]\npublic_url = 'certs.example.com'", "[server] public_url: must be an http(s)"),
        ("[store]\nredis = '127.0.0.1:6379'", "[store] redis: must be a redis://"),
        ("[kamailio]\nrpc_url = 'localhost:5081'", "[kamailio] rpc_url: must be an http(s)"),
        ("[kamailio]\nhealth_interval = -1", "[kamailio] health_interval: must be > 0"),
        ("[oob]\ntimeout = 11", "[oob] timeout: must be <= 10"),
    ],
)
def test_bad_values_refused_up_front(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(__import__("tomllib").loads(text))
    assert message in str(info.value)


def test_good_values_pass() -> None:
    fingerprint = ":".join(["AB"] * 32)
    text = CREDENTIAL + (
        "tns = ['+12025550100', 'sip:+12025550101@pbx.example.com']\n"
        "tn_ranges = ['+12025550000,1000']\ntn_prefixes = ['+1202']\n"
        f"[verify]\nmax_skew = 0\ndefault_region = 'GB'\npins = ['{fingerprint}', '{'0' * 64}']\n"
    )
    config = parse_config(__import__("tomllib").loads(text))
    assert config.verify.max_skew == 0 and config.verify.default_region == "GB"
    assert parse_config({"verify": {"default_region": ""}}).verify.default_region is None


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "log_level = 'loud'\n[verify]\nmax_skew = -30\nmax_age = 0.5\ndefault_region = 'XX'\n"
        "pins = ['not-a-pin']\nbogus = 1\n[dialog]\nwindow = 0\n"
        + CREDENTIAL
        + CREDENTIAL
        + "[[credential]]\nname = 'x'\ntn_ranges = ['abc,100']\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(__import__("tomllib").loads(text))
    problems = info.value.problems
    for expected in (
        "log_level:", "[verify] max_skew:", "[verify] max_age:", "[verify] default_region:",
        "[verify] pins:", "[verify] bogus: unknown key", "[dialog] window:",
        "[[credential]] #3 tn_ranges:", "[[credential]] #2 name: must be unique",
        "[[credential]] #3 key: missing", "[[credential]] #3 cert: missing",
    ):  # fmt: skip
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 11
    assert str(info.value).count("\n") == 10  # one problem a line
