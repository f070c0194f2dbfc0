"""The TN Authorization List certificate extension (RFC 8226 §9, RFC 9060 §4).

Which telephone numbers a STIR certificate speaks for: service provider codes, number
ranges and single numbers, parsed from and encoded to DER with pyasn1.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char, namedtype, tag, univ

from stird.core.errors import Check, SipStatus, StirError, bad_request

TNAUTHLIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")
MAX_TNAUTHLIST_DER = 1 << 20

SpcLookup = Callable[[str, str], bool]
"""``spc_tns(spc, tn)``: an external SPC -> TN source (RFC 8226 §9 entry type 1)."""

_TN_RE = re.compile(r"[0-9#*]{1,15}")
_DIGITS_RE = re.compile(r"[0-9]+")
_SPC_RE = re.compile(r"[\x20-\x7e]+")


def _digits(s: str) -> bool:
    return _DIGITS_RE.fullmatch(s) is not None


@dataclass(frozen=True, slots=True)
class TnRange:
    """RFC 8226 §9 TelephoneNumberRange: ``count`` numbers from ``start``, same length."""

    start: str
    count: int

    def contains(self, tn: str) -> bool:
        """Membership per DIGEST §3.2 [design]; ``*``/``#`` numbers never match a range."""
        if not (_digits(tn) and _digits(self.start)) or len(tn) != len(self.start):
            return False
        return int(self.start) <= int(tn) < int(self.start) + self.count


@dataclass(frozen=True, slots=True)
class TNAuthList:
    """RFC 8226 §9 TNAuthorizationList; entries are additive (RFC 9060 §4.1)."""

    spcs: tuple[str, ...] = ()
    ranges: tuple[TnRange, ...] = ()
    tns: tuple[str, ...] = ()

    def covers_tn(self, tn: str, spc_tns: SpcLookup | None = None) -> bool:
        """RFC 8226 §9: a single TN, a range, or an SPC that ``spc_tns`` maps to ``tn``."""
        if tn in self.tns or any(r.contains(tn) for r in self.ranges):
            return True
        return spc_tns is not None and any(spc_tns(spc, tn) for spc in self.spcs)

    def encompasses(self, child: TNAuthList, spc_tns: SpcLookup | None = None) -> bool:
        """RFC 9060 §4: ``child`` equal to or a subset of this list."""
        return (
            all(spc in self.spcs for spc in child.spcs)
            and all(self.covers_tn(tn, spc_tns) for tn in child.tns)
            and all(self._covers_range(r) for r in child.ranges)
        )

    def _covers_range(self, child: TnRange) -> bool:
        """Inside one parent range, or covered by the union of parent ranges and TNs."""
        if not _digits(child.start):
            return False
        width = len(child.start)
        spans = [
            (int(r.start), int(r.start) + r.count) for r in self.ranges if _fits(r.start, width)
        ]
        spans += [(int(tn), int(tn) + 1) for tn in self.tns if _fits(tn, width)]
        low, high = int(child.start), int(child.start) + child.count
        for a, b in sorted(spans):
            if a > low:
                return False
            low = max(low, b)
            if low >= high:
                return True
        return False


def _fits(number: str, width: int) -> bool:
    return len(number) == width and _digits(number)


# ASN.1 of RFC 8226 Appendix A (module TN-Module-2016, DEFINITIONS EXPLICIT TAGS):
#
#   id-pe-TNAuthList OBJECT IDENTIFIER ::= { id-pe 26 }          -- 1.3.6.1.5.5.7.1.26
#   TNAuthorizationList ::= SEQUENCE SIZE (1..MAX) OF TNEntry
#   TNEntry ::= CHOICE {
#     spc   [0] ServiceProviderCode,
#     range [1] TelephoneNumberRange,
#     one   [2] TelephoneNumber }
#   ServiceProviderCode ::= IA5String
#   TelephoneNumberRange ::= SEQUENCE { start TelephoneNumber, count INTEGER (2..MAX), ... }
#   TelephoneNumber ::= IA5String (SIZE (1..15)) (FROM ("0123456789#*"))
#
# Size, alphabet and count constraints are checked by _validate, not by pyasn1; the range's
# extension marker is not supported (extra components are rejected).


def _explicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)


class _TelephoneNumberRange(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("start", char.IA5String()),
        namedtype.NamedType("count", univ.Integer()),
    )


class _TNEntry(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("spc", char.IA5String().subtype(explicitTag=_explicit(0))),
        namedtype.NamedType("range", _TelephoneNumberRange().subtype(explicitTag=_explicit(1))),
        namedtype.NamedType("one", char.IA5String().subtype(explicitTag=_explicit(2))),
    )


class _TNAuthorizationList(univ.SequenceOf):  # type: ignore[misc]
    componentType = _TNEntry()


def _malformed(detail: str) -> StirError:
    return StirError(SipStatus.UNSUPPORTED_CREDENTIAL, detail, check=Check.CREDENTIAL)


def _validate(tal: TNAuthList, err: Callable[[str], StirError]) -> None:
    """RFC 8226 §9 constraints: SIZE (1..MAX), TN alphabet/size, count >= 2, no lengthening."""
    if not (tal.spcs or tal.ranges or tal.tns):
        raise err("TNAuthList is empty")
    for spc in tal.spcs:
        if _SPC_RE.fullmatch(spc) is None:
            raise err("TNAuthList SPC is empty or not printable IA5")
    for tn in tal.tns:
        if _TN_RE.fullmatch(tn) is None:
            raise err("TNAuthList TN is not 1..15 of 0-9#*")
    for r in tal.ranges:
        if not (_digits(r.start) and len(r.start) <= 15):
            raise err("TNAuthList range start is not 1..15 digits")
        if r.count < 2 or int(r.start) + r.count >= 10 ** len(r.start):
            raise err("TNAuthList range count is < 2 or lengthens the number")


def _entry(name: str, text: str, count: int) -> Any:
    entry = _TNEntry()
    if name == "range":
        component = entry.getComponentByName("range")
        component["start"] = text
        component["count"] = count
    else:
        entry[name] = text
    return entry


def encode_tnauthlist(tal: TNAuthList) -> bytes:
    """DER of an RFC 8226 §9 TNAuthorizationList (entries: SPCs, then ranges, then TNs)."""
    _validate(tal, bad_request)
    seq = _TNAuthorizationList()
    for spc in tal.spcs:
        seq.append(_entry("spc", spc, 0))
    for r in tal.ranges:
        seq.append(_entry("range", r.start, r.count))
    for tn in tal.tns:
        seq.append(_entry("one", tn, 0))
    return bytes(der_encoder.encode(seq))


def _decode_entries(der: bytes) -> list[tuple[str, str, int]]:
    try:
        value, rest = der_decoder.decode(der, asn1Spec=_TNAuthorizationList())
        if rest or bytes(der_encoder.encode(value)) != der:
            raise _malformed("TNAuthList is not exactly one DER value")
        entries: list[tuple[str, str, int]] = []
        for entry in value:
            name, component = str(entry.getName()), entry.getComponent()
            if name == "range":
                entries.append((name, str(component["start"]), int(component["count"])))
            else:
                entries.append((name, str(component), 0))
        return entries
    except StirError:
        raise
    except Exception as exc:  # pyasn1 raises many exception types on hostile input
        raise _malformed(f"undecodable TNAuthList ({type(exc).__name__})") from None


@functools.lru_cache(maxsize=256)  # pure and hot: every sign/verify reads it (bench profile)
def parse_tnauthlist(der: bytes) -> TNAuthList:
    """Decode and validate DER of an RFC 8226 §9 TNAuthorizationList (EXPLICIT tags)."""
    if len(der) > MAX_TNAUTHLIST_DER:
        raise _malformed("TNAuthList too large")
    entries = _decode_entries(der)
    tal = TNAuthList(
        spcs=tuple(text for name, text, _ in entries if name == "spc"),
        ranges=tuple(TnRange(text, count) for name, text, count in entries if name == "range"),
        tns=tuple(text for name, text, _ in entries if name == "one"),
    )
    _validate(tal, _malformed)
    return tal
