"""verstat on P-Asserted-Identity, in the shapes Kamailio's lab produced by hand
(../shared/kamailio/README.md §4)."""

from __future__ import annotations

import pytest

from stird.core.errors import StirError
from stird.core.verstat import with_verstat

P = "TN-Validation-Passed"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "<sip:+15551110000@127.0.0.1;user=phone>",
            f"<sip:+15551110000;verstat={P}@127.0.0.1;user=phone>",
        ),
        ("<tel:+15551110000>", f"<tel:+15551110000;verstat={P}>"),
        ("<sip:+15551110000@127.0.0.1>", f"<sip:+15551110000;verstat={P}@127.0.0.1>"),
        (
            '"Alice" <sip:+15551110000@127.0.0.1:5190>;tag=1',
            f"<sip:+15551110000;verstat={P}@127.0.0.1:5190>",
        ),
        (
            "<sip:+1555@a.example;user=phone>, <tel:+1555>",
            f"<sip:+1555;verstat={P}@a.example;user=phone>",
        ),
        ("<sip:pbx.example.com>", "<sip:pbx.example.com>"),
    ],
)
def test_with_verstat(value: str, expected: str) -> None:
    assert with_verstat(value, P) == expected


def test_garbage_is_an_error_family_exception() -> None:
    with pytest.raises(StirError):
        with_verstat("<<<", P)
