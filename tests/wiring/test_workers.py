"""[server] workers = 2: one supervisor, two workers sharing listeners, state and metrics."""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from stird.adapters.sockets import LISTEN_BACKLOG, reuseport
from stird.wiring.app import WorkerShare
from stird.wiring.config import parse_config
from stird.wiring.workers import own_sockets, worker_count
from tests.conftest import Signer
from tests.wiring.test_serve import FROM, TO, Notify, free_port

SIGN = {"orig": "+12025550100", "dest": ["+12025550101"]}


def request(port: int, path: str, body: Any = None) -> tuple[int, Any, int]:
    """Status, JSON body, and the PID of the worker that answered (a new connection)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            raw, status, worker = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        raw, status, worker = exc.read(), exc.code, exc.headers
    doc = json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()
    return status, doc, int(worker["Stird-Worker"])


def until(condition: Any, what: str, timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if result := condition():
            return result
        time.sleep(0.05)
    pytest.fail(f"not within {timeout:.0f} s: {what}")


def on_each_worker(port: int, path: str, body: Any, count: int = 2) -> dict[int, Any]:
    """Ask until ``count`` different workers have answered; their answers by PID."""
    answers: dict[int, Any] = {}

    def ask() -> bool:
        status, doc, pid = request(port, path, body)
        answers.setdefault(pid, (status, doc))
        return len(answers) >= count

    until(ask, f"{count} workers answering {path}")
    return answers


def keep_alive_spread(port: int, connections: int) -> collections.Counter[int]:
    """Open ``connections`` kept-alive HTTP connections at once, ask twice on each (the
    same worker must answer both: it is the connection's); connections per worker PID."""
    spread: collections.Counter[int] = collections.Counter()
    opened = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(connections)]
    try:
        for conn in opened:
            conn.connect()
        for conn in opened:
            pids = set()
            for _ in range(2):
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                pids.add(int(response.headers["Stird-Worker"]))
            assert len(pids) == 1, pids
            spread[pids.pop()] += 1
    finally:
        for conn in opened:
            conn.close()
    return spread


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_listeners_state_metrics_and_lifecycle(
    tmp_path: Path, signer: Signer
) -> None:
    notify = Notify(tmp_path / "notify")
    config = tmp_path / "stird.toml"
    creds = f"[[credential]]\nname = 'main'\nkey = '{signer.key}'\ncert = '{signer.cert}'\n"
    config.write_text("[server]\nworkers = 2\n" + creds + "tns = ['+12025550100']\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIRD_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
            "--http", f"127.0.0.1:{port}", "--jsonrpc", "127.0.0.1:0", "--agi", "off",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    env["WATCHDOG_PID"] = str(proc.pid)
    try:
        ready = notify.wait_for("READY", timeout=30)
        assert ready["STATUS"] == f"serving on http://127.0.0.1:{port}"
        assert notify.wait_for("WATCHDOG")["WATCHDOG"] == "1"  # the supervisor pings

        # both workers answer, on the one port
        signed = on_each_worker(port, "/v1/sign", SIGN)
        workers = set(signed)
        assert all(status == 200 for status, _ in signed.values())

        # long-lived connections spread over the workers (a SO_REUSEPORT socket each, the
        # kernel hashing connections over them): all 32 on one worker has odds 2 ** -31
        spread = keep_alive_spread(port, 32)
        assert set(spread) == workers and sum(spread.values()) == 32, spread

        # a PASSporT verified on one worker is a replay on the other
        identity = next(iter(signed.values()))[1]["identity"][0]
        first: dict[str, Any] = {"identity": [identity], "from": FROM, "to": TO}
        status, verdict, verifier = request(port, "/v1/verify", first | {"call_id": "call-1"})
        assert (status, verdict["verdict"], verdict["replay"]) == (200, "valid", "checked")

        def replay_elsewhere() -> Any:
            answer = request(port, "/v1/verify", first | {"call_id": "call-2"})
            return answer if answer[2] != verifier else None

        _, refused, _ = until(replay_elsewhere, "the other worker verifying")
        assert refused["verdict"] != "valid" and "replay" in json.dumps(refused).lower()

        # /metrics on either worker shows every worker's requests
        for status, text in on_each_worker(port, "/metrics", None).values():
            assert status == 200
            signs = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("stird_requests_total{") and 'kind="sign"' in line
            )
            assert signs >= len(signed)
            assert 'stird_replay_checks_total{reason="",result="replayed"}' in text

        # SIGHUP reaches every worker, then READY=1 again
        os.kill(proc.pid, signal.SIGHUP)
        assert notify.wait_for("RELOADING")["RELOADING"] == "1"
        assert notify.wait_for("READY")["STATUS"].startswith("reloaded")

        # a killed worker is replaced, on the same port
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        until(lambda: not alive(victim), "the killed worker gone", timeout=5)
        answered = set(on_each_worker(port, "/v1/sign", SIGN))
        assert victim not in answered and len(answered) == 2
        workers |= answered

        # SIGTERM stops all of them
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        notify.sock.close()
    assert stderr.count("configuration reloaded") == 2, stderr
    assert "restarting it in" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_worker_sockets_share_the_port_and_the_reservation_takes_no_connection() -> None:
    """The supervisor's reserved socket (bound, never listening) holds the port; each
    worker's own socket on it listens; the kernel spreads connections over the listening
    ones and none is lost to the reservation."""
    reserved = reuseport("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    share = WorkerShare(reserved, None, None, Path("r"), Path("p"), Path("m"))
    # each worker closes its inherited copy of the reservation (a dup here, as after fork)
    mine = [own_sockets(replace(share, http=reserved.dup())) for _ in range(2)]
    try:
        for worker in mine:
            assert worker.http.getsockname() == ("127.0.0.1", port)
            assert worker.jsonrpc is None and worker.agi is None
            worker.http.listen(LISTEN_BACKLOG)
        with pytest.raises(OSError, match="in use"):
            socket.create_server(("127.0.0.1", port))  # not SO_REUSEPORT: refused
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        accepted = [0, 0]

        def drain() -> bool:
            for i, worker in enumerate(mine):
                while True:
                    try:
                        conn, _ = worker.http.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    accepted[i] += 1
            return sum(accepted) == 64

        until(drain, "64 connections accepted by the two listening sockets", timeout=5)
        assert min(accepted) > 0, accepted  # one worker with none: odds 2 ** -63
        for client in clients:
            client.close()
        # a restarted worker binds again, beside the reservation
        for worker in mine:
            worker.http.close()
        again = own_sockets(replace(share, http=reserved.dup()))
        assert again.http.getsockname()[1] == port
        again.http.close()
    finally:
        for worker in mine:
            worker.http.close()
        reserved.close()


def test_worker_sockets_on_ipv6() -> None:
    try:
        reserved = reuseport("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    share = WorkerShare(reserved.dup(), None, reserved.dup(), Path("r"), Path("p"), Path("m"))
    mine = own_sockets(share)
    try:
        assert mine.http.family == socket.AF_INET6
        assert mine.http.getsockname()[:2] == reserved.getsockname()[:2]
        assert mine.agi is not None and mine.agi.getsockname() == mine.http.getsockname()
    finally:
        for sock in (mine.http, mine.agi, reserved):
            if sock is not None:
                sock.close()


def test_a_worker_that_cannot_start_stops_the_service(tmp_path: Path, signer: Signer) -> None:
    config = tmp_path / "stird.toml"
    config.write_text(
        f"[server]\nworkers = 2\n[[credential]]\nname = 'main'\nkey = '{signer.key}'\n"
        "cert = '/nonexistent.pem'\n"
    )
    argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
            "--http", f"127.0.0.1:{free_port()}", "--jsonrpc", "off", "--agi", "off",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIRD_", "NOTIFY_"))}
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "while starting: stopping" in done.stderr


def test_worker_count() -> None:
    assert worker_count(parse_config({"server": {"workers": 3}}, Path("x"))) == 3
    assert worker_count(parse_config({"server": {"workers": 0}}, Path("x"))) == len(
        os.sched_getaffinity(0)
    )
    # the embedded default's in-process CPS is shared (SQLite): tests/wiring/test_workers_shared.py
    assert worker_count(parse_config({"server": {"workers": 4}})) == 4
    dialog = {"server": {"workers": 4}, "dialog": {"policy": "mandatory"}}  # shared too
    assert worker_count(parse_config(dialog, Path("x"))) == 4


def test_no_per_process_state_keeps_one_worker() -> None:
    """HEP's SDP offers and msec dialog bookkeeping, the embedded CPS and msec dialogs are
    all shared by the workers: HEP with [dialog] policy runs every worker too
    (tests/wiring/test_workers_hep_dialog.py)."""
    hep = {"server": {"workers": 4}, "asterisk": {"hep": "127.0.0.1:9060"}}
    assert worker_count(parse_config(hep, Path("x"))) == 4
    dialog = {"server": {"workers": 4}, "dialog": {"policy": "mandatory"}}
    assert worker_count(parse_config(dialog, Path("x"))) == 4
    both = {**hep, "dialog": {"policy": "mandatory"}}
    assert worker_count(parse_config(both, Path("x"))) == 4
