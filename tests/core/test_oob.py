"""Out-of-band encryption (RFC 9180 HPKE for RFC 8816 §8.1 step 4) and CPS parsers.

The RFC 9180 A.1.1 vector (DIGEST §10.7) is checked with a reference implementation of
the RFC's key schedule written here from X25519, HKDF and AES-GCM primitives, because
``cryptography``'s HPKE API draws its own ephemeral key; ``hpke`` is then shown to
interoperate with that reference in both directions.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import struct
import time

import pytest
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.core import certs, cps, jose, oob, oobkeys
from stird.core.errors import Check, SipStatus, StirError
from stird.core.oob import DecryptionKey, OobSuite
from tests.core.vectors import RFC8225_COMPACT, RFC8225_TOKEN

TN, OTHER_TN = "12025550101", "12025550102"

# ---------------------------------------------------------------- RFC 9180 reference
# DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, mode_base (RFC 9180 §4, §5).
KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0001)


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 §7.1.3 DeriveKeyPair for X25519: (skXm, pkXm)."""
    dkp_prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, dkp_prk, b"sk", b"", 32)
    pk = x25519.X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()
    return sk, pk


def dh(sk: bytes, pk: bytes) -> bytes:
    shared = x25519.X25519PrivateKey.from_private_bytes(sk).exchange(
        x25519.X25519PublicKey.from_public_bytes(pk)
    )
    assert shared != b"\0" * 32  # RFC 9180 §7.1.4
    return shared


def kem_shared_secret(dh_value: bytes, enc: bytes, pk_r: bytes) -> bytes:
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh_value)
    return labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r, 32)


def key_schedule(shared_secret: bytes, info: bytes) -> dict[str, bytes]:
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    return {
        "key_schedule_context": context,
        "secret": secret,
        "key": labeled_expand(HPKE_SUITE, secret, b"key", context, 16),
        "base_nonce": labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12),
        "exporter_secret": labeled_expand(HPKE_SUITE, secret, b"exp", context, 32),
    }


def nonce(base: bytes, seq: int) -> bytes:
    return bytes(a ^ b for a, b in zip(base, seq.to_bytes(12, "big"), strict=True))


def ref_seal(pk_r: bytes, info: bytes, pt: bytes, ikm_e: bytes | None = None) -> bytes:
    sk_e, enc = derive_key_pair(ikm_e or secrets.token_bytes(32))
    ctx = key_schedule(kem_shared_secret(dh(sk_e, pk_r), enc, pk_r), info)
    return enc + AESGCM(ctx["key"]).encrypt(ctx["base_nonce"], pt, b"")


def ref_open(sk_r: bytes, info: bytes, data: bytes) -> bytes:
    enc, ct = data[:32], data[32:]
    pk_r = x25519.X25519PrivateKey.from_private_bytes(sk_r).public_key().public_bytes_raw()
    ctx = key_schedule(kem_shared_secret(dh(sk_r, enc), enc, pk_r), info)
    return AESGCM(ctx["key"]).decrypt(ctx["base_nonce"], ct, b"")


# DIGEST §10.7, copied exactly.
A11 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key_schedule_context": "00725611c9d98c07c03f60095cd32d400d8347d45ed67097bbad50fc56da742d07cb6cffde367bb0565ba28bb02c90744a20f5ef37f30523526106f637abb05449",
    "secret": "12fff91991e93b48de37e7daddb52981084bd8aa64289c3788471d9a9712f397",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "exporter_secret": "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
}
A11_PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
A11_ENCRYPTIONS = [
    (
        0,
        "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
    ),
    (
        1,
        "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
    ),
    (
        2,
        "498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb72516491588d96a19ad4a683518973dcc180",
    ),
    (
        4,
        "583bd32bc67a5994bb8ceaca813d369bca7b2a42408cddef5e22f880b631215a09fc0012bc69fccaa251c0246d",
    ),
    (
        255,
        "7175db9717964058640a3a11fb9007941a5d1757fda1a6935c805c21af32505bf106deefec4a49ac38d71c9e0a",
    ),
    (
        256,
        "957f9800542b0b8891badb026d79cc54597cb2d225b54c00c5238c25d05c30e3fbeda97d2e0e1aba483a2df9f2",
    ),
]
A11_EXPORTS = [
    (b"", "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee"),
    (b"\x00", "2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5"),
    (b"TestContext", "e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931"),
]


def h(name: str) -> bytes:
    return bytes.fromhex(A11[name])


def test_rfc9180_a11_key_derivation_and_schedule() -> None:
    assert derive_key_pair(h("ikmE")) == (h("skEm"), h("pkEm"))
    assert derive_key_pair(h("ikmR")) == (h("skRm"), h("pkRm"))
    shared = kem_shared_secret(dh(h("skEm"), h("pkRm")), h("enc"), h("pkRm"))
    assert shared == h("shared_secret")
    assert kem_shared_secret(dh(h("skRm"), h("enc")), h("enc"), h("pkRm")) == shared  # Decap
    ctx = key_schedule(shared, h("info"))
    for name in ("key_schedule_context", "secret", "key", "base_nonce", "exporter_secret"):
        assert ctx[name] == h(name), name


def test_rfc9180_a11_encryptions_and_exports() -> None:
    ctx = key_schedule(h("shared_secret"), h("info"))
    for seq, ct in A11_ENCRYPTIONS:
        aad = f"Count-{seq}".encode()
        assert AESGCM(ctx["key"]).encrypt(nonce(ctx["base_nonce"], seq), A11_PT, aad).hex() == ct
    for exporter_context, value in A11_EXPORTS:
        out = labeled_expand(HPKE_SUITE, ctx["exporter_secret"], b"sec", exporter_context, 32)
        assert out.hex() == value


def test_rfc9180_a11_first_ciphertext_opens_with_cryptography_hpke() -> None:
    """seq 0 of the vector is a single-shot SealBase with aad "Count-0"."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    decrypt = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if decrypt is None:
        pytest.skip("this cryptography has no aad-taking HPKE entry point")
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    key = x25519.X25519PrivateKey.from_private_bytes(h("skRm"))
    data = h("enc") + bytes.fromhex(A11_ENCRYPTIONS[0][1])
    assert decrypt(suite, data, key, info=h("info"), aad=b"Count-0") == A11_PT


def test_reference_and_hpke_interoperate_with_stird_entries() -> None:
    """Reference SealBase → stird open; stird seal → reference OpenBase."""
    key = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)
    info, padded = oob.info_for(TN), RFC8225_TOKEN.encode().ljust(1024, b"\0")
    data = ref_seal(key.public_key().public, info, padded)
    entry = oob.entry_from_bytes(struct.pack(">BHHH", 1, 0x20, 1, 1) + data)
    assert oob.open_entry(entry, [key], TN) == RFC8225_TOKEN
    (sealed,) = oob.seal(RFC8225_TOKEN, [key.public_key()], TN)
    plain = ref_open(key.secret, info, sealed.enc + sealed.ct)
    assert plain.rstrip(b"\0").decode() == RFC8225_TOKEN


def test_reference_seal_with_vector_keys_opens_with_hpke() -> None:
    """The vector's ephemeral and recipient keys, aad empty: cryptography's hpke opens it."""
    data = ref_seal(h("pkRm"), h("info"), A11_PT, ikm_e=h("ikmE"))
    assert data[:32] == h("enc")
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sk_r = x25519.X25519PrivateKey.from_private_bytes(h("skRm"))
    assert suite.decrypt(data, sk_r, info=h("info")) == A11_PT
    mine = suite.encrypt(A11_PT, sk_r.public_key(), info=h("info"))
    assert ref_open(h("skRm"), h("info"), mine) == A11_PT


# ---------------------------------------------------------------- seal / open
@pytest.fixture(scope="module", params=list(OobSuite))
def key(request: pytest.FixtureRequest) -> DecryptionKey:
    return DecryptionKey.generate(request.param, secrets.token_bytes)


def test_round_trip(key: DecryptionKey) -> None:
    (entry,) = oob.seal(RFC8225_TOKEN, [key.public_key()], TN)
    assert entry.suite is key.suite and entry.bucket == 1024
    assert oob.open_entry(entry.text, [key], TN) == RFC8225_TOKEN
    assert oob.decode_entry(entry.text) == entry


def test_wrong_tn_in_info_does_not_open(key: DecryptionKey) -> None:
    (entry,) = oob.seal(RFC8225_TOKEN, [key.public_key()], TN)
    assert oob.open_entry(entry, [key], OTHER_TN) is None


def test_one_entry_per_key_each_opened_only_by_its_key() -> None:
    keys = [DecryptionKey.generate(s, secrets.token_bytes) for s in (*OobSuite, OobSuite.X25519)]
    entries = oob.seal(RFC8225_TOKEN, [k.public_key() for k in keys], TN)
    assert len(entries) == len(keys)
    for i, entry in enumerate(entries):
        for j, k in enumerate(keys):
            assert (oob.open_entry(entry, [k], TN) is not None) == (i == j)
        assert oob.open_entry(entry, keys, TN) == RFC8225_TOKEN  # trial decryption


def test_compact_form_refused() -> None:
    with pytest.raises(StirError):
        oob.seal(
            RFC8225_COMPACT,
            [DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()],
            TN,
        )


def long_token(length: int) -> str:
    head = jose.b64u_encode(b'{"alg":"ES256"}')
    stub = f"{head}.{jose.b64u_encode(b'{}')}.sig"
    pad = "x" * max(0, (length - len(stub)) * 3 // 4 - 12)
    token = f"{head}.{jose.b64u_encode(json.dumps({'p': pad}).encode())}.sig"
    return token


def test_padding_hides_length_within_a_bucket() -> None:
    key = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
    short, longer = long_token(300), long_token(1000)
    a, b = oob.seal(short, [key], TN)[0], oob.seal(longer, [key], TN)[0]
    assert len(a.text) == len(b.text)
    big = oob.seal(long_token(1500), [key], TN)[0]
    assert big.bucket == 2048
    with pytest.raises(StirError):
        oob.seal(long_token(9000), [key], TN)


def test_dummies_look_like_real_entries_and_never_repeat(key: DecryptionKey) -> None:
    (real,) = oob.seal(RFC8225_TOKEN, [key.public_key()], TN)
    dummies = [oob.dummy(1024, secrets.token_bytes, key.suite) for _ in range(50)]
    assert {len(d.to_bytes()) for d in dummies} == {len(real.to_bytes())}
    assert {d.to_bytes()[:7] for d in dummies} == {real.to_bytes()[:7]}  # same header
    assert len({d.text for d in dummies}) == len(dummies)
    assert len({d.enc for d in dummies}) == len(dummies)
    for d in dummies:
        assert oob.decode_entry(d.text) == d
        assert oob.open_entry(d, [key], TN) is None
    if key.suite is OobSuite.X25519:  # a genuine X25519 enc, not random bytes (DIGEST §6.1)
        assert all(d.enc[31] & 0x80 == 0 for d in dummies)


def test_decrypted_garbage_is_an_error() -> None:
    key = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes)
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    data = suite.encrypt(b"\xff" * 1024, key.public_key()._object, info=oob.info_for(TN))
    entry = oob.entry_from_bytes(struct.pack(">BHHH", 1, 0x20, 1, 1) + data)
    with pytest.raises(StirError):
        oob.open_entry(entry, [key], TN)


def test_jwk_round_trips(key: DecryptionKey) -> None:
    public = key.public_key()
    assert oob.key_from_jwk(public.jwk()) == public
    assert oob.private_key_from_jwk(key.private_jwk()) == key
    assert public.kid == oob.thumbprint(public.jwk())
    with pytest.raises(StirError):
        oob.key_from_jwk(key.private_jwk())  # private material is never published
    other = DecryptionKey.generate(key.suite, secrets.token_bytes)
    forged = {
        **key.private_jwk(),
        "x" if key.suite is OobSuite.X25519 else "pub": other.public_key().jwk()[
            "x" if key.suite is OobSuite.X25519 else "pub"
        ],
    }
    with pytest.raises(StirError):
        oob.private_key_from_jwk(forged)


def test_x25519_jwk_is_rfc8037() -> None:
    jwk = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key().jwk()
    assert jwk["kty"] == "OKP" and jwk["crv"] == "X25519" and len(jwk["x"]) == 43


# ---------------------------------------------------------------- key publications
def stir_credential(tns: list[str]) -> tuple[ec.EllipticCurvePrivateKey, list]:
    signer = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(signer, now=int(time.time()), tns=tns)
    return signer, [cert]


def test_publication_round_trip_and_authority() -> None:
    signer, chain = stir_credential([TN])
    enc = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
    now = int(time.time())
    token = oobkeys.build_publication([enc], [TN], signing_key=signer, chain=chain, now=now)
    policy = oobkeys.PublicationPolicy(pins=tuple(chain))
    pub = oobkeys.verify_publication(oobkeys.read_publication(token), policy, now)
    assert pub.keys == (enc,) and pub.tns == (TN,)
    wide = oobkeys.build_publication(
        [enc], [TN, OTHER_TN], signing_key=signer, chain=chain, now=now
    )
    with pytest.raises(StirError) as info:
        oobkeys.verify_publication(oobkeys.read_publication(wide), policy, now)
    assert info.value.check is Check.AUTHORITY and info.value.status is SipStatus.FORBIDDEN
    with pytest.raises(StirError) as info:  # no anchors, not pinned
        oobkeys.verify_publication(
            oobkeys.read_publication(token), oobkeys.PublicationPolicy(), now
        )
    assert info.value.check is Check.TRUST


def test_publication_signature_checked() -> None:
    signer, chain = stir_credential([TN])
    enc = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
    now = int(time.time())
    token = oobkeys.build_publication([enc], [TN], signing_key=signer, chain=chain, now=now)
    head, body, _ = token.split(".")
    other = jose.es256_sign(ec.generate_private_key(ec.SECP256R1()), f"{head}.{body}".encode())
    forged = f"{head}.{body}.{jose.b64u_encode(other)}"
    with pytest.raises(StirError) as info:
        oobkeys.verify_publication(
            oobkeys.read_publication(forged), oobkeys.PublicationPolicy(pins=tuple(chain)), now
        )
    assert info.value.check is Check.SIGNATURE


# ---------------------------------------------------------------- parsers never crash
ANY_TEXT = st.one_of(
    st.text(max_size=400),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=3000
    ),
    st.binary(max_size=2000).map(jose.b64u_encode),
)


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_entry_decoder_raises_only_stir_error(text: str) -> None:
    with contextlib.suppress(StirError):
        oob.decode_entry(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1200))
def test_binary_entry_decoder_raises_only_stir_error(raw: bytes) -> None:
    for data in (raw, struct.pack(">BHHH", 1, 0x20, 1, 1) + raw):
        with contextlib.suppress(StirError):
            oob.entry_from_bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.binary(max_size=20)))
def test_route_parsers_raise_only_stir_error(value: object) -> None:
    for parse in (cps.parse_tn, cps.parse_entry_id):
        with contextlib.suppress(StirError):
            assert parse(value) == value


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["application/passport", "application/json", "text/plain", ""]),
       st.one_of(st.binary(max_size=300), st.builds(lambda o: json.dumps(o).encode(),
                 st.recursive(st.none() | st.text(max_size=20) | st.integers(),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                              max_leaves=10))))  # fmt: skip
def test_body_parsers_raise_only_stir_error(content_type: str, body: bytes) -> None:
    for call in (lambda: cps.parse_store_body(content_type, body),
                 lambda: cps.parse_list_document(body),
                 lambda: cps.parse_store_body("application/json", b'{"ppts":' + body + b"}")):  # fmt: skip
        with contextlib.suppress(StirError):
            call()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(st.binary(max_size=120), min_size=3, max_size=3)
                 .map(lambda parts: ".".join(jose.b64u_encode(p) for p in parts))))  # fmt: skip
def test_publication_reader_raises_only_stir_error(token: str) -> None:
    with contextlib.suppress(StirError):
        oobkeys.read_publication(token)


def test_store_body_round_trip() -> None:
    key = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
    entries = oob.seal(RFC8225_TOKEN, [key, key], TN)
    for batch in (entries[:1], entries):
        content_type, body = cps.store_body(batch)
        assert cps.parse_store_body(content_type, body) == batch
    folded = "\r\n".join(entries[0].text[i : i + 64] for i in range(0, len(entries[0].text), 64))
    assert cps.parse_store_body("application/passport", folded.encode()) == entries[:1]
    doc = json.dumps(cps.list_document(TN, [("A" * 22, entries[0])])).encode()
    assert cps.parse_list_document(doc) == (("A" * 22, entries[0]),)


def test_x5c_is_standard_base64() -> None:
    signer, chain = stir_credential([TN])
    enc = DecryptionKey.generate(OobSuite.X25519, secrets.token_bytes).public_key()
    token = oobkeys.build_publication([enc], [TN], signing_key=signer, chain=chain, now=1)
    header = json.loads(jose.b64u_decode(token.split(".")[0], "h"))
    assert base64.b64decode(header["x5c"][0]) == chain[0].public_bytes(serialization.Encoding.DER)


KEYS = [DecryptionKey.generate(s, secrets.token_bytes) for s in OobSuite]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(OobSuite)), st.binary(min_size=1200, max_size=1200),
       st.sampled_from([b"\0", b"\xff", b""]))  # fmt: skip
def test_open_of_arbitrary_entries_is_none(suite: OobSuite, noise: bytes, fill: bytes) -> None:
    """Low-order, all-ones and random encapsulations never open and never crash."""
    enc_length = len(oob.dummy(1024, secrets.token_bytes, suite).enc)
    enc = fill * enc_length if fill else noise[:enc_length]
    entry = oob.SealedEntry(suite, enc, noise[:1040])
    assert oob.open_entry(entry, KEYS, TN) is None
