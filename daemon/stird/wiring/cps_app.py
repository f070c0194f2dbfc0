"""The standalone Call Placement Service: ``stird cps serve`` (RFC 8816 §9).

Builds the CPS and key directory from stird.toml: trust anchors from ``[verify]
trust_anchors`` (publications must chain to them), storage in memory or in Redis
(``--redis`` or ``[store] redis``) so several CPS servers behind a load balancer share one
store; the embedded CPS of ``stird serve`` with several workers and no Redis keeps it in
SQLite files the workers share (:class:`CpsFiles`). With the embedded default
configuration (no file) the development credential and development encryption key under
the state directory are trusted and published for every number — development only,
logged loudly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from stird.adapters import enckeys, keyfiles
from stird.adapters.connpolicy import ConnectionPolicy, Listeners, raise_fd_limit
from stird.adapters.cps_memory import MemoryCpsStore
from stird.adapters.cps_redis import RedisCpsStore
from stird.adapters.cps_server import build_cps_app
from stird.adapters.cps_sqlite import SqliteCpsStore
from stird.adapters.http_api import PolicedSite
from stird.adapters.sdnotify import SystemdNotifier
from stird.adapters.sockets import LISTEN_BACKLOG, listen
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.adapters.store_sqlite import SqliteStore
from stird.core.oob import RecipientKey
from stird.core.oobkeys import PublicationPolicy
from stird.services.certcache import CertificateCache
from stird.services.cps import CpsPolicy, CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsStore, KeyValueStore
from stird.wiring import eventloop
from stird.wiring.builders import fetcher_for, trust_anchors
from stird.wiring.config import Config, ConfigError, ServerConfig, load_config, parse_hostport

log = logging.getLogger("stird.cps")
DEV_NAME = "dev"  # the folder stird serve keeps its development credential in
MAX_STORE_JTIS = 100_000  # signed-store jtis a standalone CPS remembers (never evicted)


def ensure_dev_enc_key(state_dir: Path) -> tuple[Path, Path]:
    """The embedded default's X25519 encryption key pair under ``state_dir/dev``."""
    folder = state_dir / DEV_NAME
    private, public = folder / enckeys.PRIVATE_NAME, folder / enckeys.PUBLIC_NAME
    if not private.exists() or not public.exists():  # a half-written pair is redone
        enckeys.write_enc_keypair(folder, "x25519", force=True)
    return private, public


def _dev_trust(
    config: Config, state_dir: Path
) -> tuple[PublicationPolicy, tuple[RecipientKey, ...]]:
    """Pins the development credential (if stird serve made one) and the dev key."""
    cert = state_dir / DEV_NAME / "cert.pem"
    pins = keyfiles.load_certs(cert) if cert.exists() else ()
    _, public = ensure_dev_enc_key(state_dir)
    log.warning("DEVELOPMENT CPS: trusting the development credential and publishing the "
                "development encryption key for every number")  # fmt: skip
    policy = PublicationPolicy(anchors=trust_anchors(config), pins=tuple(pins[:1]))
    return policy, enckeys.load_recipient_keys(public)


@dataclass(frozen=True)
class CpsFiles:
    """The SQLite files (made by the supervisor, stird.wiring.workers) in which the workers
    of one host share the embedded CPS: its entries and its key directory."""

    entries: Path
    keys: Path


@dataclass
class CpsParts:
    service: CpsService
    directory: KeyDirectory
    app: web.Application
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


def build_cps(
    config: Config,
    state_dir: Path,
    redis: str | None = None,
    shared: CpsFiles | None = None,
    replays: KeyValueStore | None = None,
) -> CpsParts:
    """CPS service, key directory and aiohttp app for ``config`` (raises ConfigError,
    KeyFileError): storage in Redis (``redis`` or ``[store] redis``), else in the workers'
    ``shared`` files, else in memory. Signed stores' jtis go to ``replays`` (the daemon's
    replay cache, shared like it) or, without it, to Redis or a local non-evicting table."""
    url = redis or config.store.redis
    store: CpsStore
    keys: KeyValueStore
    ping = None
    owned: list[object] = []  # the jti store, when this CPS made it
    if url:
        store, keys = RedisCpsStore(url), RedisStore(url, prefix="stird:keys:")
        if replays is None:
            replays = RedisStore(url, prefix="stird:cps:")
            owned.append(replays)
        ping = store.ping
    elif shared is not None:
        store, keys = SqliteCpsStore(shared.entries), SqliteStore(shared.keys)
    else:
        store, keys = MemoryCpsStore(), MemoryStore()
    if replays is None:
        replays = MemoryStore(MAX_STORE_JTIS, evict=False)
    if config.source is None:
        policy, wildcard = _dev_trust(config, state_dir)
    else:
        policy, wildcard = PublicationPolicy(anchors=trust_anchors(config)), ()
        if not policy.anchors:
            log.warning("no [verify] trust_anchors: every key publication will be refused")
    fetcher = fetcher_for(config)
    cache = CertificateCache(fetcher)
    directory = KeyDirectory(keys, policy, credentials=cache, dev_wildcard=wildcard)
    service = CpsService(
        store, CpsPolicy(), suites=directory.suites, signers=policy, replays=replays
    )
    parts = CpsParts(service, directory, build_cps_app(service, directory, ping=ping))
    parts.closers += [fetcher.close, cache.close]
    for closable in (store, keys, *owned):
        closer = getattr(closable, "close", None)
        if closer is not None:
            parts.closers.append(closer)
    return parts


def connection_policy(server: ServerConfig) -> ConnectionPolicy:
    """The connection policy of every listener, from ``[server]``."""
    return ConnectionPolicy(
        header_timeout=float(server.header_timeout),
        body_timeout=float(server.body_timeout),
        idle_timeout=float(server.idle_timeout),
        max_connections=server.max_connections,
        partial_frame_budget=server.partial_frame_budget,
    )


async def run_cps(
    parts: CpsParts,
    host: str,
    port: int,
    stop: asyncio.Event,
    policy: ConnectionPolicy | None = None,
) -> None:
    policy = policy or ConnectionPolicy()
    raise_fd_limit(1, policy)
    runner = web.AppRunner(parts.app, access_log=None)
    await runner.setup()
    try:
        tracker = Listeners.build(policy).tracker("cps")
        await PolicedSite(runner, listen(host, port), tracker, backlog=LISTEN_BACKLOG).start()
        notifier = SystemdNotifier()
        log.info("CPS listening on %s:%d", host, port)
        notifier.ready(f"CPS serving on {host}:{port}")
        await stop.wait()
        notifier.stopping()
    finally:
        await runner.cleanup()
        await parts.close()


async def _serve(config: Config, state: Path, redis: str | None, host: str, port: int) -> None:
    parts = build_cps(config, state, redis)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # systemd's ExecReload sends SIGHUP, whose default action would end the process.
    loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: restart to reconfigure")
    await run_cps(parts, host, port, stop, connection_policy(config.server))


def cps_main(config_path: str | None, listen: str, state_dir: str, redis: str | None) -> int:
    """``stird cps serve``: 0 after SIGTERM/SIGINT, 2 on a configuration or listener error."""
    try:
        config = load_config(config_path)
        where = parse_hostport(listen)
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        eventloop.run(_serve(config, state, redis, where.host, where.port))
    except (ConfigError, keyfiles.KeyFileError, ValueError, OSError) as exc:
        print(f"stird cps: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["CpsParts", "build_cps", "cps_main", "ensure_dev_enc_key", "run_cps"]
