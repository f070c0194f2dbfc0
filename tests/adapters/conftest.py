"""Fixtures shared by the adapter tests."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.ami import AmiClient, AmiSettings
from stird.adapters.metrics import Metrics
from stird.core import certs
from stird.core.oob import DecryptionKey, OobSuite
from tests.adapters.test_cps_server import Pki
from tests.asterisk_fakes import FakeAmi


@pytest.fixture
async def ami() -> AsyncIterator[tuple[FakeAmi, AmiClient]]:
    """The fake Asterisk manager (tests/asterisk_fakes.py) and a client logged in to it."""
    fake = FakeAmi()
    await fake.start()
    settings = AmiSettings(port=fake.port, secret="stird-ami-secret", timeout=0.5,
                           backoff_min=0.05, backoff_max=0.2)  # fmt: skip
    client = AmiClient(settings, Metrics())
    await client.start()
    assert await client.wait_connected(2.0)
    yield fake, client
    await client.close()
    await fake.stop()


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A STIR root CA (the CPS tests' trust anchor for publications and store tokens)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return Pki(certs.make_stir_cert(key, now=int(time.time()) - 60, ca=True), key)


@pytest.fixture(scope="module")
def enc() -> DecryptionKey:
    return DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)
