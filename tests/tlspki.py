"""A throw-away PKI for loopback TLS servers in tests (generated at test time)."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stird.core import certs


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    signer_cert, signer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_cert.subject if signer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), False
        )
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(True, None), True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        san = [x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]
        builder = (
            builder.add_extension(x509.BasicConstraints(False, None), True)
            .add_extension(x509.SubjectAlternativeName(san), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        )
    return builder.sign(signer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext  # presents a localhost / 127.0.0.1 cert issued by the test CA
    client: ssl.SSLContext  # trusts the test CA
    stranger: ssl.SSLContext  # trusts another CA only


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    out = tmp_path_factory.mktemp("tls")
    ca_key, other_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue("stird test CA", ca_key, None)
    other = _issue("stird other CA", other_key, None)
    leaf = _issue("localhost", leaf_key, (ca, ca_key))
    (out / "ca.pem").write_bytes(certs.cert_to_pem(ca))
    (out / "other.pem").write_bytes(certs.cert_to_pem(other))
    (out / "leaf.pem").write_bytes(certs.cert_to_pem(leaf))
    (out / "leaf.key").write_bytes(_pem_key(leaf_key))
    (out / "leaf.key").chmod(0o600)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(out / "leaf.pem", out / "leaf.key")
    return Tls(
        server=server,
        client=ssl.create_default_context(cafile=str(out / "ca.pem")),
        stranger=ssl.create_default_context(cafile=str(out / "other.pem")),
    )
