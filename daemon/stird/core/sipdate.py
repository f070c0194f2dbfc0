"""The SIP Date header (RFC 3261 §20.17), which RFC 8224 §4.1 turns into `iat`."""

from __future__ import annotations

import calendar
import re
import time

from stird.core.errors import bad_request

_WKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# RFC 3261 §25.1:
#   Date          =  "Date" HCOLON SIP-date
#   SIP-date      =  rfc1123-date
#   rfc1123-date  =  wkday "," SP date1 SP time SP "GMT"
#   date1         =  2DIGIT SP month SP 4DIGIT          ; day month year (e.g., 02 Jun 1982)
#   time          =  2DIGIT ":" 2DIGIT ":" 2DIGIT        ; 00:00:00 - 23:59:59
#   wkday         =  "Mon" / "Tue" / "Wed" / "Thu" / "Fri" / "Sat" / "Sun"
#   month         =  "Jan" / "Feb" / ... / "Dec"
# Leniency: surrounding whitespace and a one-digit day are accepted; the weekday is not
# cross-checked (only the date and time are signed into `iat`).
_SIP_DATE = re.compile(
    r"\s*(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<day>[0-9]{1,2}) (?P<month>[A-Z][a-z]{2}) "
    r"(?P<year>[0-9]{4}) (?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2}) GMT\s*"
)
_MAX_LENGTH = 64


def parse_sip_date(value: str) -> int:
    """SIP Date → NumericDate (seconds since the epoch, UTC). 400 when malformed."""
    match = _SIP_DATE.fullmatch(value) if len(value) <= _MAX_LENGTH else None
    if match is None or match["month"] not in _MONTHS:
        raise bad_request(f"Date is not an RFC 3261 rfc1123-date: {value[:_MAX_LENGTH]!r}")
    fields = (match["year"], _MONTHS.index(match["month"]) + 1, match["day"])
    year, month, day = int(fields[0]), fields[1], int(fields[2])
    hour, minute, second = int(match["h"]), int(match["m"]), int(match["s"])
    days_in_month = calendar.monthrange(year, month)[1] if year >= 1 else 0
    if not (1 <= day <= days_in_month and hour < 24 and minute < 60 and second < 60):
        raise bad_request(f"Date names no real instant: {value!r}")
    return calendar.timegm((year, month, day, hour, minute, second))


def format_sip_date(epoch: int) -> str:
    """NumericDate → SIP Date, e.g. ``Fri, 25 Sep 2015 19:12:25 GMT``."""
    tm = time.gmtime(epoch)
    return (
        f"{_WKDAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year:04d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} GMT"
    )
