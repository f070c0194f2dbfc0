"""Server-side launchers run by ``bench/run.py`` (each in its own pinned process).

``python bench/servers.py stird [--uvloop] -- ARGS``  — ``stird ARGS`` (e.g. ``serve ...``),
    optionally on uvloop (only if importable: stird does not depend on it);
``python bench/servers.py cps --listen H:P --state-dir D [--redis URL] [--config F]`` —
    the standalone CPS (``stird.wiring.cps_app``), memory or Redis backend;
``python bench/servers.py floor --listen H:P [--uvloop]`` — a bare aiohttp app answering
    ``POST /floor`` with a small JSON document: the HTTP framework's own ceiling on one
    core, the floor under any stird figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# STIRD_BENCH_DAEMON: measure another source tree (e.g. a patched copy) with this harness.
sys.path.insert(0, os.environ.get("STIRD_BENCH_DAEMON") or str(ROOT / "daemon"))


def _uvloop(wanted: bool) -> None:
    if wanted:
        import uvloop  # noqa: PLC0415 - optional, measured only when installed

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _floor(listen: str) -> int:
    from aiohttp import web  # noqa: PLC0415

    async def floor(request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        return web.json_response({"ok": True, "n": len(doc)})

    app = web.Application()
    app.router.add_post("/floor", floor)
    host, _, port = listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    stird = sub.add_parser("stird")
    stird.add_argument("--uvloop", action="store_true")
    stird.add_argument("args", nargs=argparse.REMAINDER)
    cps = sub.add_parser("cps")
    cps.add_argument("--listen", required=True)
    cps.add_argument("--state-dir", required=True)
    cps.add_argument("--redis")
    cps.add_argument("--config")
    floor = sub.add_parser("floor")
    floor.add_argument("--listen", required=True)
    floor.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.what == "stird":
        _uvloop(args.uvloop)
        from stird.wiring.cli import main as stird_main  # noqa: PLC0415

        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return stird_main(rest)
    if args.what == "cps":
        from stird.wiring.cps_app import cps_main  # noqa: PLC0415

        return cps_main(args.config, args.listen, args.state_dir, args.redis)
    _uvloop(args.uvloop)
    return _floor(args.listen)


if __name__ == "__main__":
    sys.exit(main())
