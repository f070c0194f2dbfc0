"""Interoperability with secsipidx (Debian package), an independent STIR/SHAKEN
implementation in Go: what stird signs, secsipidx accepts, and the other way round.
secsipidx also fetches stird's certificate over HTTP from the `x5u` URL."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, Signer
from tests.peers import require_peer

FROM = "sip:+12025550100@pbx.example.com;user=phone"
TO = "tel:+12025550101"


def secsipidx() -> str:
    return require_peer("secsipidx")


def run_secsipidx(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([secsipidx(), *map(str, args)], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip


def stird_sign(cli: Cli, signer: Signer, x5u: str, *extra: str) -> str:
    result = cli("sign", "--key", signer.key, "--x5u", x5u, "--orig", "+12025550100",
                 "--dest", "+12025550101", "--ppt", "shaken", "--attest", "A", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return result.out.strip()


def tamper(value: str) -> str:
    token, params = value.split(";", 1)
    head, body, sig = token.split(".")
    flipped = ("B" if sig[10] != "B" else "C").join((sig[:10], sig[11:]))
    return f"{head}.{body}.{flipped};{params}"


def test_secsipidx_accepts_stird_shaken_with_public_key(cli: Cli, signer: Signer) -> None:
    value = stird_sign(cli, signer, "https://cert.example.org/stir.pem")
    ok = run_secsipidx("-check", "-identity", value, "-p", signer.public)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok
    bad = run_secsipidx("-check", "-identity", tamper(value), "-p", signer.public)
    assert bad.returncode != 0, bad


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def secsipidx_server() -> Iterator[str]:
    """``secsipidx -http-srv`` on loopback: /v1/check fetches x5u and verifies."""
    port = free_port()
    proc = subprocess.Popen([secsipidx(), "-http-srv", f"127.0.0.1:{port}", "-timeout", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1/check"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def secsipidx_check(url: str, value: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=value.encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def test_secsipidx_fetches_stird_certificate_from_x5u(
    cli: Cli, signer: Signer, served_cert: str, secsipidx_server: str
) -> None:
    """secsipidx downloads stird's STIR certificate (with its TNAuthList) and verifies."""
    value = stird_sign(cli, signer, served_cert)
    assert secsipidx_check(secsipidx_server, value) == (200, "OK")
    status, body = secsipidx_check(secsipidx_server, tamper(value))
    assert status != 200
    assert body == "FAILED"


@pytest.mark.parametrize("attest", ["A", "B", "C"])
def test_stird_accepts_secsipidx_shaken(cli: Cli, signer: Signer, attest: str) -> None:
    signed = run_secsipidx("-sign-full", "-o", "12025550100", "-d", "12025550101", "-a", attest,
                           "-k", signer.key, "-x5u", "https://cert.example.org/stir.pem",
                           "-orig-id", "123e4567-e89b-12d3-a456-426655440000")  # fmt: skip
    assert signed.returncode == 0, signed
    value = signed.stdout.strip()
    result = cli("verify", "--identity", value, "--from", FROM, "--to", TO, "--cert", signer.cert)
    out = result.json()
    assert isinstance(out, dict)
    assert result.code == 0, out
    assert out["attest"] == attest
    assert out["passports"][0]["ppt"] == "shaken"
    bad = cli(
        "verify", "--identity", tamper(value), "--from", FROM, "--to", TO, "--cert", signer.cert
    )
    assert bad.code == 1
    assert bad.json()["code"] == 438


def test_stird_rejects_secsipidx_token_for_another_caller(cli: Cli, signer: Signer) -> None:
    signed = run_secsipidx("-sign-full", "-o", "12025550199", "-d", "12025550101", "-a", "A",
                           "-k", signer.key, "-x5u", "https://cert.example.org/stir.pem")  # fmt: skip
    result = cli("verify", "--identity", signed.stdout.strip(),
                 "--from", "sip:+12025550199@x;user=phone", "--to", TO, "--cert", signer.cert)  # fmt: skip
    out = result.json()
    assert isinstance(out, dict)
    assert (result.code, out["code"]) == (1, 438)  # TN outside the certificate's TNAuthList
    assert out["passports"][0]["failed_check"] == "authority"


def test_secsipidx_key_file_is_compatible(signer: Signer) -> None:
    """secsipidx reads stird's PKCS#8 key (the same file operators hand both tools)."""
    signed = run_secsipidx("-sign", "-o", "1", "-d", "2", "-k", signer.key, "-x5u", "https://x/c")
    assert signed.returncode == 0 and signed.stdout.count(".") == 2, signed
    assert Path(signer.key).stat().st_mode & 0o077 == 0
