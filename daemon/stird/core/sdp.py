"""SDP media keys: ``a=fingerprint`` lines (RFC 8122 §5), the PASSporT ``mky`` claim built
from them (RFC 8225 §5.2.2, RFC 8224 §4.1), and ``k=`` lines (RFC 8862 §3).

Leniency, each for a peer seen in the wild: CRLF, LF or CR line ends and stray whitespace
around lines; hash names in any case (Asterisk writes ``SHA-256``); digests with or without
colons and in either case of hex. Being lenient here only ever makes stird see MORE
fingerprint lines than a strict parser would, which is the safe side for `mky`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stird.core.errors import Check, StirError, bad_request, invalid_passport

MAX_SDP_LENGTH = 65536
MAX_FINGERPRINTS = 64
_MAX_ALG_LENGTH = 32
_MAX_DIG_LENGTH = 3 * 64  # 64 bytes with colons

#: Digest sizes in bytes of the hash-func names of RFC 8122 §5 (RFC 4572 §5).
DIGEST_BYTES: dict[str, int] = {
    "sha-1": 20,
    "sha-224": 28,
    "sha-256": 32,
    "sha-384": 48,
    "sha-512": 64,
    "md5": 16,
    "md2": 16,
}
#: Accepted digest sizes (bytes) for a hash-func token not in the table.
UNKNOWN_DIGEST_BYTES = range(16, 65)

# RFC 8122 §5:
#   attribute            =/ fingerprint-attribute
#   fingerprint-attribute = "fingerprint" ":" hash-func SP fingerprint
#   hash-func = "sha-1" / "sha-224" / "sha-256" / "sha-384" / "sha-512" / "md5" / "md2"
#               / token
#   fingerprint = 2UHEX *(":" 2UHEX)   ; UHEX = DIGIT / %x41-46
# Leniency: attribute name and hash-func in any case, SP / HTAB runs for SP; the
# fingerprint is checked by _COLON_HEX / _PLAIN_HEX below.
_FINGERPRINT_ATTR = re.compile(
    r"a=fingerprint:(?P<alg>[^ \t]*)[ \t]+(?P<dig>[^ \t]+)", re.ASCII | re.IGNORECASE
)
# The line is a fingerprint line (then it must match the above): "a=fingerprint:"
_FINGERPRINT_PREFIX = re.compile(r"a=fingerprint:", re.ASCII | re.IGNORECASE)
# token = 1*(token-char) ; RFC 8866 §9 (as RFC 4566):
#   token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E
_HASH_FUNC = re.compile(r"[!#-'*+\-.0-9A-Z^-~]+")
# fingerprint = 2UHEX *(":" 2UHEX) ; leniency: lower-case hex
_COLON_HEX = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")
# Leniency: the same bytes without colons (as in `mky`, RFC 8225 §5.2.2)
_PLAIN_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
# RFC 8866 §5: every line ends in CRLF ; leniency: LF or CR alone (SIPp logs, hand-made SDP)
_LINE_END = re.compile(r"\r\n|\n|\r")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One ``a=fingerprint`` value: hash-func lower-case (RFC 8122) and the digest as
    upper-case hex without colons (RFC 8225 §5.2.2)."""

    alg: str
    dig: str

    def claim(self) -> dict[str, str]:
        """The `mky` array element of RFC 8225 §5.2.2."""
        return {"alg": self.alg, "dig": self.dig}


@dataclass(frozen=True, slots=True)
class SdpKeys:
    """The media keys of one SDP body."""

    session: tuple[Fingerprint, ...]  # session-level a=fingerprint lines
    media: tuple[tuple[Fingerprint, ...], ...]  # each m= section's own lines
    has_k_line: bool  # any k= line (RFC 8862 §3: MUST NOT be used)

    def all_lines(self) -> tuple[Fingerprint, ...]:
        """Every a=fingerprint line in SDP order (RFC 8225 §5.2.2 step 1)."""
        return self.session + tuple(fp for section in self.media for fp in section)

    def effective(self, index: int) -> tuple[Fingerprint, ...]:
        """The fingerprints that apply to m= section ``index``: its own lines, else the
        session-level ones (RFC 8122 §5). 400 for a section that does not exist."""
        if not 0 <= index < len(self.media):
            raise bad_request(f"SDP has no m= section {index}")
        return self.media[index] or self.session


def _fingerprint(alg: str, dig: str, fail: Callable[[str], StirError]) -> Fingerprint:
    """Validate and normalise one hash-func / digest pair (RFC 8122 §5)."""
    if len(alg) > _MAX_ALG_LENGTH or not _HASH_FUNC.fullmatch(alg):
        raise fail(f"fingerprint hash function is not a token: {alg[:_MAX_ALG_LENGTH]!r}")
    if len(dig) > _MAX_DIG_LENGTH or not (_COLON_HEX.fullmatch(dig) or _PLAIN_HEX.fullmatch(dig)):
        raise fail(f"fingerprint is not hex byte pairs: {dig[:40]!r}")
    name = alg.lower()
    hexdigits = dig.replace(":", "").upper()
    size = len(hexdigits) // 2
    expected = DIGEST_BYTES.get(name)
    if (expected is not None and size != expected) or (
        expected is None and size not in UNKNOWN_DIGEST_BYTES
    ):
        raise fail(f"{name} fingerprint of {size} bytes has the wrong length")
    return Fingerprint(name, hexdigits)


def _sdp_line(line: str) -> Fingerprint:
    match = _FINGERPRINT_ATTR.fullmatch(line)
    if match is None:
        raise bad_request(f"malformed SDP fingerprint line: {line[:80]!r}")
    return _fingerprint(match["alg"], match["dig"], bad_request)


def parse_sdp_keys(sdp: str) -> SdpKeys:
    """The ``a=fingerprint`` lines by level and whether any ``k=`` line is present
    (RFC 8866 §5, RFC 8122 §5, RFC 8862 §3). Empty SDP → no keys; a bad fingerprint line,
    more than 64 of them or more than 64 KiB → 400."""
    if len(sdp) > MAX_SDP_LENGTH:
        raise bad_request(f"SDP longer than {MAX_SDP_LENGTH} characters")
    session: list[Fingerprint] = []
    media: list[list[Fingerprint]] = []
    has_k_line, count = False, 0
    for raw in _LINE_END.split(sdp):
        line = raw.strip(" \t")
        if line.startswith("m="):
            media.append([])
        elif line.startswith("k="):
            has_k_line = True
        elif _FINGERPRINT_PREFIX.match(line):
            count += 1
            if count > MAX_FINGERPRINTS:
                raise bad_request(f"more than {MAX_FINGERPRINTS} SDP fingerprint lines")
            (media[-1] if media else session).append(_sdp_line(line))
    return SdpKeys(tuple(session), tuple(tuple(m) for m in media), has_k_line)


def mky_claim(fps: Iterable[Fingerprint]) -> list[dict[str, str]]:
    """RFC 8225 §5.2.2: one object per line (duplicates kept), sorted by the UTF-8 bytes
    of alg || dig."""
    return [fp.claim() for fp in sorted(fps, key=lambda fp: (fp.alg + fp.dig).encode())]


def mky_from_sdp(sdp: str) -> list[dict[str, str]]:
    """The `mky` claim value for an SDP body (RFC 8224 §4.1)."""
    return mky_claim(parse_sdp_keys(sdp).all_lines())


def _mky_error(detail: str) -> StirError:
    return invalid_passport(f"mky: {detail}", Check.MKY)


def _mky_entry(item: object) -> Fingerprint:
    if not isinstance(item, dict) or set(item) != {"alg", "dig"}:
        raise _mky_error("each element must be an object with exactly 'alg' and 'dig'")
    alg, dig = item["alg"], item["dig"]
    if not isinstance(alg, str) or not isinstance(dig, str):
        raise _mky_error("'alg' and 'dig' must be strings")
    return _fingerprint(alg, dig, _mky_error)


def parse_mky(obj: object) -> tuple[Fingerprint, ...]:
    """Validate a PASSporT `mky` value (RFC 8225 §5.2.2): an array of 1..64 objects with
    string ``alg`` and ``dig``; normalised like SDP lines. 438 (check MKY) otherwise."""
    if not isinstance(obj, list) or not 1 <= len(obj) <= MAX_FINGERPRINTS:
        raise _mky_error(f"must be an array of 1 to {MAX_FINGERPRINTS} objects")
    return tuple(_mky_entry(item) for item in obj)


def mky_matches(claim: object, keys: SdpKeys) -> bool:
    """Whether the claim names exactly the SDP's fingerprints (as sets; RFC 8224 §6.2
    step 5, RFC 8862 §5), and the SDP has at least one. 438 for a malformed claim."""
    fps = parse_mky(claim)
    lines = keys.all_lines()
    return bool(lines) and set(fps) == set(lines)
