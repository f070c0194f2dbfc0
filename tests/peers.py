"""Real peers the tests start (Kamailio, SIPp, kamcli, redis-server, secsipidx): where
they are, and what a missing one means. Every real-peer test finds its peer here.

The rule, in one place: a missing peer FAILS the test when the environment variable ``CI``
is set (a CI run that skipped its interop tests would pass without testing anything);
without ``CI`` it skips, with the reason. scripts/test.sh installs every peer and sets
``CI``, so a peer it could not install is a failure there too.

A peer is looked up at its Debian location first (Kamailio lives in /usr/sbin, which a
non-root PATH lacks), then on PATH. Kamailio's module directory is asked from Kamailio
itself (``kamailio -I``), never assumed: it depends on the architecture.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

#: peer -> (Debian package, where Debian puts it). Looked up there first, then on PATH.
PEERS: dict[str, tuple[str, str]] = {
    "kamailio": ("kamailio", "/usr/sbin/kamailio"),
    "kamcli": ("kamcli", "/usr/bin/kamcli"),
    "sipp": ("sip-tester", "/usr/bin/sipp"),
    "redis-server": ("redis-server", "/usr/bin/redis-server"),
    "secsipidx": ("secsipidx", "/usr/bin/secsipidx"),
    "promtool": ("prometheus", "/usr/bin/promtool"),
    "chromium": ("chromium", "/usr/bin/chromium"),
}
FALSE_VALUES = {"", "0", "false", "no"}


def in_ci() -> bool:
    """``CI`` is set (to anything but an explicit false)."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_VALUES


def missing(reason: str) -> NoReturn:
    """A prerequisite is missing: fail under CI, skip otherwise."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing peer is a failure, not a skip)", False)
    pytest.skip(reason)


def find_peer(name: str) -> str | None:
    """The executable's path: its Debian location, then PATH; None when neither has it."""
    _, usual = PEERS[name]
    if os.access(usual, os.X_OK):
        return usual
    return shutil.which(name)


def require_peer(name: str) -> str:
    """The path of peer ``name``; missing, the test fails under CI and skips otherwise."""
    path = find_peer(name)
    if path is None:
        package, usual = PEERS[name]
        missing(f"{name} not found at {usual} nor on PATH (Debian package {package})")
    return path


MODULE_PATH_LINE = re.compile(r"^\s*Default paths to modules:\s*(\S+)", re.MULTILINE)


def parse_module_dirs(info: str) -> list[Path]:
    """The module directories in ``kamailio -I`` output (colon-separated, maybe several)."""
    found = MODULE_PATH_LINE.search(info)
    if found is None:
        return []
    return [Path(part) for part in found.group(1).split(":") if part]


@functools.cache
def kamailio_module_dir(kamailio: str) -> Path:
    """The directory this Kamailio loads its modules from, as it says itself."""
    done = subprocess.run([kamailio, "-I"], capture_output=True, text=True, timeout=30, check=False)
    dirs = [d for d in parse_module_dirs(done.stdout + done.stderr) if d.is_dir()]
    if not dirs:
        missing(f"{kamailio} -I names no existing module directory:\n{done.stdout}{done.stderr}")
    return dirs[0]
