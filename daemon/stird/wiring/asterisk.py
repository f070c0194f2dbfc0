"""Wiring for Asterisk: the FastAGI listener ([server] agi), the HEP collector
([asterisk] hep) and the AMI client ([asterisk] ami_*), built from the configuration and
reported in /healthz."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from stird.adapters import keyfiles
from stird.adapters.agi import AgiServer
from stird.adapters.ami import AmiClient, AmiSettings
from stird.adapters.api import StirApi
from stird.adapters.connpolicy import Listeners
from stird.adapters.dtls import DtlsCertificates
from stird.adapters.hep import HepCollector
from stird.adapters.hep_shared import attach_book, attach_shared
from stird.adapters.metrics import Metrics
from stird.wiring.config import AsteriskConfig, Config, ConfigError
from stird.wiring.exposure import is_loopback

log = logging.getLogger("stird")


@dataclass
class AsteriskLink:
    agi: AgiServer | None = None
    agi_address: tuple[str, int] | None = None
    ami: AmiClient | None = None
    hep: HepCollector | None = None
    hep_address: tuple[str, int] | None = None

    async def close(self) -> None:
        if self.agi is not None:
            await self.agi.close()
        if self.hep is not None:
            await self.hep.close()
        if self.ami is not None:
            await self.ami.close()


def ami_secret(config: AsteriskConfig) -> str:
    """The AMI secret: inline, or from a file refused when group/world-accessible (like
    private keys and the API token: keyfiles.check_private_mode)."""
    if config.ami_secret_file is None:
        return config.ami_secret or ""
    try:
        return keyfiles.read_private_file(config.ami_secret_file).decode("utf-8").strip()
    except keyfiles.KeyFileError as exc:
        raise ConfigError(f"[asterisk] ami_secret_file: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"[asterisk] ami_secret_file: {config.ami_secret_file} is not UTF-8 text"
        ) from None


def ami_settings(config: AsteriskConfig) -> AmiSettings:
    return AmiSettings(
        host=config.ami_host,
        port=config.ami_port,
        user=config.ami_user,
        secret=ami_secret(config),
        timeout=float(config.agi_timeout),
    )


def check_hep(config: Config) -> None:
    """[asterisk] hep stays on loopback like FastAGI: HEP carries no credential worth the
    name (capture_password travels in clear), and a forged copy would be a forged SDP."""
    hep = config.asterisk.hep
    if hep is not None and not is_loopback(hep.host) and not config.server.insecure_expose:
        raise ConfigError(
            f"[asterisk] hep: {hep} is not loopback and HEP carries no credentials: keep it "
            "beside Asterisk (or [server] insecure_expose = true)"
        )
    if hep is None and config.asterisk.hep_password:
        log.warning("[asterisk] hep_password is set but hep is off")


async def start_asterisk(
    config: Config,
    api: StirApi,
    metrics: Metrics,
    listeners: Listeners | None = None,
    *,
    agi_sock: socket.socket | None = None,
    hep_sock: socket.socket | None = None,
    hep_state: Path | None = None,
) -> AsteriskLink:
    """Start what the configuration asks for; their state goes into ``api.health``.
    ``agi_sock``, ``hep_sock``: the FastAGI and HEP sockets, when a supervisor bound them;
    ``hep_state``: the directory of the SDP offers, digests and connected-identity
    bookkeeping all workers share (stird.adapters.hep_shared), in memory when None."""
    link = AsteriskLink()
    ast = config.asterisk
    settings = ami_settings(ast) if ast.ami_enabled else None  # ConfigError before listening
    check_hep(config)
    if ast.hep is not None:
        if hep_state is not None:
            store, digests = attach_shared(hep_state)
            try:
                book = attach_book(hep_state)
            except BaseException:
                store.close()
                digests.close()
                raise
            link.hep = HepCollector(api, password=ast.hep_password, store=store, digests=digests,
                                    book=book)  # fmt: skip
        else:
            link.hep = HepCollector(api, password=ast.hep_password)
        link.hep_address = await link.hep.start(ast.hep.host, ast.hep.port, sock=hep_sock)
        api.health["hep"] = link.hep.health
        log.info("HEP collector on udp %s:%d", *link.hep_address)
    if config.server.agi is not None:
        dtls = DtlsCertificates(dict(ast.dtls_certs), ast.dtls_fingerprint)
        link.agi = AgiServer(api, dtls, timeout=float(ast.agi_timeout),
                             fail_action=ast.fail_action, listeners=listeners, hep=link.hep,
                             hep_wait=float(ast.hep_wait),
                             msec_without_sdp=ast.msec_without_sdp)  # fmt: skip
        link.agi_address = await link.agi.start(
            config.server.agi.host, config.server.agi.port, sock=agi_sock
        )
        api.health["agi"] = link.agi.health
        log.info("FastAGI on %s:%d", *link.agi_address)
    if settings is not None:
        link.ami = AmiClient(settings, metrics)
        await link.ami.start()
        api.health["ami"] = link.ami.health
    return link


__all__ = ["AsteriskLink", "ami_settings", "check_hep", "start_asterisk"]
