"""Prometheus metrics (prometheus-client), one registry per daemon instance."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stird.services.certcache import CacheStats
from stird.services.verification import ReplayStats

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _CacheCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        family = CounterMetricFamily(
            "stird_cert_cache_events", "Certificate cache events", labels=["event"]
        )
        for event in ("hits", "misses", "stale_served", "fetches", "fetch_errors",
                      "shared_hits", "shared_errors", "negative_evictions"):  # fmt: skip
            family.add_metric([event], float(getattr(stats, event)))
        yield family
        yield GaugeMetricFamily("stird_cert_cache_negative_entries",
                                "Certificate fetch failures remembered (negative cache)",
                                value=float(stats.negative_entries))  # fmt: skip


class _FallbackCollector(Collector):
    def __init__(self, fallbacks: Callable[[], int]) -> None:
        self._fallbacks = fallbacks

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "stird_store_fallback",
            "Times the shared store (Redis) failed and work went on in the local store",
            value=float(self._fallbacks()),
        )


class _ReplayCollector(Collector):
    """RFC 8224 §12.1 replay checking: PASSporTs checked, refused, and skipped by reason."""

    def __init__(self, stats: Callable[[], ReplayStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[CounterMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        family = CounterMetricFamily(
            "stird_replay_checks",
            "Valid PASSporTs by replay check: checked, replayed (refused), or unchecked "
            "and why (disabled, no-call-id, store-full, store-unavailable)",
            labels=["result", "reason"],
        )
        family.add_metric(["checked", ""], float(stats.checked))
        family.add_metric(["replayed", ""], float(stats.replayed))
        for reason in ("disabled", "no-call-id", "store-full", "store-unavailable"):
            family.add_metric(["unchecked", reason], float((stats.unchecked or {}).get(reason, 0)))
        yield family


_MAX_CHILDREN = 1024


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int | None, str], tuple[Counter, Histogram]] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "stird_requests",
            "Sign and verify requests by outcome",
            ["kind", "verdict", "code", "ppt"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "stird_request_seconds", "Request handling time", ["kind"],
            buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.cps = Counter(
            "stird_cps_operations", "Call Placement Service pushes and retrievals",
            ["op", "result"], registry=self.registry,
        )  # fmt: skip
        self.upstream = Counter(
            "stird_store_errors", "Shared-store (Redis) failures", ["store"], registry=self.registry
        )
        self.dialogs = Counter(
            "stird_msec_dialogs", "msec dialog policy outcomes (RFC 8862 §4.4)",
            ["outcome", "policy"], registry=self.registry,
        )  # fmt: skip
        self.task_restarts = Counter(
            "stird_task_restarts", "Background tasks restarted after an exception",
            ["task"], registry=self.registry,
        )  # fmt: skip
        self.hep_datagrams = Counter(
            "stird_hep_datagrams",
            "HEP datagrams by result (accepted, duplicate, decode-error, auth-failed, not-sip)",
            ["result"], registry=self.registry,
        )  # fmt: skip
        self.hep_sdp = Counter(
            "stird_hep_sdp", "SDP lookups of the FastAGI verify route (match, miss)",
            ["result"], registry=self.registry,
        )  # fmt: skip
        self.hep_backwards = Counter(
            "stird_hep_backwards", "Backwards msec messages seen through HEP, by verdict",
            ["result"], registry=self.registry,
        )  # fmt: skip
        self.reload_failures = Counter(
            "stird_reload_failures",
            "SIGHUP reloads refused (the running configuration stayed)",
            registry=self.registry,
        )

    def watch_cache(self, stats: Callable[[], CacheStats | None]) -> None:
        self.registry.register(_CacheCollector(stats))

    def watch_replay(self, stats: Callable[[], ReplayStats | None]) -> None:
        """``stird_replay_checks_total{result,reason}`` from the current verifier."""
        self.registry.register(_ReplayCollector(stats))

    def watch_store(self, fallbacks: Callable[[], int]) -> None:
        """``stird_store_fallback_total`` from ``FallbackStore.failures``."""
        self.registry.register(_FallbackCollector(fallbacks))

    def observe(self, kind: str, seconds: float, verdict: str, code: int | None, ppt: str) -> None:
        key = (kind, verdict, code, ppt)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds the label tuple: once per key
            children = (
                self.requests.labels(kind, verdict, str(code or ""), ppt),
                self.latency.labels(kind),
            )
            if len(self._children) < _MAX_CHILDREN:  # label values are our own: few
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
