"""Certificate lifecycle: warnings 30, 14, 7, 3 and 1 days before a credential or a trust
anchor expires, once per threshold, driven by a test clock over a short-lived certificate."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import certs
from stird.services.authentication import SigningCredential
from stird.services.status_expiry import (
    ANCHOR,
    CREDENTIAL,
    DAY,
    ExpiryWatch,
    degraded,
    expiries,
    level,
)

NOW = 1_790_000_000


def short_lived(days: int, name: str = "short") -> SigningCredential:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=NOW, days=days, tns=["15551110000"])
    return SigningCredential(name, key, (cert,), f"https://certs.example/{name}.pem")


def test_warnings_fire_once_per_threshold_as_the_clock_runs() -> None:
    cred = short_lived(days=40)
    items = expiries([cred])
    watch = ExpiryWatch()
    fired: list[tuple[int, int]] = []  # (day of the check, threshold)
    for hour in range(0, 42 * 24, 6):  # a check every 6 hours for 42 days
        for _, threshold in watch.due(items, NOW + hour * 3600):
            fired.append((hour // 24, threshold))
    assert [t for _, t in fired] == [30, 14, 7, 3, 1, 0]
    assert [d for d, _ in fired] == [10, 26, 33, 37, 39, 40]


def test_a_late_first_check_warns_once_for_the_tightest_threshold() -> None:
    items = expiries([short_lived(days=5)])
    watch = ExpiryWatch()
    assert [t for _, t in watch.due(items, NOW)] == [7]  # not 30, 14 and 7 at once
    assert watch.due(items, NOW + 3600) == []  # a reload an hour later: nothing new
    assert [t for _, t in watch.due(items, NOW + 2 * DAY + 1)] == [3]


def test_a_renewed_certificate_starts_afresh() -> None:
    watch = ExpiryWatch()
    assert watch.due(expiries([short_lived(days=2, name="a")]), NOW)
    renewed = expiries([short_lived(days=365, name="a")])
    assert watch.due(renewed, NOW) == []
    assert len(watch._said) == 0  # the old one is forgotten: bounded


def test_trust_anchors_are_watched_too() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    anchor = certs.make_stir_cert(key, now=NOW, days=10, ca=True, common_name="Test CA")
    items = expiries([short_lived(days=365)], [anchor])
    assert [(i.kind, i.name) for i in items] == [(CREDENTIAL, "short"), (ANCHOR, "CN=Test CA")]
    assert [(i.kind, t) for i, t in ExpiryWatch().due(items, NOW)] == [(ANCHOR, 14)]


def test_degraded_under_seven_days_and_colours() -> None:
    items = expiries([short_lived(days=8, name="eight"), short_lived(days=6, name="six")])
    assert degraded(items, NOW) == ["credential six expires in 6.0 days"]
    assert len(degraded(items, NOW + 2 * DAY)) == 2
    assert "expired" in degraded(items, NOW + 9 * DAY)[0]
    assert (level(40), level(29), level(6.9), level(-1)) == ("ok", "amber", "red", "red")
