"""Identities of the caller and callee: telephone numbers and URIs (RFC 8224 §8, RFC 8225
§5.2.1), and the SIP header values (From, To, P-Asserted-Identity) they come from.

RFC 8224 §8.1 decides TN versus URI, §8.3 canonicalises TNs, §8.5 normalises SIP URIs.
Header values follow RFC 3261 §25.1 (name-addr / addr-spec) and RFC 3325 (PAI).

Leniency, each for a peer seen in the wild: visual separators and ``+`` in numbers;
``;``-parameters in the user part (Kamailio's ``;verstat=``); header parameters after
``>`` are not validated (RFC 8224 §5.1's From has a stray ``>`` after the tag); ``\\"``
quotes, as Asterisk's ``CHANNEL(pjsip,remote_uri)`` renders them, are unescaped once.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import shortnumberinfo

from stird.core.errors import StirError, bad_request, invalid_passport

MAX_URI_LENGTH = 2048
MAX_HEADER_LENGTH = 8192
MAX_TN_TEXT = 128  # a telephone number as written, separators included
MAX_TN_LENGTH = 64  # a canonical TN (E.164 has at most 15 digits; dial strings more)
MAX_NAME_ADDRS = 8

# RFC 8224 §8.3: tn-spec = 1*tn-char ; tn-char = "#" / "*" / DIGIT
_TN_SPEC = re.compile(r"[0-9#*]+")
# A number as written before §8.3 (leniency: SP besides RFC 3966 visual separators):
#   tn-text = [ "+" ] 1*( DIGIT / "#" / "*" / visual-separator / SP )
#   visual-separator = "-" / "." / "(" / ")"
_TN_TEXT = re.compile(r"\+?[0-9#*\-.() ]+")
#   what §8.3 strips: "+" (leading only, removeprefix) and visual-separator / SP
_SEPARATORS = re.compile(r"[\-.() ]")
# Local policy (RFC 8224 §8.1) for a SIP user part without user=phone, and the operators'
# syntax for numbers (CLI, configuration; SP cannot occur in a URI):
#   dialable = [ "+" ] 1*( DIGIT / visual-separator / SP )   ; at least one DIGIT
_DIALABLE = re.compile(r"\+?(?=[\-.() ]*[0-9])[0-9\-.() ]+")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ; then ":" and the rest
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):(.+)", re.DOTALL)
# URI characters (RFC 3986 §2): printable US-ASCII except SP, DQUOTE, "<" and ">".
_URI_CHARS = re.compile(r"[!#-;=?-~]+")
# RFC 3261 §25.1:
#   SIP-URI  = "sip:" [ userinfo ] hostport uri-parameters [ headers ]   ; sips: alike
#   userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
#   user     = 1*( unreserved / escaped / user-unreserved )
#   user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
#   password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
#   hostport = host [ ":" port ] ; host = hostname / IPv4address / IPv6reference
#   uri-parameters = *( ";" uri-parameter ) ; headers = "?" header *( "&" header )
#   unreserved = alphanum / "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
#   escaped  = "%" HEXDIG HEXDIG
# Leniency: "_" in host names; parameters and headers are only checked for URI characters
# (without "@"), since §8.5 drops them.
_SIP_URI = re.compile(
    r"(?:(?P<user>(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+)"
    r"(?::(?P<password>(?:[A-Za-z0-9\-_.!~*'()&=+$,]|%[0-9A-Fa-f]{2})*))?@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-.]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<params>(?:;[^?@]*)?)(?P<headers>(?:\?[^@]*)?)"
)
# RFC 3966 §3:
#   telephone-subscriber = global-number / local-number
#   global-number = global-number-digits *par ; local-number = local-number-digits *par
#                   context *par
#   global-number-digits = "+" *phonedigit DIGIT *phonedigit
#   local-number-digits = *phonedigit-hex (HEXDIG / "*" / "#") *phonedigit-hex
#   phonedigit-hex = HEXDIG / "*" / "#" / [ visual-separator ]
#   par = ";" pname [ "=" pvalue ]   (parameter / extension / isdn-subaddress / context)
_SUBSCRIBER = re.compile(
    r"(?P<number>\+(?=[\-.()]*[0-9])[0-9\-.()]+"
    r"|(?=[\-.()]*[0-9A-Fa-f*#])[0-9A-Fa-f*#\-.()]+)"
    r"(?P<params>(?:;[^;]+)*)"
)
# escaped = "%" HEXDIG HEXDIG (RFC 3261 §25.1, RFC 3986 §2.1)
_ESCAPED = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 §2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]")
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE   (RFC 3261 §25.1)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# display-name = *(token LWS) / quoted-string ; leniency: any text but the delimiters
_DISPLAY_TOKENS = re.compile(r'[^"<>,;\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*')
# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT ; then *( SEMI generic-param )
_ANGLE = re.compile(r"<(?P<uri>[^<>]*)>\s*(?P<rest>.*)", re.DOTALL)
# addr-spec without brackets: it cannot contain ",", "?" or ";" (RFC 3261 §20.10), so
# the URI ends at the first ";" and what follows are header parameters.
_BARE = re.compile(r"(?P<uri>[^\s;,<>\"]+)\s*(?P<rest>(?:;.*)?)", re.DOTALL)


class IdKind(enum.StrEnum):
    """The identity types of RFC 8225 §5.2.1."""

    TN = "tn"
    URI = "uri"


@dataclass(frozen=True, slots=True)
class PartyId:
    """An `orig`/`dest`/`div` identity: a canonical TN (RFC 8224 §8.3, no ``+``) or a
    normalised URI (§8.5)."""

    kind: IdKind
    value: str

    def claim(self) -> dict[str, str]:
        """The claim object of RFC 8225 §5.2.1: ``{"tn": ...}`` or ``{"uri": ...}``."""
        return {self.kind.value: self.value}

    @classmethod
    def from_claim(cls, obj: object) -> PartyId:
        """Parse an `orig`/`div` object of a PASSporT (RFC 8225 §5.2.1): exactly one
        member, ``tn`` (tn-spec, §5.2.1.1) or ``uri`` (a URI, §5.2.1.2). 438 otherwise."""
        if not isinstance(obj, dict) or len(obj) != 1:
            raise invalid_passport("identity claim must be an object with one 'tn' or 'uri'")
        ((name, value),) = obj.items()
        if name in ("tn", "uri") and isinstance(value, str) and _valid_claim(name, value):
            return cls(IdKind(name), value)
        raise invalid_passport(f"identity claim {str(name)[:16]!r} has no valid value")


def _valid_claim(name: str, value: str) -> bool:
    if name == "tn":
        return len(value) <= MAX_TN_LENGTH and _TN_SPEC.fullmatch(value) is not None
    uri_ok = len(value) <= MAX_URI_LENGTH and _URI_CHARS.fullmatch(value) is not None
    return uri_ok and _SCHEME.fullmatch(value) is not None


# --- telephone numbers (RFC 8224 §8.3) ---------------------------------------------------


def canonicalize_tn(text: str, *, default_region: str | None = None) -> str:
    """RFC 8224 §8.3: keep digits, ``#`` and ``*``; drop ``+`` and visual separators.
    Without ``+`` and with ``default_region``, a valid or possible (not local-only)
    national number becomes E.164; short codes (911, 112) and the rest stay as written.
    Empty input, letters or other characters → 400."""
    if len(text) > MAX_TN_TEXT:
        raise bad_request(f"telephone number longer than {MAX_TN_TEXT} characters")
    stripped = text.strip()
    if not _TN_TEXT.fullmatch(stripped):
        raise bad_request(f"not a telephone number: {text[:40]!r}")
    digits = _SEPARATORS.sub("", stripped).removeprefix("+")
    if not digits or len(digits) > MAX_TN_LENGTH:
        raise bad_request(f"telephone number without digits or too long: {text[:40]!r}")
    if stripped.startswith("+") or not default_region or not digits.isdigit():
        return digits
    return _national_to_e164(digits, default_region.upper())


def _national_to_e164(digits: str, region: str) -> str:
    """E.164 digits of a national number (international prefixes, trunk prefixes and the
    country code are phonenumbers' business), or ``digits`` unchanged."""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise bad_request(f"unknown default region {region[:8]!r}")
    try:
        number = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return digits
    if shortnumberinfo.is_valid_short_number_for_region(number, region):
        return digits
    if phonenumbers.is_valid_number(number) or _possible(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    return digits


def _possible(number: phonenumbers.PhoneNumber) -> bool:
    """Possible as a full number (not merely dialable locally without an area code)."""
    reason = phonenumbers.is_possible_number_with_reason(number)
    return bool(reason == phonenumbers.ValidationResult.IS_POSSIBLE)


def tn_matches(a: str, b: str) -> bool:
    """Same TN after §8.3 canonicalisation without region; exact, so NANP 10 digits do
    NOT match 11 (canonicalise with ``default_region`` first). Non-numbers match nothing."""
    try:
        return canonicalize_tn(a) == canonicalize_tn(b)
    except StirError:
        return False


# --- URIs (RFC 8224 §8.5) and TN detection (§8.1) ----------------------------------------


def _split_uri(uri: str) -> tuple[str, str]:
    """Bounded, printable URI → (lower-case scheme, rest). 400 when malformed."""
    if len(uri) > MAX_URI_LENGTH:
        raise bad_request(f"URI longer than {MAX_URI_LENGTH} characters")
    text = uri.strip()
    match = _SCHEME.fullmatch(text) if _URI_CHARS.fullmatch(text) else None
    if match is None:
        raise bad_request(f"not a URI: {uri[:64]!r}")
    return match.group(1).lower(), match.group(2)


def _normalize_user(user: str) -> str:
    """RFC 3986 §6.2.2: decode escaped unreserved characters, lower-case (RFC 8224 §8.5),
    keep other escapes with upper-case hex (§6.2.2.1)."""

    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if _UNRESERVED.fullmatch(char) else match.group(0)

    lowered = _ESCAPED.sub(decode, user).lower()
    return _ESCAPED.sub(lambda m: "%" + m.group(1).upper(), lowered)


def normalize_uri(uri: str) -> str:
    """RFC 8224 §8.5: ``sip:user@host`` (no password, port, parameters or headers; scheme,
    user and host lower-case; unreserved escapes decoded). ``tel:`` keeps the number
    as written without parameters; other schemes only get a lower-case scheme."""
    scheme, rest = _split_uri(uri)
    if scheme not in ("sip", "sips", "tel"):
        return f"{scheme}:{rest}"
    match = (_SUBSCRIBER if scheme == "tel" else _SIP_URI).fullmatch(rest)
    if match is None:
        raise bad_request(f"malformed {scheme} URI: {uri[:64]!r}")
    if scheme == "tel":
        return f"tel:{match['number']}"
    host = match["host"].lower()
    user = match["user"]
    return f"{scheme}:{host}" if user is None else f"{scheme}:{_normalize_user(user)}@{host}"


def _params(text: str) -> dict[str, str]:
    """``;name=value;flag`` → {lower-case name: value}; the first of a repeated name wins."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        name, _, value = item.partition("=")
        out.setdefault(name.strip().lower(), value.strip())
    return out


def _tn_from_subscriber(text: str, region: str | None) -> str | None:
    """RFC 3966 telephone-subscriber → canonical TN, or None. A local number with a
    global ``phone-context`` (``+1202``) gets the context's digits in front."""
    match = _SUBSCRIBER.fullmatch(text)
    if match is None:
        return None
    number = match["number"]
    context = _params(match["params"]).get("phone-context", "")
    try:
        if number.startswith("+"):
            tn = canonicalize_tn(number)
        elif context.startswith("+"):
            tn = canonicalize_tn(context) + canonicalize_tn(number)
        else:
            tn = canonicalize_tn(number, default_region=region)
    except StirError:
        return None
    return tn if len(tn) <= MAX_TN_LENGTH else None


def _policy_tn(user: str, region: str | None) -> str | None:
    """Local policy (RFC 8224 §8.1) for a user part without user=phone: dialable digits
    are a TN when written with ``+`` or when they make a possible E.164 number."""
    if not _DIALABLE.fullmatch(user):
        return None
    try:
        tn = canonicalize_tn(user, default_region=region)
    except StirError:
        return None
    if user.startswith("+"):
        return tn
    try:
        return tn if _possible(phonenumbers.parse("+" + tn, None)) else None
    except phonenumbers.NumberParseException:
        return None


def _user_phone(match: re.Match[str] | None) -> bool:
    return match is not None and _params(match["params"]).get("user", "").lower() == "phone"


def _tn_from_sip(rest: str, region: str | None) -> str | None:
    match = _SIP_URI.fullmatch(rest)
    if match is None or match["user"] is None:
        return None
    # ASCII escapes decoded to read the number (``%2B1202...``)
    user = _ESCAPED.sub(lambda m: chr(n) if (n := int(m[1], 16)) < 0x80 else m[0], match["user"])
    if _user_phone(match):
        return _tn_from_subscriber(user, region)
    return _policy_tn(user.partition(";")[0], region)


def _is_labelled_tn(uri: str) -> bool:
    """A tel URI, or a SIP URI with ``user=phone`` (RFC 8224 §8.1's standard labels)."""
    scheme, rest = _split_uri(uri)
    return scheme == "tel" or (scheme in ("sip", "sips") and _user_phone(_SIP_URI.fullmatch(rest)))


def _bare_tn(text: str, region: str | None) -> PartyId | None:
    """A bare telephone number (``+12025550100``, ``12025550100``; the operators' syntax
    of :func:`parse_cli_id`) given where a URI or header value is expected, else None.
    No SIP URI or header value is all digits, so nothing else is read differently."""
    stripped = text.strip()
    if len(stripped) > MAX_TN_TEXT or not _DIALABLE.fullmatch(stripped):
        return None
    return PartyId(IdKind.TN, canonicalize_tn(stripped, default_region=region))


def party_from_uri(uri: str, *, default_region: str | None = None) -> PartyId:
    """RFC 8224 §8.1: a tel URI or a SIP URI with ``user=phone`` is a TN; a SIP user part
    of dialable digits is one by local policy; anything else, or a number that does not
    canonicalise, is a URI (§8.5). A bare telephone number is a TN. Malformed URIs → 400."""
    if (bare := _bare_tn(uri, default_region)) is not None:
        return bare
    scheme, rest = _split_uri(uri)
    tn: str | None = None
    if scheme == "tel":
        tn = _tn_from_subscriber(rest, default_region)
    elif scheme in ("sip", "sips"):
        tn = _tn_from_sip(rest, default_region)
    if tn is not None:
        return PartyId(IdKind.TN, tn)
    return PartyId(IdKind.URI, normalize_uri(uri))


# --- header values (RFC 3261 §20.10, §25.1; RFC 3325) ------------------------------------


def _split_top(text: str) -> list[str]:
    """Split at commas outside quoted strings and angle brackets (RFC 3261 §7.3.1)."""
    parts: list[str] = []
    start, quoted, angle, i = 0, False, False, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"' and not angle:
            quoted = True
        elif char in "<>":
            angle = char == "<"
        elif char == "," and not angle:
            if len(parts) + 1 >= MAX_NAME_ADDRS:
                raise bad_request(f"more than {MAX_NAME_ADDRS} name-addrs in one header")
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise bad_request("unterminated quoted string in header value")
    return [*parts, text[start:]]


def _checked(uri: str, rest: str) -> str:
    if rest and not rest.startswith(";"):
        raise bad_request(f"unexpected text after the URI: {rest[:32]!r}")
    normalize_uri(uri)  # validates sip:, sips: and tel: URIs fully
    return uri.strip()


def _one_addr(piece: str) -> str:
    text = piece.strip()
    if not text:
        raise bad_request("empty name-addr in header value")
    if text.startswith('"'):
        quoted = _QUOTED.match(text)
        text = text[quoted.end() :].lstrip() if quoted else ""
        if not text.startswith("<"):
            raise bad_request("a quoted display name must be followed by <URI>")
    elif "<" in text:
        display, _, after = text.partition("<")
        if not _DISPLAY_TOKENS.fullmatch(display):
            raise bad_request(f"bad display name: {display[:32]!r}")
        text = "<" + after
    else:
        bare = _BARE.fullmatch(text)
        if bare is None:
            raise bad_request(f"bad addr-spec: {text[:64]!r}")
        return _checked(bare["uri"], bare["rest"])
    angle = _ANGLE.fullmatch(text)
    if angle is None:
        raise bad_request(f"bad name-addr: {text[:64]!r}")
    return _checked(angle["uri"], angle["rest"])


def addr_specs(header_value: str) -> tuple[str, ...]:
    """The URIs of a header value holding up to 8 comma-separated name-addrs / addr-specs
    (RFC 3261 §20.10, §25.1; P-Asserted-Identity, RFC 3325 §9.1). 400 when malformed."""
    if len(header_value) > MAX_HEADER_LENGTH:
        raise bad_request(f"header value longer than {MAX_HEADER_LENGTH} characters")
    text = header_value
    if text.lstrip().startswith('\\"'):
        text = text.replace('\\"', '"')
    return tuple(_one_addr(piece) for piece in _split_top(text))


def addr_spec(header_value: str) -> str:
    """The URI of a From / To / PAI value with exactly one name-addr or addr-spec."""
    specs = addr_specs(header_value)
    if len(specs) != 1:
        raise bad_request("header value holds more than one name-addr")
    return specs[0]


def party_from_header(header_value: str, *, default_region: str | None = None) -> PartyId:
    """The identity of a From or To header value (RFC 8224 §8.1), or of a bare telephone
    number given in its place."""
    if (bare := _bare_tn(header_value, default_region)) is not None:
        return bare
    return party_from_uri(addr_spec(header_value), default_region=default_region)


def party_from_pai(header_value: str, *, default_region: str | None = None) -> PartyId:
    """The identity of a P-Asserted-Identity value (RFC 3325 §9.1; RFC 8224 §8): among
    several entries, a tel: or user=phone TN first, then any TN, then the first entry.
    A bare telephone number is a TN."""
    if (bare := _bare_tn(header_value, default_region)) is not None:
        return bare
    uris = addr_specs(header_value)
    parties = [(uri, party_from_uri(uri, default_region=default_region)) for uri in uris]
    tns = [(uri, party) for uri, party in parties if party.kind is IdKind.TN]
    labelled = [party for uri, party in tns if _is_labelled_tn(uri)]
    return (labelled or [party for _, party in tns] or [parties[0][1]])[0]


def parse_cli_id(text: str, *, default_region: str | None = None) -> PartyId:
    """Operators' syntax: a number (digits, optional ``+``, visual separators) or a
    ``sip:``/``sips:``/``tel:`` URI. Anything else → 400."""
    if len(text) > MAX_URI_LENGTH:
        raise bad_request(f"identity longer than {MAX_URI_LENGTH} characters")
    stripped = text.strip()
    scheme = _SCHEME.fullmatch(stripped)
    if scheme is not None and scheme.group(1).lower() in ("sip", "sips", "tel"):
        return party_from_uri(stripped, default_region=default_region)
    if _DIALABLE.fullmatch(stripped):
        return PartyId(IdKind.TN, canonicalize_tn(stripped, default_region=default_region))
    raise bad_request(f"not a telephone number or sip:/sips:/tel: URI: {text[:64]!r}")
