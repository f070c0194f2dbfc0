"""One connection policy for every listener (HTTP, CPS, netstring JSON-RPC, FastAGI).

A peer that opens a connection and then trickles or withholds bytes costs stird a file
descriptor and some buffer memory for as long as stird waits. Without a bound, ~1,100
half-open connections exhausted the descriptors and stopped every listener, and 300
unfinished 1 MiB netstring frames took 350 MB (docs/RELIABILITY.md, "Nothing starves
it"). Each listener therefore hands each accepted connection to a
:class:`ConnectionTracker`, reports what the connection is waiting for, and lets the
tracker close it when the policy says so:

* a **deadline** for each request's head (HTTP head, FastAGI ``agi_*`` block, netstring
  length) and for its body (HTTP body, netstring payload), counted from its first byte;
* an **idle timeout** between requests on a kept-alive connection;
* a **cap** on the connections of each listener: at the cap, one connection is closed to
  make room: the oldest of those that never completed a request (what an idle or
  trickling attacker holds, also one waiting for a body it was promised), else the
  longest idle of those that did (a kept-alive PBX connection that completed a request
  within ``idle_timeout`` outranks every never-completed one); never one with a request
  being answered, nor one whose next request is already waiting in the socket; a new
  connection is refused only when no open one can go;
* a **global budget** for unfinished frames (netstring payloads, declared HTTP bodies):
  past it, the connection holding the biggest unfinished frame is closed.

Every close for one of those reasons is counted in ``stird_connections_closed_total
{listener,reason}`` and logged at most once per :data:`LOG_INTERVAL` per listener and
reason; ``stird_connections_open{listener}`` shows the open connections and
``stird_partial_frame_bytes`` the budget's total as of the last sweep (every ``tick``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import enum
import fcntl
import logging
import resource
import struct
import termios
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between two log lines for one listener and reason


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """Seconds and counts; every listener applies the same policy ([server] in stird.toml)."""

    header_timeout: float = 10.0  # first byte of a request (or the accept) -> head complete
    body_timeout: float = 20.0  # head complete -> body complete
    idle_timeout: float = 75.0  # between requests on a kept-alive connection
    max_connections: int = 512  # open connections per listener
    partial_frame_budget: int = 64 << 20  # bytes of unfinished frames, all listeners together
    read_chunk: int = 65536  # bytes buffered per connection before reading pauses

    @property
    def tick(self) -> float:
        """How often deadlines are checked: a fifth of the shortest, 50 ms to 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout)
        return min(max(shortest / 5, 0.05), 1.0)


class Phase(enum.Enum):
    """What the connection waits for from its peer; the value names the timeout."""

    IDLE = "idle_timeout"  # the next request
    HEAD = "header_timeout"  # the rest of a request head
    BODY = "body_timeout"  # the rest of a request body


class Reason(enum.StrEnum):
    """Why the tracker closed a connection (the ``reason`` label)."""

    IDLE = "idle_timeout"
    HEAD = "header_timeout"
    BODY = "body_timeout"
    EVICTED = "evicted"  # the listener was at its cap and this one had waited longest
    REFUSED = "refused"  # at the cap with every connection busy
    BUDGET = "budget"  # the biggest unfinished frame when the budget ran out
    SEND = "send_timeout"  # the peer did not read its answers within body_timeout


class ConnectionStats:
    """The connection metrics of one registry (shared by its listeners)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.open = Gauge(
            "stird_connections_open", "Open connections per listener", ["listener"],
            registry=registry,
        )  # fmt: skip
        self.closed = Counter(
            "stird_connections_closed",
            "Connections closed by the connection policy (timeouts, cap, frame budget)",
            ["listener", "reason"], registry=registry,
        )  # fmt: skip
        self.partial = Gauge(
            "stird_partial_frame_bytes",
            "Bytes held in unfinished frames (as of the last connection sweep, <= 1 s ago)",
            registry=registry,
        )
        self._children: dict[tuple[str, Reason], Counter] = {}  # labels() once per pair
        self._pending: dict[tuple[str, Reason], int] = {}
        self._logged: dict[tuple[str, Reason], float] = {}

    def count(self, listener: str, reason: Reason, now: float) -> None:
        key = (listener, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.closed.labels(listener, reason.value)
        child.inc()
        self._pending[key] = self._pending.get(key, 0) + 1
        if now - self._logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
            self.flush(now, key)

    def flush(self, now: float, only: tuple[str, Reason] | None = None) -> None:
        """Log the closes not logged yet (at most one line per listener and reason per
        :data:`LOG_INTERVAL`)."""
        for key in [only] if only else list(self._pending):
            count = self._pending.get(key, 0)
            if count and now - self._logged.get(key, -LOG_INTERVAL) >= LOG_INTERVAL:
                log.warning("%s: closed %d connection(s): %s", key[0], count, key[1].value)
                self._pending[key] = 0
                self._logged[key] = now


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: hands the free pages inside the heap back to the
    system. None where the C library has none (musl)."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
        if trim is not None:
            return lambda: trim(0)
    return None


class FrameBudget:
    """Bytes held in unfinished frames by every connection of every listener.

    Closed connections' frames are freed, but as many chunks of at most ``read_chunk``
    bytes that glibc's allocator keeps between longer-lived objects: 300 dropped 1 MiB
    frames left the RSS 70 MB up for good; and an aborted connection leaves reference
    cycles (transport, protocol, task, exception) that wait for a rare full collection.
    Once :data:`TRIM_AFTER` bytes went with closed connections (their frames, and
    ``buffers`` for each one's read buffers), :meth:`maybe_trim` (called by the sweepers,
    at most once per :data:`TRIM_INTERVAL`) collects those cycles and returns the free
    pages with ``malloc_trim``."""

    TRIM_AFTER = 4 << 20
    TRIM_INTERVAL = 1.0

    def __init__(self, limit: int, stats: ConnectionStats, buffers: int = 65536) -> None:
        self.limit, self.total, self._stats, self._buffers = limit, 0, stats, buffers
        self._held: dict[Connection, int] = {}
        self._gone = 0  # bytes released with closed connections since the last trim
        self._trimmed = -self.TRIM_INTERVAL
        self._trim = _malloc_trim()
        self._published = 0

    def hold(self, conn: Connection, size: int, *, gone: bool = False) -> None:
        """``conn`` now holds ``size`` bytes of an unfinished frame; past the budget the
        biggest holder (maybe ``conn``) is closed, until the total fits. ``gone``: the
        connection closed with them."""
        before = self._held.pop(conn, 0)
        self.total += size - before
        if gone:  # its frame and, about, its read buffers
            self._gone += before + self._buffers
        if size > 0:
            self._held[conn] = size
        while self.total > self.limit and self._held:
            biggest = max(self._held, key=self._held.__getitem__)
            biggest.drop(Reason.BUDGET)  # releases its share

    def publish(self) -> None:
        """``stird_partial_frame_bytes`` := the total now (the sweepers call it every
        tick). Not on each :meth:`hold`: an HTTP request holds and releases its body about
        four times, and with several workers every gauge write is a locked write to the
        metrics file (plus a ``getpid``)."""
        if self.total != self._published:
            self._published = self.total
            self._stats.partial.set(self.total)

    def maybe_trim(self, now: float) -> None:
        if self._gone >= self.TRIM_AFTER and now - self._trimmed >= self.TRIM_INTERVAL:
            self._gone, self._trimmed = 0, now
            # no gc.collect() here: closed connections leave no cycles behind (no
            # wait_for tasks, no kept tracebacks — tests/adapters/test_connpolicy.py), and
            # a full collection over thousands of live connections paused the loop 30 ms
            if self._trim is not None:
                self._trim()


def unread(fd: int) -> bool:
    """Bytes wait in socket ``fd``'s receive queue (``FIONREAD``): a request the loop has
    not read yet. False when it cannot tell (the descriptor is gone)."""
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return bool(struct.unpack("i", raw)[0])


def fd_of(transport: asyncio.BaseTransport) -> int:
    """The socket descriptor under ``transport`` (-1 when it has none)."""
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError, AttributeError):
        return -1


class Connection:
    """One accepted connection as its listener reports it (see :class:`ConnectionTracker`)."""

    __slots__ = (
        "_close", "body_done", "closed", "fd", "inflight", "phase", "since", "tracker",
    )  # fmt: skip

    def __init__(
        self,
        tracker: ConnectionTracker,
        close: Callable[[], None],
        phase: Phase,
        now: float,
        fd: int = -1,
    ) -> None:
        self.tracker, self._close, self.fd = tracker, close, fd
        self.phase: Phase = phase
        self.since = now  # when the connection entered its phase
        self.inflight = 0  # requests being answered
        self.closed = False
        self.body_done: Callable[[], bool] | None = None  # polled while in Phase.BODY

    def wait(
        self, phase: Phase, body_done: Callable[[], bool] | None = None, *, fresh: bool = False
    ) -> None:
        """The connection now waits for ``phase``; its deadline runs from now if that is a
        change or ``fresh`` (a new request began), else from when the phase began."""
        self.body_done = body_done
        if (fresh or phase is not self.phase) and not self.closed:
            self.phase, self.since = phase, self.tracker.clock()
            self.tracker.touch(self)

    def begin(self) -> None:
        """A request is complete (its head, for HTTP) and being answered: not evictable
        until :meth:`end`, unless it still waits for the request's body."""
        self.inflight += 1

    def end(self) -> None:
        """The answer is out: the connection completed a request."""
        self.inflight -= 1
        if not self.closed:
            self.tracker.served(self)
        if self.inflight == 0 and self.phase is Phase.IDLE and not self.closed:
            self.since = self.tracker.clock()  # idle from now
            self.tracker.touch(self)

    def hold(self, size: int) -> None:
        """Bytes of an unfinished frame this connection holds (0 when none)."""
        if self.tracker.budget is not None and not self.closed:
            self.tracker.budget.hold(self, size)

    def evictable(self, served: bool) -> bool:
        """Nothing being answered (a never-completed connection waiting for a request's
        body counts as waiting: its handler only reads), and, between requests, no next
        one in the socket (checked only then: a peer whose reading is paused could keep
        bytes there for as long as its head or body deadline runs)."""
        if self.inflight and (served or self.phase is not Phase.BODY):
            return False
        return self.phase is not Phase.IDLE or self.fd < 0 or not unread(self.fd)

    def deadline(self) -> float | None:
        if self.phase is Phase.IDLE and self.inflight:
            return None  # answering: the handlers have their own deadlines
        policy = self.tracker.policy
        timeout = {Phase.IDLE: policy.idle_timeout, Phase.HEAD: policy.header_timeout,
                   Phase.BODY: policy.body_timeout}[self.phase]  # fmt: skip
        return self.since + timeout

    def drop(self, reason: Reason) -> None:
        """Close the connection for ``reason`` (counted and logged)."""
        if not self.closed:
            self.tracker.stats.count(self.tracker.listener, reason, self.tracker.clock())
            self.release()
            with contextlib.suppress(Exception):  # a transport already gone
                self._close()

    def release(self) -> None:
        """The connection is gone (idempotent): its slot and its budget share are freed."""
        if not self.closed:
            if self.tracker.budget is not None:
                self.tracker.budget.hold(self, 0, gone=True)
            self.closed = True
            self.tracker.forget(self)


class ConnectionTracker:
    """The open connections of one listener: admission at the cap and the deadlines.

    The listener calls :meth:`admit` for each accepted connection with a function that
    closes it at once (``transport.abort``), reports phases through the
    :class:`Connection`, and calls :meth:`Connection.release` when the connection ends.
    """

    def __init__(
        self,
        listener: str,
        policy: ConnectionPolicy,
        stats: ConnectionStats,
        budget: FrameBudget | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener, self.policy, self.stats, self.budget = listener, policy, stats, budget
        self.clock = clock
        # longest waiting first: connections that never completed a request, the others
        self._fresh: OrderedDict[Connection, None] = OrderedDict()
        self._served: OrderedDict[Connection, None] = OrderedDict()
        self._gauge = stats.open.labels(listener)
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._fresh) + len(self._served)

    def connections(self) -> list[Connection]:
        return [*self._fresh, *self._served]

    def admit(
        self, close: Callable[[], None], phase: Phase = Phase.HEAD, fd: int = -1
    ) -> Connection | None:
        """Track a new connection (``fd``: its socket, checked for an unread request
        before an idle close), closing one at the cap (see :meth:`_evict`); None (and the
        new connection closed) if no open one can go."""
        self._ensure_sweeper()
        if len(self) >= self.policy.max_connections and not self._evict():
            self.stats.count(self.listener, Reason.REFUSED, self.clock())
            with contextlib.suppress(Exception):
                close()
            return None
        conn = Connection(self, close, phase, self.clock(), fd)
        self._fresh[conn] = None
        self._gauge.set(len(self))
        return conn

    def _evict(self) -> bool:
        """Close one connection to make room: the oldest that never completed a request
        (what an idle or trickling attacker holds), else the longest idle of the others
        (a kept-alive client between requests); never one being answered or with a
        request waiting in its socket (see :meth:`Connection.evictable`)."""
        for tier, served in ((self._fresh, False), (self._served, True)):
            for conn in tier:  # oldest (fresh) or longest idle (served) first
                if conn.evictable(served):
                    conn.drop(Reason.EVICTED)
                    return True
        return False

    def served(self, conn: Connection) -> None:
        """``conn`` completed a request: it leaves the first tier of eviction."""
        if conn in self._fresh:
            del self._fresh[conn]
            self._served[conn] = None
        elif conn in self._served:
            self._served.move_to_end(conn)

    def touch(self, conn: Connection) -> None:
        """``conn`` changed phase: a served one moves to the end of its tier (idle from
        now); a never-completed one keeps its place (its age counts from the accept)."""
        if conn in self._served:
            self._served.move_to_end(conn)

    def forget(self, conn: Connection) -> None:
        for tier in (self._fresh, self._served):
            if conn in tier:
                del tier[conn]
                self._gauge.set(len(self))

    def sweep(self) -> None:
        """Close every connection past its deadline (run every ``policy.tick``)."""
        now = self.clock()
        for conn in self.connections():
            if conn.phase is Phase.BODY and conn.body_done is not None and conn.body_done():
                conn.wait(Phase.IDLE)  # the body is in: the handler has it
                continue
            deadline = conn.deadline()
            if deadline is not None and now >= deadline:
                if conn.phase is Phase.IDLE and conn.fd >= 0 and unread(conn.fd):
                    continue  # its next request is here: the loop reads it next
                conn.drop(Reason(conn.phase.value))
        self.stats.flush(now)
        if self.budget is not None:
            self.budget.publish()
            self.budget.maybe_trim(now)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.policy.tick)
            self.sweep()

    def stop(self) -> None:
        """Stop checking deadlines (the listener is shutting down gracefully)."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    def close_all(self) -> None:
        """Stop the sweeper and close every tracked connection (the listener stops)."""
        self.stop()
        for conn in self.connections():
            conn.release()
            with contextlib.suppress(Exception):
                conn._close()


@dataclass
class Listeners:
    """The shared parts of one process's listeners: policy, metrics and frame budget."""

    policy: ConnectionPolicy
    stats: ConnectionStats
    budget: FrameBudget

    @classmethod
    def build(
        cls, policy: ConnectionPolicy, registry: CollectorRegistry | None = None
    ) -> Listeners:
        stats = ConnectionStats(registry)
        budget = FrameBudget(policy.partial_frame_budget, stats, policy.read_chunk)
        return cls(policy, stats, budget)

    def tracker(self, listener: str) -> ConnectionTracker:
        return ConnectionTracker(listener, self.policy, self.stats, self.budget)


def raise_fd_limit(listeners: int, policy: ConnectionPolicy, margin: int = 1024) -> int:
    """Raise the soft RLIMIT_NOFILE towards what ``listeners`` capped listeners need
    (within the hard limit); warn when it stays below. Returns the soft limit."""
    want = listeners * policy.max_connections + margin
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < want:
        log.warning("open-file limit %d is below the %d the connection caps need "
                    "(%d listeners x max_connections %d + %d): raise LimitNOFILE",
                    soft, want, listeners, policy.max_connections, margin)  # fmt: skip
    return int(soft)


__all__ = [
    "ConnectionPolicy",
    "ConnectionStats",
    "ConnectionTracker",
    "FrameBudget",
    "Listeners",
    "Phase",
    "Reason",
    "fd_of",
    "raise_fd_limit",
    "unread",
]
