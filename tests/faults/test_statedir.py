"""Fault injection, state directory (issue #9). What stird writes under ``[server]
state_dir`` (app.py, cps_app.py, oob_app.py): only the embedded default's development
material in ``dev/`` — ``private.pem``, ``public.pem``, ``cert.pem``, ``enc-private.jwk``,
``enc-public.jwks`` — once, at startup. Pins, replay and CPS state live in the store, not
on disk, so nothing is written at runtime.

A read-only or full state dir is a clear startup error (exit 2 and the OS's reason, no
traceback) and leaves no truncated key behind; an existing credential survives and is used
while the dir is full or read-only, at startup and at runtime. The filesystems are small
tmpfs mounts (tests run as root); where mounting is impossible those tests are skipped
and the ENOSPC case still runs by making the write fail at the adapter boundary."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stird.adapters import keyfiles
from stird.wiring.app import ensure_dev_credential
from tests.faults.helpers import CALLEE, CALLER, post, running, server_config, verify_body

STIRD = Path(sys.executable).parent / "stird"
DEV_FILES = ("cert.pem", "enc-private.jwk", "enc-public.jwks", "private.pem", "public.pem")


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, check=False)  # fmt: skip
    return done.returncode == 0


@contextlib.contextmanager
def tmpfs(where: Path, options: str = "size=64k") -> Iterator[Path]:
    if not _mount(where, options):
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def fill(where: Path) -> Path:
    """Write until the filesystem says ENOSPC; returns the filler file."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def serve_exit(state: Path) -> subprocess.CompletedProcess[str]:
    """``stird serve`` on ``state``; it must exit on its own (a start would be a bug)."""
    argv = [str(STIRD), "serve", "--state-dir", str(state), "--http", "127.0.0.1:0",
            "--jsonrpc", "off", "--agi", "off"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


def snapshot(dev: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dev.iterdir())}


async def _signs_and_verifies(state: Path) -> None:
    async with running(server_config(state.parent, state_dir=state)) as (_, base):
        signed = await post(base, "/v1/sign", {"orig": CALLER, "dest": [CALLEE], "ppt": "shaken"})
        verdict = await post(base, "/v1/verify", verify_body(signed["identity"]))
        assert verdict["verdict"] == "valid"


@pytest.mark.parametrize(
    ("options", "prepare", "message"),
    [
        ("size=64k,ro", None, "Read-only file system"),
        ("size=64k", fill, "No space left on device"),
    ],
    ids=["read-only", "full"],
)
def test_unwritable_state_dir_is_a_clear_startup_error(
    tmp_path: Path, options: str, prepare: Any, message: str
) -> None:
    with tmpfs(tmp_path / "fs", options) as fs:
        if prepare is not None:
            prepare(fs)
        done = serve_exit(fs)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
        dev = fs / "dev"
        leftovers = sorted(p.name for p in dev.iterdir()) if dev.exists() else []
        assert leftovers == [], f"half-written state left behind: {leftovers}"


async def test_full_then_freed_state_dir_starts(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        filler = fill(fs)
        with pytest.raises(keyfiles.KeyFileError, match="No space left on device"):
            ensure_dev_credential(fs, 1_800_000_000)
        filler.unlink()
        await _signs_and_verifies(fs)
        assert sorted(p.name for p in (fs / "dev").iterdir()) == list(DEV_FILES)


@pytest.mark.parametrize("fault", ["ro", "full"])
async def test_existing_state_is_kept_and_used_when_the_dir_turns_unwritable(
    tmp_path: Path, fault: str
) -> None:
    with tmpfs(tmp_path / "fs") as fs:
        await _signs_and_verifies(fs)  # creates the development material
        before = snapshot(fs / "dev")
        assert sorted(before) == list(DEV_FILES)
        if fault == "ro":
            remount(fs, "ro")
        else:
            fill(fs)
        await _signs_and_verifies(fs)  # starts on what is there; nothing needs writing
        assert snapshot(fs / "dev") == before
        if fault == "ro":
            remount(fs, "rw")


class _FullDisk(io.FileIO):
    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_at_the_adapter_boundary_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same fault without a mount: every file write of keyfiles fails with ENOSPC."""
    real_fdopen = os.fdopen

    def full_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return _FullDisk(fd, "wb")

    monkeypatch.setattr(os, "fdopen", full_fdopen)
    with pytest.raises(keyfiles.KeyFileError, match="No space left on device"):
        ensure_dev_credential(tmp_path, 1_800_000_000)
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == []
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    key, cert = ensure_dev_credential(tmp_path, 1_800_000_000)
    assert keyfiles.load_private_key(key) and keyfiles.load_certs(cert)


def test_half_written_encryption_key_pair_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stird.adapters import enckeys
    from stird.wiring.cps_app import ensure_dev_enc_key

    real = keyfiles.write_public_file

    def full_for_the_public_key(path: Path, data: bytes) -> None:
        if path.name == enckeys.PUBLIC_NAME:
            raise keyfiles.KeyFileError(f"cannot write {path}: No space left on device")
        real(path, data)

    monkeypatch.setattr(keyfiles, "write_public_file", full_for_the_public_key)
    with pytest.raises(keyfiles.KeyFileError):
        ensure_dev_enc_key(tmp_path)
    monkeypatch.setattr(keyfiles, "write_public_file", real)
    _, public = ensure_dev_enc_key(tmp_path)  # space again: the next start
    assert enckeys.load_recipient_keys(public)
