"""The real-peer rule (tests/peers.py): a missing peer fails under CI, skips otherwise;
peers are found at their Debian location even when PATH lacks it; Kamailio's module
directory comes from Kamailio."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import peers


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """No peer anywhere: not at the Debian location, not on PATH."""
    monkeypatch.setattr(
        peers, "PEERS", {n: (p, "/nonexistent/" + n) for n, (p, _) in peers.PEERS.items()}
    )
    monkeypatch.setenv("PATH", "/nonexistent")


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE"])
@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_missing_peer_fails_under_ci(
    nowhere: None, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=rf"{name} not found.*CI is set"):
        peers.require_peer(name)


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_missing_peer_skips_without_ci(
    nowhere: None, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="Debian package sip-tester"):
        peers.require_peer("sipp")


def test_peer_on_path_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "sipp"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setitem(peers.PEERS, "sipp", ("sip-tester", "/nonexistent/sipp"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert peers.require_peer("sipp") == str(tool)


def test_kamailio_found_in_sbin_without_it_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root PATH has no /usr/sbin; Kamailio is still found (a real peer: CI fails)."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert peers.require_peer("kamailio") == "/usr/sbin/kamailio"


KAMAILIO_I = """Print out of kamailio internals
  Version: kamailio 5.6.3 (aarch64/linux)
  Default config: /etc/kamailio/kamailio.cfg
  Default paths to modules: /usr/lib/aarch64-linux-gnu/kamailio/modules
  Compile flags: USE_TCP, USE_TLS
"""


@pytest.mark.parametrize(
    ("info", "dirs"),
    [
        (KAMAILIO_I, ["/usr/lib/aarch64-linux-gnu/kamailio/modules"]),
        ("  Default paths to modules: /a/modules:/b/modules\n", ["/a/modules", "/b/modules"]),
        ("version: kamailio 5.6.3 (x86_64/linux)\n", []),
        ("", []),
    ],
)
def test_module_dirs_parsed_from_kamailio_info(info: str, dirs: list[str]) -> None:
    assert peers.parse_module_dirs(info) == [Path(d) for d in dirs]


def test_module_dir_asked_from_the_installed_kamailio() -> None:
    modules = peers.kamailio_module_dir(peers.require_peer("kamailio"))
    assert (modules / "tm.so").exists(), modules
