"""The operator's status page: ``/status`` (HTML with server-rendered SVG charts: no
script, no external font or stylesheet, renders on an isolated PBX host), ``/status.json``
(the same facts, for ``stird status`` and ``stird calls``) and ``/status/call`` (one call
with its decoded PASSporTs).

Call data is attacker-controlled (a From header is whatever the caller sent): every value
goes through :func:`html.escape` on its way into the page, and the page is served with a
Content-Security-Policy that runs no script at all.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from stird.adapters.api import StirApi
from stird.adapters.httpclient import FetchPolicy, HardenedClient, Refused
from stird.core import certs
from stird.core.errors import StirError
from stird.services.authentication import SigningCredential
from stird.services.status import CallRecord, categories
from stird.services.status_expiry import expiries, level

X5U_TIMEOUT = 1.5  # seconds for one x5u probe
X5U_CACHE = 300.0  # seconds an x5u probe's answer is kept
MAX_LAST = 500
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"
VERDICTS = ("valid", "invalid", "no-identity", "unsupported", "signed", "error")

_PALETTE = {
    "valid": "#2e7d32",
    "signed": "#1565c0",
    "no-identity": "#9e9e9e",
    "unsupported": "#bdbdbd",
    "error": "#6a1b9a",
    "sign-error": "#ad1457",
    "unsigned": "#90caf9",
    "out-of-band": "#00838f",
}
_FAILS = ("#c62828", "#ef6c00", "#f9a825", "#d84315", "#8d6e63", "#e57373", "#ffb74d")


def esc(value: object) -> str:
    """Text for HTML content and quoted attributes; None shows as an empty string."""
    return "" if value is None else html.escape(str(value), quote=True)


def colour(category: str) -> str:
    if category in _PALETTE:
        return _PALETTE[category]
    return _FAILS[sum(map(ord, category)) % len(_FAILS)]


# --- x5u probes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    detail: str
    at: float


class X5uProber:
    """Whether each credential's ``x5u`` answers: one GET through the hardened client with
    a short deadline, the answer cached. The URLs are the operator's own (the
    configuration), so their hosts are allowed even on loopback or over http."""

    def __init__(self, timeout: float = X5U_TIMEOUT, ttl: float = X5U_CACHE) -> None:
        self._timeout, self._ttl = timeout, ttl
        self._cache: dict[str, Probe] = {}
        self._client: HardenedClient | None = None
        self._hosts: tuple[str, ...] = ()
        self._closing: set[asyncio.Task[None]] = set()

    def _client_for(self, urls: Sequence[str]) -> HardenedClient:
        hosts = tuple(sorted({urllib.parse.urlsplit(u).hostname or "" for u in urls}))
        if self._client is None or hosts != self._hosts:
            old = self._client
            if old is not None:  # the credentials changed (a reload)
                task = asyncio.get_running_loop().create_task(old.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            policy = FetchPolicy(timeout=self._timeout, allow_http=True, allow_hosts=hosts)
            self._client, self._hosts = HardenedClient(policy), hosts
        return self._client

    async def probe_all(self, urls: Sequence[str]) -> dict[str, Probe]:
        now = time.monotonic()
        stale = [u for u in urls if u not in self._cache or now - self._cache[u].at > self._ttl]
        if stale:
            client = self._client_for(urls)
            results = await asyncio.gather(*(self._probe(client, u) for u in stale))
            for url, result in zip(stale, results, strict=True):
                self._cache[url] = result
        for url in [u for u in self._cache if u not in urls]:  # bounded: current ones only
            del self._cache[url]
        return {u: self._cache[u] for u in urls}

    async def _probe(self, client: HardenedClient, url: str) -> Probe:
        async def status(resp: aiohttp.ClientResponse) -> int:
            await client.read(resp)
            return resp.status

        try:
            code = await client.request("GET", url, status)
        except Refused as exc:
            return Probe(False, exc.detail, time.monotonic())
        return Probe(code == 200, f"HTTP {code}", time.monotonic())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


# --- the facts -----------------------------------------------------------------------------


def _sample(api: StirApi, name: str, **labels: str) -> float:
    value = api.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def _sum(api: StirApi, name: str) -> float:
    total = 0.0
    for family in api.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


class StatusView:
    """Builds the page's facts from the API object (runtime, health, metrics, calls)."""

    def __init__(self, api: StirApi, prober: X5uProber | None = None) -> None:
        self.api = api
        self.prober = prober if prober is not None else X5uProber()

    async def credentials(self, now: float) -> list[dict[str, Any]]:
        auth = self.api.runtime.auth
        probes = await self.prober.probe_all([c.x5u for c in auth.credentials])
        out: list[dict[str, Any]] = []
        for cred, expiry in zip(auth.credentials, expiries(auth.credentials), strict=True):
            leaf = cred.chain[0]
            left = expiry.days_left(now)
            probe = probes.get(cred.x5u)
            out.append(
                {
                    "name": cred.name,
                    "subject": leaf.subject.rfc4514_string(),
                    "covers": _covers(cred),
                    "not_after": expiry.not_after,
                    "days_left": round(left, 1),
                    "level": level(left),
                    "x5u": cred.x5u,
                    "x5u_ok": probe.ok if probe else None,
                    "x5u_detail": probe.detail if probe else None,
                }
            )
        anchors = self.api.runtime.verifier.policy.verify.anchors
        for anchor in expiries((), anchors):
            left = anchor.days_left(now)
            out.append(
                {
                    "name": "trust anchor",
                    "subject": anchor.name,
                    "covers": "",
                    "not_after": anchor.not_after,
                    "days_left": round(left, 1),
                    "level": level(left),
                    "x5u": None,
                    "x5u_ok": None,
                    "x5u_detail": None,
                }
            )
        return out

    def peers(self) -> dict[str, Any]:
        api, health = self.api, self.api.health
        hits = _sample(api, "stird_cert_cache_events_total", event="hits")
        lookups = hits + _sample(api, "stird_cert_cache_events_total", event="misses")
        cps = {
            f"{s.labels['op']} {s.labels['result']}": s.value
            for f in api.metrics.registry.collect()
            if f.name == "stird_cps_operations"
            for s in f.samples
            if s.name.endswith("_total")
        }
        fallbacks = api.metrics.registry.get_sample_value("stird_store_fallback_total")
        return {
            "kamailio": health.get("kamailio"),
            "ami": health.get("ami"),
            "agi": health.get("agi"),
            "redis": None
            if fallbacks is None
            else {"fallbacks": fallbacks, "errors": _sum(api, "stird_store_errors_total")},
            "cps": cps or None,
            "cert_cache_hit_ratio": round(hits / lookups, 3) if lookups else None,
            "event_loop_lag_ms": round(api.shedder.lag * 1000, 1) if api.shedder else None,
        }

    async def snapshot(
        self,
        *,
        last: int = 50,
        verdict: str | None = None,
        query: str | None = None,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        calls, api = self.api.calls, self.api
        now = calls.now()
        hour, day = calls.totals(60), calls.totals(24 * 60)
        agi = api.health.get("agi") or {}
        found = calls.find(call_id) if call_id else calls.recent(last, verdict=verdict, query=query)
        return {
            "now": now,
            "status": (await api.status())["status"],
            "last_hour": dict(hour),
            "last_day": dict(day),
            "sign_rate_per_min": round(hour.get("signed", 0) / 60, 2),
            "shed": _sum(api, "stird_overload_shed_total"),
            "errors_last_hour": hour.get("error", 0) + hour.get("sign-error", 0),
            "fail_open": agi.get("failed", 0),
            "credentials": await self.credentials(now),
            "peers": self.peers(),
            "calls": [r.to_json(full=bool(call_id)) for r in found],
        }

    # --- HTTP ------------------------------------------------------------------------------

    def mount(self, router: web.UrlDispatcher) -> None:
        router.add_get("/status", self.page)
        router.add_get("/status.json", self.json)
        router.add_get("/status/call", self.call)

    async def json(self, request: web.Request) -> web.Response:
        q = request.query
        body = await self.snapshot(
            last=_last(q.get("last")),
            verdict=q.get("verdict") or None,
            query=q.get("q") or None,
            call_id=q.get("call_id") or None,
        )
        return web.json_response(body, dumps=lambda o: json.dumps(o, default=str))

    async def page(self, request: web.Request) -> web.Response:
        q = request.query
        verdict, query = q.get("verdict") or None, q.get("q") or None
        facts = await self.snapshot(last=_last(q.get("last")), verdict=verdict, query=query)
        calls = self.api.calls
        hour, day = calls.series(60, 1), calls.series(24 * 60, 15)
        return _html(render_page(facts, hour, day, verdict, query))

    async def call(self, request: web.Request) -> web.Response:
        call_id = request.query.get("id", "")
        records = self.api.calls.find(call_id) if call_id else []
        return _html(render_call(call_id, records), 200 if records else 404)


def _last(text: str | None) -> int:
    """``?last=``: 1 to MAX_LAST ASCII digits' worth; anything else the default (50)."""
    if not text or len(text) > 6 or not text.isascii() or not text.isdigit() or int(text) < 1:
        return 50
    return min(int(text), MAX_LAST)


def _html(body: str, status: int = 200) -> web.Response:
    answer = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    answer.headers["Content-Security-Policy"] = CSP
    answer.headers["X-Content-Type-Options"] = "nosniff"
    answer.headers["Cache-Control"] = "no-store"
    return answer


def _covers(cred: SigningCredential) -> str:
    """What a credential signs for: its selectors, else its certificate's TNAuthList/SAN."""
    parts = [
        *sorted(cred.tns),
        *(f"{r.start}+{r.count}" for r in cred.ranges),
        *(f"{p}*" for p in cred.prefixes),
        *(f"@{d}" for d in cred.domains),
    ]
    if parts:
        return ", ".join(parts[:8]) + (" …" if len(parts) > 8 else "")
    try:
        tal = certs.tnauthlist_of(cred.chain[0])
    except StirError:
        return "(unreadable TNAuthList)"
    if tal is None:
        return "SAN URIs"
    spcs = [f"SPC {s}" for s in tal.spcs]
    ranges = [f"{r.start}+{r.count}" for r in tal.ranges]
    items = [*spcs, *tal.tns, *ranges]
    return ", ".join(items[:6]) + (f" … ({len(items)})" if len(items) > 6 else "")


# --- rendering -----------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;
align-items:baseline}
header h1{font-size:18px;margin:0}header a{color:#cfd8e3}
main{padding:16px 24px;display:grid;gap:16px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 16px}
h2{font-size:15px;margin:0 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#5b6472;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{color:#5b6472;font-weight:600}td.mono,.mono{font-family:ui-monospace,monospace;font-size:12px}
.pill{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:12px;
white-space:nowrap}
.ok{color:#2e7d32}.amber{color:#b26a00;font-weight:600}.red{color:#c62828;font-weight:700}
.legend span{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px;border-radius:2px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}
form{margin-bottom:8px}input,select,button{font:inherit;padding:2px 6px}
pre{background:#f5f6f8;padding:8px;overflow:auto;font-size:12px}
"""


def chart(
    points: Sequence[tuple[int, Counter[str]]], title: str, label_every: int, minutes_per_point: int
) -> str:
    """A stacked bar chart (SVG) of the counts per point, with a legend."""
    width, height, left, bottom = 560, 180, 36, 22
    series = [c for c in categories(c for _, c in points) if c != "out-of-band"]
    peak = max((sum(c[s] for s in series) for _, c in points), default=0) or 1
    bar = (width - left) / max(len(points), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} '
        f'{height + bottom}" role="img" aria-label="{esc(title)}">',
        f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="#bbb"/>',
        f'<text x="{left - 4}" y="10" font-size="10" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{height}" font-size="10" text-anchor="end">0</text>',
    ]
    for i, (minute, counts) in enumerate(points):
        x, y = left + i * bar, float(height)
        for name in series:
            if counts[name]:
                h = counts[name] / peak * (height - 12)
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{colour(name)}"><title>'
                    f"{esc(time.strftime('%H:%M', time.gmtime(minute * 60)))} {esc(name)}: "
                    f"{counts[name]}</title></rect>"
                )
        if i % label_every == 0:
            stamp = time.strftime("%H:%M", time.gmtime(minute * 60))
            parts.append(f'<text x="{x:.1f}" y="{height + 15}" font-size="10">{stamp}</text>')
    parts.append("</svg>")
    legend = (
        "".join(f'<span><i style="background:{colour(s)}"></i>{esc(s)}</span>' for s in series)
        or "<span>no calls yet</span>"
    )
    step = f"per {minutes_per_point} min" if minutes_per_point > 1 else "per minute"
    return (
        f"<div><h2>{esc(title)} <small>({step}, UTC)</small></h2>{''.join(parts)}"
        f'<div class="legend">{legend}</div></div>'
    )


def _cards(facts: Mapping[str, Any]) -> str:
    hour: Mapping[str, int] = facts["last_hour"]
    day: Mapping[str, int] = facts["last_day"]
    fails = sum(v for k, v in hour.items() if k.startswith("fail"))
    items = [
        ("status", facts["status"]),
        ("valid (1 h)", hour.get("valid", 0)),
        ("failed (1 h)", fails),
        ("no identity (1 h)", hour.get("no-identity", 0)),
        ("out of band (1 h)", hour.get("out-of-band", 0)),
        ("signed (1 h)", hour.get("signed", 0)),
        ("sign rate /min", facts["sign_rate_per_min"]),
        (
            "verified (24 h)",
            sum(v for k, v in day.items() if k not in ("signed", "sign-error", "out-of-band")),
        ),
        ("errors (1 h)", facts["errors_last_hour"]),
        ("fail-open (AGI)", facts["fail_open"]),
        ("shed", int(facts["shed"])),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def _verdict_pill(record: Mapping[str, Any]) -> str:
    return (
        f'<span class="pill" style="background:{colour(str(record["category"]))}">'
        f"{esc(record['verdict'])}</span>"
    )


def _calls(facts: Mapping[str, Any], verdict: str | None, query: str | None) -> str:
    options = "".join(
        f"<option{' selected' if v == verdict else ''}>{esc(v)}</option>" for v in VERDICTS
    )
    form = (
        f'<form method="get" action="/status"><select name="verdict"><option value="">'
        f"all verdicts</option>{options}</select> "
        f'<input name="q" placeholder="number or Call-ID" value="{esc(query)}"> '
        '<button type="submit">Filter</button></form>'
    )
    rows = []
    for r in facts["calls"]:
        when = time.strftime("%H:%M:%S", time.gmtime(r["at"]))
        link = f"/status/call?id={urllib.parse.quote(r['call_id'] or '', safe='')}"
        cid = f'<a href="{esc(link)}">{esc(r["call_id"])}</a>' if r["call_id"] else ""
        rows.append(
            f'<tr class="call"><td class="mono">{when}</td><td class="mono">{cid}</td>'
            f"<td>{esc(r['caller'])} → {esc(r['callee'])}</td><td>{esc(r['direction'])}</td>"
            f"<td>{_verdict_pill(r)}</td><td>{esc(r['code'])}</td><td>{esc(r['reason'])}"
            f"{'<br><small>' + esc(r['detail']) + '</small>' if r['detail'] else ''}</td>"
            f"<td>{esc(', '.join(r['ppts']))}{' (OOB)' if r['oob'] else ''}</td>"
            f"<td>{esc(r['trust'])}</td></tr>"
        )
    head = (
        "<tr><th>time (UTC)</th><th>Call-ID</th><th>caller → callee</th><th>dir</th>"
        "<th>verdict</th><th>code</th><th>reason</th><th>PASSporTs</th><th>trust</th></tr>"
    )
    body = "".join(rows) or '<tr><td colspan="9">no calls recorded</td></tr>'
    return (
        f'<section id="calls"><h2>Recent calls ({len(rows)})</h2>{form}'
        f"<table>{head}{body}</table></section>"
    )


def _credentials(facts: Mapping[str, Any]) -> str:
    rows = []
    for c in facts["credentials"]:
        stamp = time.strftime("%Y-%m-%d", time.gmtime(c["not_after"]))
        probe = (
            ""
            if c["x5u_ok"] is None
            else f'<span class="{"ok" if c["x5u_ok"] else "red"}">{esc(c["x5u_detail"])}</span>'
        )
        rows.append(
            f"<tr><td>{esc(c['name'])}</td><td>{esc(c['subject'])}</td><td>{esc(c['covers'])}"
            f'</td><td>{stamp} <span class="{esc(c["level"])}">({esc(c["days_left"])} days)'
            f'</span></td><td class="mono">{esc(c["x5u"])}</td><td>{probe}</td></tr>'
        )
    return (
        "<section><h2>Credentials and trust anchors</h2><table><tr><th>name</th>"
        "<th>subject</th><th>covers</th><th>not after</th><th>x5u</th><th>answers</th>"
        f"</tr>{''.join(rows)}</table></section>"
    )


def _peer_text(value: Any, missing: str = "not configured") -> str:
    if value is None:
        return f'<span style="color:#9e9e9e">{esc(missing)}</span>'
    if isinstance(value, Mapping):
        return ", ".join(f"{esc(k)}: {esc(v)}" for k, v in value.items())
    return esc(value)


MISS = "not configured"
_MISSING = {"cert_cache_hit_ratio": "no lookups yet", "cps": "no operations yet"}


def _peers(facts: Mapping[str, Any]) -> str:
    p = facts["peers"]
    names = {
        "kamailio": "Kamailio (jsonrpcs)",
        "ami": "Asterisk AMI",
        "agi": "FastAGI",
        "redis": "Redis (shared store)",
        "cps": "CPS (out of band)",
        "cert_cache_hit_ratio": "certificate cache hit ratio",
        "event_loop_lag_ms": "event-loop lag (ms)",
    }
    rows = "".join(
        f"<tr><th>{esc(label)}</th><td>{_peer_text(p.get(key), _MISSING.get(key, MISS))}</td></tr>"
        for key, label in names.items()
    )
    return f"<section><h2>Peers</h2><table>{rows}</table></section>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body><header>"
        f'<h1>stird</h1><a href="/status">status</a><a href="/status.json">json</a>'
        f'<a href="/metrics">metrics</a></header><main>{body}</main></body></html>'
    )


def render_page(
    facts: Mapping[str, Any],
    hour: Sequence[tuple[int, Counter[str]]],
    day: Sequence[tuple[int, Counter[str]]],
    verdict: str | None,
    query: str | None,
) -> str:
    charts = (
        '<section class="charts">'
        f"{chart(hour, 'Verdicts, last hour', 10, 1)}"
        f"{chart(day, 'Verdicts, last 24 hours', 16, 15)}</section>"
    )
    body = (
        _cards(facts) + charts + _calls(facts, verdict, query) + _credentials(facts) + _peers(facts)
    )
    return _page("stird status", body)


def render_call(call_id: str, records: Sequence[CallRecord]) -> str:
    if not records:
        return _page(
            "stird: call",
            f"<section><h2>No call {esc(call_id)!s} in the last {MAX_LAST} recorded</h2></section>",
        )
    parts = [f"<section><h2>Call {esc(call_id)}</h2></section>"]
    for record in records:
        r = record.to_json(full=True)
        r["at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.at))
        r["ppts"] = ", ".join(record.ppts)
        fields = "".join(
            f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
            for k, v in r.items()
            if k not in ("checks", "passports")
        )
        ppts = "".join(
            f'<h3>PASSporT {i + 1}</h3><pre class="mono">'
            f"{esc(json.dumps(p, indent=2, ensure_ascii=False, default=str))}</pre>"
            for i, p in enumerate(r["passports"])
        )
        checks = "".join(
            f'<h3>check {i + 1}</h3><pre class="mono">'
            f"{esc(json.dumps(c, indent=2, ensure_ascii=False, default=str))}</pre>"
            for i, c in enumerate(r["checks"])
        )
        parts.append(
            f"<section><h2>{esc(record.kind)} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(record.at))} UTC</h2>"
            f"<table>{fields}</table>{ppts}{checks}</section>"
        )
    return _page("stird: call", "".join(parts))


__all__ = ["StatusView", "X5uProber", "chart", "esc", "render_call", "render_page"]
