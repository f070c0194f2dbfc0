"""Fault injection, Asterisk manager (issue #9): the AMI connection is dropped (Asterisk
restarting, a network cut) and the manager is away for a while. stird logs in again by
itself, /healthz follows, actions meanwhile fail at once (DISCONNECTED, never hang), and
call tracking and hangups work after the reconnect. Fake: tests/asterisk_fakes.FakeAmi."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from stird.adapters.ami import AmiClient, AmiSettings, Outcome
from stird.wiring.config import AsteriskConfig
from tests.asterisk_fakes import FakeAmi, channel_fields, event
from tests.faults.helpers import get_text, running, server_config, within

CARRIER = channel_fields("PJSIP/carrier-00000012", "lab-1.18", caller=("+15552220000", "C"))
AFTER = channel_fields("PJSIP/carrier-00000013", "lab-1.19", caller=("+15552220001", "C"))


async def until(check: object, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def _tracks_and_hangs_up(
    fake: FakeAmi, ami: AmiClient, fields: list[tuple[str, str]]
) -> None:
    channel, uniqueid = fields[0][1], fields[12][1]
    fake.channels[channel] = fields
    await fake.send(event("Newchannel", "call,all", *fields))
    await until(lambda: ami.calls.get(uniqueid) is not None)
    result = await ami.pjsip_hangup(channel, 438)
    assert result.outcome is Outcome.OK
    await until(lambda: ami.calls.get(uniqueid) is None)
    assert ami.calls.hangups[-1].tech_cause == "438"


async def test_daemon_reconnects_after_a_drop(tmp_path: Path) -> None:
    fake = FakeAmi()
    await fake.start()
    asterisk = AsteriskConfig(ami_enabled=True, ami_port=fake.port, ami_secret="stird-ami-secret",
                              agi_timeout=0.5)  # fmt: skip
    try:
        async with running(replace(server_config(tmp_path), asterisk=asterisk)) as (daemon, base):
            ami = daemon.asterisk.ami
            assert ami is not None and await ami.wait_connected(2.0)
            await _tracks_and_hangs_up(fake, ami, CARRIER)
            await fake.drop()
            await until(lambda: not ami.connected)
            health = json.loads(await get_text(base, "/healthz"))
            assert health["ami"]["connected"] is False
            await until(lambda: ami.connected and fake.logins == 2)
            await _tracks_and_hangs_up(fake, ami, AFTER)
            assert json.loads(await get_text(base, "/healthz"))["ami"]["logins"] == 2
            assert "stird_ami_connected 1.0" in await get_text(base, "/metrics")
    finally:
        await fake.stop()


async def test_outage_fails_actions_at_once_and_recovers() -> None:
    fake = FakeAmi()
    await fake.start()
    settings = AmiSettings(port=fake.port, secret="stird-ami-secret", timeout=0.5,
                           backoff_min=0.05, backoff_max=0.2)  # fmt: skip
    ami = AmiClient(settings)
    await ami.start()
    try:
        assert await ami.wait_connected(2.0)
        port = fake.port
        await fake.stop()  # Asterisk gone: refused connections for a while
        await until(lambda: not ami.connected and "Error" in str(ami.health["last_error"]))
        result, _ = await within(0.0, ami.pjsip_hangup("PJSIP/carrier-00000012", 438))
        assert result.outcome is Outcome.DISCONNECTED
        await fake.start(port)
        await until(lambda: ami.connected)
        await _tracks_and_hangs_up(fake, ami, AFTER)
    finally:
        await ami.close()
        await fake.stop()
