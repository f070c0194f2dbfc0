"""Small builders shared by the daemon (`app.py`) and the standalone CPS (`cps_app.py`)."""

from __future__ import annotations

import ssl
from ipaddress import ip_network

from cryptography import x509

from stird.adapters import keyfiles
from stird.adapters.certfetch import FetchPolicy, HttpCertificateFetcher
from stird.wiring.config import Config


def trust_anchors(config: Config) -> tuple[x509.Certificate, ...]:
    """Every certificate in the files of ``[verify] trust_anchors``."""
    return tuple(c for path in config.verify.trust_anchors for c in keyfiles.load_certs(path))


def fetcher_for(config: Config) -> HttpCertificateFetcher:
    """The certificate fetcher of ``[verify]``: https only unless allowed, SSRF-vetted."""
    v = config.verify
    policy = FetchPolicy(
        timeout=float(v.fetch_timeout),
        allow_http=v.allow_http,
        allow_networks=tuple(ip_network(n, strict=False) for n in v.allow_networks),
        allow_hosts=v.allow_hosts,
    )
    return HttpCertificateFetcher(policy, ssl_context=ssl.create_default_context())
