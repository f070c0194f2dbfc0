"""HEP3 (Homer Encapsulation Protocol v3) datagrams and the SIP message they carry, sans I/O.

Asterisk's ``res_hep_pjsip`` copies every SIP message it receives or sends, byte for byte,
to a HEP collector (../shared/asterisk/transcripts/hep/README.md): ``"HEP3"``, a 16-bit
total length, then chunks of ``vendor(16) type(16) length(16, header included) value``,
big-endian, in no fixed order. :func:`decode_hep` checks the total length and every chunk
length against what is left, skips unknown types and non-zero vendors, and refuses
anything else with :class:`HepError` (a :class:`~stird.core.errors.StirError`, 400).

:func:`parse_sip` splits the payload into start line, the few headers stird needs and the
body, bounded (at most :data:`MAX_HEADERS` header lines). It is no SIP parser: stird reads
the values it needs and lets the verifier parse them.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from stird.core.errors import SipStatus, StirError

MAGIC = b"HEP3"
MAX_DATAGRAM = 65535  # the 16-bit total length field: no valid datagram is longer
MAX_HEADERS = 256  # header lines of one SIP message
_DIGITS = re.compile(r"[0-9]+")
_STATUS_CODE = re.compile(r"[0-9]{3}")
_HEADER = struct.Struct("!4sH")
_CHUNK = struct.Struct("!HHH")


class HepError(StirError):
    """A datagram that is not HEP3 as Asterisk sends it (always 400, check ``syntax``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(SipStatus.BAD_REQUEST, f"HEP: {detail}")


class ChunkType:
    """The generic chunk types (HEP3 specification; the names are Asterisk's)."""

    IP_FAMILY = 0x01
    IP_PROTO = 0x02
    IPV4_SRC = 0x03
    IPV4_DST = 0x04
    IPV6_SRC = 0x05
    IPV6_DST = 0x06
    SRC_PORT = 0x07
    DST_PORT = 0x08
    TS_SEC = 0x09
    TS_USEC = 0x0A
    PROTO_TYPE = 0x0B
    CAPTURE_ID = 0x0C
    AUTH_KEY = 0x0E
    PAYLOAD = 0x0F
    COMPRESSED = 0x10
    CORRELATION_ID = 0x11
    CAPTURE_NAME = 0x13


PROTO_SIP = 1
_UINT = {  # type -> the value's exact length
    ChunkType.IP_FAMILY: 1, ChunkType.IP_PROTO: 1, ChunkType.PROTO_TYPE: 1,
    ChunkType.SRC_PORT: 2, ChunkType.DST_PORT: 2,
    ChunkType.TS_SEC: 4, ChunkType.TS_USEC: 4, ChunkType.CAPTURE_ID: 4,
}  # fmt: skip
_ADDR = {ChunkType.IPV4_SRC: 4, ChunkType.IPV4_DST: 4, ChunkType.IPV6_SRC: 16,
         ChunkType.IPV6_DST: 16}  # fmt: skip


@dataclass(frozen=True, slots=True)
class HepPacket:
    """One decoded HEP3 datagram (absent chunks: None / 0)."""

    payload: bytes
    correlation_id: str | None = None
    auth_key: bytes | None = None
    src: tuple[str, int] | None = None  # (address, port)
    dst: tuple[str, int] | None = None
    proto_type: int | None = None
    capture_id: int | None = None
    timestamp: tuple[int, int] | None = None  # (seconds, microseconds)
    capture_name: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.proto_type in (None, PROTO_SIP)


def _chunks(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    offset = _HEADER.size
    while offset < len(data):
        if len(data) - offset < _CHUNK.size:
            raise HepError(f"{len(data) - offset} stray bytes after the last chunk")
        vendor, kind, length = _CHUNK.unpack_from(data, offset)
        if length < _CHUNK.size or length > len(data) - offset:
            raise HepError(f"chunk type {kind} claims {length} bytes, {len(data) - offset} left")
        yield vendor, kind, data[offset + _CHUNK.size : offset + length]
        offset += length


def _address(value: bytes) -> str:
    if len(value) == 4:
        return ".".join(str(b) for b in value)
    return ":".join(value[i : i + 2].hex() for i in range(0, 16, 2))


def _text(kind: int, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise HepError(f"chunk type {kind} is not UTF-8") from None


_TEXTS = frozenset({ChunkType.PAYLOAD, ChunkType.CORRELATION_ID, ChunkType.AUTH_KEY,
                    ChunkType.CAPTURE_NAME})  # fmt: skip


def _collect(
    kind: int, value: bytes, ints: dict[int, int], addrs: dict[int, str], texts: dict[int, bytes]
) -> None:
    if kind in _UINT:
        if len(value) != _UINT[kind]:
            raise HepError(f"chunk type {kind} has {len(value)} bytes, not {_UINT[kind]}")
        ints[kind] = int.from_bytes(value, "big")
    elif kind in _ADDR:
        if len(value) != _ADDR[kind]:
            raise HepError(f"address chunk type {kind} has {len(value)} bytes")
        addrs[kind] = _address(value)
    elif kind == ChunkType.COMPRESSED:
        raise HepError("compressed payloads are not supported (Asterisk never sends them)")
    elif kind in _TEXTS:
        if kind in texts:
            raise HepError(f"chunk type {kind} appears twice")
        texts[kind] = value


def decode_hep(data: bytes) -> HepPacket:
    """Decode one HEP3 datagram; :class:`HepError` for anything malformed."""
    if len(data) > MAX_DATAGRAM:
        raise HepError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    if len(data) < _HEADER.size:
        raise HepError("shorter than the HEP3 header")
    magic, total = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise HepError("not a HEP3 datagram")
    if total != len(data):
        raise HepError(f"total length {total} differs from the datagram's {len(data)} bytes")
    ints: dict[int, int] = {}
    addrs: dict[int, str] = {}
    texts: dict[int, bytes] = {}
    for vendor, kind, value in _chunks(data):
        if vendor == 0:  # vendor-specific chunks are not ours
            _collect(kind, value, ints, addrs, texts)
    if ChunkType.PAYLOAD not in texts:
        raise HepError("no payload chunk")
    src = addrs.get(ChunkType.IPV4_SRC) or addrs.get(ChunkType.IPV6_SRC)
    dst = addrs.get(ChunkType.IPV4_DST) or addrs.get(ChunkType.IPV6_DST)
    cid = texts.get(ChunkType.CORRELATION_ID)
    name = texts.get(ChunkType.CAPTURE_NAME)
    ts = (ints.get(ChunkType.TS_SEC), ints.get(ChunkType.TS_USEC))
    return HepPacket(
        payload=texts[ChunkType.PAYLOAD],
        correlation_id=None if cid is None else _text(ChunkType.CORRELATION_ID, cid),
        auth_key=texts.get(ChunkType.AUTH_KEY),
        src=None if src is None else (src, ints.get(ChunkType.SRC_PORT, 0)),
        dst=None if dst is None else (dst, ints.get(ChunkType.DST_PORT, 0)),
        proto_type=ints.get(ChunkType.PROTO_TYPE),
        capture_id=ints.get(ChunkType.CAPTURE_ID),
        timestamp=None if ts[0] is None else (ts[0], ts[1] or 0),
        capture_name=None if name is None else _text(ChunkType.CAPTURE_NAME, name),
    )


def _chunk(kind: int, value: bytes) -> bytes:
    return _CHUNK.pack(0, kind, _CHUNK.size + len(value)) + value


def encode_hep(packet: HepPacket) -> bytes:
    """The datagram Asterisk would send for ``packet``, in Asterisk's chunk order
    (1 2 7 8 9 10 11 12 3 4 [14] 17 [19] 15). For tests, seeds and replays."""
    src, dst = packet.src or ("127.0.0.1", 0), packet.dst or ("127.0.0.1", 0)
    ts = packet.timestamp or (0, 0)
    six = ":" in src[0]
    parts = [
        _chunk(ChunkType.IP_FAMILY, bytes([10 if six else 2])),
        _chunk(ChunkType.IP_PROTO, bytes([17])),
        _chunk(ChunkType.SRC_PORT, src[1].to_bytes(2, "big")),
        _chunk(ChunkType.DST_PORT, dst[1].to_bytes(2, "big")),
        _chunk(ChunkType.TS_SEC, ts[0].to_bytes(4, "big")),
        _chunk(ChunkType.TS_USEC, ts[1].to_bytes(4, "big")),
        _chunk(ChunkType.PROTO_TYPE, bytes([packet.proto_type or PROTO_SIP])),
        _chunk(ChunkType.CAPTURE_ID, (packet.capture_id or 0).to_bytes(4, "big")),
    ]
    for kind, (addr, _) in ((3, src), (4, dst)):
        raw = bytes(int(x) for x in addr.split(".")) if not six else bytes(16)
        parts.append(_chunk(kind + (2 if six else 0), raw))
    if packet.auth_key is not None:
        parts.append(_chunk(ChunkType.AUTH_KEY, packet.auth_key))
    if packet.correlation_id is not None:
        parts.append(_chunk(ChunkType.CORRELATION_ID, packet.correlation_id.encode()))
    if packet.capture_name is not None:
        parts.append(_chunk(ChunkType.CAPTURE_NAME, packet.capture_name.encode()))
    parts.append(_chunk(ChunkType.PAYLOAD, packet.payload))
    body = b"".join(parts)
    return _HEADER.pack(MAGIC, _HEADER.size + len(body)) + body


# --- the SIP message in the payload ------------------------------------------------------

_COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "c": "content-type",
            "l": "content-length", "y": "identity"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SipMessage:
    """The parts of one SIP message stird uses (header names lower-case, long form)."""

    method: str | None  # requests
    status: int | None  # responses
    ruri: str | None
    headers: tuple[tuple[str, str], ...]
    body: str
    digest: bytes = field(default=b"")  # SHA-256 of the whole message: retransmissions

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def first(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def call_id(self) -> str | None:
        return self.first("call-id")

    @property
    def cseq(self) -> tuple[int, str] | None:
        value = (self.first("cseq") or "").split()
        # CSeq = 1*DIGIT LWS Method (RFC 3261 §20.16): ASCII digits (str.isdigit takes "¹")
        if len(value) != 2 or not _DIGITS.fullmatch(value[0]) or len(value[0]) > 10:
            return None
        return int(value[0]), value[1].upper()

    def tag(self, name: str) -> str | None:
        """The ``tag`` parameter of From or To (after the URI's closing ``>`` if any)."""
        value = self.first(name) or ""
        params = value[value.rfind(">") + 1 :] if ">" in value else value
        for param in params.split(";")[1:]:
            key, _, tag = param.partition("=")
            if key.strip().lower() == "tag":
                return tag.strip() or None
        return None

    @property
    def sdp(self) -> str | None:
        kind = (self.first("content-type") or "").split(";")[0].strip().lower()
        return self.body if kind == "application/sdp" and self.body.strip() else None


def _start_line(line: str) -> tuple[str | None, int | None, str | None]:
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[0] == "SIP/2.0":
        if not _STATUS_CODE.fullmatch(parts[1]):  # Status-Code = 3DIGIT (RFC 3261 §25.1)
            raise HepError("SIP status line without a three-digit code")
        return None, int(parts[1]), None
    if len(parts) == 3 and parts[2] == "SIP/2.0" and parts[0].isalpha():
        return parts[0].upper(), None, parts[1]
    raise HepError("payload is not a SIP message")


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:  # folded continuation (RFC 3261 §7.3.1)
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise HepError("SIP header line without a name")
        key = name.strip().lower()
        out.append((_COMPACT.get(key, key), value.strip()))
    return out


def parse_sip(payload: bytes) -> SipMessage:
    """Split a SIP message (CRLF or bare LF); :class:`HepError` when it is none."""
    text = payload.decode("utf-8", "replace")
    head, sep, body = text.partition("\r\n\r\n")
    if not sep:
        head, sep, body = text.partition("\n\n")
    lines = head.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADERS + 1:
        raise HepError(f"more than {MAX_HEADERS} SIP header lines")
    method, status, ruri = _start_line(lines[0])
    return SipMessage(method, status, ruri, tuple(_headers(lines[1:])), body,
                      hashlib.sha256(payload).digest())  # fmt: skip


__all__ = [
    "MAX_DATAGRAM",
    "ChunkType",
    "HepError",
    "HepPacket",
    "SipMessage",
    "decode_hep",
    "encode_hep",
    "parse_sip",
]
