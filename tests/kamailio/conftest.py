"""Fixtures for the Kamailio end-to-end tests (machinery in harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kamailio.harness import Lab, Sipp, Tools, new_lab, stop_lab, tools


@pytest.fixture(scope="session", autouse=True)
def peers() -> Tools:
    """Kamailio, SIPp, kamcli and the modules: missing, every test here fails under CI
    (tests/peers.py), skips otherwise."""
    return tools()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The shared pair: stird requires Identity on incoming calls (428 otherwise)."""
    where = tmp_path_factory.mktemp("kam")
    shared = new_lab(where, "[verify]\nrequire_identity = true\nmax_age = 60\n")
    yield shared
    stop_lab(shared)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    runner.stop_all()
