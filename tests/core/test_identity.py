"""Identity header (RFC 8224 §4) over captured wire text and the RFC examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stird.core.errors import StirError
from stird.core.identity import (
    MAX_HEADERS,
    IdentityHeader,
    parse_identity,
    parse_identity_headers,
)
from stird.core.passport import PassportHeader
from stird.core.sipdate import format_sip_date, parse_sip_date
from tests.core import vectors as v

SECSIPIDX_OUTPUT = (  # secsipidx 1.2.0 -sign-full, captured
    "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly94L2MucGVtIn0"
    ".eyJhdHRlc3QiOiJDIiwiZGVzdCI6eyJ0biI6WyIxMjAyNTU1MDEwMSJdfSwiaWF0IjoxNzk1MzMxOTgwLCJvcmlnIjp7"
    "InRuIjoiMTIwMjU1NTAxMDAifSwib3JpZ2lkIjoiIn0.fYeVV4gC5vYc9vlJ8gSRSuH_QVKVYOtuSbwSbflI6MjPEMfc"
    "AOYerPGf6G0Z6vQGHj2NzXDOfPngSiP6hnCggA;info=<https://x/c.pem>;alg=ES256;ppt=shaken"
)

PARSE_CASES = [
    pytest.param(
        f"{v.RFC8225_TOKEN};info=<https://biloxi.example.org/biloxi.cert>",
        IdentityHeader(v.RFC8225_TOKEN, "https://biloxi.example.org/biloxi.cert"),
        id="rfc8224-4.1.1-full",
    ),
    pytest.param(
        f"{v.RFC8225_COMPACT};\r\n   info=<https://biloxi.example.org/biloxi.cert>",
        IdentityHeader(v.RFC8225_COMPACT, "https://biloxi.example.org/biloxi.cert"),
        id="rfc8224-4.1.1-compact-folded",
    ),
    pytest.param(
        f'Identity:{v.RFC8946_DIV}; info=<https://www.example.com/cert.cer>;ppt="div"',
        IdentityHeader(v.RFC8946_DIV, "https://www.example.com/cert.cer", ppt="div"),
        id="rfc8946-quoted-ppt-with-prefix",
    ),
    pytest.param(
        SECSIPIDX_OUTPUT,
        IdentityHeader(
            SECSIPIDX_OUTPUT.split(";", maxsplit=1)[0], "https://x/c.pem", "ES256", "shaken"
        ),
        id="secsipidx",
    ),
    pytest.param(
        '..abc ; INFO = <https://a.example/c.pem> ; Alg = ES256 ; ppt = msec ; foo ; bar="x y"',
        IdentityHeader(
            "..abc", "https://a.example/c.pem", "ES256", "msec", (("foo", None), ("bar", '"x y"'))
        ),
        id="whitespace-case-unknown-params",
    ),
    pytest.param(
        "a.b.c;info=<https://[2001:db8::1]:8443/c.pem>;x=[2001:db8::1]",
        IdentityHeader(
            "a.b.c", "https://[2001:db8::1]:8443/c.pem", params=(("x", "[2001:db8::1]"),)
        ),
        id="ipv6",
    ),
    pytest.param(
        "ab+/cd.ef.gh;info=<https://a/c>",
        IdentityHeader("ab+/cd.ef.gh", "https://a/c"),
        id="rfc8224-base64-alphabet",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse(text: str, expected: IdentityHeader) -> None:
    assert parse_identity(text) == (expected,)


def test_comma_joined_and_repeated_headers() -> None:
    one = "a.b.c;info=<https://a.example/1,2.pem>;ppt=msec"  # a comma inside the URI
    two = "..sig;info=<https://b.example/c.pem>"
    joined = parse_identity(f"{one} ,\r\n {two}")
    assert [h.info for h in joined] == ["https://a.example/1,2.pem", "https://b.example/c.pem"]
    assert parse_identity_headers([one, two]) == joined
    assert joined[1].is_compact
    assert not joined[0].is_compact


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("a.b.c", 436, id="no-info"),
        pytest.param("a.b.c;alg=ES256", 436, id="no-info-with-alg"),
        pytest.param("a.b.c;info=https://a/c", 438, id="info-without-brackets"),
        pytest.param("a.b.c;info=<https://a/c", 438, id="unclosed-bracket"),
        pytest.param("a.b.c;info=<>", 438, id="empty-info"),
        pytest.param(";info=<https://a/c>", 438, id="no-digest"),
        pytest.param("a!b;info=<https://a/c>", 438, id="bad-digest-char"),
        pytest.param("a.b.c;info=<https://a/c>;info=<https://b/c>", 438, id="two-info"),
        pytest.param("a.b.c;info=<https://a/c>;ppt=", 438, id="empty-ppt"),
        pytest.param("a.b.c;info=<https://a/c>;ppt", 438, id="ppt-without-value"),
        pytest.param("a.b.c;info=<https://a/c> junk", 438, id="trailing-junk"),
        pytest.param("a.b.c;info=<https://a/c>;", 438, id="trailing-semicolon"),
        pytest.param("a.b.c;info=<https://a/c>,", 438, id="trailing-comma"),
        pytest.param("", 438, id="empty"),
        pytest.param("a.b.c;info=<https://a/c>" + ";p" * 40, 438, id="too-many-params"),
        pytest.param(",".join(["a;info=<h:x>"] * (MAX_HEADERS + 1)), 438, id="too-many-headers"),
        pytest.param("a" * 20000 + ";info=<h:x>", 438, id="too-long"),
    ],
)
def test_parse_errors(text: str, code: int) -> None:
    with pytest.raises(StirError) as info:
        parse_identity(text)
    assert info.value.code == code


def test_format_shape_and_passport_header() -> None:
    header = IdentityHeader("a.b.c", "https://a/c.pem", "ES256", "msec", (("x", "1"), ("y", None)))
    assert header.format() == "a.b.c;info=<https://a/c.pem>;alg=ES256;ppt=msec;x=1;y"
    assert header.passport_header() == PassportHeader("https://a/c.pem", "msec")
    bare = IdentityHeader("..s", "https://a/c.pem")
    assert bare.passport_header() == PassportHeader("https://a/c.pem", None, "ES256")


TEXT = st.text(alphabet=st.sampled_from('ab.;=<>" ,:/\r\n\t-_+[]yIdentity'), max_size=80)


@given(st.one_of(st.text(max_size=120), TEXT))
def test_parser_raises_only_the_error_family(text: str) -> None:
    try:
        headers = parse_identity(text)
    except StirError:
        return
    # parse-then-format is stable: formatting a parsed header parses to the same header
    for header in headers:
        assert parse_identity(header.format()) == (header,)


# --- SIP Date (RFC 3261 §20.17) --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("Fri, 25 Sep 2015 19:12:25 GMT", 1443208345),  # RFC 8224 §5.1
        ("  Thu, 01 Jan 1970 00:00:00 GMT ", 0),
        ("Sat, 29 Feb 2020 23:59:59 GMT", 1583020799),
        ("Sun, 1 Nov 2026 07:00:00 GMT", 1793516400),
    ],
)
def test_sip_date(text: str, epoch: int) -> None:
    assert parse_sip_date(text) == epoch


@pytest.mark.parametrize(
    "text",
    [
        "Fri, 25 Sep 2015 19:12:25 UTC",
        "Fri, 25 Sep 2015 19:12:25 +0000",
        "Friday, 25-Sep-15 19:12:25 GMT",
        "Fri, 31 Sep 2015 19:12:25 GMT",
        "Fri, 25 Sep 2015 24:00:00 GMT",
        "Fri, 25 Foo 2015 19:12:25 GMT",
        "",
        "x" * 100,
    ],
)
def test_sip_date_errors(text: str) -> None:
    with pytest.raises(StirError) as info:
        parse_sip_date(text)
    assert info.value.code == 400


@given(st.integers(0, 2**33))
def test_sip_date_round_trip(epoch: int) -> None:
    assert parse_sip_date(format_sip_date(epoch)) == epoch
