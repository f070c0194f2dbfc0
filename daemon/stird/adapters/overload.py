"""Load shedding: refuse new sign/verify work at once while stird's event loop runs late.

Past its capacity (a burst, a slower host, a neighbour taking the core) a single event
loop queues work without bound: every answer comes later than the one before, soon later
than the PBX waits (an AGI() timeout, Kamailio's RPC timeout), and stird then spends its
core on calls whose callers have given up. ``bench/soak.py`` on a host slowed by a fifth
saw answers after 3–10 s and FastAGI sessions timing out (docs/RELIABILITY.md, finding 4).

The loop's lateness is the queue's length in time: a watcher sleeps ``interval`` and
measures how late it wakes. While that lag exceeds ``max_lag``, new work is refused with
:class:`Overloaded` — an answer that costs a fraction of a verify — and the PBX applies its
fail policy at once instead of after its timeout. Work already admitted runs to the end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from stird.core.errors import Check, SipStatus, StirError

log = logging.getLogger(__name__)


class Overloaded(StirError):
    """stird is behind (its event loop runs ``lag`` seconds late): the work was refused
    with 503 (SIP's and HTTP's "try again later"), like any other error of the family."""

    def __init__(self, lag: float) -> None:
        detail = f"overloaded: event loop {lag * 1000:.0f} ms late"
        super().__init__(SipStatus.SERVICE_UNAVAILABLE, detail, check=Check.CAPACITY)
        self.lag = lag


class LoadShedder:
    """Admits work while the event loop's measured lag is at most ``max_lag`` seconds
    (``max_lag`` 0 admits everything). Start :meth:`run` as a task to measure it."""

    def __init__(
        self,
        max_lag: float = 0.25,
        *,
        interval: float = 0.02,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag, self.interval, self._clock = max_lag, interval, clock
        self.lag = 0.0
        self._shed = Counter(
            "stird_overload_shed", "Requests refused while the event loop ran late",
            ["interface"], registry=registry,
        )  # fmt: skip
        self._lag = Gauge(
            "stird_event_loop_lag_seconds", "How late the event loop last woke a timer",
            registry=registry,
        )  # fmt: skip
        self._children = {name: self._shed.labels(name) for name in ("api", "agi")}

    def check(self, interface: str = "api") -> None:
        """Raise :class:`Overloaded` (counted per ``interface``) while the loop is late."""
        if self.shedding:
            self._children[interface].inc()
            raise Overloaded(self.lag)

    def behind(self, share: float = 0.5) -> bool:
        """True while the lag exceeds ``share`` of ``max_lag``: lower-priority work (the
        embedded CPS) is refused from there, before sign/verify would be shed. CPS
        requests never go through :meth:`check`, so they neither count as shed nor are."""
        return bool(self.max_lag) and self.lag > share * self.max_lag

    @property
    def shedding(self) -> bool:
        return bool(self.max_lag) and self.lag > self.max_lag

    def observe(self, lag: float) -> None:
        was = self.shedding
        self.lag = max(lag, 0.0)
        self._lag.set(self.lag)
        if self.shedding != was:  # log the transitions, not every refusal
            if was:
                log.info("event loop on time again (%.0f ms late): admitting work", lag * 1000)
            else:
                log.warning("event loop %.0f ms late: refusing new sign/verify work with 503 "
                            "until it catches up", lag * 1000)  # fmt: skip

    async def run(self) -> None:
        """Measure the lag every ``interval`` until cancelled."""
        while True:
            before = self._clock()
            await asyncio.sleep(self.interval)
            self.observe(self._clock() - before - self.interval)
