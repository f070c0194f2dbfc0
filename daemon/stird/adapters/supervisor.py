"""Background tasks that outlive their first exception.

:meth:`Supervisor.supervise` runs ``factory()`` as a task; when it raises (or returns,
which a background loop never should) the error is logged with its traceback, counted
(``on_restart(name)``, e.g. ``stird_task_restarts_total{task}``) and the task is started
again after a backoff that doubles from ``base`` up to ``cap``. A run that lasted
``healthy_after`` seconds resets the backoff. :meth:`Supervisor.degraded` names the tasks
that failed ``degraded_after`` times in a row and have not run well since (/healthz).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("stird.supervisor")


@dataclass(slots=True)
class TaskState:
    restarts: int = 0  # since start
    failures: int = 0  # in a row
    started: float = 0.0  # this run
    last_error: str | None = None


class Supervisor:
    def __init__(
        self,
        *,
        on_restart: Callable[[str], None] | None = None,
        base: float = 0.5,
        cap: float = 30.0,
        degraded_after: int = 3,
        healthy_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff: want 0 < base <= cap")
        self._on_restart, self._base, self._cap = on_restart, base, cap
        self._degraded_after, self._healthy_after, self._clock = (
            degraded_after, healthy_after, clock,
        )  # fmt: skip
        self.tasks: dict[str, TaskState] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    def supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``factory()`` under supervision until :meth:`cancel` or :meth:`close`."""
        if name in self._running:
            raise ValueError(f"task {name!r} is already supervised")
        self.tasks[name] = TaskState()
        task = asyncio.get_running_loop().create_task(self._run(name, factory), name=name)
        self._running[name] = task
        return task

    async def _run(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        state, delay = self.tasks[name], self._base
        while True:
            state.started = self._clock()
            try:
                await factory()
            except Exception as exc:  # anything but cancellation: log, count, restart
                state.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("task %s failed; restarting in %.1f s", name, delay)
            else:
                state.last_error = "returned"
                log.error("task %s returned; restarting in %.1f s", name, delay)
            if self._clock() - state.started >= self._healthy_after:
                state.failures, delay = 0, self._base
            state.failures += 1
            state.restarts += 1
            if self._on_restart is not None:
                self._on_restart(name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._cap)

    def degraded(self) -> list[str]:
        """Tasks that keep failing: ``degraded_after`` failures in a row and no run of
        ``healthy_after`` seconds since."""
        now = self._clock()
        return sorted(
            name
            for name, s in self.tasks.items()
            if s.failures >= self._degraded_after and now - s.started < self._healthy_after
        )

    def health(self) -> dict[str, Any]:
        return {
            name: {"restarts": s.restarts, "failures_in_a_row": s.failures,
                   "last_error": s.last_error}
            for name, s in self.tasks.items()
        }  # fmt: skip

    async def cancel(self, name: str) -> None:
        task = self._running.pop(name, None)
        self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for name in list(self._running):
            await self.cancel(name)


__all__ = ["Supervisor", "TaskState"]
