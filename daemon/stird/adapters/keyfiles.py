"""Private keys and certificates on disk.

Private keys are written with mode 0600 and refused when group- or world-accessible
(an operator mistake that leaks signing authority); certificates are public files.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError
from stird.core.verdict import Credential

MAX_FILE_BYTES = 1 << 20
PRIVATE_NAME, PUBLIC_NAME = "private.pem", "public.pem"


class KeyFileError(Exception):
    """A key or certificate file is missing, unreadable, unsafe or malformed."""


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return data


def check_private_mode(path: Path) -> None:
    """Refuse a private key that group or others may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            "run: chmod 600 " + str(path)
        )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key (PKCS#8 or SEC1 PEM) from a file only its owner can read."""
    data = _read(path)
    check_private_mode(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} holds no unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: ES256 needs an EC P-256 key")
    return key


def load_certs(path: Path) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM (or DER) file, in file order."""
    try:
        return certs.load_pem_chain(_read(path))
    except StirError as exc:
        raise KeyFileError(f"{path}: {exc.detail}") from exc


def load_cert(path: Path) -> x509.Certificate:
    return load_certs(path)[0]


def _write(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write a temporary file beside ``path``, then rename it into place: a full or
    read-only disk leaves neither a truncated file nor a damaged old one behind."""
    if not force and os.path.lexists(path):
        raise KeyFileError(f"{path} exists (use --force to replace it)")
    temp: str | None = None
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as exc:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc


def write_public_file(path: Path, data: bytes) -> None:
    _write(path, data, 0o644, force=True)


def write_private_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write secret material with mode 0600 (refusing to replace a file unless ``force``)."""
    _write(path, data, 0o600, force=force)


def read_private_file(path: Path) -> bytes:
    """Read secret material, refusing a file that group or others may access."""
    data = _read(path)
    check_private_mode(path)
    return data


def read_public_file(path: Path) -> bytes:
    return _read(path)


def write_keypair(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Generate a P-256 key pair: ``private.pem`` (0600, PKCS#8) and ``public.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(directory / PRIVATE_NAME, private, 0o600, force=force)
    _write(directory / PUBLIC_NAME, public, 0o644, force=force)
    return directory / PRIVATE_NAME, directory / PUBLIC_NAME


def credential_from_file_uri(uri: str) -> Credential | StirError:
    """Offline dereference of a ``file:`` info URI; other schemes need the fetcher."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return StirError(
            SipStatus.BAD_IDENTITY_INFO,
            f"{uri} is not fetched offline (pass --cert)",
            check=Check.CREDENTIAL,
        )
    try:
        return Credential(chain=load_certs(Path(unquote(parts.path))))
    except KeyFileError as exc:
        return StirError(SipStatus.BAD_IDENTITY_INFO, str(exc), check=Check.CREDENTIAL)
