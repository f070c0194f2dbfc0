"""stird.toml validation: every error names the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from stird.config import Config, ConfigError, HostPort, load_config, parse_config, with_overrides

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
        ("[verify]\nmax_age = -1", "[verify] max_age: must be a positive number"),
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
        ("[server]\nmax_loop_lag = -0.1", "[server] max_loop_lag: must be a number, 0 or more"),
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
