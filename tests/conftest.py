"""Shared fixtures: keys and certificates are generated at test time, never committed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stird.cli import main

#: Fixture modules shared across the test tree.
pytest_plugins = ["tests.fixtures_redis", "tests.tlspki"]


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run the ``stird`` command in-process and capture its output."""

    def run(*argv: str) -> CliResult:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@dataclass(frozen=True)
class Signer:
    dir: Path
    key: Path
    public: Path
    cert: Path


@pytest.fixture
def signer(tmp_path: Path, cli: Cli) -> Signer:
    """A P-256 key pair and a self-signed STIR certificate for +1 202 555 0100."""
    assert cli("keygen", "--out", tmp_path / "keys").code == 0
    key, public = tmp_path / "keys" / "private.pem", tmp_path / "keys" / "public.pem"
    cert = tmp_path / "cert.pem"
    assert cli("cert", "--key", key, "--tn", "+12025550100", "--out", cert).code == 0
    return Signer(tmp_path, key, public, cert)
