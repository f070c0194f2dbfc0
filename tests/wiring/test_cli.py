"""The offline ``stird`` command: keygen, cert, sign, verify, decode."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stird.core.sipdate import format_sip_date
from tests.conftest import Cli, Signer

X5U = "https://cert.example.org/stir.pem"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 20000 UDP/TLS/RTP/SAVP 0\r\n"
    "a=fingerprint:SHA-256 4AADB9B13F82183B540212DF3E5D496B19E57CAB3E4B652E7D463F5442CD54F1\r\n"
    "m=video 20002 UDP/TLS/RTP/SAVP 96\r\n"
    "a=fingerprint:sha-256 02:1A:CC:54:27:AB:EB:9C:53:3F:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1:7A:03:A2:7D:F9:B0:7F:46:19:B2\r\n"
)
FROM = "sip:+12025550100@pbx.example.com;user=phone"
TO = "tel:+12025550101"


@pytest.fixture
def offer(tmp_path: Path) -> Path:
    path = tmp_path / "offer.sdp"
    path.write_text(SDP)
    return path


def sign(cli: Cli, signer: Signer, *extra: object) -> str:
    result = cli("sign", "--key", signer.key, "--x5u", X5U, "--orig", "+12025550100",
                 "--dest", "+12025550101", *extra)  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.count("\n") == 1  # the header value and nothing else
    return result.out.strip()


def verify(cli: Cli, signer: Signer, value: str, *extra: object) -> tuple[int, dict[str, object]]:
    result = cli("verify", "--identity", value, "--from", FROM, "--to", TO,
                 "--cert", signer.cert, *extra)  # fmt: skip
    out = result.json()
    assert isinstance(out, dict)
    return result.code, out


@pytest.mark.parametrize(
    ("orig", "dest"), [("+12025550100", "+12025550101"), ("12025550100", "12025550101")]
)
def test_verify_takes_bare_telephone_numbers(
    cli: Cli, signer: Signer, offer: Path, orig: str, dest: str
) -> None:
    """README: IDs may be telephone numbers, for --from/--to as for --orig/--dest."""
    value = sign(cli, signer, "--sdp", offer)
    result = cli("verify", "--identity", value, "--from", orig, "--to", dest,
                 "--cert", signer.cert, "--sdp", offer)  # fmt: skip
    assert result.code == 0 and result.json()["verdict"] == "valid", result  # type: ignore[index]
    other = cli("verify", "--identity", value, "--from", "+12025550199", "--to", dest,
                "--cert", signer.cert, "--sdp", offer)  # fmt: skip
    assert other.code == 1, other


def test_keygen_modes(signer: Signer) -> None:
    assert stat.S_IMODE(signer.key.stat().st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in signer.public.read_bytes()
    assert b"BEGIN CERTIFICATE" in signer.cert.read_bytes()


def test_keygen_refuses_to_overwrite(cli: Cli, signer: Signer) -> None:
    result = cli("keygen", "--out", signer.key.parent)
    assert result.code == 2
    assert "exists" in result.err


def test_msec_round_trip(cli: Cli, signer: Signer, offer: Path) -> None:
    """The issue's acceptance line: verify(sign(--sdp offer)) with the same offer."""
    value = sign(cli, signer, "--sdp", offer)
    assert value.endswith(f";info=<{X5U}>;alg=ES256;ppt=msec")
    code, out = verify(cli, signer, value, "--sdp", offer)
    assert (code, out["verdict"], out["code"]) == (0, "valid", None)
    decoded = cli("decode", value).json()
    assert isinstance(decoded, dict)
    assert decoded["claims"]["mky"] == [
        {
            "alg": "sha-256",
            "dig": "021ACC5427ABEB9C533F3E4B652E7D463F5442CD54F17A03A27DF9B07F4619B2",
        },
        {
            "alg": "sha-256",
            "dig": "4AADB9B13F82183B540212DF3E5D496B19E57CAB3E4B652E7D463F5442CD54F1",
        },
    ]


def test_msec_with_another_offer_is_438(
    cli: Cli, signer: Signer, offer: Path, tmp_path: Path
) -> None:
    value = sign(cli, signer, "--sdp", offer)
    other = tmp_path / "other.sdp"
    other.write_text(SDP.replace("4AADB9B1", "4AADB9B2"))
    code, out = verify(cli, signer, value, "--sdp", other)
    assert (code, out["verdict"], out["code"]) == (1, "invalid", 438)


def test_compact_needs_date(cli: Cli, signer: Signer, offer: Path) -> None:
    iat = int(time.time())
    value = sign(cli, signer, "--sdp", offer, "--compact", "--iat", iat)
    assert value.startswith("..")
    date = format_sip_date(iat)
    code, out = verify(cli, signer, value, "--sdp", offer, "--date", date, "--now", iat + 5)
    assert (code, out["verdict"]) == (0, "valid"), out
    code, out = verify(cli, signer, value, "--sdp", offer, "--now", iat + 5)
    assert (code, out["code"]) == (1, 438)
    later = format_sip_date(iat + 1)  # the Date is signed: another second, another PASSporT
    code, out = verify(cli, signer, value, "--sdp", offer, "--date", later, "--now", iat + 5)
    assert (code, out["code"]) == (1, 438)


def test_stale_is_403(cli: Cli, signer: Signer) -> None:
    value = sign(cli, signer, "--ppt", "none", "--iat", 1_700_000_000)
    code, out = verify(cli, signer, value, "--now", 1_700_000_061)
    assert (code, out["code"], out["reason"]) == (1, 403, "Stale Date")
    code, out = verify(cli, signer, value, "--now", 1_700_000_200, "--max-age", 300)
    assert (code, out["code"]) == (1, 437)  # the certificate was issued after iat


def test_shaken_defaults(cli: Cli, signer: Signer) -> None:
    value = sign(cli, signer, "--ppt", "shaken")
    decoded = cli("decode", value).json()
    assert isinstance(decoded, dict)
    assert decoded["claims"]["attest"] == "A"
    assert len(decoded["claims"]["origid"]) == 36
    assert decoded["header"]["ppt"] == "shaken"
    code, out = verify(cli, signer, value)
    assert (code, out["attest"]) == (0, "A")


def test_trust_anchor_path(cli: Cli, signer: Signer, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert cli("keygen", "--out", ca_dir).code == 0
    ca = tmp_path / "ca.pem"
    assert cli("cert", "--key", ca_dir / "private.pem", "--ca", "--out", ca).code == 0
    leaf = tmp_path / "leaf.pem"
    args = ("cert", "--key", signer.key, "--tn-range", "+12025550000,1000", "--issuer-key",
            ca_dir / "private.pem", "--issuer-cert", ca, "--out", leaf)  # fmt: skip
    assert cli(*args).code == 0
    chain = tmp_path / "chain.pem"
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    value = sign(cli, signer, "--ppt", "none")
    result = cli("verify", "--identity", value, "--from", FROM, "--to", TO, "--cert", chain,
                 "--trust-anchor", ca)  # fmt: skip
    assert result.code == 0, result.out
    other = cli("verify", "--identity", value, "--from", FROM, "--to", TO, "--cert", chain,
                "--trust-anchor", signer.cert)  # fmt: skip
    assert other.code == 1
    assert other.json()["code"] == 437


def test_offline_info_without_cert_is_436(cli: Cli, signer: Signer) -> None:
    value = sign(cli, signer, "--ppt", "none")
    result = cli("verify", "--identity", value, "--trust-anchor", signer.cert)
    assert result.code == 1
    assert result.json()["code"] == 436


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("verify", "--identity", "x;info=<h:x>"), "--cert, --trust-anchor or --fetch"),
        (("sign", "--key", "KEY", "--x5u", X5U, "--orig", "alice", "--dest", "1"), "400"),
        (
            (
                "sign",
                "--key",
                "KEY",
                "--x5u",
                X5U,
                "--orig",
                "1",
                "--dest",
                "2",
                "--compact",
                "--ppt",
                "shaken",
            ),
            "compact",
        ),
        (("sign", "--key", "KEY", "--x5u", X5U, "--orig", "1", "--dest", "2"), "fingerprint"),
        (
            ("sign", "--key", "/nonexistent", "--x5u", X5U, "--orig", "1", "--dest", "2"),
            "cannot read",
        ),
        (("cert", "--key", "KEY", "--out", "OUT"), "400"),
        (("cert", "--key", "KEY", "--tn-range", "12", "--out", "OUT"), "START,COUNT"),
        (("decode", "garbage"), "436"),
    ],
)
def test_usage_errors_exit_2(cli: Cli, signer: Signer, argv: tuple[str, ...], message: str) -> None:
    argv = tuple(str(signer.key) if a == "KEY" else str(signer.dir / "o.pem") if a == "OUT" else a
                 for a in argv)  # fmt: skip
    result = cli(*argv)
    assert result.code == 2, result
    assert message in result.err


def test_group_readable_key_is_refused(cli: Cli, signer: Signer) -> None:
    os.chmod(signer.key, 0o640)
    result = cli(
        "sign", "--key", signer.key, "--x5u", X5U, "--orig", "1", "--dest", "2", "--ppt", "none"
    )
    assert result.code == 2
    assert "chmod 600" in result.err


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "stird", "decode", "--help"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0
    assert "VALUE" in proc.stdout.upper()


@pytest.mark.parametrize("command", ["verify", "decode"])
def test_closed_pipe_ends_quietly(cli: Cli, signer: Signer, command: str) -> None:
    """`stird verify ... | head`: the reader has gone; no traceback, exit 141 (SIGPIPE's)."""
    value = sign(cli, signer, "--ppt", "shaken")
    argv = {"verify": ["verify", "--identity", value, "--from", FROM, "--to", TO,
                       "--cert", str(signer.cert)],
            "decode": ["decode", value]}[command]  # fmt: skip
    read_end, write_end = os.pipe()
    os.close(read_end)  # a reader that has already exited
    try:
        proc = subprocess.run([sys.executable, "-m", "stird", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_verify_fetch_prints_the_full_verdict(cli: Cli, signer: Signer, served_cert: str) -> None:
    result = cli("sign", "--key", signer.key, "--x5u", served_cert, "--orig", "+12025550100",
                 "--dest", "+12025550101", "--ppt", "shaken")  # fmt: skip
    value = result.out.strip()
    common = ("verify", "--identity", value, "--from", FROM, "--to", TO, "--fetch", "--allow-http")
    ok = cli(*common, "--allow-network", "127.0.0.0/8", "--trust-anchor", signer.cert)
    out = ok.json()
    assert isinstance(out, dict)
    assert ok.code == 0, out
    assert (out["verstat"], out["action"], out["attest"]) == (
        "TN-Validation-Passed",
        "continue",
        "A",
    )
    refused = cli(*common, "--trust-anchor", signer.cert)  # loopback is refused by default
    out = refused.json()
    assert isinstance(out, dict)
    assert (refused.code, out["code"], out["action"]) == (1, 436, "reject")
    assert "refused address" in out["detail"]
    untrusted = cli(*common, "--allow-network", "127.0.0.0/8")  # fetched, but no anchor
    assert untrusted.code == 1 and untrusted.json()["code"] == 437  # type: ignore[index]


def test_fetch_and_cert_exclude_each_other(cli: Cli, signer: Signer) -> None:
    result = cli("verify", "--identity", "a;info=<https://x/c>", "--fetch", "--cert", signer.cert)
    assert result.code == 2 and "exclude" in result.err
