"""Wiring of out-of-band STIR into ``stird serve``: ``[oob]`` → publisher, retriever and
CPS client; and, on the embedded default, the CPS mounted in-process.

The embedded default closes the loop on one machine: the CPS runs on stird's own HTTP
listener, its key directory publishes the development encryption key for every number
(logged loudly by the directory), and stird decrypts with that key — so a call signed
with ``"oob": true`` verifies out of band on the same stird.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path

import yarl
from aiohttp import web

from stird.adapters import enckeys
from stird.adapters.api import OobRuntime
from stird.adapters.certfetch import FetchPolicy
from stird.adapters.cps_client import (
    AtisIdentity,
    HttpCpsClient,
    StoreIdentity,
    default_policy,
)
from stird.adapters.cps_server import add_cps_routes
from stird.adapters.overload import LoadShedder
from stird.core.oob import DecryptionKey
from stird.services.authentication import SigningCredential
from stird.services.oob import CpsProfile, OobPolicy, OobPublisher, OobRetriever, RetrievePolicy
from stird.services.oobverify import OobVerification
from stird.services.ports import KeyValueStore
from stird.wiring.config import Config, ConfigError
from stird.wiring.cps_app import CpsFiles, CpsParts, build_cps, ensure_dev_enc_key

log = logging.getLogger("stird.oob")
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapped away, not bound


def embedded_cps(config: Config) -> bool:
    """The embedded default without a CPS of its own choosing: mount one in-process."""
    return config.source is None and config.oob.enabled and config.oob.cps is None


def own_url(http: tuple[str, int]) -> str:
    """stird's own listener as a CPS URL (a wildcard listener is reached on loopback)."""
    host = _UNSPECIFIED.get(http[0], http[0])
    return f"http://[{host}]:{http[1]}" if ":" in host else f"http://{host}:{http[1]}"


def _policy(config: Config, default_cps: str | None) -> OobPolicy:
    o = config.oob
    return OobPolicy(
        default_cps=default_cps,
        cps_by_prefix=o.cps_by_prefix,
        profiles=tuple((url, CpsProfile(p)) for url, p in o.profile_by_cps),
        publish_for=o.publish_for,
        retrieve=RetrievePolicy(o.retrieve),
        timeout=float(o.timeout),
    )


def _fetch_policy(config: Config, own: str | None) -> FetchPolicy:
    networks = [ip_network(n, strict=False) for n in config.oob.allow_networks]
    allow_http = config.oob.allow_http
    if own is not None:  # the in-process CPS: plain http on our own (loopback) address
        networks.append(ip_network(ip_address(yarl.URL(own).host or "127.0.0.1")))
        allow_http = True
    return default_policy(
        float(config.oob.timeout), allow_http=allow_http, allow_networks=tuple(networks)
    )


def _decryption_keys(config: Config) -> tuple[DecryptionKey, ...]:
    keys = [k for path in config.oob.decryption_keys for k in enckeys.load_decryption_keys(path)]
    if config.source is None:
        private, _ = ensure_dev_enc_key(config.server.state_dir)
        keys.extend(enckeys.load_decryption_keys(private))
    return tuple(keys)


def _atis_identity(config: Config, creds: Sequence[SigningCredential]) -> AtisIdentity | None:
    o = config.oob
    if not o.atis_spc:
        return None
    wanted = o.atis_credential
    chosen = next((c for c in creds if wanted is None or c.name == wanted), None)
    if chosen is None:
        raise ConfigError(f"[oob] atis_credential: no [[credential]] named {wanted!r}")
    return AtisIdentity(chosen.key, chosen.x5u, o.atis_spc)


def _store_identity(creds: Sequence[SigningCredential]) -> StoreIdentity | None:
    """Stores are signed with the first credential: a CPS trusting it gives stird's
    publications a quota no anonymous flood can take (RFC 8816 §7.5)."""
    return StoreIdentity(creds[0].key, tuple(creds[0].chain)) if creds else None


def build_oob(
    config: Config, creds: Sequence[SigningCredential], own_cps: str
) -> tuple[OobRuntime | None, HttpCpsClient | None]:
    """Publisher, retrieval and their CPS client, or (None, None) when ``[oob]`` is off
    or names no CPS;
    ``own_cps`` is where the in-process CPS answers (see :func:`own_url`)."""
    if not config.oob.enabled:
        return None, None
    own = own_cps if embedded_cps(config) else None
    policy = _policy(config, config.oob.cps or own)
    if policy.default_cps is None and not policy.cps_by_prefix:
        log.info("[oob] no CPS configured (cps, cps_by_prefix): out-of-band STIR is off")
        return None, None
    client = HttpCpsClient(
        _fetch_policy(config, own),
        atis_identity=_atis_identity(config, creds),
        store_identity=_store_identity(creds),
        ssl_context=ssl.create_default_context(),
    )
    keys = _decryption_keys(config)
    retriever = OobRetriever(client, policy, keys)
    region = config.verify.default_region or None
    publisher = OobPublisher(client, policy, clock=time.monotonic)  # key-cache ages only
    return OobRuntime(publisher, OobVerification(retriever, region)), client


def mount_cps(
    app: web.Application,
    config: Config,
    state_dir: Path,
    shedder: LoadShedder | None = None,
    *,
    shared: CpsFiles | None = None,
    replays: KeyValueStore | None = None,
) -> CpsParts | None:
    """On the embedded default, the CPS routes on ``app`` (memory store, Redis with
    ``[store] redis``, or the workers' ``shared`` SQLite files); the development key is
    published for every number. With
    ``shedder``, CPS requests are refused (503) from half its lag threshold, so a CPS
    flood is turned away before sign/verify would be shed. Signed stores' jtis go to
    ``replays``, the daemon's replay cache (shared by the workers and, with Redis, hosts)."""
    if not embedded_cps(config):
        return None
    parts = build_cps(config, state_dir, shared=shared, replays=replays)
    lagging = None if shedder is None else shedder.behind
    add_cps_routes(app, parts.service, parts.directory, lagging=lagging)
    log.warning(
        "DEVELOPMENT CPS mounted in-process (/cps, /keys): the development encryption key "
        "is published for EVERY number; configure [oob] cps for production"
    )
    return parts


__all__ = ["build_oob", "embedded_cps", "mount_cps", "own_url"]
