"""Encryption key files for out-of-band PASSporTs (``stird keygen --type x25519`` and
``--type mlkem768-x25519``)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from stird.adapters import enckeys
from stird.adapters.keyfiles import KeyFileError
from stird.core import oob
from stird.core.oob import OobSuite
from tests.core.vectors import RFC8225_TOKEN


@pytest.mark.parametrize("kind", enckeys.KEY_TYPES)
def test_keygen_writes_private_0600_and_public_jwks(tmp_path: Path, kind: str) -> None:
    private, public = enckeys.write_enc_keypair(tmp_path / "k", kind)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    (key,) = enckeys.load_decryption_keys(private)
    (pub,) = enckeys.load_recipient_keys(public)
    assert key.suite is OobSuite(kind) and key.public_key() == pub
    published = json.loads(public.read_text())["keys"][0]
    assert "d" not in published and "priv" not in published
    (entry,) = oob.seal(RFC8225_TOKEN, [pub], "12025550101")
    assert oob.open_entry(entry, [key], "12025550101") == RFC8225_TOKEN


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    enckeys.write_enc_keypair(tmp_path)
    with pytest.raises(KeyFileError, match="exists"):
        enckeys.write_enc_keypair(tmp_path)
    enckeys.write_enc_keypair(tmp_path, force=True)


def test_unknown_type_and_unsafe_private_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="unknown encryption key type"):
        enckeys.write_enc_keypair(tmp_path, "rsa")
    private, public = enckeys.write_enc_keypair(tmp_path)
    private.chmod(0o644)
    with pytest.raises(KeyFileError, match="group or others"):
        enckeys.load_decryption_keys(private)
    public.write_text('{"keys": [{"kty": "RSA"}]}')
    with pytest.raises(KeyFileError, match="unsupported JWK"):
        enckeys.load_recipient_keys(public)
