"""The SIP Identity header (RFC 8224 §4): parsing, formatting, and the JOSE header a
compact-form PASSporT implies.

RFC 8224 §4, as published (built on RFC 3261 §25)::

    Identity = "Identity" HCOLON signed-identity-digest SEMI
        ident-info *( SEMI ident-info-params )
    signed-identity-digest = 1*(base64-char / ".")
    ident-info = "info" EQUAL ident-info-uri
    ident-info-uri = LAQUOT absoluteURI RAQUOT
    ident-info-params = ident-info-alg / ident-type / ident-info-extension
    ident-info-alg = "alg" EQUAL token
    ident-type = "ppt" EQUAL token
    ident-info-extension = generic-param
    base64-char = ALPHA / DIGIT / "/" / "+"

Leniency, each for a peer seen in the wild or in the RFCs themselves:
erratum 6499 makes ``base64-char`` the base64url alphabet (``-`` and ``_``), so both are
accepted; ``ppt="div"`` is quoted in RFC 8946 although the ABNF says token, so one pair
of quotes is removed from ``alg`` and ``ppt``; SWS around ``;`` and ``=`` is accepted;
several headers may be repeated or comma-joined in one value (RFC 3261 §7.3.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from stird.core.errors import Check, SipStatus, StirError, invalid_header
from stird.core.passport import ES256, PassportHeader

MAX_HEADERS = 16
MAX_VALUE_LENGTH = 16384
_MAX_PARAMS = 32

# signed-identity-digest = 1*(base64-char / ".") ; base64-char per RFC 8224 and erratum 6499
_DIGEST = re.compile(r"[A-Za-z0-9+/_.-]+")
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")  (RFC 3261)
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# LAQUOT absoluteURI RAQUOT — any URI text up to the closing ">" (no "<", ">", whitespace)
_ANGLE_URI = re.compile(r"<([^<>\s]+)>")
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
_QUOTED = re.compile(r'"((?:[^"\\\r\n]|\\[^\r\n])*)"')
# gen-value = token / host / quoted-string; host adds ":" "[" "]" for IPv6 references
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_SWS = re.compile(r"[ \t]*(?:\r?\n[ \t]+)?[ \t]*")
_SWS_START = frozenset(" \t\r\n")
_PREFIX = re.compile(r"\s*(?:Identity|y)[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    """One Identity header field value."""

    digest: str  # the PASSporT, full form or compact form ("..sig")
    info: str  # the credential URI from ``info=<...>``
    alg: str | None = None
    ppt: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()  # other parameters, in order

    @property
    def is_compact(self) -> bool:
        return self.digest.startswith("..")

    def format(self) -> str:
        """Header value in the shape peers emit: ``digest;info=<uri>;alg=ES256;ppt=msec``."""
        text = f"{self.digest};info=<{self.info}>"
        if self.alg is not None:
            text += f";alg={self.alg}"
        if self.ppt is not None:
            text += f";ppt={self.ppt}"
        for name, value in self.params:
            text += f";{name}" if value is None else f";{name}={value}"
        return text

    def passport_header(self) -> PassportHeader:
        """The JOSE header a compact form stands for (RFC 8224 §4.1: alg defaults to
        ES256, x5u equals info, ppt equals the ppt parameter)."""
        return PassportHeader(x5u=self.info, ppt=self.ppt, alg=self.alg or ES256)


class _Cursor:
    """A position in one header value (the parser is a small hand-written scanner)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        found = pattern.match(self.text, self.pos)
        if found is not None:
            self.pos = found.end()
        return found

    def skip_sws(self) -> None:
        # _SWS only ever consumes text starting with one of these: skip the regex call
        # in the common case of no whitespace (the result is the same).
        if self.text[self.pos : self.pos + 1] in _SWS_START:
            self.match(_SWS)

    def take(self, char: str) -> bool:
        self.skip_sws()
        if self.text.startswith(char, self.pos):
            self.pos += 1
            self.skip_sws()
            return True
        return False

    def at_end(self) -> bool:
        self.skip_sws()
        return self.pos >= len(self.text)

    def fail(self, why: str) -> StirError:
        return invalid_header(f"Identity header: {why} at offset {self.pos}")


def _param_value(cur: _Cursor, name: str) -> str:
    if name == "info":
        found = cur.match(_ANGLE_URI)
        if found is None:
            raise cur.fail("info needs a URI in angle brackets")
        return found.group(1)
    quoted = cur.match(_QUOTED)
    if quoted is not None:
        return quoted.group(1) if name in ("alg", "ppt") else quoted.group(0)
    found = cur.match(_GEN_VALUE)
    if found is None:
        raise cur.fail(f"bad value for parameter {name!r}")
    return found.group(0)


def _one(cur: _Cursor) -> IdentityHeader:
    cur.skip_sws()
    digest = cur.match(_DIGEST)
    if digest is None:
        raise cur.fail("missing signed-identity-digest")
    seen: dict[str, str | None] = {}
    others: list[tuple[str, str | None]] = []
    while cur.take(";"):
        name_match = cur.match(_TOKEN)
        if name_match is None:
            raise cur.fail("expected a parameter name")
        name = name_match.group(0).lower()
        value = _param_value(cur, name) if cur.take("=") else None
        if name in seen or len(seen) + len(others) >= _MAX_PARAMS:
            raise cur.fail(f"parameter {name!r} repeated or too many parameters")
        if name in ("info", "alg", "ppt"):
            seen[name] = value
        else:
            others.append((name, value))
    if not (cur.at_end() or cur.text.startswith(",", cur.pos)):
        raise cur.fail("unexpected text")
    return _build(digest.group(0), seen, tuple(others))


def _build(
    digest: str, seen: dict[str, str | None], others: tuple[tuple[str, str | None], ...]
) -> IdentityHeader:
    info = seen.get("info")
    if info is None:
        raise StirError(
            SipStatus.BAD_IDENTITY_INFO,
            "Identity header has no info parameter (RFC 8224 §4)",
            check=Check.CREDENTIAL,
        )
    for name in ("alg", "ppt"):
        value = seen.get(name)
        if name in seen and (value is None or not _TOKEN.fullmatch(value)):
            raise invalid_header(f"Identity header: {name} must be a token")
    return IdentityHeader(digest, info, seen.get("alg"), seen.get("ppt"), others)


def parse_identity(value: str) -> tuple[IdentityHeader, ...]:
    """Parse one header field value, which may hold several comma-joined headers."""
    if len(value) > MAX_VALUE_LENGTH:
        raise invalid_header(f"Identity header longer than {MAX_VALUE_LENGTH} characters")
    cur = _Cursor(value)
    cur.match(_PREFIX)
    headers = [_one(cur)]
    while cur.take(","):
        if len(headers) >= MAX_HEADERS:
            raise invalid_header(f"more than {MAX_HEADERS} Identity headers")
        headers.append(_one(cur))
    if not cur.at_end():
        raise cur.fail("unexpected text")
    return tuple(headers)


def parse_identity_headers(values: Iterable[str]) -> tuple[IdentityHeader, ...]:
    """Parse every Identity header of a request (repeated or comma-joined, RFC 8224 §4)."""
    headers: list[IdentityHeader] = []
    for value in values:
        headers.extend(parse_identity(value))
        if len(headers) > MAX_HEADERS:
            raise invalid_header(f"more than {MAX_HEADERS} Identity headers")
    return tuple(headers)
