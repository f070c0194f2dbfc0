"""Shared fixtures: keys and certificates are generated at test time, never committed."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stird.wiring.cli import main

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


@pytest.fixture
def served_cert(signer: Signer) -> Iterator[str]:
    """The signer's certificate on a loopback HTTP server (its x5u); yields the URL."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(signer.cert.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{signer.cert.name}"
    server.shutdown()
    server.server_close()
