"""systemd integration, checked offline (systemd need not be PID 1): the units pass
``systemd-analyze verify`` and score an exposure of 2.0 or lower, the sysusers.d and
tmpfiles.d files apply to a scratch root, the sd_notify client speaks the protocol to real
AF_UNIX datagram sockets, ``stird serve`` follows the Type=notify contract (READY, watchdog,
RELOADING on SIGHUP, STOPPING on SIGTERM) under the unit's seccomp policy (emulated),
and scripts/install.sh passes bash -n and shellcheck."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stird.adapters import keyfiles
from stird.adapters.sdnotify import SystemdNotifier, run_watchdog
from stird.wiring.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ["stird.service", "stird-cps.service"]
INSTALLED_STIRD = "/opt/stird/bin/stird"
VENV_STIRD = Path(sys.executable).parent / "stird"
MAX_EXPOSURE = 2.0
QUIET_ENV = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C.UTF-8"}


def tool(name: str, package: str = "systemd") -> str:
    """The path of a required program; a clear failure (not a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install {package} (scripts/test.sh does)")
    return path


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        check=False,
        capture_output=True,
        text=True,
        env=QUIET_ENV,
        timeout=60,
    )


# ---------------------------------------------------------------- units ----


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies(name: str, tmp_path: Path) -> None:
    """verify checks that ExecStart= exists, so the copy runs this venv's stird."""
    assert VENV_STIRD.is_file(), f"{VENV_STIRD} missing: pip install -e . first"
    text = (SYSTEMD / name).read_text()
    assert INSTALLED_STIRD in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_STIRD, str(VENV_STIRD)))
    result = run(tool("systemd-analyze"), "verify", copy)
    output = result.stdout + result.stderr
    about_unit = [line for line in output.splitlines() if name in line or str(copy) in line]
    assert result.returncode == 0, output
    assert not about_unit, output  # e.g. "Unknown key ..., ignoring", "not executable"


@pytest.mark.parametrize("name", UNITS)
def test_unit_exposure(name: str) -> None:
    result = run(
        tool("systemd-analyze"), "security", "--offline=true", "--threshold=20", SYSTEMD / name
    )
    output = result.stdout + result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", output)
    assert result.returncode == 0 and match, output
    exposure = float(match[1])
    assert exposure <= MAX_EXPOSURE, f"{name}: exposure {exposure} > {MAX_EXPOSURE}\n{output}"


@pytest.mark.parametrize("name", UNITS)
def test_unit_contract(name: str) -> None:
    """What the daemon and install.sh rely on."""
    s = unit_settings(name)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"][0].startswith(INSTALLED_STIRD + " ")
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] == ["30"] and s["Restart"] == ["on-failure"]
    assert s["User"] == ["stird"] and s["Group"] == ["stird"] and "DynamicUser" not in s
    assert s["ConfigurationDirectory"] == ["stird"]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert "IPAddressDeny" not in s  # the verifier fetches x5u certificates from anywhere


@pytest.mark.parametrize(("name", "listeners"), [("stird.service", 3), ("stird-cps.service", 1)])
def test_unit_file_limit_is_above_the_connection_caps(name: str, listeners: int) -> None:
    """Issue #17: each listener's cap, summed, plus room for everything else; below it
    half-open connections exhaust the descriptors before any cap is reached."""
    needed = listeners * ServerConfig().max_connections + 1024  # connpolicy.raise_fd_limit
    assert int(unit_settings(name)["LimitNOFILE"][0]) >= needed


def test_stird_unit_matches_the_daemon_defaults() -> None:
    s = unit_settings("stird.service")
    assert s["ExecStart"] == [f"{INSTALLED_STIRD} serve"]
    assert s["StateDirectory"] == ["stird"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectoryMode"] == ["0750"] and s["UMask"] == ["0077"]


# ---------------------------------------------------- sysusers, tmpfiles ----


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    users = run(tool("systemd-sysusers"), f"--root={tmp_path}", SYSTEMD / "stird.sysusers")
    assert users.returncode == 0, users.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^stird:x:\d+:\d+:STIR daemon:/var/lib/stird:", passwd, re.M), passwd
    dirs = run(
        tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", SYSTEMD / "stird.tmpfiles"
    )
    problems = [line for line in dirs.stderr.splitlines() if "fchownat" not in line]
    assert not problems, dirs.stderr
    etc, state = tmp_path / "etc" / "stird", tmp_path / "var" / "lib" / "stird"
    assert (etc.stat().st_mode & 0o7777, state.stat().st_mode & 0o7777) == (0o750, 0o700)
    if os.geteuid() == 0:  # only root may chown
        assert dirs.returncode == 0, dirs.stderr
        uid = int(passwd.split("stird:x:")[1].split(":")[0])
        assert (etc.stat().st_uid, etc.stat().st_gid) == (0, uid)
        assert (state.stat().st_uid, state.stat().st_gid) == (uid, uid)


SECRET_MODE = re.compile(r"mode (0[0-7]{3})(?: or (0[0-7]{3}))?")
OPERATOR_TEXTS = [*SYSTEMD.iterdir(), ROOT / "README.md", *(ROOT / "integrations").glob("*/*")]


def test_file_modes_told_to_operators_are_ones_stird_accepts(tmp_path: Path) -> None:
    """Every "mode 0NNN" the units, tmpfiles, README and integrations tell operators to give
    a secret passes keyfiles.check_private_mode (a 0640 key would be refused at start)."""
    told: dict[str, set[str]] = {}
    for path in OPERATOR_TEXTS:
        if path.is_file():
            for match in SECRET_MODE.finditer(path.read_text(errors="replace")):
                for mode in filter(None, match.groups()):
                    told.setdefault(mode, set()).add(path.name)
    assert told, "no file mode found in the operator texts"
    probe = tmp_path / "secret"
    probe.write_text("x")
    for mode, where in told.items():
        probe.chmod(int(mode, 8))
        try:
            keyfiles.check_private_mode(probe)
        except keyfiles.KeyFileError as exc:
            pytest.fail(f"{sorted(where)} tell operators mode {mode}, which stird refuses: {exc}")


# ------------------------------------------------------------ sd_notify ----


class Receiver:
    """A service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env = address if not address.startswith("\0") else "@" + address[1:]

    def next(self, timeout: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.next(left)
            if key in message:
                return message
        raise TimeoutError(key)

    def drain(self) -> list[dict[str, str]]:
        self.sock.setblocking(False)
        messages: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except BlockingIOError:
                return messages
            messages.append(dict(line.split("=", 1) for line in data.split("\n")))


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    address = str(tmp_path / "notify") if request.param == "path" else f"\0stird-{uuid.uuid4()}"
    r = Receiver(address)
    yield r
    r.sock.close()


def test_notifications(receiver: Receiver) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": receiver.env})
    assert n.enabled
    assert n.ready("serving on http://127.0.0.1:8790")
    assert receiver.next() == {"READY": "1", "STATUS": "serving on http://127.0.0.1:8790"}
    n.status("two\nlines")
    assert receiver.next() == {"STATUS": "two lines"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    message = receiver.next()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert message["RELOADING"] == "1" and before <= int(message["MONOTONIC_USEC"]) <= after
    n.stopping()
    assert receiver.next() == {"STOPPING": "1"}
    n.watchdog()
    assert receiver.next() == {"WATCHDOG": "1"}
    n.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = SystemdNotifier({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert not n.ready("x") and not n.reloading() and not n.stopping() and not n.watchdog()
    assert n.watchdog_interval() is None
    assert SystemdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False


@pytest.mark.parametrize("bound", [False, True], ids=["missing", "nobody-listening"])
def test_dead_socket_is_logged_not_raised(
    tmp_path: Path, bound: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    if bound:  # the file exists but its socket is closed: ECONNREFUSED
        Receiver(str(path)).sock.close()
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.DEBUG, logger="stird.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG], caplog.text  # no flood of warnings


def test_watchdog_interval() -> None:
    base = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    assert SystemdNotifier({**base, "WATCHDOG_USEC": "30000000"}).watchdog_interval() == 30.0
    mine = {**base, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval() == 0.5
    other = {**base, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other).watchdog_interval() is None
    for bad in ("", "0", "-5", "soon"):
        assert SystemdNotifier({**base, "WATCHDOG_USEC": bad}).watchdog_interval() is None


async def test_run_watchdog_pings_and_a_blocked_loop_stops_it(tmp_path: Path) -> None:
    receiver = Receiver(str(tmp_path / "notify"))
    n = SystemdNotifier({"NOTIFY_SOCKET": receiver.env})
    task = asyncio.create_task(run_watchdog(n, 0.2))  # a ping every 0.1 s
    await asyncio.sleep(0.5)
    pings = receiver.drain()
    assert 2 <= len(pings) <= 7 and all(p == {"WATCHDOG": "1"} for p in pings)
    time.sleep(0.5)  # a stuck event loop: the task cannot run, so systemd hears nothing
    assert receiver.drain() == []
    await asyncio.sleep(0.25)
    assert len(receiver.drain()) >= 1  # the loop is back, so are the pings
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(n, 0)
    receiver.sock.close()


# ------------------------------- stird under the unit's seccomp policy ----

#: Emulates the unit's SystemCallFilter=, MemoryDenyWriteExecute= and
#: RestrictAddressFamilies= (see the module), then execs its arguments.
SANDBOX = [sys.executable, str(Path(__file__).with_name("seccomp_sandbox.py"))]


def test_sandbox_emulates_the_units() -> None:
    for name in UNITS:
        s = unit_settings(name)
        assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
        assert s["SystemCallErrorNumber"] == ["EPERM"]
        assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_serve_speaks_sd_notify_in_the_sandbox(tmp_path: Path) -> None:
    """What systemd sees from ``stird serve``: READY=1 once listening, watchdog pings,
    RELOADING=1 … READY=1 on SIGHUP, STOPPING=1 on SIGTERM; all under the unit's seccomp
    policy (which would make a forbidden call fail with EPERM or EAFNOSUPPORT)."""
    receiver = Receiver(str(tmp_path / "notify"))
    (tmp_path / "stird.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIRD_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": receiver.env, "WATCHDOG_USEC": "200000"}
    argv = [*SANDBOX, str(VENV_STIRD), "serve"]
    argv += ["--config", str(tmp_path / "stird.toml"), "--state-dir", str(tmp_path / "state")]
    argv += ["--http", "127.0.0.1:0", "--jsonrpc", "127.0.0.1:0", "--agi", "127.0.0.1:0"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = receiver.wait_for("READY")
        url = ready["STATUS"].removeprefix("serving on ")
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            assert response.status == 200
        receiver.drain()
        time.sleep(0.5)
        assert len([m for m in receiver.drain() if m == {"WATCHDOG": "1"}]) >= 2
        proc.send_signal(signal.SIGHUP)
        assert "MONOTONIC_USEC" in receiver.wait_for("RELOADING")
        assert receiver.wait_for("READY")["READY"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert receiver.wait_for("STOPPING")["STOPPING"] == "1"
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        receiver.sock.close()
    assert "Traceback" not in stderr, stderr


def test_offline_tools_in_the_sandbox(tmp_path: Path) -> None:
    """Key generation, certificates, signing and verification (cryptography's Rust and
    OpenSSL code) need no writable executable memory and no forbidden system call."""
    script = tmp_path / "sign_verify.sh"
    fp = ":".join(["AB"] * 32)
    sdp = f"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5004 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 {fp}\r\n"
    (tmp_path / "offer.sdp").write_text(sdp, newline="")
    stird = " ".join(f'"{arg}"' for arg in [*SANDBOX, VENV_STIRD])
    script.write_text(
        f"set -e; cd '{tmp_path}'\n"
        f"{stird} keygen --out keys >/dev/null\n"
        f"{stird} cert --key keys/private.pem --tn +12025550100 --out cert.pem\n"
        f"id=$({stird} sign --key keys/private.pem --x5u https://pbx.example.com/c.pem"
        " --orig +12025550100 --dest +12025550101 --sdp offer.sdp)\n"
        f'{stird} verify --identity "$id" --sdp offer.sdp --to tel:+12025550101'
        " --from 'sip:+12025550100@pbx.example.com;user=phone' --cert cert.pem\n"
    )
    result = subprocess.run(
        ["bash", str(script)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert '"verdict": "valid"' in result.stdout, result.stdout


# ---------------------------------------------------------- install.sh ----


SCRIPTS = ["install.sh", "test.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_syntax_and_shellcheck(name: str) -> None:
    script = ROOT / "scripts" / name
    syntax = run("bash", "-n", script)
    assert syntax.returncode == 0, syntax.stderr
    check = run(tool("shellcheck", "shellcheck"), script)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_wait_for_the_dpkg_lock(name: str) -> None:
    """A fresh Debian runs unattended-upgrades at boot: apt-get must wait for its lock,
    not fail at once."""
    text = (ROOT / "scripts" / name).read_text()
    calls = [line for line in text.splitlines()
             if "apt-get" in line and not line.lstrip().startswith(("#", "say"))]  # fmt: skip
    assert calls, name
    for line in calls:
        assert "DPkg::Lock::Timeout=" in line or '"${apt[@]}"' in line, line
