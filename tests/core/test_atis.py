"""The ATIS-style CPS profile (DIGEST §5.2): paths, the passports digest, Bearer tokens."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import atis
from stird.core.errors import StirError

PPT = "eyJhbGciOiJFUzI1NiJ9.eyJpYXQiOjF9.c2ln"


def test_digest_is_sha256_of_json_stringify() -> None:
    expected = hashlib.sha256(f'["{PPT}","a.b.c"]'.encode()).digest()
    assert atis.passports_digest([PPT, "a.b.c"]) == "sha256-" + base64.b64encode(expected).decode()


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://cps.example", "https://cps.example/passports/12025550101/12025550100"),
        ("https://cps.example/api/", "https://cps.example/api/passports/12025550101/12025550100"),
        (
            "https://cps.example/passports/1234",
            "https://cps.example/passports/1234/12025550101/12025550100",
        ),
    ],
)
def test_passports_url(base: str, url: str) -> None:
    assert atis.passports_url(base, "12025550101", "12025550100") == url


def test_passports_url_refuses_non_digits() -> None:
    with pytest.raises(StirError, match="1 to 15 digits"):
        atis.passports_url("https://cps.example", "+12025550101", "12025550100")


def test_publish_and_retrieve_tokens() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    publish = atis.AuthRequest(atis.Action.PUBLISH, "1234", "cps.example", "12025550101",
                               "12025550100", (PPT,))  # fmt: skip
    jti = str(uuid.uuid4())
    token = atis.auth_token(publish, key, "https://certs.example/sp.pem", now=1000, jti=jti)
    header, claims = atis.read_auth_token(token, key.public_key())
    assert header == {"alg": "ES256", "typ": "JWT", "x5u": "https://certs.example/sp.pem"}
    assert claims == {
        "iat": 1000, "exp": 1060, "action": "publish", "spc": "1234", "iss": "1234",
        "aud": "cps.example", "jti": jti, "dest": {"tn": ["12025550101"]},
        "orig": {"tn": "12025550100"}, "passports": atis.passports_digest([PPT]),
    }  # fmt: skip
    retrieve = atis.AuthRequest(atis.Action.RETRIEVE, "1234", "cps.example", "12025550101",
                                "12025550100")  # fmt: skip
    _, claims = atis.read_auth_token(
        atis.auth_token(retrieve, key, "https://x/y", now=5, jti=jti), key.public_key()
    )
    assert claims["action"] == "retrieve" and "exp" not in claims and "passports" not in claims
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(StirError, match="signature"):
        atis.read_auth_token(token, other)


def test_passports_body() -> None:
    body = atis.passports_body([PPT])
    assert atis.parse_passports_body(body) == (PPT,)
    assert atis.parse_passports_body(b'{"passports": [1, "", "' + PPT.encode() + b'"]}') == (PPT,)
    for bad in (b"[]", b"nope", b'{"passports": "x"}'):
        with pytest.raises(StirError):
            atis.parse_passports_body(bad)
