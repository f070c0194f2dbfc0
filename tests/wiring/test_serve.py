"""`stird serve` as a process: readiness, SIGHUP reload, SIGTERM, bad start-ups;
`stird check-config`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, Signer

FROM, TO = "<sip:+12025550100@pbx.example.com;user=phone>", "<tel:+12025550101>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_healthy(proc: subprocess.Popen[str], port: int, deadline: float = 20) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if call(port, "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("stird did not become healthy")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    config = tmp_path / "stird.toml"
    config.write_text("[verify]\nrequire_identity = false\n")
    port = free_port()
    argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
            "--http", f"127.0.0.1:{port}", "--jsonrpc", "off", "--agi", "off",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(proc, port)
        yield proc, port, config
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_sighup_reloads_and_sigterm_stops(served: tuple[subprocess.Popen[str], int, Path]) -> None:
    proc, port, config = served
    body = {"identity": [], "from": FROM, "to": TO}
    assert call(port, "/v1/verify", body)[1]["action"] == "continue"
    config.write_text("[verify]\nrequire_identity = true\n")
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while call(port, "/v1/verify", body)[1]["code"] != 428:
        assert time.monotonic() < deadline, "reload did not take effect"
        time.sleep(0.05)
    config.write_text("[verify]\nrequire_identity = 'maybe'\n")  # a broken reload is refused
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    assert call(port, "/v1/verify", body)[1]["code"] == 428
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "DEVELOPMENT SETUP" in log and "reload failed" in log and "stopped" in log


def test_without_systemd_pid_file_and_log_file(tmp_path: Path) -> None:
    """README "Without systemd": --pid-file holds the PID while serving and is removed at
    stop; --log-file gets the log (stamped) instead of stderr; SIGHUP/SIGTERM by the PID."""
    pid_file, log_file = tmp_path / "run" / "stird.pid", tmp_path / "stird.log"
    pid_file.parent.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "stird", "serve", "--http", f"127.0.0.1:{port}",
            "--jsonrpc", "off", "--agi", "off", "--state-dir", str(tmp_path / "state"),
            "--pid-file", str(pid_file), "--log-file", str(log_file)]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(proc, port)
        assert pid_file.read_text() == f"{proc.pid}\n"
        os.kill(int(pid_file.read_text()), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert not pid_file.exists()
    assert list(pid_file.parent.iterdir()) == []  # no partial file left either
    log = log_file.read_text()
    assert "DEVELOPMENT SETUP" in log and "stopped" in log
    assert log.split()[0].count("-") == 2  # lines start with a date
    assert proc.stderr is not None and "DEVELOPMENT SETUP" not in proc.stderr.read()


@pytest.mark.parametrize("option", ["--pid-file", "--log-file"])
def test_unwritable_pid_or_log_file_is_a_clear_error(tmp_path: Path, option: str) -> None:
    where = tmp_path / "missing-dir" / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "stird", "serve", "--http", "127.0.0.1:0", "--jsonrpc", "off",
         "--agi", "off", "--state-dir", str(tmp_path / "state"), option, str(where)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{option}: cannot" in proc.stderr and "Traceback" not in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "stird", "serve", "--http", f"127.0.0.1:{port}", "--jsonrpc",
             "off", "--agi", "off", "--state-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert proc.returncode == 2
    assert "in use" in proc.stderr


def test_check_config(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[sign]\nppt = 'shaken'\n")
    result = cli("check-config", "--config", good)
    assert result.code == 0 and "OK" in result.out
    # no [[credential]]: the daemon signs with the development one; say so, not "0"
    assert "development credential in /var/lib/stird/dev" in result.out, result.out
    assert "0 credential" not in result.out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[[credential]]\nname = 'a'\nkey = '/nonexistent.key'\ncert = '/nonexistent.pem'\n"
    )
    result = cli("check-config", "--config", bad)
    assert result.code == 2 and "/nonexistent.key" in result.err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[[credential]]\nname='a'\nkey='k'\ncert='c'\ntn_ranges = ['abc,100']\n",
            "[[credential]] #1 tn_ranges",
        ),
        ("[verify]\nmax_skew = -30\n", "[verify] max_skew: must be >= 0"),
        ("[verify]\ndefault_region = 'XX'\n", "[verify] default_region"),
        ("[verify]\npins = ['not-a-pin']\n", "[verify] pins"),
        ("[verify]\nmax_age = 0.5\n", "[verify] max_age: must be an integer"),
    ],
)
def test_check_config_refuses_bad_values(cli: Cli, tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "stird.toml"
    config.write_text(text)
    result = cli("check-config", "--config", config)
    assert result.code == 2 and key in result.err


def test_check_config_reports_every_problem(cli: Cli, signer: Signer, tmp_path: Path) -> None:
    config = tmp_path / "stird.toml"
    config.write_text(
        "[verify]\nmax_skew = -30\ndefault_region = 'XX'\npins = ['not-a-pin']\nmax_age = 0.5\n"
        "[[credential]]\nname='a'\nkey='/nonexistent.key'\ncert='/nonexistent.pem'\n"
        "tn_ranges = ['abc,100']\n"
    )
    result = cli("check-config", "--config", config)
    assert result.code == 2 and "5 problem(s)" in result.err
    lines = [line.strip() for line in result.err.splitlines()[1:]]
    assert sorted(line.split(":")[0] for line in lines) == [
        "[[credential]] #1 tn_ranges", "[verify] default_region", "[verify] max_age",
        "[verify] max_skew", "[verify] pins",
    ]  # fmt: skip
    # with the values fixed, the files are checked (all of them) and named
    config.write_text(
        "[[credential]]\nname='a'\nkey='/nonexistent.key'\ncert='/nonexistent.pem'\n"
        f"[[credential]]\nname='b'\nkey='{signer.key}'\ncert='{signer.cert}'\n"
        f"[verify]\ntrust_anchors = ['{tmp_path / 'none.pem'}']\n"
    )
    result = cli("check-config", "--config", config)
    assert result.code == 2 and "2 problem(s)" in result.err, result.err
    assert "[[credential]] #1 (a)" in result.err and "[verify] trust_anchors" in result.err


class Notify:
    """systemd's end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            message = dict(line.split("=", 1) for line in self.sock.recv(4096).decode().split("\n"))
            if key in message:
                return message
        raise TimeoutError(key)


@pytest.mark.parametrize(
    "broken",
    [
        # passes parsing only if the schema is incomplete; fails building the runtime
        "[[credential]]\nname = 'main'\nkey = '{key}'\ncert = '{cert}'\ntn_ranges = ['abc,100']\n",
        # parses, but the files are wrong: the build fails
        "[[credential]]\nname = 'main'\nkey = '{key}'\ncert = '/nonexistent.pem'\n",
        "[verify]\nmax_skew = -30\n",
    ],
    ids=["tn-range", "missing-cert", "negative-skew"],
)
def test_failed_reload_keeps_serving_and_tells_systemd(
    tmp_path: Path, signer: Signer, broken: str
) -> None:
    """systemd (Type=notify) hears RELOADING=1 then READY=1 with the reason in STATUS=,
    so `systemctl reload` returns instead of hanging; the daemon answers /v1/sign on its
    old configuration, and the failure is counted."""
    notify = Notify(tmp_path / "notify")
    config = tmp_path / "stird.toml"
    good = f"[[credential]]\nname = 'main'\nkey = '{signer.key}'\ncert = '{signer.cert}'\n"
    config.write_text(good + "tns = ['+12025550100']\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIRD_", "WATCHDOG_"))}
    env["NOTIFY_SOCKET"] = str(notify.path)
    argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
            "--http", f"127.0.0.1:{port}", "--jsonrpc", "off", "--agi", "off",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert notify.wait_for("READY")["READY"] == "1"
        sign = {"orig": "+12025550100", "dest": ["+12025550101"]}
        status, before = call(port, "/v1/sign", sign)
        assert status == 200 and before["credential"] == "main"
        config.write_text(broken.format(key=signer.key, cert=signer.cert))
        os.kill(proc.pid, signal.SIGHUP)
        assert notify.wait_for("RELOADING")["RELOADING"] == "1"
        ready = notify.wait_for("READY")
        assert ready["READY"] == "1" and ready["STATUS"].startswith("reload failed")
        status, after = call(port, "/v1/sign", sign)
        assert status == 200 and after["credential"] == "main"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert "stird_reload_failures_total 1.0" in response.read().decode()
        config.write_text(good)  # a good file applies again
        os.kill(proc.pid, signal.SIGHUP)
        assert notify.wait_for("READY")["STATUS"].startswith("reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        notify.sock.close()
    assert "reload failed, keeping the running configuration" in stderr
    assert "Traceback" not in stderr, stderr
