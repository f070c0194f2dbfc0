"""The one error family of stird: every failure carries the SIP answer it maps to.

Modelled on h11's ``error_status_hint``: protocol code paths raise :class:`StirError`
and nothing else, so the daemon can always turn a failure into a SIP status, a
reason phrase (RFC 8224 §6.2.2) and a note of which check failed.
"""

from __future__ import annotations

import enum


class SipStatus(enum.Enum):
    """SIP status codes and reason phrases of RFC 8224 §6.2.2 (plus 400 for bad input and
    503 for stird refusing work while it is behind, RFC 3261 §21.5.4)."""

    USE_IDENTITY_HEADER = (428, "Use Identity Header")
    USE_SUPPORTED_PASSPORT_FORMAT = (428, "Use Supported PASSporT Format")
    BAD_IDENTITY_INFO = (436, "Bad Identity Info")
    UNSUPPORTED_CREDENTIAL = (437, "Unsupported Credential")
    INVALID_IDENTITY_HEADER = (438, "Invalid Identity Header")
    INVALID_PASSPORT = (438, "Invalid PASSporT")
    STALE_DATE = (403, "Stale Date")
    BAD_REQUEST = (400, "Bad Request")
    FORBIDDEN = (403, "Forbidden")  # the authentication service holds no credential for orig
    SERVICE_UNAVAILABLE = (503, "Service Unavailable")  # overloaded: try again later

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]


class Check(enum.Enum):
    """Which verification step or parser rejected the input (for verdict details)."""

    SYNTAX = "syntax"  # a parser refused the text
    PPT = "ppt"  # RFC 8224 §6.2 step 1
    IDENTITY = "identity"  # step 2: orig against From/PAI
    DEST = "dest"  # dest against To / Request-URI
    CREDENTIAL = "credential"  # step 3: fetching / decoding the certificate
    TRUST = "trust"  # chain to an anchor, pins, algorithm
    AUTHORITY = "authority"  # TNAuthList / SAN does not cover orig (RFC 8226)
    FRESHNESS = "freshness"  # step 4: Date / iat
    SIGNATURE = "signature"  # step 5
    MKY = "mky"  # RFC 8862: mky against the SDP fingerprints, k= lines
    REPLAY = "replay"  # RFC 8224 §12.1
    DIVERSION = "diversion"  # RFC 8946 §4.2: a div PASSporT links to no earlier one
    ABSENT = "absent"  # no (usable) Identity header
    CAPACITY = "capacity"  # stird itself is behind: nothing about the request was checked


class StirError(Exception):
    """A failure that maps to a SIP answer.

    ``status`` is the SIP status to answer with, ``check`` the step that failed and
    ``detail`` a human explanation (never secret material).
    """

    def __init__(
        self,
        status: SipStatus,
        detail: str,
        *,
        check: Check = Check.SYNTAX,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.check = check

    @property
    def code(self) -> int:
        return self.status.code

    @property
    def reason(self) -> str:
        return self.status.reason

    def __repr__(self) -> str:
        return f"StirError({self.code} {self.reason!r}, {self.detail!r}, check={self.check.value})"


def invalid_header(detail: str, check: Check = Check.SYNTAX) -> StirError:
    """438 Invalid Identity Header — the most common parse/validation failure."""
    return StirError(SipStatus.INVALID_IDENTITY_HEADER, detail, check=check)


def invalid_passport(detail: str, check: Check = Check.SYNTAX) -> StirError:
    """438 Invalid PASSporT — a token whose claims or structure are unacceptable."""
    return StirError(SipStatus.INVALID_PASSPORT, detail, check=check)


def bad_request(detail: str) -> StirError:
    """400 — SIP facts handed to stird (From, To, Date, SDP) are malformed."""
    return StirError(SipStatus.BAD_REQUEST, detail, check=Check.SYNTAX)
