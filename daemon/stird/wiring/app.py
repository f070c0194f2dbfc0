"""The daemon's lifecycle: build services from the configuration, open the listeners,
reload on SIGHUP without dropping requests, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from stird.adapters import keyfiles
from stird.adapters.api import Runtime, StirApi
from stird.adapters.certfetch import HttpCertificateFetcher
from stird.adapters.connpolicy import Listeners, raise_fd_limit
from stird.adapters.cps_client import HttpCpsClient
from stird.adapters.http_api import PolicedSite, build_app
from stird.adapters.jsonrpc import Dispatcher
from stird.adapters.kamailio_rpc import KamailioRpc, KamailioTarget, probe
from stird.adapters.metrics import Metrics, enable_multiprocess
from stird.adapters.netstring import NetstringServer
from stird.adapters.overload import LoadShedder
from stird.adapters.sdnotify import SystemdNotifier, run_watchdog
from stird.adapters.sockets import LISTEN_BACKLOG, listen
from stird.adapters.status_page import StatusView
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.adapters.store_shm import ShmStore
from stird.adapters.supervisor import Supervisor
from stird.core import certs
from stird.core.passport import Ppt
from stird.core.tn import parse_cli_id
from stird.core.verdict import Credential, Trust, VerifyPolicy
from stird.services.authentication import (
    AuthenticationService,
    SigningCredential,
    SignPolicy,
    Uncovered,
)
from stird.services.certcache import CertificateCache
from stird.services.credentials import StaticCredentials
from stird.services.ports import KeyValueStore
from stird.services.status_expiry import Expiry, ExpiryWatch, expiries
from stird.services.stores import FallbackStore
from stird.services.verdicts import OnFailure, ReplayOverflow, Role, ServicePolicy
from stird.services.verification import ReplayStats, VerificationService
from stird.wiring.asterisk import start_asterisk
from stird.wiring.builders import fetcher_for, trust_anchors
from stird.wiring.config import Config, ConfigError
from stird.wiring.cps_app import CpsFiles, CpsParts, connection_policy
from stird.wiring.dialog_app import build_dialogs
from stird.wiring.exposure import load_token, warn_if_insecure
from stird.wiring.oob_app import build_oob, mount_cps, own_url

log = logging.getLogger("stird")
DEV_NAME = "dev"
EXPIRY_CHECK_INTERVAL = 86400.0  # s: the certificate lifecycle check, besides start and reload


def _public_url(config: Config, http: tuple[str, int]) -> str:
    if config.server.public_url:
        return config.server.public_url.rstrip("/")
    host, port = http
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ensure_dev_credential(state_dir: Path, now: int) -> tuple[Path, Path]:
    """The embedded default's signing credential, created once under the state dir:
    a P-256 key and a self-signed certificate covering every number of 3–15 digits."""
    folder = state_dir / DEV_NAME
    key_path, cert_path = folder / keyfiles.PRIVATE_NAME, folder / "cert.pem"
    if not key_path.exists():
        keyfiles.write_keypair(folder)
    if not cert_path.exists():
        key = keyfiles.load_private_key(key_path)
        ranges = [certs.TnRange("0" * d, 10**d - 1) for d in range(3, 16)]
        cert = certs.make_stir_cert(
            key, now=now, days=3650, ranges=ranges, common_name="stird development credential"
        )
        keyfiles.write_public_file(cert_path, certs.cert_to_pem(cert))
    return key_path, cert_path


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def load_credential(
    name: str, key: Path, cert: Path, x5u: str, **select: object
) -> SigningCredential:
    chain = keyfiles.load_certs(cert)
    signing_key = keyfiles.load_private_key(key)
    if chain[0].public_key() != signing_key.public_key():
        raise ConfigError(f"[[credential]] {name}: the key does not match the certificate")
    ranges = []
    for text in select.get("tn_ranges", ()):  # type: ignore[attr-defined]
        start, _, count = str(text).partition(",")
        if not count.isdigit():
            raise ConfigError(f"[[credential]] {name} tn_ranges: want START,COUNT, got {text!r}")
        ranges.append(certs.TnRange(parse_cli_id(start).value, int(count)))
    return SigningCredential(
        name=name,
        key=signing_key,
        chain=chain,
        x5u=x5u,
        attest=str(select.get("attest", "A")),
        tns=frozenset(parse_cli_id(t).value for t in select.get("tns", ())),  # type: ignore[attr-defined]
        ranges=tuple(ranges),
        prefixes=tuple(_digits(p) for p in select.get("tn_prefixes", ())),  # type: ignore[attr-defined]
        domains=tuple(d.lower() for d in select.get("domains", ())),  # type: ignore[attr-defined]
    )


def signing_credentials(config: Config, base_url: str, now: int) -> tuple[SigningCredential, ...]:
    if not config.credentials:
        key, cert = ensure_dev_credential(config.server.state_dir, now)
        return (load_credential(DEV_NAME, key, cert, f"{base_url}/certs/{DEV_NAME}.pem"),)
    return tuple(
        load_credential(
            c.name, c.key, c.cert, c.x5u or f"{base_url}/certs/{c.name}.pem",
            attest=c.attest, tns=c.tns, tn_ranges=c.tn_ranges, tn_prefixes=c.tn_prefixes,
            domains=c.domains,
        )
        for c in config.credentials
    )  # fmt: skip


def _service_policy(config: Config) -> ServicePolicy:
    v = config.verify
    anchors = trust_anchors(config)
    verify = VerifyPolicy(
        anchors=anchors,
        max_age=int(v.max_age),
        max_skew=v.max_skew,
        require_identity=v.require_identity,
        default_region=v.default_region or None,
    )
    return ServicePolicy(
        verify=verify,
        role=Role(v.role),
        on_failure=OnFailure(v.on_failure),
        min_attest=v.min_attest,
        tofu=v.tofu,
        pins=frozenset(p.lower().replace(":", "") for p in v.pins),
        replay=v.replay,
        replay_overflow=ReplayOverflow(v.replay_overflow),
        require_call_id=v.require_call_id,
        deadline=float(v.deadline),
    )


def _sign_policy(config: Config) -> SignPolicy:
    s = config.sign
    return SignPolicy(
        ppt=None if s.ppt == "none" else Ppt(s.ppt),
        add_shaken=s.add_shaken,
        compact=s.compact,
        uncovered=Uncovered(s.uncovered),
        uncovered_attest=s.uncovered_attest,
        max_date_skew=int(s.max_date_skew),
    )


@dataclass(eq=False)
class Built:
    runtime: Runtime
    fetcher: HttpCertificateFetcher
    cache: CertificateCache
    cps_client: HttpCpsClient | None = None

    async def close(self) -> None:
        await self.cache.close()
        await self.fetcher.close()
        if self.cps_client is not None:
            await self.cps_client.close()


def replay_capacity(config: Config) -> int:
    """Entries the replay cache must hold so that none is dropped before its window ends:
    the configured peak rate of verified PASSporTs × the window (RFC 8224 §12.1)."""
    v = config.verify
    return int(v.replay_peak_rate) * (int(v.max_age) + max(int(v.max_skew), 0) + 1)


def replay_store_for(
    config: Config, store: KeyValueStore | None = None, local: KeyValueStore | None = None
) -> KeyValueStore:
    """The replay cache: a local store that never evicts a live entry (full → StoreFull;
    ``local``: the workers' shared table), behind the shared Redis store when ``store``
    has one."""
    local = local if local is not None else MemoryStore(replay_capacity(config), evict=False)
    return store.beside(local) if isinstance(store, FallbackStore) else local


def build_runtime(
    config: Config,
    store: KeyValueStore,
    base_url: str,
    now: int,
    *,
    own_cps: str | None = None,
    replay_store: KeyValueStore | None = None,
    replay_stats: ReplayStats | None = None,
    cert_store: KeyValueStore | None = None,
) -> Built:
    """Everything a configuration produces; raises ConfigError/KeyFileError on problems.
    ``own_cps``: how stird reaches its own listener (the in-process CPS); ``cert_store``:
    the certificate cache shared by the workers of one host (Redis, when configured,
    is shared by every host instead)."""
    creds = signing_credentials(config, base_url, now)
    fetcher = fetcher_for(config)
    cache = CertificateCache(fetcher, shared=store if config.store.redis else cert_store)
    own = {c.x5u: Credential(c.chain, trust=Trust.ANCHOR) for c in creds}  # never fetched
    verifier = VerificationService(
        StaticCredentials(own, fallback=cache),
        store,
        _service_policy(config),
        replay_store=replay_store,  # None: the store itself
        replay_stats=replay_stats,
    )
    notes = () if config.credentials else ("development credential: not for production",)
    oob, cps_client = build_oob(config, creds, own_cps or base_url)
    runtime = Runtime(
        auth=AuthenticationService(creds, _sign_policy(config)),
        verifier=verifier,
        region=config.verify.default_region or None,
        certificates={c.name: b"".join(certs.cert_to_pem(x) for x in c.chain) for c in creds},
        notes=notes,
        oob=oob,
    )
    return Built(runtime, fetcher, cache, cps_client)


@dataclass(frozen=True)
class WorkerShare:
    """What the supervisor (stird.wiring.workers) hands each worker process: the sockets
    of the listeners (the worker's own, bound with ``SO_REUSEPORT`` and listening once
    their server starts), the shared-memory tables (stird.adapters.store_shm), the SQLite
    files (the embedded CPS without Redis, msec dialog tracking) and the metrics directory
    of all the workers."""

    http: socket.socket
    jsonrpc: socket.socket | None
    agi: socket.socket | None
    replay: Path  # the replay cache (never evicts a live entry)
    pins: Path  # TOFU pins (evicting, like the single process's MemoryStore)
    metrics_dir: Path
    certs: Path | None = None  # the certificate cache's shared level (evicting)
    cps: Path | None = None  # the embedded CPS's entries (stird.adapters.cps_sqlite)
    cps_keys: Path | None = None  # its key directory (stird.adapters.store_sqlite)
    dialogs: Path | None = None  # msec dialogs (stird.adapters.dialogs_sqlite)
    hep: socket.socket | None = None  # [asterisk] hep's UDP socket
    hep_state: Path | None = None  # HEP's SDP offers and digests (stird.adapters.hep_shared)
    slot: int = 0  # which worker: 0 counts what happens to all of them (reload failures)

    @property
    def header(self) -> tuple[str, str]:
        """Which worker answered (an HTTP response header)."""
        return "Stird-Worker", str(os.getpid())


@dataclass
class Daemon:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    restart_backoff: float = 0.5  # s before a failed background task's first restart
    share: WorkerShare | None = None  # one worker of several (stird.wiring.workers)

    async def start(self) -> None:
        server = self.config.server
        share = self.share
        server.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        http_sock = share.http if share else listen(server.http.host, server.http.port)
        policy = connection_policy(server)
        raise_fd_limit(1 + (server.jsonrpc is not None) + (server.agi is not None), policy)
        self.listeners = Listeners.build(policy, registry=self.metrics.registry)
        self.http_address: tuple[str, int] = http_sock.getsockname()[:2]
        self.base_url = _public_url(self.config, self.http_address)
        await self._open_state(share)
        self.supervisor = Supervisor(on_restart=self._count_restart, base=self.restart_backoff)
        self.built = self._build(self.config)
        self._retired: list[Built] = []  # replaced by reloads, closed 30 s later or at stop
        self.api = StirApi(self.built.runtime, self.metrics)
        self.shedder = LoadShedder(server.max_loop_lag, registry=self.metrics.registry)
        self.api.shedder = self.shedder
        self.api.supervisor = self.supervisor
        self.dialogs = build_dialogs(
            self.config.dialog, self.metrics, shared=share.dialogs if share else None
        )
        self.api.dialogs = self.dialogs.api
        self.metrics.watch_cache(lambda: self.built.cache.stats)
        self.metrics.watch_replay(lambda: self.replay_stats)
        self.metrics.watch_expiry(self.expiries)
        self.expiry_watch = ExpiryWatch()
        self.check_expiry()
        token = load_token(server.token_file) if server.token_file is not None else None
        warn_if_insecure(server)
        self.status_view = StatusView(self.api)
        app = build_app(self.api, max_body=server.max_body, token=token, status=self.status_view)
        if share is not None:
            app.on_response_prepare.append(_worker_header(share))
        self.cps: CpsParts | None = mount_cps(
            app,
            self.config,
            server.state_dir,
            self.shedder,
            shared=_cps_files(share),
            replays=self.replay_store,
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._start_pbx_listeners(share)
        self.kamailio = self._kamailio()
        self.dialogs.start(self.kamailio, self.asterisk.ami, self.supervisor)  # ends dialogs
        self.agi_address = self.asterisk.agi_address
        # HTTP (and /healthz) answers last: once it does, every listener is up
        http = self.listeners.tracker("http")
        await PolicedSite(self._runner, http_sock, http, backlog=LISTEN_BACKLOG).start()
        self._supervise_background()
        self._announce()

    async def _open_state(self, share: WorkerShare | None) -> None:
        """The stores: pins and caches, the non-evicting replay cache (shared memory
        among workers), and the Redis eviction-policy check."""
        self.store = self._store()
        self.replay_store = replay_store_for(
            self.config, self.store, ShmStore.attach(share.replay) if share else None
        )
        self.replay_stats = ReplayStats()  # one series across reloads
        certs = share.certs if share else None
        self._cert_store = ShmStore.attach(certs) if certs is not None else None
        if isinstance(self.store, FallbackStore):
            fallback = self.store
            self.metrics.watch_store(lambda: fallback.failures)
        await self._check_redis_eviction()

    async def _start_pbx_listeners(self, share: WorkerShare | None) -> None:
        """The netstring JSON-RPC listener (Kamailio) and FastAGI/AMI (Asterisk)."""
        server = self.config.server
        self.jsonrpc_address: tuple[str, int] | None = None
        self._netstring: NetstringServer | None = None
        if server.jsonrpc is not None:
            self._netstring = NetstringServer(
                Dispatcher(self.api.methods()).handle, listeners=self.listeners
            )
            self.jsonrpc_address = await self._netstring.start(
                server.jsonrpc.host, server.jsonrpc.port, sock=share.jsonrpc if share else None
            )
        self.asterisk = await start_asterisk(
            self.config,
            self.api,
            self.metrics,
            self.listeners,
            agi_sock=share.agi if share else None,
            hep_sock=share.hep if share else None,
            hep_state=share.hep_state if share else None,
        )

    def _supervise_background(self) -> None:
        self.supervisor.supervise("loop-lag", self.shedder.run)
        if self.metrics.multiprocess_dir is not None:
            self.supervisor.supervise("metrics-sync", self.metrics.run_sync)
        self.supervisor.supervise("cert-expiry", self._expiry_loop)

    def expiries(self) -> list[Expiry]:
        """The running signing credentials and trust anchors, with their not_after."""
        runtime = self.built.runtime
        return expiries(runtime.auth.credentials, runtime.verifier.policy.verify.anchors)

    def check_expiry(self, now: float | None = None) -> None:
        """Log a warning 30, 14, 7, 3 and 1 days before a certificate expires (once per
        threshold per certificate), and an error once it has."""
        moment = time.time() if now is None else now
        for item, days in self.expiry_watch.due(self.expiries(), moment):
            if days == 0:
                log.error("%s: signing with it is refused; renew it and reload",
                          item.describe(moment))  # fmt: skip
            else:
                log.warning("%s (under %d day%s): renew it and reload (SIGHUP)",
                            item.describe(moment), days, "s" if days > 1 else "")  # fmt: skip

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            self.check_expiry()

    def _count_restart(self, task: str) -> None:
        self.metrics.task_restarts.labels(task).inc()

    def _build(self, config: Config) -> Built:
        return build_runtime(config, self.store, self.base_url, int(time.time()),
                             own_cps=own_url(self.http_address),
                             replay_store=self.replay_store,
                             replay_stats=self.replay_stats,
                             cert_store=self._cert_store)  # fmt: skip

    def _kamailio(self) -> KamailioRpc | None:
        """Kamailio's jsonrpcs, probed periodically for /healthz (and used by the dialog
        policy to end calls)."""
        k = self.config.kamailio
        if not (k.rpc_url or k.rpc_socket):
            return None
        rpc = KamailioRpc(
            KamailioTarget(url=k.rpc_url, socket_path=k.rpc_socket, timeout=k.timeout)
        )

        self.metrics.watch_kamailio(
            lambda: (self.api.health.get("kamailio") or {}).get("reachable")
        )

        async def watch() -> None:
            while True:
                self.api.health["kamailio"] = await probe(rpc)
                await asyncio.sleep(k.health_interval)

        self.supervisor.supervise("kamailio-health", watch)
        return rpc

    def _store(self) -> KeyValueStore:
        local = ShmStore.attach(self.share.pins) if self.share else MemoryStore()
        if not self.config.store.redis:
            return local
        return FallbackStore(RedisStore(self.config.store.redis), local)

    async def _check_redis_eviction(self) -> None:
        if not isinstance(self.store, FallbackStore):
            return
        shared = self.store.shared
        policy = await shared.eviction_policy() if isinstance(shared, RedisStore) else None
        if policy not in (None, "noeviction"):
            log.error(
                "Redis maxmemory-policy is %s: when Redis memory runs out it may evict live "
                "replay-cache entries, and a replayed PASSporT would be accepted; set "
                "maxmemory-policy noeviction on the Redis that stird shares",
                policy,
            )

    def _announce(self) -> None:
        if not self.config.credentials:
            log.warning(
                "DEVELOPMENT SETUP: signing with the embedded development credential in %s "
                "(self-signed, trusted only by this stird); configure [[credential]] for "
                "production",
                self.config.server.state_dir / DEV_NAME,
            )
        log.info("HTTP on %s, JSON-RPC (netstring) on %s", self.base_url, self.jsonrpc_address)
        self.notifier.ready(f"serving on {self.base_url}")

    async def reload(self, source: Config | Callable[[], Config]) -> bool:
        """SIGHUP: new credentials, anchors and policy from ``source`` (a configuration or
        how to load one); requests in flight finish on the services they started with.
        Listener changes need a restart. Whatever goes wrong (the file, a key, a bug), the
        running configuration stays, the failure is logged and counted, and systemd hears
        READY=1 again with the reason in STATUS=. Returns whether the new one applies."""
        self.notifier.reloading()
        try:
            config = source() if callable(source) else source
            built = self._build(config)
        except Exception as exc:  # a reload must never take the daemon down
            reason = " ".join(str(exc).splitlines()) or type(exc).__name__
            log.error(
                "reload failed, keeping the running configuration: %s",
                str(exc) or exc,
                exc_info=not isinstance(exc, (ConfigError, keyfiles.KeyFileError, OSError)),
            )
            if self.share is None or self.share.slot == 0:  # every worker fails alike
                self.metrics.reload_failures.inc()
            self.notifier.ready(f"reload failed, running the previous configuration: {reason}")
            return False
        old, self.built, self.config = self.built, built, config
        self.api.runtime = built.runtime
        self.dialogs.reconfigure(config.dialog.policy, config.dialog.window)
        self._retired.append(old)
        asyncio.get_running_loop().call_later(30, self._retire, old)
        self.check_expiry()
        log.info("configuration reloaded")
        self.notifier.ready(f"reloaded; serving on {self.base_url}")
        return True

    def _retire(self, old: Built) -> None:
        if old in self._retired:
            self._retired.remove(old)
            _close_later(old)

    async def stop(self) -> None:
        self.notifier.stopping()
        await self.supervisor.close()
        if self._netstring is not None:
            await self._netstring.close()
        await self.dialogs.close()
        await self.asterisk.close()
        if self.kamailio is not None:
            await self.kamailio.close()
        await self._runner.cleanup()
        await self.status_view.prober.close()
        if self.cps is not None:
            await self.cps.close()
        for built in (*self._retired, self.built):
            await built.close()
        if isinstance(self.store, FallbackStore):
            await self.store.close()
        log.info("stopped")


_CLOSING: set[asyncio.Task[None]] = set()


def _close_later(built: Built) -> None:
    task = asyncio.get_running_loop().create_task(built.close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


def _cps_files(share: WorkerShare | None) -> CpsFiles | None:
    if share is None or share.cps is None or share.cps_keys is None:
        return None
    return CpsFiles(share.cps, share.cps_keys)


def _worker_header(share: WorkerShare) -> Callable[[web.Request, web.StreamResponse], Any]:
    name, value = share.header

    async def add(_: web.Request, response: web.StreamResponse) -> None:
        response.headers[name] = value

    return add


async def serve(
    config: Config, load: Callable[[], Config] | None = None, share: WorkerShare | None = None
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads through ``load()``. ``share``: this
    process is one worker of several (stird.wiring.workers)."""
    if share is not None:
        enable_multiprocess(share.metrics_dir)
        daemon = Daemon(config, metrics=Metrics(share.metrics_dir), share=share)
    else:
        daemon = Daemon(config)
    await daemon.start()
    gc.freeze()  # what start-up built lives for good: keep it out of every gen-2 walk
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    background: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        if load is not None:
            task = loop.create_task(daemon.reload(load))
            background.add(task)
            task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    interval = daemon.notifier.watchdog_interval()
    if interval:
        daemon.supervisor.supervise("watchdog", lambda: run_watchdog(daemon.notifier, interval))
    await stop.wait()
    await daemon.stop()


__all__ = ["Daemon", "WorkerShare", "build_runtime", "ensure_dev_credential", "serve"]
