"""The event loop the daemons run on.

uvloop (libuv) when it is importable — it is a dependency — and asyncio's own loop
otherwise, or when ``STIRD_EVENT_LOOP=asyncio`` asks for it (debugging, or a platform
without uvloop). docs/PERFORMANCE.md has the measurements behind the choice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("stird")
T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop``, or None for asyncio's default loop."""
    if os.environ.get("STIRD_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        log.info("uvloop not importable: running on the asyncio event loop")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
