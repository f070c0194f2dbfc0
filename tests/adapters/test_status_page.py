"""The status page's rendering: every attacker-controlled value escaped (a From with
<script> is inert text), SVG charts drawn on the server, x5u probes cached."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from aiohttp import web

from stird.adapters.status_page import X5uProber, chart, render_call, render_page
from stird.services.status import CallRecord

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


def facts(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "ok", "last_hour": {"valid": 1, "fail 438": 2}, "last_day": {"valid": 1},
        "sign_rate_per_min": 0.5, "errors_last_hour": 0, "fail_open": 0, "shed": 0.0,
        "credentials": [{"name": EVIL, "subject": EVIL, "covers": EVIL, "not_after": 0,
                         "days_left": 3.0, "level": "red", "x5u": EVIL, "x5u_ok": False,
                         "x5u_detail": EVIL}],
        "peers": {"kamailio": {"reachable": False, "error": EVIL}, "ami": None},
        "calls": [call],
    }  # fmt: skip


def hostile_record() -> CallRecord:
    return CallRecord(
        at=time.time(), kind="verify", direction="in", call_id=EVIL, caller=EVIL, callee=EVIL,
        verdict="invalid", code=438, reason=EVIL, detail=EVIL, ppts=(EVIL,), trust=EVIL,
        passports=({"claims": {"orig": {"uri": EVIL}}, "header": {"x5u": EVIL}},),
        checks=({"detail": EVIL},),
    )  # fmt: skip


def assert_inert(page: str) -> None:
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "onerror=alert(1)>" not in page
    assert "&lt;script&gt;" in page


def test_page_escapes_every_call_field() -> None:
    record = hostile_record()
    points = [(int(time.time() // 60), Counter({"valid": 2, EVIL: 1}))]
    page = render_page(facts(record.to_json()), points, points, EVIL, EVIL)
    assert_inert(page)
    assert page.count("<svg") == 2


def test_call_detail_escapes_claims() -> None:
    page = render_call(EVIL, [hostile_record()])
    assert_inert(page)
    assert_inert(render_call(EVIL, []))


def test_chart_stacks_bars_per_point() -> None:
    minute = int(time.time() // 60)
    svg = chart([(minute, Counter({"valid": 3, "fail 438": 1})), (minute + 1, Counter())],
                "t", 1, 1)  # fmt: skip
    assert svg.count("<rect") == 2 and "fail 438: 1" in svg and "valid: 3" in svg


async def test_x5u_probe_is_cached() -> None:
    hits: list[str] = []

    async def cert(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"pem")

    app = web.Application()
    app.router.add_get("/ok.pem", cert)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ok = f"http://127.0.0.1:{port}/ok.pem"
    missing = f"http://127.0.0.1:{port}/missing.pem"
    prober = X5uProber(timeout=2.0, ttl=60.0)
    try:
        first = await prober.probe_all([ok, missing])
        again = await prober.probe_all([ok, missing])
    finally:
        await prober.close()
        await runner.cleanup()
    assert first[ok].ok and first[ok].detail == "HTTP 200"
    assert not first[missing].ok and first[missing].detail == "HTTP 404"
    assert again == first and hits == ["/ok.pem"]  # cached: asked once


def test_hostile_last_parameter_falls_back_to_the_default() -> None:
    """``?last=`` from the query string: odd digits or a huge number never reach int()."""
    from stird.adapters.status_page import MAX_LAST, _last

    for text in ("²", "١٢", "9" * 5000, "-3", "0", "", None, " 5", "1e3"):
        assert _last(text) == 50, text
    assert _last("7") == 7 and _last("999999") == MAX_LAST
