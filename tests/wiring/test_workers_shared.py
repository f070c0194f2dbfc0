"""[server] workers = 2 with the state that used to keep stird to one process: the
embedded CPS without Redis (the quick-start default) and msec dialog tracking, shared
among the workers in SQLite files the supervisor makes and removes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stird.core import cps, oob
from stird.core.oob import DecryptionKey, OobSuite
from stird.wiring.config import DEFAULT_PATH
from tests.core.vectors import RFC8225_TOKEN
from tests.wiring.test_dialog_wiring import CALLEE, CALLER, OFFER_FP, sdp
from tests.wiring.test_serve import free_port
from tests.wiring.test_workers import on_each_worker, request, until


def http(port: int, method: str, path: str, body: bytes | None = None,
         content_type: str = "") -> tuple[int, bytes, int]:  # fmt: skip
    """Status, body and the answering worker's PID (a new connection each time)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read(), int(response.headers["Stird-Worker"])
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), int(exc.headers["Stird-Worker"])


def two_cpus() -> None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


@pytest.fixture
def stird(tmp_path: Path) -> Iterator[Any]:
    """Starts ``stird serve`` (extra arguments), waits for /healthz; stops it at the end
    and checks the shared files went with the supervisor."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(*extra: str) -> int:
        port = free_port()
        runtime = tmp_path / "run"
        runtime.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("STIRD_", "NOTIFY_", "WATCHDOG_"))}  # fmt: skip
        env["RUNTIME_DIRECTORY"] = str(runtime)
        argv = [sys.executable, "-m", "stird", "serve", "--http", f"127.0.0.1:{port}",
                "--jsonrpc", "off", "--agi", "off", "--state-dir", str(tmp_path / "state"),
                *extra]  # fmt: skip
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=two_cpus)  # fmt: skip  # noqa: PLW1509
        started.append((proc, runtime))

        def healthy() -> bool:
            try:
                return http(port, "GET", "/healthz")[0] == 200
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                return False

        until(healthy, "stird serving", timeout=30)
        files = {p.name for p in runtime.glob("stird-workers-*/*.sqlite")}
        assert files == {"cps.sqlite", "cps-keys.sqlite", "dialogs.sqlite"}, files
        return port

    yield start
    for proc, runtime in started:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.communicate(timeout=10)[1]
        assert "Traceback" not in stderr, stderr
        assert "running one worker" not in stderr, stderr
        assert list(runtime.iterdir()) == []  # the SQLite files are gone with the rest


def test_the_default_config_runs_two_workers_sharing_the_embedded_cps(stird: Any) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the default runs one worker")
    if DEFAULT_PATH.exists():
        pytest.skip(f"{DEFAULT_PATH} exists: not the embedded default")
    port = stird()  # no --config: the quick-start default, workers = one per core
    key = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)
    stored: dict[int, tuple[str, list[str]]] = {}  # storing worker → (tn, ids)
    numbers = iter(range(10_000))

    def store_on_each() -> bool:
        tn = f"1202555{next(numbers):04d}"
        entries = oob.seal(RFC8225_TOKEN, [key.public_key()], tn)
        content_type, body = cps.store_body(entries)
        status, answer, pid = http(port, "POST", f"/cps/{tn}/ppts", body, content_type)
        assert status == 201, answer
        stored.setdefault(pid, (tn, json.loads(answer)["ids"]))
        return len(stored) == 2

    until(store_on_each, "a store through each worker")
    for storer, (tn, ids) in stored.items():
        status, body = elsewhere(port, storer, f"/cps/{tn}/ppts")
        items = cps.parse_list_document(body)
        assert status == 200 and set(ids) <= {i for i, _ in items}
        opened = [oob.open_entry(e, [key], tn) for _, e in items]
        assert opened.count(RFC8225_TOKEN) == len(ids)  # the rest are dummies
        status, body = elsewhere(port, storer, f"/cps/{tn}/ppts/{ids[0]}")
        assert oob.open_entry(body.decode(), [key], tn) == RFC8225_TOKEN


def elsewhere(port: int, worker: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` until a worker other than ``worker`` answers."""

    def ask() -> tuple[int, bytes] | None:
        status, body, pid = http(port, "GET", path)
        return (status, body) if pid != worker else None

    answer: tuple[int, bytes] = until(ask, f"another worker answering {path}")
    return answer


def test_msec_dialogs_are_shared_and_timed_out_once(stird: Any, tmp_path: Path) -> None:
    config = tmp_path / "stird.toml"
    config.write_text("[server]\nworkers = 2\n[dialog]\npolicy = 'opportunistic'\n"
                      "window = 0.5\n")  # fmt: skip
    port = stird("--config", str(config))
    sign = {"orig": CALLER, "dest": [CALLEE], "sdp": sdp(OFFER_FP), "callid": "c-shared",
            "dlg_h_entry": 7, "dlg_h_id": 42}  # fmt: skip
    status, signed, signer = request(port, "/v1/sign", sign)
    assert status == 200 and signed["dialog"]["phase"] == "offered", signed

    def answered_elsewhere() -> Any:
        answer = request(port, "/v1/dialog", {"event": "answered", "callid": "c-shared"})
        return answer if answer[2] != signer else None

    _, answer, _ = until(answered_elsewhere, "the other worker hearing the answer")
    assert answer["phase"] == "answered"  # the other worker knows the dialog

    def timed_out() -> bool:
        _, doc, _ = request(port, "/v1/dialog", {"event": "answered", "callid": "c-shared"})
        return bool(doc["phase"] == "failed")

    until(timed_out, "the window passing", timeout=10)
    for status, text in on_each_worker(port, "/metrics", None).values():
        counted = [line for line in text.splitlines()
                   if line.startswith("stird_msec_dialogs_total{") and "timed-out" in line]  # fmt: skip
        assert status == 200 and len(counted) == 1 and counted[0].endswith(" 1.0"), counted
