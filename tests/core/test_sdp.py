"""SDP fingerprints and the `mky` claim (RFC 8122 §5, RFC 8225 §5.2.2, RFC 8862 §3), over
the RFC example and SDP captured from Asterisk 22 and the Kamailio SIPp scenarios."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stird.core.errors import Check, StirError
from stird.core.sdp import (
    Fingerprint,
    SdpKeys,
    mky_claim,
    mky_from_sdp,
    mky_matches,
    parse_mky,
    parse_sdp_keys,
)

S256 = "sha-256"

# RFC 8225 §5.2.2 (DIGEST §10.1), display folding removed.
RFC_LINE_A = (
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:"
    "2E:7D:46:3F:54:42:CD:54:F1"
)
RFC_LINE_B = (
    "a=fingerprint:sha-256 02:1A:CC:54:27:AB:EB:9C:53:3F:3E:4B:65:2E:7D:46:3F:54:42:CD:54:F1:7A:"
    "03:A2:7D:F9:B0:7F:46:19:B2"
)
RFC8225_LINES = f"{RFC_LINE_A}\r\n{RFC_LINE_B}\r\n"
RFC8225_MKY = (
    '[{"alg":"sha-256","dig":"021ACC5427ABEB9C533F3E4B652E7D463F5442CD54F17A03A27DF9B07F4619B2"},'
    '{"alg":"sha-256","dig":"4AADB9B13F82183B540212DF3E5D496B19E57CAB3E4B652E7D463F5442CD54F1"}]'
)
RFC_A = "4AADB9B13F82183B540212DF3E5D496B19E57CAB3E4B652E7D463F5442CD54F1"
RFC_B = "021ACC5427ABEB9C533F3E4B652E7D463F5442CD54F17A03A27DF9B07F4619B2"

# asterisk/transcripts/sip-dtls-fingerprints.txt, Part 2 (fx-ec, CRLF on the wire).
EC = "05382CE26779986146E1A5E9FC56C2F2F2B22852E434031713526564FA9E96EF"
ASTERISK_AUDIO = "\r\n".join([
    "v=0", "o=- 940158205 940158205 IN IP4 127.0.0.1", "s=Asterisk", "c=IN IP4 127.0.0.1",
    "t=0 0", "m=audio 20080 UDP/TLS/RTP/SAVP 0 8 101", "a=connection:new", "a=setup:actpass",
    "a=fingerprint:SHA-256 05:38:2C:E2:67:79:98:61:46:E1:A5:E9:FC:56:C2:F2:F2:B2:28:52:E4:34:"
    "03:17:13:52:65:64:FA:9E:96:EF",
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16", "a=ptime:20", "a=maxptime:140", "a=sendrecv", "",
])  # fmt: skip
# Part 3b (fx-auto-video): one certificate per stream, so audio and video differ.
AUTO_AUDIO = "0DA62417EDB33B70AC15B7D76C99F904526D803008368835A0912CE030A27BFE"
AUTO_VIDEO = "AA07BCDE0E6498093600503015B878958690E23B843C5E7987E73CFAE48DB2FE"
ASTERISK_AUDIO_VIDEO = "\r\n".join([
    "v=0", "o=- 567210907 567210907 IN IP4 127.0.0.1", "s=Asterisk", "c=IN IP4 127.0.0.1",
    "t=0 0", "m=audio 20080 UDP/TLS/RTP/SAVP 0 8 101", "a=connection:new", "a=setup:actpass",
    "a=fingerprint:SHA-256 0D:A6:24:17:ED:B3:3B:70:AC:15:B7:D7:6C:99:F9:04:52:6D:80:30:08:36:"
    "88:35:A0:91:2C:E0:30:A2:7B:FE",
    "a=rtpmap:0 PCMU/8000", "a=sendrecv", "m=video 20004 UDP/TLS/RTP/SAVP 99",
    "a=connection:new", "a=setup:actpass",
    "a=fingerprint:SHA-256 AA:07:BC:DE:0E:64:98:09:36:00:50:30:15:B8:78:95:86:90:E2:3B:84:3C:"
    "5E:79:87:E7:3C:FA:E4:8D:B2:FE",
    "a=rtpmap:99 H264/90000", "a=fmtp:99 packetization-mode=1;profile-level-id=42E01F",
    "a=sendrecv", "",
])  # fmt: skip
# fx-ec-sha1: dtls_fingerprint=SHA-1
ASTERISK_SHA1 = "m=audio 20030 UDP/TLS/RTP/SAVP 0 8 101\r\n" + (
    "a=fingerprint:SHA-1 C2:D4:A2:8B:74:CB:25:21:7D:F5:13:D8:0B:C0:6D:4A:D8:5B:C0:B6\r\n"
)
# Part 4: dtls_cert_file missing; Asterisk still sends the INVITE with an empty value.
ASTERISK_MISSING_CERT = (
    "v=0\r\nm=audio 20062 UDP/TLS/RTP/SAVP 0 8 101\r\na=setup:actpass\r\n"
    "a=fingerprint:SHA-256 \r\na=rtpmap:0 PCMU/8000\r\n"
)
# kamailio/transcripts/sip-messages.txt (SIPp logs, shown with LF).
KAMAILIO_FP = "4AADB9B13F82183B540212DF3E5D496B19E57CAB3CF730E6828671753427985E"
KAMAILIO_SDP = "\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
    "m=audio 32100 UDP/TLS/RTP/SAVP 0 8", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=setup:actpass",
    "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3C:F7:"
    "30:E6:82:86:71:75:34:27:98:5E",
    "a=sendrecv", "",
])  # fmt: skip
# RFC 8224 §5.1 SDP: no fingerprints at all.
RFC8224_SDP = (
    "v=0\r\no=UserA 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=Session SDP\r\n"
    "c=IN IP4 pc33.atlanta.example.com\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


def fp(dig: str, alg: str = S256) -> Fingerprint:
    return Fingerprint(alg, dig)


# --- the RFC 8225 §5.2.2 example -------------------------------------------------------------


def test_rfc8225_mky_exact_bytes_and_order() -> None:
    mky = mky_from_sdp(RFC8225_LINES)
    assert json.dumps(mky, separators=(",", ":")) == RFC8225_MKY
    # the sort puts the second SDP line first; SDP order is kept by all_lines()
    assert parse_sdp_keys(RFC8225_LINES).all_lines() == (fp(RFC_A), fp(RFC_B))


# --- parse_sdp_keys over captured SDP ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sdp", "session", "media", "k_line"),
    [
        (ASTERISK_AUDIO, (), ((fp(EC),),), False),
        (ASTERISK_AUDIO.replace("\r\n", "\n"), (), ((fp(EC),),), False),
        (ASTERISK_AUDIO_VIDEO, (), ((fp(AUTO_AUDIO),), (fp(AUTO_VIDEO),)), False),
        (ASTERISK_SHA1, (), ((fp("C2D4A28B74CB25217DF513D80BC06D4AD85BC0B6", "sha-1"),),), False),
        (KAMAILIO_SDP, (), ((fp(KAMAILIO_FP),),), False),
        (RFC8225_LINES, (fp(RFC_A), fp(RFC_B)), (), False),
        (RFC8224_SDP, (), ((),), False),
        ("", (), (), False),
        ("\r\n\r\n", (), (), False),
        # session-level key used by a media section without its own
        (f"{RFC_LINE_A}\r\nm=audio 1 RTP/SAVP 0\r\nm=video 2 RTP/SAVP 99\r\n{RFC_LINE_B}\r\n",
         (fp(RFC_A),), ((), (fp(RFC_B),)), False),
        # k= at session and at media level (RFC 8862 §3)
        ("v=0\r\nk=clear:secret\r\nm=audio 1 RTP/AVP 0\r\n", (), ((),), True),
        ("v=0\r\nm=audio 1 RTP/AVP 0\r\nk=prompt\r\n", (), ((),), True),
        # colon-less, lower-case hex, lower-case attribute name, bare CR, tabs, spaces
        ("a=fingerprint:SHA-256 " + RFC_A.lower() + "\r", (fp(RFC_A),), (), False),
        ("A=FINGERPRINT:Sha-256\t" + RFC_A + "  \n", (fp(RFC_A),), (), False),
        ("  a=fingerprint:sha-256   " + RFC_A + "\rm=audio 1 X 0", (fp(RFC_A),), ((),), False),
        # other hashes of RFC 8122, and an unknown token with a plausible length
        ("a=fingerprint:SHA-512 " + "AB" * 64, (fp("AB" * 64, "sha-512"),), (), False),
        ("a=fingerprint:md5 " + ":".join(["0f"] * 16), (fp("0F" * 16, "md5"),), (), False),
        ("a=fingerprint:sha3-256 " + "01" * 32, (fp("01" * 32, "sha3-256"),), (), False),
        ("a=fingerprint:x " + "01" * 16, (fp("01" * 16, "x"),), (), False),
        # not fingerprint lines
        ("a=fingerprints:sha-256 zz\r\na=setup:actpass\r\nb=AS:64\r\nkk\r\n", (), (), False),
    ],
)  # fmt: skip
def test_parse_sdp_keys(
    sdp: str,
    session: tuple[Fingerprint, ...],
    media: tuple[tuple[Fingerprint, ...], ...],
    k_line: bool,
) -> None:
    keys = parse_sdp_keys(sdp)
    assert keys == SdpKeys(session, media, k_line)
    assert keys.all_lines() == session + tuple(f for m in media for f in m)


def test_effective_prefers_media_level() -> None:
    sdp = f"{RFC_LINE_A}\nm=audio 1 X 0\nm=video 2 X 0\n{RFC_LINE_B}\n"
    keys = parse_sdp_keys(sdp)
    assert keys.effective(0) == (fp(RFC_A),)  # inherited from session level (RFC 8122 §5)
    assert keys.effective(1) == (fp(RFC_B),)
    for index in (2, -1):
        with pytest.raises(StirError):
            keys.effective(index)


def test_two_identical_stream_fingerprints_are_kept_in_mky() -> None:
    """fx-ec-video: one certificate, two m= lines, two identical lines -> two objects."""
    line = "a=fingerprint:SHA-256 " + EC
    sdp = f"m=audio 1 X 0\r\n{line}\r\nm=video 2 X 99\r\n{line}\r\n"
    assert mky_from_sdp(sdp) == [{"alg": S256, "dig": EC}] * 2


@pytest.mark.parametrize(
    "sdp",
    [
        ASTERISK_MISSING_CERT,  # "SHA-256 " with no value
        "a=fingerprint:",
        "a=fingerprint:sha-256",
        "a=fingerprint: " + RFC_A,
        "a=fingerprint:sha-256 " + RFC_A[:-2],  # 31 bytes
        "a=fingerprint:sha-256 " + RFC_A + "00",  # 33 bytes
        "a=fingerprint:sha-1 " + RFC_A,  # 32 bytes for sha-1
        "a=fingerprint:md5 " + "00" * 20,
        "a=fingerprint:foo " + "00" * 15,  # unknown hash: 16..64 bytes
        "a=fingerprint:foo " + "00" * 65,
        "a=fingerprint:sha-256 " + RFC_A[:-1],  # odd number of hex digits
        "a=fingerprint:sha-256 4A:ADB9" + RFC_A[6:],  # colons in some places only
        "a=fingerprint:sha-256 :" + RFC_A,
        "a=fingerprint:sha-256 " + RFC_A + ":",
        "a=fingerprint:sha-256 " + RFC_A.replace("4A", "4G"),
        "a=fingerprint:sha-256 " + RFC_A + " extra",
        "a=fingerprint:sha(256) " + RFC_A,  # not a token
        "a=fingerprint:sh\u0430-256 " + RFC_A,  # Cyrillic a
        "a=fingerprint:sha-256 " + "\uff10" * 64,  # full-width digits
        "a=fingerprint:" + "s" * 40 + " " + RFC_A,
        "x" * 65537,
        "\r\n".join(["a=fingerprint:sha-256 " + RFC_A] * 65),
    ],
)
def test_parse_sdp_keys_rejects(sdp: str) -> None:
    with pytest.raises(StirError) as info:
        parse_sdp_keys(sdp)
    assert info.value.code == 400


def test_sixty_four_fingerprints_are_allowed() -> None:
    sdp = "\r\n".join(["m=audio 1 X 0\r\na=fingerprint:sha-256 " + RFC_A] * 64)
    assert len(parse_sdp_keys(sdp).all_lines()) == 64


# --- mky_claim / parse_mky / mky_matches -----------------------------------------------------


def test_mky_claim_sorts_by_alg_then_dig_bytes() -> None:
    fps = [fp("BB" * 32), fp("AA" * 20, "sha-1"), fp("AA" * 32), fp("AA" * 32)]
    assert mky_claim(fps) == [
        {"alg": "sha-1", "dig": "AA" * 20},  # "sha-1" < "sha-2..." byte-wise
        {"alg": S256, "dig": "AA" * 32},
        {"alg": S256, "dig": "AA" * 32},
        {"alg": S256, "dig": "BB" * 32},
    ]
    assert mky_claim([]) == []


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (json.loads(RFC8225_MKY), (fp(RFC_B), fp(RFC_A))),
        ([{"alg": "SHA-256", "dig": RFC_A.lower()}], (fp(RFC_A),)),
        ([{"dig": ":".join(RFC_A[i : i + 2] for i in range(0, 64, 2)), "alg": S256}],
         (fp(RFC_A),)),
        ([{"alg": "sha-1", "dig": "C2D4A28B74CB25217DF513D80BC06D4AD85BC0B6"}],
         (fp("C2D4A28B74CB25217DF513D80BC06D4AD85BC0B6", "sha-1"),)),
    ],
)  # fmt: skip
def test_parse_mky(claim: object, expected: tuple[Fingerprint, ...]) -> None:
    assert parse_mky(claim) == expected


@pytest.mark.parametrize(
    "claim",
    [None, {}, [], {"alg": S256, "dig": RFC_A}, "sha-256 " + RFC_A, [[S256, RFC_A]],
     [{"alg": S256}], [{"dig": RFC_A}], [{"alg": S256, "dig": RFC_A, "x": 1}],
     [{"alg": S256, "dig": 1}], [{"alg": None, "dig": RFC_A}], [{"alg": S256, "dig": RFC_A[2:]}],
     [{"alg": "", "dig": RFC_A}], [{"alg": S256, "dig": RFC_A + "!"}],
     [{"alg": S256, "dig": RFC_A}] * 65],
)  # fmt: skip
def test_parse_mky_rejects(claim: object) -> None:
    with pytest.raises(StirError) as info:
        parse_mky(claim)
    assert (info.value.code, info.value.reason) == (438, "Invalid PASSporT")
    assert info.value.check is Check.MKY


@pytest.mark.parametrize(
    ("claim", "sdp", "expected"),
    [
        (json.loads(RFC8225_MKY), RFC8225_LINES, True),
        (list(reversed(json.loads(RFC8225_MKY))), RFC8225_LINES, True),  # order is not checked
        ([{"alg": S256, "dig": EC}], ASTERISK_AUDIO, True),
        ([{"alg": "SHA-256", "dig": EC.lower()}], ASTERISK_AUDIO, True),
        ([{"alg": S256, "dig": AUTO_AUDIO}, {"alg": S256, "dig": AUTO_VIDEO}],
         ASTERISK_AUDIO_VIDEO, True),
        ([{"alg": S256, "dig": AUTO_AUDIO}], ASTERISK_AUDIO_VIDEO, False),  # video missing
        ([{"alg": S256, "dig": KAMAILIO_FP}], KAMAILIO_SDP, True),
        ([{"alg": S256, "dig": RFC_A}], KAMAILIO_SDP, False),  # another key
        ([{"alg": "sha-1", "dig": "C2D4A28B74CB25217DF513D80BC06D4AD85BC0B6"}], ASTERISK_AUDIO,
         False),
        ([{"alg": S256, "dig": EC}], RFC8224_SDP, False),  # SDP without fingerprints
        ([{"alg": S256, "dig": EC}, {"alg": S256, "dig": EC}], ASTERISK_AUDIO, True),
    ],
)  # fmt: skip
def test_mky_matches(claim: object, sdp: str, expected: bool) -> None:
    assert mky_matches(claim, parse_sdp_keys(sdp)) is expected


def test_mky_matches_rejects_malformed_claim() -> None:
    with pytest.raises(StirError) as info:
        mky_matches({"alg": S256, "dig": EC}, parse_sdp_keys(ASTERISK_AUDIO))
    assert info.value.check is Check.MKY


@pytest.mark.parametrize("sdp", [RFC8225_LINES, ASTERISK_AUDIO_VIDEO, KAMAILIO_SDP])
def test_mky_round_trip(sdp: str) -> None:
    keys = parse_sdp_keys(sdp)
    claim = mky_from_sdp(sdp)
    assert mky_matches(claim, keys)
    assert mky_claim(parse_mky(claim)) == claim


# --- robustness -------------------------------------------------------------------------------

SDP_FRAGMENTS = [
    "v=0", "m=audio 1 RTP/AVP 0", "k=clear:x", "a=fingerprint:", "A=Fingerprint:", "sha-256",
    "SHA-1", "md5", "x", " ", "\t", ":", "AB", "cd", "0", "G", "é", "\r\n", "\n", "\r", RFC_A,
    "4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3E:4B:65:2E:7D:46:3F:54:42:CD",
]  # fmt: skip
sdp_text = st.lists(st.sampled_from(SDP_FRAGMENTS), max_size=30).map("".join)
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> T | StirError:
    """The result of ``call``, or the StirError it raised (any other exception escapes)."""
    try:
        return call()
    except StirError as exc:
        return exc


@settings(max_examples=400, deadline=None)
@given(sdp=st.one_of(st.text(max_size=500), sdp_text))
def test_parse_sdp_keys_raises_only_stir_error(sdp: str) -> None:
    keys = attempt(lambda: parse_sdp_keys(sdp))
    if isinstance(keys, StirError):
        assert keys.code == 400
    elif keys.all_lines():
        assert mky_matches(mky_claim(keys.all_lines()), keys)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80) | sdp_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["alg", "dig", "x"]), children, max_size=3)
    ),
    max_leaves=12,
)
mky_like = st.lists(
    st.fixed_dictionaries({"alg": st.sampled_from(["sha-256", "SHA-1", "", "x"]), "dig": sdp_text}),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(claim=json_values | mky_like)
def test_parse_mky_raises_only_stir_error(claim: object) -> None:
    fps = attempt(lambda: parse_mky(claim))
    if isinstance(fps, StirError):
        assert (fps.code, fps.check) == (438, Check.MKY)
    else:
        assert mky_matches(claim, SdpKeys(fps, (), False))
