"""The DTLS fingerprints Asterisk is about to offer, for the `mky` claim of msec.

With ``dtls_cert_file`` Asterisk reads the certificate on every call, after the pre-dial
handler, and offers ``a=fingerprint:SHA-256 <upper-case hex pairs>`` on every ``m=`` line
(../shared/asterisk facts 18–22). With ``dtls_auto_generate_cert`` each call and stream gets
a fresh certificate, so msec needs a configured file. A missing or unreadable file still
lets Asterisk send the INVITE with an empty fingerprint (fact 23): stird fails closed and
never signs an `mky` it cannot know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

MAX_CERT_FILE = 1 << 20
#: Asterisk's dtls_fingerprint choices → hashlib names.
HASHES = {"SHA-256": "sha256", "SHA-1": "sha1"}


class DtlsError(Exception):
    """The endpoint's certificate file cannot be read or holds no certificate."""


@dataclass(frozen=True, slots=True)
class _Seen:
    stamp: tuple[int, int, int, int]  # device, inode, size, mtime (ns)
    fingerprint: str


def fingerprint_of(pem: bytes, hash_name: str = "SHA-256") -> str:
    """Upper-case hex pairs joined by ':' of the first certificate's DER, as Asterisk
    prints it (and as ``openssl x509 -fingerprint`` does)."""
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except ValueError as exc:
        raise DtlsError(f"no PEM certificate ({exc})") from None
    digest = hashlib.new(HASHES[hash_name], cert.public_bytes(Encoding.DER)).digest()
    return ":".join(f"{byte:02X}" for byte in digest)


class DtlsCertificates:
    """Endpoint name → its ``dtls_cert_file``; the fingerprint is recomputed whenever the
    file's inode, size or mtime changes (atomic replacement included)."""

    def __init__(self, mapping: Mapping[str, Path], hash: str = "SHA-256") -> None:
        name = hash.upper()
        if name not in HASHES:
            raise ValueError(f"dtls fingerprint hash must be one of {', '.join(HASHES)}")
        self.hash = name
        self._paths = {endpoint: Path(path) for endpoint, path in mapping.items()}
        self._seen: dict[str, _Seen] = {}

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._paths

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._paths)

    def fingerprint(self, endpoint: str) -> str | None:
        """The fingerprint Asterisk offers for ``endpoint``; None if it has no configured
        certificate; DtlsError if it has one that cannot be used."""
        path = self._paths.get(endpoint)
        if path is None:
            return None
        try:
            st = path.stat()
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            seen = self._seen.get(endpoint)
            if seen is not None and seen.stamp == stamp:
                return seen.fingerprint
            if st.st_size > MAX_CERT_FILE:
                raise DtlsError(f"{path} is larger than {MAX_CERT_FILE} bytes")
            value = fingerprint_of(path.read_bytes(), self.hash)
        except OSError as exc:
            raise DtlsError(f"endpoint {endpoint}: cannot read {path} ({exc.strerror})") from None
        except DtlsError as exc:
            raise DtlsError(f"endpoint {endpoint}: {path}: {exc}") from None
        self._seen[endpoint] = _Seen(stamp, value)
        return value

    def sdp(self, endpoint: str, streams: int = 1) -> str | None:
        """A minimal SDP offer with one ``a=fingerprint`` per ``m=`` line, as Asterisk
        would write it, from which the signer computes `mky`; None without a certificate."""
        value = self.fingerprint(endpoint)
        if value is None:
            return None
        head = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        media = f"m=audio 9 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:{self.hash} {value}\r\n"
        return head + media * max(1, streams)


__all__ = ["HASHES", "DtlsCertificates", "DtlsError", "fingerprint_of"]
