"""[asterisk] in stird.toml, and the daemon starting the FastAGI listener and the AMI client
with their state in /healthz and /metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stird.wiring.app import Daemon
from stird.wiring.asterisk import ami_secret, ami_settings
from stird.wiring.config import AsteriskConfig, Config, ConfigError, HostPort, parse_config
from tests.asterisk_fakes import FakeAmi, FakeChannel, inbound_env, run_agi


def test_asterisk_section() -> None:
    config = parse_config({"asterisk": {
        "agi_timeout": 1.5, "fail_action": "continue", "ami_enabled": True,
        "ami_host": "127.0.0.1", "ami_port": 5038, "ami_user": "stird",
        "ami_secret_file": "/etc/stird/ami.secret", "dtls_fingerprint": "SHA-1",
        "dtls_certs": {"trunk": "/etc/asterisk/keys/trunk.crt"},
    }})  # fmt: skip
    ast = config.asterisk
    assert (ast.agi_timeout, ast.fail_action, ast.ami_enabled) == (1.5, "continue", True)
    assert ast.dtls_certs == (("trunk", Path("/etc/asterisk/keys/trunk.crt")),)
    assert ast.ami_secret_file == Path("/etc/stird/ami.secret") and ast.ami_secret is None
    assert parse_config({}).asterisk == AsteriskConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"agi_timeout": 0}, r"\[asterisk\] agi_timeout: must be > 0"),
        ({"fail_action": "drop"}, r"\[asterisk\] fail_action: must be one of reject, continue"),
        ({"ami_port": 70000}, r"\[asterisk\] ami_port: must be a port number"),
        ({"dtls_certs": {"trunk": 3}}, r"\[asterisk\] dtls_certs: must be a table"),
        ({"ami_enabled": True}, r"\[asterisk\] ami_secret: required"),
        ({"ami_secret": "a", "ami_secret_file": "b"}, r"\[asterisk\] ami_secret: give"),
        ({"ami_secrets": "a"}, r"\[asterisk\] ami_secrets: unknown key"),
    ],
)
def test_asterisk_section_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"asterisk": table})


async def test_daemon_serves_agi_and_follows_ami(tmp_path: Path) -> None:
    fake = FakeAmi()
    await fake.start()
    secret = tmp_path / "ami.secret"
    secret.write_text("stird-ami-secret\n")
    secret.chmod(0o600)
    server = replace(Config().server, http=HostPort("127.0.0.1", 0), jsonrpc=None,
                     agi=HostPort("127.0.0.1", 0), state_dir=tmp_path / "state")  # fmt: skip
    asterisk = AsteriskConfig(ami_enabled=True, ami_port=fake.port, ami_secret_file=secret)
    daemon = Daemon(Config(server=server, asterisk=asterisk))
    await daemon.start()
    try:
        assert daemon.agi_address is not None and daemon.asterisk.ami is not None
        assert await daemon.asterisk.ami.wait_connected(2.0)
        channel = FakeChannel(inbound_env("verify"), headers=[("From", "<sip:+15552220000@x>"),
                                                              ("To", "<sip:+15557770002@y>")])  # fmt: skip
        await run_agi(daemon.agi_address, channel)
        assert channel.variables["STIRD_VERDICT"] == "no-identity"
        assert channel.variables["STIRD_ACTION"] == "continue"
        host, port = daemon.http_address
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/healthz") as response:
                health = json.loads(await response.text())
            async with session.get(f"http://{host}:{port}/metrics") as response:
                metrics = await response.text()
        assert health["ami"]["connected"] is True and health["ami"]["logins"] == 1
        assert health["agi"]["sessions"] == 1
        assert health["agi"]["address"] == "{}:{}".format(*daemon.agi_address)
        assert "stird_ami_connected 1.0" in metrics
        assert 'stird_agi_sessions_total{outcome="ok",route="verify"} 1.0' in metrics
    finally:
        await daemon.stop()
        await fake.stop()
    assert fake.received[-1]["Action"] == "Logoff"


# ------------------------------------------------------------ the AMI secret ----

SECRET = "stird-ami-s3cret-value"


def test_ami_secret_never_in_repr(tmp_path: Path) -> None:
    """Logged or printed configuration never shows the AMI secret."""
    asterisk = AsteriskConfig(ami_enabled=True, ami_secret=SECRET)
    config = Config(asterisk=asterisk)
    assert SECRET not in repr(asterisk) and SECRET not in repr(config)
    assert SECRET not in str(config)
    secret = tmp_path / "ami.secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    settings = ami_settings(AsteriskConfig(ami_enabled=True, ami_secret_file=secret))
    assert settings.secret == SECRET and SECRET not in repr(settings)


def test_redis_password_never_in_repr() -> None:
    config = parse_config({"store": {"redis": f"redis://:{SECRET}@10.0.0.5:6379/0"}})
    assert config.store.redis is not None and SECRET in config.store.redis
    assert SECRET not in repr(config) and SECRET not in repr(config.store)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_ami_secret_file_owner_only_accepted(tmp_path: Path, mode: int) -> None:
    secret = tmp_path / "ami.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(mode)
    assert ami_secret(AsteriskConfig(ami_secret_file=secret)) == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610])
def test_ami_secret_file_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    """Refused with the mode and the fix, like private keys and the API token."""
    secret = tmp_path / "ami.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=rf"ami_secret_file: .*mode {mode:04o}.*chmod 600"):
        ami_secret(AsteriskConfig(ami_secret_file=secret))


def test_ami_secret_file_missing_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ami_secret_file: cannot read"):
        ami_secret(AsteriskConfig(ami_secret_file=tmp_path / "absent"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    binary.chmod(0o600)
    with pytest.raises(ConfigError, match=r"ami_secret_file: .* not UTF-8"):
        ami_secret(AsteriskConfig(ami_secret_file=binary))
