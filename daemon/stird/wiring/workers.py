"""``[server] workers = N``: one supervisor process and N worker processes, so that one
host's stird uses all its cores.

The supervisor is what systemd sees (``Type=notify``, the main PID). It reserves the
HTTP, JSON-RPC (netstring) and FastAGI addresses once — a socket bound with
``SO_REUSEPORT`` that never listens, so port 0 works and the port stays stird's while
workers come and go; for the HEP collector's UDP port, one connected elsewhere so that it
receives nothing (stird.adapters.sockets.udp_reserved) — and creates the state the
workers share on this host (stird.adapters.store_shm: the replay cache and the TOFU pins;
stird.adapters.hep_shared: HEP's SDP offers, digests and connected-identity bookkeeping;
SQLite files for the embedded CPS without Redis and for msec dialog tracking; the
multiprocess metrics directory) in a private directory (``$RUNTIME_DIRECTORY``, else
/dev/shm), removed at exit. Then it forks the workers; each binds its own
``SO_REUSEPORT`` socket on each of those addresses and runs the ordinary daemon
(stird.wiring.app.serve) on them, which listens once it serves. The kernel hashes each
new connection over the listening sockets
(stird.adapters.sockets.reuseport), so a few long-lived connections (Kamailio's
janssonrpcc, HTTP keep-alive) spread over the workers instead of all landing on the one
that woke first from a shared accept queue. A worker that dies takes the connections
queued on its socket with it (reset); a restarted one binds again.

Each worker speaks sd_notify to the supervisor's private socket (``NOTIFY_SOCKET`` in the
worker points there; the sender's PID comes from SCM_CREDENTIALS). The supervisor says
READY=1 once every worker has; on SIGHUP it says RELOADING=1, re-reads the configuration
(for workers forked later), forwards SIGHUP to every worker and says READY=1 when all of
them have answered (the STATUS= of a failed one if any failed). With ``WatchdogSec=`` it
pings systemd while every ready worker pings it; a worker that stops pinging is killed.
A worker that dies is restarted after a backoff (0.5 s, doubling to 30 s while it keeps
dying young); one that dies before the first READY=1 stops the service (a configuration
that cannot start). SIGTERM/SIGINT: STOPPING=1, SIGTERM to the workers, SIGKILL to those
still there after 20 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from stird.adapters.cps_sqlite import SqliteCpsStore
from stird.adapters.dialogs_sqlite import SqliteDialogStore
from stird.adapters.hep_shared import create_shared
from stird.adapters.metrics import forget_process
from stird.adapters.sdnotify import SystemdNotifier
from stird.adapters.sockets import reuseport, reuseport_twin, udp_reserved, udp_twin
from stird.adapters.store_shm import ShmStore
from stird.adapters.store_sqlite import SqliteStore
from stird.wiring import eventloop
from stird.wiring.app import WorkerShare, ensure_dev_credential, replay_capacity, serve
from stird.wiring.config import Config, HostPort

log = logging.getLogger("stird.workers")

PINS_ENTRIES = 100_000  # as the single process's MemoryStore
PIN_VALUE_SIZE = 64  # a SHA-256 fingerprint, hex
CERT_ENTRIES = 512  # certificate chains the workers share (the cache's shared level)
CERT_VALUE_SIZE = 16384  # a cached chain as stird.services.certcache stores it; larger: per worker
REPLAY_VALUE_SIZE = 16  # stird.services.verification.replay_value
STOP_TIMEOUT = 20.0  # s the workers get to finish after SIGTERM (the unit allows 30)
RELOAD_TIMEOUT = 60.0  # s before READY=1 follows a reload some worker did not answer
BACKOFF_FIRST, BACKOFF_MAX, STEADY = 0.5, 30.0, 30.0  # s; a worker alive STEADY s is well
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


def worker_count(config: Config) -> int:
    """``[server] workers``, 0 meaning one per core this process may run on. Every piece of
    state the workers need in common is shared on this host (see
    :meth:`WorkerSupervisor._prepare`), so nothing keeps stird to one process."""
    return config.server.workers or len(os.sched_getaffinity(0))


def _runtime_base() -> str | None:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return runtime
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108 - tmpfs


_PREFIX = "stird-workers-"


def _remove_stale(base: Path) -> None:
    """Private directories left by a supervisor that was killed (its PID is in the name)."""
    for folder in base.glob(f"{_PREFIX}*-*"):
        pid = folder.name.removeprefix(_PREFIX).split("-")[0]
        if not pid.isdigit() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def _reserve(where: HostPort | None) -> socket.socket | None:
    return None if where is None else reuseport(where.host, where.port)


def _own(reserved: socket.socket) -> socket.socket:
    """This worker's socket in the ``SO_REUSEPORT`` group of the supervisor's reserved
    one (same address and port); the inherited one is closed in the worker."""
    try:
        return reuseport_twin(reserved)
    finally:
        reserved.close()


def _own_udp(reserved: socket.socket) -> socket.socket:
    try:
        return udp_twin(reserved)
    finally:
        reserved.close()


def own_sockets(share: WorkerShare) -> WorkerShare:
    """``share`` with this worker's own sockets instead of the supervisor's."""
    jsonrpc, agi, hep = share.jsonrpc, share.agi, share.hep
    return replace(
        share,
        http=_own(share.http),
        jsonrpc=None if jsonrpc is None else _own(jsonrpc),
        agi=None if agi is None else _own(agi),
        hep=None if hep is None else _own_udp(hep),
    )


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a worker gets SIGTERM if the supervisor is killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)


@dataclass
class _Worker:
    slot: int
    pid: int
    started: float
    ready: bool = False
    pinged: float = 0.0
    status: str = ""


@dataclass
class _Slot:
    failures: int = 0
    restart_at: float | None = None


@dataclass
class _Reload:
    pending: set[int]
    deadline: float
    failed: str | None = None


@dataclass(eq=False)
class WorkerSupervisor:
    config: Config
    load: Callable[[], Config] | None
    count: int
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (0, or 1 when a worker could not
        start)."""
        self._workers: dict[int, _Worker] = {}
        self._slots = [_Slot() for _ in range(self.count)]
        self._ready_sent = False
        self._reload: _Reload | None = None
        self._hup_pending = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._code = 0
        self._watchdog = self.notifier.watchdog_interval()
        self._last_ping = 0.0
        self.config.server.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        base = _runtime_base()
        _remove_stale(Path(base or tempfile.gettempdir()))
        prefix = f"{_PREFIX}{os.getpid()}-"
        self._dir = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        try:
            self._share = self._prepare()
            self._loop()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        return self._code

    # ------------------------------------------------------------------ setup ----

    def _prepare(self) -> WorkerShare:
        server = self.config.server
        if not self.config.credentials:  # made once, not raced by the workers
            ensure_dev_credential(server.state_dir, int(time.time()))
        http = reuseport(server.http.host, server.http.port)
        cps, cps_keys, dialogs = (self._dir / f"{name}.sqlite"
                                  for name in ("cps", "cps-keys", "dialogs"))  # fmt: skip
        share = WorkerShare(
            http=http,
            jsonrpc=_reserve(server.jsonrpc),
            agi=_reserve(server.agi),
            replay=self._dir / "replay",
            pins=self._dir / "pins",
            metrics_dir=self._dir / "metrics",
            certs=None if self.config.store.redis else self._dir / "certs",
            cps=cps,
            cps_keys=cps_keys,
            dialogs=dialogs,
        )
        hep = self.config.asterisk.hep
        if hep is not None:  # a UDP port every worker's collector binds (sockets.udp_twin)
            share = replace(
                share, hep=udp_reserved(hep.host, hep.port), hep_state=self._dir / "hep"
            )
            create_shared(self._dir / "hep")
        share.metrics_dir.mkdir()
        capacity = replay_capacity(self.config)
        ShmStore.create(share.replay, capacity, value_size=REPLAY_VALUE_SIZE).close()
        ShmStore.create(share.pins, PINS_ENTRIES, value_size=PIN_VALUE_SIZE, evict=True).close()
        if share.certs is not None:  # with Redis, the cache is shared by every host there
            ShmStore.create(
                share.certs, CERT_ENTRIES, value_size=CERT_VALUE_SIZE, evict=True
            ).close()
        # always made (a few kB), so a reload that turns them on finds them: the embedded
        # CPS without Redis (entries, key directory) and msec dialog tracking
        SqliteCpsStore.create(cps)
        SqliteStore.create(cps_keys)
        SqliteDialogStore.create(dialogs)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self._dir / "notify"))
        self._notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._notify.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in _SIGNALS:
            signal.signal(sig, lambda *_: None)  # the wake-up fd carries the signal number
        log.info("supervisor: %d workers, serving on %s", self.count, http.getsockname()[:2])
        return share

    # ------------------------------------------------------------------- loop ----

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._notify, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        for slot in range(self.count):
            self._spawn(slot)
        try:
            while self._workers or not self._stopping:
                for key, _ in selector.select(self._timeout()):
                    if key.fileobj is self._notify:
                        self._notifications()
                    else:
                        self._signals()
                self._timers()
        finally:
            selector.close()
            signal.set_wakeup_fd(-1)

    def _timeout(self) -> float:
        deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
        if self._reload is not None:
            deadlines.append(self._reload.deadline)
        if self._watchdog:
            deadlines.append(self._last_ping + self._watchdog / 4)
        if self._stopping:
            deadlines.append(self._stop_deadline)
        return max(0.0, min(deadlines, default=time.monotonic() + 5) - time.monotonic())

    def _signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for number in self._wake_r.recv(256):
                if number == signal.SIGCHLD:
                    self._reap()
                elif number == signal.SIGHUP:
                    self._start_reload()
                elif number in (signal.SIGTERM, signal.SIGINT):
                    self._stop()

    def _timers(self) -> None:
        now = time.monotonic()
        for slot, state in enumerate(self._slots):
            if state.restart_at is not None and state.restart_at <= now and not self._stopping:
                state.restart_at = None
                self._spawn(slot)
        if self._reload is not None and self._reload.deadline <= now:
            missing = len(self._reload.pending)
            self._reload.pending.clear()
            self._reload.failed = self._reload.failed or f"reload: {missing} worker(s) silent"
            self._reload_done()
        if self._stopping and now >= self._stop_deadline:
            for pid in self._workers:
                log.warning("worker %d did not stop in %.0f s: killing it", pid, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._stop_deadline = now + 5
        if self._watchdog and now - self._last_ping >= self._watchdog / 4:
            self._watch(now)

    # ---------------------------------------------------------------- workers ----

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            self._child(slot)
        self._workers[pid] = _Worker(slot, pid, time.monotonic(), pinged=time.monotonic())
        log.info("worker %d started (slot %d)", pid, slot)

    def _child(self, slot: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            for sock in (self._notify, self._wake_r, self._wake_w):
                sock.close()
            _die_with_parent()
            os.environ["NOTIFY_SOCKET"] = str(self._dir / "notify")
            os.environ.pop("WATCHDOG_PID", None)
            if self._watchdog:
                os.environ["WATCHDOG_USEC"] = str(int(self._watchdog * 1_000_000))
            else:
                os.environ.pop("WATCHDOG_USEC", None)
            share = own_sockets(replace(self._share, slot=slot))
            eventloop.run(serve(self.config, self.load, share))
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            forget_process(self._share.metrics_dir, pid)
            if self._reload is not None:
                self._reload.pending.discard(pid)
                self._check_reload()
            if self._stopping:
                continue
            self._died(worker, status)

    def _died(self, worker: _Worker, status: int) -> None:
        how = (
            f"signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"status {os.WEXITSTATUS(status)}"
        )
        if not self._ready_sent:
            log.error("worker %d exited (%s) while starting: stopping", worker.pid, how)
            self._code = 1
            self._stop()
            return
        slot = self._slots[worker.slot]
        alive = time.monotonic() - worker.started
        slot.failures = 0 if alive >= STEADY else slot.failures + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(slot.failures - 1, 0))
        slot.restart_at = time.monotonic() + delay
        log.error("worker %d exited (%s); restarting it in %.1f s", worker.pid, how, delay)

    # ----------------------------------------------------------- sd_notify in ----

    def _notifications(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self._notify.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            pid = next(
                (
                    _CREDS.unpack(cdata[: _CREDS.size])[0]
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                None,
            )
            worker = self._workers.get(pid) if pid is not None else None
            if worker is not None:
                fields = dict(
                    line.split("=", 1) for line in data.decode(errors="replace").split("\n")
                    if "=" in line
                )  # fmt: skip
                self._heard(worker, fields)

    def _heard(self, worker: _Worker, fields: dict[str, str]) -> None:
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("WATCHDOG") == "1":
            worker.pinged = time.monotonic()
        if fields.get("READY") != "1":
            return
        worker.ready, worker.pinged = True, time.monotonic()
        if not self._ready_sent and self._all_ready():
            self._ready_sent = True
            self.notifier.ready(worker.status or f"{self.count} workers serving")
            log.info("all %d workers ready", self.count)
            self._pending_hup()
        if self._reload is not None and worker.pid in self._reload.pending:
            self._reload.pending.discard(worker.pid)
            if worker.status.startswith("reload failed"):
                self._reload.failed = worker.status
            self._check_reload()

    def _all_ready(self) -> bool:
        ready = {w.slot for w in self._workers.values() if w.ready}
        return len(ready) == self.count

    # ------------------------------------------------------- reload, watchdog ----

    def _start_reload(self) -> None:
        if self._stopping:
            return
        if not self._ready_sent or self._reload is not None:
            self._hup_pending = True  # once every worker is ready / this reload is done
            return
        self.notifier.reloading()
        if self.load is not None:
            try:
                self.config = self.load()  # for the workers forked from now on
            except Exception as exc:  # the workers report it; keep the running one
                log.debug("supervisor keeps its configuration: %s", exc)
        pending = {pid for pid, w in self._workers.items() if w.ready}
        self._reload = _Reload(pending, time.monotonic() + RELOAD_TIMEOUT)
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        self._check_reload()

    def _check_reload(self) -> None:
        if self._reload is not None and not self._reload.pending:
            self._reload_done()

    def _reload_done(self) -> None:
        assert self._reload is not None
        status = self._reload.failed or next(
            (w.status for w in self._workers.values() if w.status), "reloaded"
        )
        self._reload = None
        self.notifier.ready(status)
        self._pending_hup()

    def _pending_hup(self) -> None:
        if self._hup_pending:
            self._hup_pending = False
            self._start_reload()

    def _watch(self, now: float) -> None:
        """Ping systemd while every ready worker pings us; kill a worker that stopped."""
        assert self._watchdog is not None
        self._last_ping = now
        for worker in list(self._workers.values()):
            if worker.ready and now - worker.pinged > self._watchdog:
                log.error("worker %d stopped pinging its watchdog: killing it", worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGABRT)
                worker.pinged = now  # once
        if not self._stopping:
            self.notifier.watchdog()

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + STOP_TIMEOUT
        self.notifier.stopping()
        for slot in self._slots:
            slot.restart_at = None
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        log.info("stopping %d workers", len(self._workers))


def run_workers(config: Config, load: Callable[[], Config] | None, count: int) -> int:
    """The supervisor of ``count`` workers until SIGTERM/SIGINT; its exit status."""
    return WorkerSupervisor(config, load, count).run()


__all__ = ["WorkerSupervisor", "own_sockets", "run_workers", "worker_count"]
