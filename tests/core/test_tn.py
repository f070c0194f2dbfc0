"""TN canonicalisation, URI normalisation and header parsing (RFC 8224 §8, RFC 3261 §25),
over wire text captured from Asterisk and Kamailio (see /work/shared) and the RFCs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.core.errors import Check, StirError
from stird.core.tn import (
    MAX_TN_LENGTH,
    IdKind,
    PartyId,
    addr_spec,
    addr_specs,
    canonicalize_tn,
    normalize_uri,
    parse_cli_id,
    party_from_header,
    party_from_pai,
    party_from_uri,
    tn_matches,
)

TN = IdKind.TN
URI = IdKind.URI

# --- canonicalize_tn (RFC 8224 §8.3) -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+12025550100", None, "12025550100"),
        ("+12025550100", "US", "12025550100"),
        ("+1 (202) 555-0100", None, "12025550100"),
        ("+1.202.555.0100", "GB", "12025550100"),  # '+': already international
        ("(202) 555-0100", "US", "12025550100"),
        ("202-555-0100", "us", "12025550100"),  # region case does not matter
        ("12025550100", "US", "12025550100"),
        ("2025550100", None, "2025550100"),  # no region: digits as they are
        ("5551110000", "US", "15551110000"),  # fictional 555, still a possible number
        ("011 44 20 7183 8750", "US", "442071838750"),  # international prefix dropped
        ("020 7183 8750", "GB", "442071838750"),  # trunk prefix dropped
        ("030 1234567", "DE", "49301234567"),
        ("911", "US", "911"),  # short codes stay (§8.3)
        ("112", "DE", "112"),
        ("611", "US", "611"),
        ("555-0100", "US", "5550100"),  # local-only: no area code to add
        ("*67", "US", "*67"),
        ("#31#", None, "#31#"),
        ("+1202555*0100#", None, "1202555*0100#"),
        ("  +15551110000  ", None, "15551110000"),
    ],
)
def test_canonicalize_tn(text: str, region: str | None, expected: str) -> None:
    assert canonicalize_tn(text, default_region=region) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "+", "()-.", "1-800-FLOWERS", "12025550100x1", "tel:+12025550100",
     "+1+2025550100", "1/2", "٣٣٣", "1" * 129],
)  # fmt: skip
def test_canonicalize_tn_rejects(text: str) -> None:
    with pytest.raises(StirError) as info:
        canonicalize_tn(text, default_region="US")
    assert info.value.code == 400


def test_unknown_region_is_a_bad_request() -> None:
    with pytest.raises(StirError):
        canonicalize_tn("2025550100", default_region="XX")
    assert canonicalize_tn("+12025550100", default_region="XX") == "12025550100"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("12025550100", "12025550100", True),
        ("+1 202-555-0100", "12025550100", True),
        ("2025550100", "12025550100", False),  # exact: use default_region beforehand
        ("alice", "alice", False),
        ("", "", False),
    ],
)
def test_tn_matches(a: str, b: str, expected: bool) -> None:
    assert tn_matches(a, b) is expected


# --- normalize_uri (RFC 8224 §8.5) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("SIP:Alice@Example.COM", "sip:alice@example.com"),
        ("sips:alice:secret@example.com", "sips:alice@example.com"),
        ("sip:alice@example.com:5061", "sip:alice@example.com"),
        ("sip:alice@example.com;transport=tls;lr", "sip:alice@example.com"),
        ("sip:alice@example.com?subject=x&priority=urgent", "sip:alice@example.com"),
        ("sip:alice@Example.COM:5060;transport=tls?h=v", "sip:alice@example.com"),
        ("sip:%41lice@example.com", "sip:alice@example.com"),  # unreserved decoded, lowered
        ("sip:al%7eice@example.com", "sip:al~ice@example.com"),
        ("sip:a%2fb@example.com", "sip:a%2Fb@example.com"),  # reserved stays, hex upper
        ("sip:+15551110000;verstat=No-TN-Validation@127.0.0.1;user=phone",
         "sip:+15551110000;verstat=no-tn-validation@127.0.0.1"),
        ("sip:example.com", "sip:example.com"),
        ("sip:bob@[2001:DB8::1]:5060", "sip:bob@[2001:db8::1]"),
        ("sip:bob@127.0.0.1:5080", "sip:bob@127.0.0.1"),
        ("tel:+1-202-555-0100;phone-context=example.com", "tel:+1-202-555-0100"),
        ("TEL:+12025550100", "tel:+12025550100"),
        ("HTTPS://Cert.Example.org/a.pem", "https://Cert.Example.org/a.pem"),
        ("  sip:bob@example.com  ", "sip:bob@example.com"),
    ],
)  # fmt: skip
def test_normalize_uri(uri: str, expected: str) -> None:
    assert normalize_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["", "alice", "sip:", "sip:@example.com", "sip:alice@", "sip:a@b@c", "sip:al ice@x",
     "sip:alice@ex ample.com", "sip:<x>", 'sip:"a"@x', "sip:alice@example.com:port",
     "sip:a%4@x", "tel:", "tel:xyz;x", "tel:+", "1sip:x", "sip:alice@exämple.com",
     "sip:a@" + "b" * 2048],
)  # fmt: skip
def test_normalize_uri_rejects(uri: str) -> None:
    with pytest.raises(StirError) as info:
        normalize_uri(uri)
    assert info.value.code == 400


# --- party_from_uri (RFC 8224 §8.1) --------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "region", "expected"),
    [
        ("tel:+1-202-555-0100;phone-context=example.com", None, PartyId(TN, "12025550100")),
        ("tel:+17005551008", None, PartyId(TN, "17005551008")),  # RFC 8224 §8.1
        ("tel:5550100;phone-context=+1-202", None, PartyId(TN, "12025550100")),
        ("tel:202-555-0100;phone-context=example.com", "US", PartyId(TN, "12025550100")),
        ("tel:911;phone-context=+1", None, PartyId(TN, "1911")),
        ("tel:911;phone-context=example.com", "US", PartyId(TN, "911")),
        ("sip:+12025550100@x;user=phone", None, PartyId(TN, "12025550100")),
        ("sip:+17005551008@chicago.example.com;user=phone", None, PartyId(TN, "17005551008")),
        ("sip:12155551212@example.com;user=phone", None, PartyId(TN, "12155551212")),
        ("sip:+1-202-555-0100@x;user=phone", None, PartyId(TN, "12025550100")),
        ("sip:2025550100;phone-context=+1@x;user=phone", None, PartyId(TN, "12025550100")),
        ("sip:911@x;USER=Phone", "US", PartyId(TN, "911")),
        ("sip:%2B12025550100@x;user=phone", None, PartyId(TN, "12025550100")),
        # Kamailio rewrites the PAI user part with ;verstat=... (sip-messages.txt)
        ("sip:+15551110000;verstat=TN-Validation-Passed@127.0.0.1;user=phone", None,
         PartyId(TN, "15551110000")),
        # local policy: dialable digits without user=phone
        ("sip:12025550100@x", None, PartyId(TN, "12025550100")),
        ("sip:2025550100@x", "US", PartyId(TN, "12025550100")),
        ("sip:+15551110000@127.0.0.1", None, PartyId(TN, "15551110000")),  # Asterisk From
        ("sip:+15552011001@127.0.0.1:5090", None, PartyId(TN, "15552011001")),
        ("sip:+15553010002@127.0.0.1:5080;user=phone", None, PartyId(TN, "15553010002")),
        ("sip:+15551110000;verstat=No-TN-Validation@127.0.0.1", None,
         PartyId(TN, "15551110000")),
        # not numbers: the URI, normalised
        ("sip:alice@Example.COM:5060;transport=tls", None, PartyId(URI, "sip:alice@example.com")),
        ("sip:1001@pbx.example", "US", PartyId(URI, "sip:1001@pbx.example")),  # extension
        ("sip:911@x", "US", PartyId(URI, "sip:911@x")),  # not E.164 without user=phone
        ("sip:alice@x;user=phone", None, PartyId(URI, "sip:alice@x")),
        ("sip:asterisk@127.0.0.1:5080", None, PartyId(URI, "sip:asterisk@127.0.0.1")),
        ("sip:example.com;user=phone", None, PartyId(URI, "sip:example.com")),
        ("tel:ABC;phone-context=example.com", None, PartyId(URI, "tel:ABC")),
        ("sip:anonymous@anonymous.invalid", None, PartyId(URI, "sip:anonymous@anonymous.invalid")),
        ("mailto:Bob@Example.com", None, PartyId(URI, "mailto:Bob@Example.com")),
    ],
)  # fmt: skip
def test_party_from_uri(uri: str, region: str | None, expected: PartyId) -> None:
    assert party_from_uri(uri, default_region=region) == expected


@pytest.mark.parametrize("uri", ["", "sip:a@b@c", "tel:", "+", "12a", "<sip:a@b>"])
def test_party_from_uri_rejects(uri: str) -> None:
    with pytest.raises(StirError) as info:
        party_from_uri(uri)
    assert info.value.code == 400


# --- addr_spec / addr_specs (RFC 3261 §20.10, §25.1) ---------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"Bob" <sip:+1202@x;user=phone>;tag=abc', "sip:+1202@x;user=phone"),
        ("<sip:+15552011001@127.0.0.1>", "sip:+15552011001@127.0.0.1"),
        ("sip:bob@x;tag=1", "sip:bob@x"),  # bare: ";tag" belongs to the header
        ("tel:+15551110000;tag=1", "tel:+15551110000"),
        ("sip:bob@x", "sip:bob@x"),
        ("Alice <sip:alice@example.com>", "sip:alice@example.com"),  # RFC 8224 §5.1 To
        ("Bob<sip:bob@x>", "sip:bob@x"),
        ('"Lab Phone" <sip:+15551110000@127.0.0.1>;tag=3f9be0ea-5238-41b5-ad2e-1672d8c2ccc4',
         "sip:+15551110000@127.0.0.1"),
        ('"Alice" <sip:+15551110000@127.0.0.1:5190>;tag=14391SIPpTag001',
         "sip:+15551110000@127.0.0.1:5190"),
        ('"Ren\xe9" <sip:+15551110000@127.0.0.1:5190>;tag=1', "sip:+15551110000@127.0.0.1:5190"),
        ('"Smith, John \\"JJ\\" <boss>" <sip:jj@x>;tag=9', "sip:jj@x"),
        ('"a\\\\" <sip:a@x>', "sip:a@x"),  # escaped backslash closes the quote
        ("  \"Bob\"\r\n <sip:bob@x> ;tag=1", "sip:bob@x"),
        # RFC 8224 §5.1 From has a stray '>' after the tag. It lies in the header
        # parameters, which stird does not validate, so the URI is still usable.
        ("Bob <sip:12155551212@example.com;user=phone>;tag=1928301774>",
         "sip:12155551212@example.com;user=phone"),
        # Asterisk CHANNEL(pjsip,remote_uri) escapes the quotes (asterisk/README.md)
        ('\\"Alice Caller\\" <sip:+15551234567@carrier.example;user=phone>',
         "sip:+15551234567@carrier.example;user=phone"),
    ],
)  # fmt: skip
def test_addr_spec(value: str, expected: str) -> None:
    assert addr_spec(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", '"Bob <sip:bob@x>', '"Bob" sip:bob@x', "Bob sip:bob@x", "<sip:bob@x",
     "<sip:bob@x> junk", "<>", "<sip:a@b>>", "<sip:a@b>, <sip:c@d>", "<bob>",
     "Bo;b <sip:b@x>", "<sip:bo b@x>", '"a" "b" <sip:a@x>', "<sip:a@b@c>",
     "<sip:a@x>" + ";p=v" * 3000],
)  # fmt: skip
def test_addr_spec_rejects(value: str) -> None:
    with pytest.raises(StirError) as info:
        addr_spec(value)
    assert info.value.code == 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<sip:+15551110000@127.0.0.1;user=phone>", ("sip:+15551110000@127.0.0.1;user=phone",)),
        ("<sip:alice@x>, <tel:+12025550100>", ("sip:alice@x", "tel:+12025550100")),
        ('"A, B" <sip:ab@x>,"C" <tel:+1555;ext=1>', ("sip:ab@x", "tel:+1555;ext=1")),
        ("<sip:a@x;p=1,2>, tel:+1", ("sip:a@x;p=1,2", "tel:+1")),  # ',' inside <> kept
    ],
)
def test_addr_specs(value: str, expected: tuple[str, ...]) -> None:
    assert addr_specs(value) == expected


def test_addr_specs_bounds() -> None:
    assert len(addr_specs(", ".join(["<tel:+1555>"] * 8))) == 8
    with pytest.raises(StirError):
        addr_specs(", ".join(["<tel:+1555>"] * 9))
    with pytest.raises(StirError):
        addr_specs("<sip:a@x>,")


# --- From / To / PAI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bob <sip:12155551212@example.com;user=phone>;tag=1928301774>",
         PartyId(TN, "12155551212")),  # RFC 8224 §5.1 -> orig tn
        ("Alice <sip:alice@example.com>", PartyId(URI, "sip:alice@example.com")),
        ('"Alice Caller" <sip:+15551234567@carrier.example;user=phone>;tag=6629SIPpTag001',
         PartyId(TN, "15551234567")),
        ('"Bob Callee" <sip:+15559876543@pbx.example;user=phone>', PartyId(TN, "15559876543")),
        ("<sip:+15552220000@127.0.0.1:5060>", PartyId(TN, "15552220000")),
    ],
)  # fmt: skip
def test_party_from_header(value: str, expected: PartyId) -> None:
    assert party_from_header(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<sip:+15551110000@127.0.0.1;user=phone>", PartyId(TN, "15551110000")),
        ("<sip:+15551110000@127.0.0.1>", PartyId(TN, "15551110000")),
        ("<tel:+15551110000>", PartyId(TN, "15551110000")),
        ('"Alice PAI" <sip:+15557654321@carrier.example;user=phone>', PartyId(TN, "15557654321")),
        ("<sip:+15551110000;verstat=TN-Validation-Passed@127.0.0.1;user=phone>",
         PartyId(TN, "15551110000")),
        # several entries (RFC 3325): the labelled TN wins, then any TN, then the first
        ("<sip:alice@example.com>, <tel:+12025550100>", PartyId(TN, "12025550100")),
        ("<sip:+15551110000@x>, <tel:+15551110001>", PartyId(TN, "15551110001")),
        ("<sip:+15551110000@x;user=phone>, <tel:+15551110001>", PartyId(TN, "15551110000")),
        ("<sip:alice@example.com>, <sip:+15551110000@x>", PartyId(TN, "15551110000")),
        ("<sip:alice@example.com>, <sip:bob@example.com>", PartyId(URI, "sip:alice@example.com")),
    ],
)  # fmt: skip
def test_party_from_pai(value: str, expected: PartyId) -> None:
    assert party_from_pai(value) == expected


def test_region_applies_to_headers() -> None:
    assert party_from_header("<sip:2025550100@x>", default_region="US") == PartyId(
        TN, "12025550100"
    )
    assert party_from_pai("<tel:202-555-0100;phone-context=x.example>", default_region="US") == (
        PartyId(TN, "12025550100")
    )


# --- a bare telephone number where a URI or header value is expected (README "IDs") -------

PARTY_PARSERS = {"from/to": party_from_header, "pai": party_from_pai, "ruri": party_from_uri}


@pytest.mark.parametrize("where", sorted(PARTY_PARSERS))
@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+12025550100", None, PartyId(TN, "12025550100")),
        ("12025550100", None, PartyId(TN, "12025550100")),
        (" +12025550100 ", None, PartyId(TN, "12025550100")),
        ("+1 202-555-0100", None, PartyId(TN, "12025550100")),
        ("+1 (202) 555.0100", None, PartyId(TN, "12025550100")),
        ("2025550100", "US", PartyId(TN, "12025550100")),  # national, with a default region
        ("2025550100", None, PartyId(TN, "2025550100")),  # as written without one
        ("+442079460000", "US", PartyId(TN, "442079460000")),  # "+": never the region's
        # URIs (and so addr-specs) read as before; name-addrs: test_party_from_header/_pai
        ("sip:+12025550100@pbx.example.com;user=phone", None, PartyId(TN, "12025550100")),
        ("tel:+12025550100", None, PartyId(TN, "12025550100")),
        ("sip:alice@example.com", None, PartyId(URI, "sip:alice@example.com")),
    ],
)  # fmt: skip
def test_bare_telephone_number_is_a_tn(
    where: str, value: str, region: str | None, expected: PartyId
) -> None:
    assert PARTY_PARSERS[where](value, default_region=region) == expected


@pytest.mark.parametrize("where", sorted(PARTY_PARSERS))
@pytest.mark.parametrize(
    "value",
    ["+", "", "   ", "12025550100x", "+1202555010O", "1" * (MAX_TN_LENGTH + 1), "1" * 200,
     "+12025550100, +12025550101", "12025550100;tag=1", "#12", "alice"],
)  # fmt: skip
def test_not_a_bare_telephone_number_is_still_a_bad_request(where: str, value: str) -> None:
    with pytest.raises(StirError) as info:
        PARTY_PARSERS[where](value)
    assert info.value.code == 400


# --- parse_cli_id ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+12025550100", None, PartyId(TN, "12025550100")),
        ("12025550100", None, PartyId(TN, "12025550100")),
        ("+1 (202) 555-0100", None, PartyId(TN, "12025550100")),
        ("202-555-0100", "US", PartyId(TN, "12025550100")),
        ("sip:alice@Example.com", None, PartyId(URI, "sip:alice@example.com")),
        ("SIPS:+12025550100@x;user=phone", None, PartyId(TN, "12025550100")),
        ("tel:+12025550100", None, PartyId(TN, "12025550100")),
    ],
)
def test_parse_cli_id(text: str, region: str | None, expected: PartyId) -> None:
    assert parse_cli_id(text, default_region=region) == expected


@pytest.mark.parametrize(
    "text", ["", "alice", "alice@example.com", "https://x/y", "+", "12a", "*67", "sip:"]
)
def test_parse_cli_id_rejects(text: str) -> None:
    with pytest.raises(StirError) as info:
        parse_cli_id(text)
    assert info.value.code == 400


# --- PartyId claims (RFC 8225 §5.2.1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"tn": "12155551212"}, PartyId(TN, "12155551212")),
        ({"tn": "121555551213"}, PartyId(TN, "121555551213")),  # RFC 8946's typo, still a tn
        ({"tn": "*67#"}, PartyId(TN, "*67#")),
        ({"uri": "sip:alice@example.com"}, PartyId(URI, "sip:alice@example.com")),
    ],
)
def test_party_claim_round_trip(obj: dict[str, str], expected: PartyId) -> None:
    party = PartyId.from_claim(obj)
    assert party == expected
    assert party.claim() == obj


@pytest.mark.parametrize(
    "obj",
    [None, "12155551212", ["12155551212"], {}, {"tn": "1", "uri": "sip:a@b"}, {"tn": 12155551212},
     {"tn": ["12155551212"]}, {"tn": "+12155551212"}, {"tn": ""}, {"tn": "1" * 65},
     {"uri": ""}, {"uri": "alice"}, {"uri": "sip:a b@c"}, {"email": "a@b"}, {1: "x"}],
)  # fmt: skip
def test_party_from_claim_rejects(obj: object) -> None:
    with pytest.raises(StirError) as info:
        PartyId.from_claim(obj)
    assert (info.value.code, info.value.reason) == (438, "Invalid PASSporT")
    assert info.value.check is Check.SYNTAX


# --- robustness: any text raises StirError or nothing ---------------------------------------

SIP_FRAGMENTS = [
    "sip:", "sips:", "tel:", "SIP:", "+", "1", "202", "555-0100", "(", ")", ".", "@", "x",
    "example.com", "[::1]", ":", "5060", ";", "user=phone", ";user=phone", "phone-context=",
    "+1", "verstat=", "?", "&", "h=v", "<", ">", '"', "\\", '\\"', ",", " ", "\t", "\r\n",
    "tag=1", "%", "%41", "%2B", "%4", "#", "*", "é", "\x00", "Bob", "<sip:", "<tel:",
]  # fmt: skip
sip_text = st.lists(st.sampled_from(SIP_FRAGMENTS), max_size=24).map("".join)
any_text = st.one_of(st.text(max_size=300), sip_text)
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> T | StirError:
    """The result of ``call``, or the StirError it raised (any other exception escapes)."""
    try:
        return call()
    except StirError as exc:
        return exc


regions = st.sampled_from([None, "US", "GB", "DE", "us", "", "XX", "001"])

PARSERS = [canonicalize_tn, party_from_uri, party_from_header, party_from_pai, parse_cli_id]


@settings(max_examples=300, deadline=None)
@given(text=any_text, region=regions, index=st.integers(0, len(PARSERS) - 1))
def test_region_parsers_raise_only_stir_error(text: str, region: str | None, index: int) -> None:
    result = attempt(lambda: PARSERS[index](text, default_region=region))
    assert not isinstance(result, StirError) or result.code == 400


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_text_parsers_raise_only_stir_error(text: str) -> None:
    for parser in (normalize_uri, addr_spec, addr_specs):
        result = attempt(lambda: parser(text))  # noqa: B023
        assert not isinstance(result, StirError) or result.code == 400
    assert isinstance(tn_matches(text, text[::-1]), bool)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["tn", "uri", "x"]) | st.text(max_size=4), children,
                      max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(obj=json_values | st.builds(lambda k, v: {k: v}, st.sampled_from(["tn", "uri"]), any_text))
def test_from_claim_raises_only_stir_error(obj: object) -> None:
    party = attempt(lambda: PartyId.from_claim(obj))
    if isinstance(party, StirError):
        assert party.code == 438
    else:
        assert party.claim() == obj


@given(text=sip_text)
def test_party_from_uri_values_are_canonical(text: str) -> None:
    try:
        party = party_from_uri(text, default_region="US")
    except StirError:
        return
    assert PartyId.from_claim(party.claim()) == party
