"""Redis replay writes: CPU per ``RedisStore.add`` (the replay ``SET NX``), one at a time
and 50 at once (one event-loop tick: one pipeline), against a throwaway redis-server.

    python bench/redis_pipeline.py [--adds 5000]

On stird's event loop (uvloop). CPU is this process's (the client: redis-py and stird's
store), ``time.process_time``, so the redis-server's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from procs import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from stird.adapters.store_redis import RedisStore  # noqa: E402
from stird.wiring import eventloop  # noqa: E402


async def _run(url: str, adds: int, concurrency: int) -> float:
    async with RedisStore(url, prefix=f"bench:{uuid.uuid4().hex}:", timeout=2.0) as store:
        for i in range(200):  # warm-up: connections, code paths
            await store.add(f"warm{i}", b"x", 60)
        start = time.process_time()
        for batch in range(adds // concurrency):
            keys = (f"k{batch}:{i}" for i in range(concurrency))
            stored = await asyncio.gather(*(store.add(k, b"0123456789abcdef", 60) for k in keys))
            if not all(stored):
                raise RuntimeError("a fresh key was not stored")
        return (time.process_time() - start) / adds * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adds", type=int, default=5000)
    parser.add_argument("--redis-server", default="redis-server")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", tmp]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)  # noqa: S603 - our argv
        try:
            wait_port(port, proc)
            url = f"redis://127.0.0.1:{port}/0"
            rows = {
                f"cpu_us_per_add_{n}_at_once": round(eventloop.run(_run(url, args.adds, n)), 1)
                for n in (1, 50)
            }
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(json.dumps(rows | {"adds": args.adds, "pid": os.getpid()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
