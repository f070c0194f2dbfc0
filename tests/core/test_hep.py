"""core/hep: the HEP3 decoder against the 37 datagrams captured from Asterisk 22.10.1, and
hostile input (every chunk length checked; only HepError escapes)."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.core.errors import StirError
from stird.core.hep import MAX_DATAGRAM, HepError, HepPacket, decode_hep, encode_hep, parse_sip
from tests.hep_captures import decoded, raw


def test_every_captured_datagram_decodes_as_decoded_json_says() -> None:
    for entry in decoded():
        data = raw(entry["file"])
        packet = decode_hep(data)
        assert len(data) == entry["hep_length_field"]
        assert hashlib.sha256(packet.payload).hexdigest() == entry["payload_sha256"]
        chunks = {c["type"]: c for c in entry["chunks"]}
        assert packet.correlation_id == chunks[17]["value"]
        assert packet.src == (chunks[3]["value"], chunks[7]["value"])
        assert packet.dst == (chunks[4]["value"], chunks[8]["value"])
        assert packet.capture_id == chunks[12]["value"] == 1234
        assert packet.auth_key == (chunks[14]["value"].encode() if 14 in chunks else None)
        assert packet.timestamp == (chunks[9]["value"], chunks[10]["value"])
        message = parse_sip(packet.payload)
        assert message.cseq is not None
        assert f"{message.cseq[0]} {message.cseq[1]}" == entry["cseq"]
        assert encode_hep(packet) == data  # Asterisk's chunk order, byte for byte


def test_the_inbound_invite_carries_its_offer_and_identity() -> None:
    message = parse_sip(decode_hep(raw("01")).payload)
    assert (message.method, message.call_id, message.tag("to")) == (
        "INVITE", "1-20556@127.0.0.1", None)  # fmt: skip
    assert message.tag("from") == "20556C1"
    assert message.sdp is not None and "a=fingerprint:sha-256 03:75:C2" in message.sdp
    assert len(message.all("identity")) == 1


def test_password_and_capture_name_chunks() -> None:
    assert decode_hep(raw("32")).auth_key == b"s3cret"
    variant_c = decode_hep(raw("36"))
    assert variant_c.capture_name == "lab-pbx-1"
    assert variant_c.correlation_id == "PJSIP/carrier-00000000"  # uuid_type = channel
    assert parse_sip(variant_c.payload).call_id == "1-21865@127.0.0.1"  # the header is right


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter"),
        (b"HEP2\x00\x06", "not a HEP3"),
        (b"HEP3\x00\x07", "total length"),
        (b"HEP3\x00\x06", "no payload"),
        (b"HEP3\x00\x09\x00\x00\x00", "stray"),
        (b"HEP3\x00\x0c\x00\x00\x00\x0f\x00\x05", "claims 5"),  # below the 6-byte header
        (b"HEP3\x00\x0c\x00\x00\x00\x0f\xff\xff", "claims 65535"),  # past the end
        (b"HEP3\x00\x0d\x00\x00\x00\x07\x00\x07\x01", "not 2"),  # a 1-byte port
        (b"HEP3\x00\x0c\x00\x00\x00\x10\x00\x06", "compressed"),
    ],
)
def test_malformed_datagrams_are_hep_errors(data: bytes, why: str) -> None:
    with pytest.raises(HepError, match=why):
        decode_hep(data)


def test_bounds_and_duplicates() -> None:
    with pytest.raises(HepError, match="exceeds"):
        decode_hep(b"HEP3" + bytes(MAX_DATAGRAM))
    payload = struct.pack("!HHH", 0, 15, 8) + b"hi"
    data = b"HEP3" + struct.pack("!H", 6 + 2 * len(payload)) + payload * 2
    with pytest.raises(HepError, match="twice"):
        decode_hep(data)


def test_vendor_and_unknown_chunks_are_skipped() -> None:
    base = encode_hep(HepPacket(payload=b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    extra = struct.pack("!HHH", 0x0BEE, 15, 9) + b"bad" + struct.pack("!HHH", 0, 0x99, 7) + b"x"
    data = base[:4] + struct.pack("!H", len(base) + len(extra)) + base[6:] + extra
    assert decode_hep(data).payload.startswith(b"OPTIONS")


@pytest.mark.parametrize("payload", [b"", b"hello", b"SIP/2.0 2000 OK\r\n\r\n",
                                     b"INVITE sip:x SIP/2.0\r\nno colon\r\n\r\n"])  # fmt: skip
def test_a_payload_that_is_no_sip_message_is_a_hep_error(payload: bytes) -> None:
    with pytest.raises(HepError):
        parse_sip(payload)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_captures_raise_only_hep_errors(data: st.DataObject) -> None:
    original = bytearray(raw(data.draw(st.sampled_from(["01", "14", "32", "36"]))))
    for _ in range(data.draw(st.integers(1, 6))):
        where = data.draw(st.integers(0, len(original) - 1))
        original[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    for candidate in (bytes(original), bytes(original[:cut])):
        try:
            parse_sip(decode_hep(candidate).payload)
        except StirError as exc:
            assert isinstance(exc, HepError)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_random_bytes_after_the_magic_raise_only_hep_errors(tail: bytes) -> None:
    data = b"HEP3" + struct.pack("!H", 6 + len(tail)) + tail
    with contextlib.suppress(HepError):
        parse_sip(decode_hep(data).payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"SIP/2.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n",  # "²²²"
        b"SIP/2.0 \xd9\xa2\xd9\xa0\xd9\xa0 OK\r\nCall-ID: a\r\n\r\n",  # Arabic-Indic "200"
    ],
)
def test_non_ascii_digits_in_a_status_line_are_a_hep_error(payload: bytes) -> None:
    """str.isdigit() takes "²": int() then fails; only ASCII digits are SIP digits."""
    with pytest.raises(HepError):
        parse_sip(payload)


def test_non_ascii_digits_in_cseq_are_no_cseq() -> None:
    message = parse_sip(b"INVITE sip:a@b SIP/2.0\r\nCall-ID: a\r\nCSeq: \xc2\xb9 INVITE\r\n\r\n")
    assert message.cseq is None
