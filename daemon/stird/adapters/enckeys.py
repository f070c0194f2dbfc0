"""Encryption key pairs for out-of-band PASSporTs on disk (``stird keygen --type x25519``
or ``--type mlkem768-x25519``).

Files (JSON, see :mod:`stird.core.oob` for the JWK members):

    enc-private.jwk   mode 0600   the private JWK (RFC 8037 ``d``, or ``priv`` for the hybrid)
    enc-public.jwks   mode 0644   a JWK Set {"keys": [public JWK]} (RFC 7517 §5), ready
                                  to be signed into a key publication (stird.core.oobkeys)
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from stird.adapters import keyfiles
from stird.adapters.keyfiles import KeyFileError
from stird.core.errors import StirError
from stird.core.oob import DecryptionKey, OobSuite, RecipientKey, key_from_jwk, private_key_from_jwk

PRIVATE_NAME, PUBLIC_NAME = "enc-private.jwk", "enc-public.jwks"
KEY_TYPES = tuple(suite.value for suite in OobSuite)  # "x25519", "mlkem768-x25519"


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("ascii")


def _suite(kind: str) -> OobSuite:
    try:
        return OobSuite(kind)
    except ValueError:
        raise KeyFileError(f"unknown encryption key type {kind!r} (known: "
                           f"{', '.join(KEY_TYPES)})") from None  # fmt: skip


def write_enc_keypair(
    directory: Path, kind: str = "x25519", *, force: bool = False
) -> tuple[Path, Path]:
    """Generate an encryption key pair of ``kind``; returns (private, public) paths."""
    key = DecryptionKey.generate(_suite(kind), secrets.token_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    keyfiles.write_private_file(private, _dump(key.private_jwk()), force=force)
    if public.exists() and not force:
        raise KeyFileError(f"{public} exists (use --force to replace it)")
    keyfiles.write_public_file(public, _dump({"keys": [key.public_key().jwk()]}))
    return private, public


def _json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{path} is not JSON") from None


def _jwks(doc: Any, path: Path) -> list[Any]:
    """A JWK Set's keys, or a single JWK as a list of one."""
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        return list(doc["keys"])
    if isinstance(doc, dict):
        return [doc]
    raise KeyFileError(f"{path} holds neither a JWK nor a JWK Set")


def load_decryption_keys(path: Path) -> tuple[DecryptionKey, ...]:
    """Private keys from a private JWK or JWK Set file only its owner can read."""
    doc = _json(keyfiles.read_private_file(path), path)
    try:
        return tuple(private_key_from_jwk(jwk) for jwk in _jwks(doc, path))
    except StirError as exc:
        raise KeyFileError(f"{path}: {exc.detail}") from None


def load_recipient_keys(path: Path) -> tuple[RecipientKey, ...]:
    """Public keys from a JWK or JWK Set file."""
    doc = _json(keyfiles.read_public_file(path), path)
    try:
        return tuple(key_from_jwk(jwk) for jwk in _jwks(doc, path))
    except StirError as exc:
        raise KeyFileError(f"{path}: {exc.detail}") from None
