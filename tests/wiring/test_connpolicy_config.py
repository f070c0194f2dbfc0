"""[server] keys of the connection policy (stird.adapters.connpolicy) and their wiring."""

from __future__ import annotations

import tomllib

import pytest

from stird.adapters.connpolicy import ConnectionPolicy
from stird.wiring.config import ConfigError, parse_config
from stird.wiring.cps_app import connection_policy


def test_defaults_are_the_policy_defaults() -> None:
    assert connection_policy(parse_config({}).server) == ConnectionPolicy()


def test_keys_reach_the_policy() -> None:
    text = ("[server]\nheader_timeout = 2\nbody_timeout = 3.5\nidle_timeout = 30\n"
            "max_connections = 100\npartial_frame_budget = 1048576\n")  # fmt: skip
    policy = connection_policy(parse_config(tomllib.loads(text)).server)
    assert policy == ConnectionPolicy(2.0, 3.5, 30.0, 100, 1 << 20)


@pytest.mark.parametrize(
    "line",
    ["header_timeout = 0", "body_timeout = -1", "idle_timeout = true", "max_connections = 0",
     "max_connections = 2.5", "partial_frame_budget = '1M'"],
)  # fmt: skip
def test_bad_values_name_the_key(line: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[server\] {line.split(maxsplit=1)[0]}:"):
        parse_config(tomllib.loads(f"[server]\n{line}\n"))
