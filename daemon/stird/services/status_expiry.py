"""Certificate lifecycle: when the signing credentials and the trust anchors expire, the
warnings logged before they do (30, 14, 7, 3 and 1 days), and the ``degraded`` state of
/healthz under 7 days. Time is a parameter: the caller reads the clock."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from stird.services.authentication import SigningCredential

THRESHOLDS = (30, 14, 7, 3, 1)  # days before not_after: one warning each
DEGRADED_DAYS = 7  # /healthz says "degraded" below this
AMBER_DAYS, RED_DAYS = 30, 7  # the status page's colours
DAY = 86400

CREDENTIAL = "credential"
ANCHOR = "trust anchor"


@dataclass(frozen=True, slots=True)
class Expiry:
    kind: str  # CREDENTIAL | ANCHOR
    name: str  # the credential's name, the anchor's subject
    not_after: int  # POSIX time

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / DAY

    def describe(self, now: float) -> str:
        left = self.days_left(now)
        if left < 0:
            return f"{self.kind} {self.name} expired {-left:.1f} days ago"
        return f"{self.kind} {self.name} expires in {left:.1f} days"


def not_after(cert: x509.Certificate) -> int:
    return int(cert.not_valid_after_utc.timestamp())


def expiries(
    credentials: Sequence[SigningCredential], anchors: Iterable[x509.Certificate] = ()
) -> list[Expiry]:
    """The leaf of each signing credential, and each trust anchor."""
    found = [Expiry(CREDENTIAL, c.name, not_after(c.chain[0])) for c in credentials]
    found += [Expiry(ANCHOR, a.subject.rfc4514_string(), not_after(a)) for a in anchors]
    return found


def degraded(items: Iterable[Expiry], now: float, days: int = DEGRADED_DAYS) -> list[str]:
    """What /healthz names while a credential or an anchor has less than ``days`` left."""
    return [item.describe(now) for item in items if item.days_left(now) < days]


def level(days_left: float) -> str:
    """The status page's colour: ok, amber (under 30 days), red (under 7, or expired)."""
    if days_left < RED_DAYS:
        return "red"
    return "amber" if days_left < AMBER_DAYS else "ok"


class ExpiryWatch:
    """Says once per threshold per certificate that it is due: checked at start, on
    reload and daily, a certificate with 5 days left is announced once (for the 7-day
    threshold), then again at 3 and at 1 day, and once more when it has expired. A
    renewed certificate (another ``not_after``) starts afresh."""

    def __init__(self, thresholds: Sequence[int] = THRESHOLDS) -> None:
        self.thresholds = tuple(sorted(thresholds, reverse=True))
        self._said: dict[tuple[str, str, int], int] = {}  # (kind, name, not_after) -> days

    def due(self, items: Sequence[Expiry], now: float) -> list[tuple[Expiry, int]]:
        """``(item, threshold)`` to warn about now (threshold 0: expired)."""
        out: list[tuple[Expiry, int]] = []
        live = set()
        for item in items:
            key = (item.kind, item.name, item.not_after)
            live.add(key)
            left = item.days_left(now)
            passed = [t for t in (*self.thresholds, 0) if left <= t]
            if not passed:
                continue
            tightest = passed[-1]
            if self._said.get(key, 1 << 30) > tightest:
                self._said[key] = tightest
                out.append((item, tightest))
        for key in [k for k in self._said if k not in live]:  # bounded: current ones only
            del self._said[key]
        return out


__all__ = ["Expiry", "ExpiryWatch", "degraded", "expiries", "level", "not_after"]
