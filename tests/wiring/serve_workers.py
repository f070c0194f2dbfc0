"""Starting ``stird serve`` with several workers for the wiring tests: a private
``RUNTIME_DIRECTORY`` (the supervisor's shared files go there), a free HTTP port, no
JSON-RPC, FastAGI on a port the kernel picks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.wiring.test_serve import free_port


def spawn_serve(tmp: Path, config: Path) -> tuple[subprocess.Popen[str], int, Path]:
    """The process, its HTTP port and its runtime directory."""
    run = tmp / "run"
    run.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STIRD_", "NOTIFY_"))}
    env |= {"RUNTIME_DIRECTORY": str(run), "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "stird", "serve", "--config", str(config),
            "--http", f"127.0.0.1:{port}", "--jsonrpc", "off", "--agi", "127.0.0.1:0",
            "--state-dir", str(tmp / "state")]  # fmt: skip
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env), port, run
