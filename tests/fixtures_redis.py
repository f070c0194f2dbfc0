"""A throwaway redis-server for the tests (a pytest plugin module).

``redis_url`` starts redis-server (tests/peers.py finds it; ``STIRD_TEST_REDIS_SERVER``
overrides) once per session on a free loopback port,
without persistence, and stops it at the end; ``redis_store`` gives each test a
:class:`~stird.adapters.store_redis.RedisStore` with its own key prefix. A missing
redis-server fails under ``CI`` and skips otherwise (tests/peers.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stird.adapters.store_redis import RedisStore
from tests.peers import require_peer

STARTUP_TIMEOUT = 10.0


def redis_server() -> str:
    """``STIRD_TEST_REDIS_SERVER``, else redis-server where tests/peers.py finds it."""
    return os.environ.get("STIRD_TEST_REDIS_SERVER") or require_peer("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}:\n{log.read_text()}")
        if _answers_ping(port):
            return
        time.sleep(0.02)
    pytest.fail(f"redis-server did not answer PING within {STARTUP_TIMEOUT} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a private redis-server for this test session."""
    server = redis_server()
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    argv = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)]  # fmt: skip
    log = workdir / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A store on the session's server with a key prefix of its own."""
    store = RedisStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:", timeout=2.0)
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.close()
