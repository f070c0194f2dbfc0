"""Fixtures shared by the adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stird.adapters.ami import AmiClient, AmiSettings
from stird.adapters.metrics import Metrics
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
