"""Multiprocess metrics (``[server] workers``): each process's values in its own files,
summed by ``render``, without a ``getpid`` system call per update.

Each test runs in a fresh interpreter: :func:`enable_multiprocess` switches
prometheus-client's value class for the whole process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import os, sys
    calls = []
    real = os.getpid
    os.getpid = lambda: calls.append(1) or real()  # before prometheus-client binds it
    from pathlib import Path
    from stird.adapters.metrics import Metrics, enable_multiprocess

    folder = Path(sys.argv[1])
    enable_multiprocess(folder)
    metrics = Metrics(folder)
    calls.clear()
    for _ in range(100):
        metrics.observe("sign", 0.0003, "signed", None, "shaken")
    assert not calls, f"{len(calls)} getpid calls for 100 updates"
    child = os.fork()
    if child == 0:  # a fork after the metrics exist still writes its own files
        metrics.observe("sign", 0.0003, "signed", None, "shaken")
        os._exit(0)
    os.waitpid(child, 0)
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{kind}_{pid}.db" for kind in ("counter", "histogram")
                           for pid in (os.getpid(), child)), files
    text = metrics.render().decode()
    line = next(l for l in text.splitlines() if l.startswith("stird_requests_total{"))
    print(line.rsplit(" ", 1)[1])
    """
)


def test_multiprocess_values_count_without_getpid_and_follow_a_fork(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemon"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == 101.0  # 100 here + 1 in the child, summed
