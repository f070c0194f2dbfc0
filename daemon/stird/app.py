"""The daemon's lifecycle: build services from the configuration, open the listeners,
reload on SIGHUP without dropping requests, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from stird.adapters import keyfiles
from stird.adapters.api import Runtime, StirApi
from stird.adapters.certfetch import HttpCertificateFetcher
from stird.adapters.connpolicy import Listeners, raise_fd_limit
from stird.adapters.cps_client import HttpCpsClient
from stird.adapters.http_api import PolicedSite, build_app
from stird.adapters.jsonrpc import Dispatcher
from stird.adapters.kamailio_rpc import KamailioRpc, KamailioTarget, probe
from stird.adapters.metrics import Metrics
from stird.adapters.netstring import NetstringServer
from stird.adapters.overload import LoadShedder
from stird.adapters.sdnotify import SystemdNotifier, run_watchdog
from stird.adapters.sockets import LISTEN_BACKLOG, listen
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.asterisk import start_asterisk
from stird.builders import fetcher_for, trust_anchors
from stird.config import Config, ConfigError
from stird.core import certs
from stird.core.passport import Ppt
from stird.core.tn import parse_cli_id
from stird.core.verdict import Credential, VerifyPolicy
from stird.cps_app import CpsParts, connection_policy
from stird.dialog_app import build_dialogs
from stird.exposure import load_token, warn_if_insecure
from stird.oob_app import build_oob, mount_cps, own_url
from stird.services.authentication import (
    AuthenticationService,
    SigningCredential,
    SignPolicy,
    Uncovered,
)
from stird.services.certcache import CertificateCache
from stird.services.credentials import StaticCredentials
from stird.services.ports import KeyValueStore
from stird.services.stores import FallbackStore
from stird.services.verdicts import OnFailure, Role, ServicePolicy
from stird.services.verification import VerificationService

log = logging.getLogger("stird")
DEV_NAME = "dev"


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


def build_runtime(
    config: Config, store: KeyValueStore, base_url: str, now: int, *, own_cps: str | None = None
) -> Built:
    """Everything a configuration produces; raises ConfigError/KeyFileError on problems.
    ``own_cps``: how stird reaches its own listener (the in-process CPS)."""
    creds = signing_credentials(config, base_url, now)
    fetcher = fetcher_for(config)
    cache = CertificateCache(fetcher, shared=store if config.store.redis else None)
    own = {c.x5u: Credential(c.chain, pinned=True) for c in creds}  # never fetched
    verifier = VerificationService(
        StaticCredentials(own, fallback=cache), store, _service_policy(config)
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


@dataclass
class Daemon:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)

    async def start(self) -> None:
        server = self.config.server
        server.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        http_sock = listen(server.http.host, server.http.port)
        policy = connection_policy(server)
        raise_fd_limit(1 + (server.jsonrpc is not None) + (server.agi is not None), policy)
        self.listeners = Listeners.build(policy, registry=self.metrics.registry)
        self.http_address: tuple[str, int] = http_sock.getsockname()[:2]
        self.base_url = _public_url(self.config, self.http_address)
        self.store = self._store()
        if isinstance(self.store, FallbackStore):
            fallback = self.store
            self.metrics.watch_store(lambda: fallback.failures)
        self.built = self._build(self.config)
        self._retired: list[Built] = []  # replaced by reloads, closed 30 s later or at stop
        self.api = StirApi(self.built.runtime, self.metrics)
        self.shedder = LoadShedder(server.max_loop_lag, registry=self.metrics.registry)
        self.api.shedder = self.shedder
        self.dialogs = build_dialogs(self.config.dialog, self.metrics)
        self.api.dialogs = self.dialogs.api
        self.metrics.watch_cache(lambda: self.built.cache.stats)
        token = load_token(server.token_file) if server.token_file is not None else None
        warn_if_insecure(server)
        app = build_app(self.api, max_body=server.max_body, token=token)
        self.cps: CpsParts | None = mount_cps(app, self.config, server.state_dir)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.jsonrpc_address: tuple[str, int] | None = None
        self._netstring: NetstringServer | None = None
        if server.jsonrpc is not None:
            self._netstring = NetstringServer(
                Dispatcher(self.api.methods()).handle, listeners=self.listeners
            )
            self.jsonrpc_address = await self._netstring.start(
                server.jsonrpc.host, server.jsonrpc.port
            )
        self.asterisk = await start_asterisk(self.config, self.api, self.metrics, self.listeners)
        self.kamailio = self._kamailio()
        self.dialogs.start(self.kamailio, self.asterisk.ami)  # ends dialogs through them
        self.agi_address = self.asterisk.agi_address
        # HTTP (and /healthz) answers last: once it does, every listener is up
        http = self.listeners.tracker("http")
        await PolicedSite(self._runner, http_sock, http, backlog=LISTEN_BACKLOG).start()
        self._lag_watch = asyncio.get_running_loop().create_task(self.shedder.run())
        self._announce()

    def _build(self, config: Config) -> Built:
        return build_runtime(config, self.store, self.base_url, int(time.time()),
                             own_cps=own_url(self.http_address))  # fmt: skip

    def _kamailio(self) -> KamailioRpc | None:
        """Kamailio's jsonrpcs, probed periodically for /healthz (and used by the dialog
        policy to end calls)."""
        k = self.config.kamailio
        if not (k.rpc_url or k.rpc_socket):
            return None
        rpc = KamailioRpc(
            KamailioTarget(url=k.rpc_url, socket_path=k.rpc_socket, timeout=k.timeout)
        )

        async def watch() -> None:
            while True:
                self.api.health["kamailio"] = await probe(rpc)
                await asyncio.sleep(k.health_interval)

        self._kamailio_watch = asyncio.get_running_loop().create_task(watch())
        return rpc

    def _store(self) -> KeyValueStore:
        local = MemoryStore()
        if not self.config.store.redis:
            return local
        return FallbackStore(RedisStore(self.config.store.redis), local)

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

    async def reload(self, config: Config) -> None:
        """SIGHUP: new credentials, anchors and policy; requests in flight finish on the
        services they started with. Listener changes need a restart."""
        self.notifier.reloading()
        try:
            built = self._build(config)
        except (ConfigError, keyfiles.KeyFileError, OSError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        else:
            old, self.built, self.config = self.built, built, config
            self.api.runtime = built.runtime
            self.dialogs.reconfigure(config.dialog.policy, config.dialog.window)
            self._retired.append(old)
            asyncio.get_running_loop().call_later(30, self._retire, old)
            log.info("configuration reloaded")
        self.notifier.ready("reloaded")

    def _retire(self, old: Built) -> None:
        if old in self._retired:
            self._retired.remove(old)
            _close_later(old)

    async def stop(self) -> None:
        self.notifier.stopping()
        self._lag_watch.cancel()
        if self._netstring is not None:
            await self._netstring.close()
        await self.dialogs.close()
        await self.asterisk.close()
        if self.kamailio is not None:
            self._kamailio_watch.cancel()
            await self.kamailio.close()
        await self._runner.cleanup()
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


async def serve(config: Config, load: Callable[[], Config] | None = None) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads through ``load()``."""
    daemon = Daemon(config)
    await daemon.start()
    gc.freeze()  # what start-up built lives for good: keep it out of every gen-2 walk
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    background: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        if load is not None:
            task = loop.create_task(_reload(daemon, load))
            background.add(task)
            task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    interval = daemon.notifier.watchdog_interval()
    dog = loop.create_task(run_watchdog(daemon.notifier, interval)) if interval else None
    await stop.wait()
    if dog is not None:
        dog.cancel()
    await daemon.stop()


async def _reload(daemon: Daemon, load: Callable[[], Config]) -> None:
    try:
        config = load()
    except ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        return
    await daemon.reload(config)


__all__ = ["Daemon", "build_runtime", "ensure_dev_credential", "serve"]
