"""Prometheus metrics (prometheus-client), one registry per daemon instance.

With several worker processes (``[server] workers``), every worker writes its metrics to
files in one directory (prometheus-client's multiprocess mode, :func:`enable_multiprocess`)
and ``/metrics`` on any worker renders all of them: counters and histograms summed over
the workers (the dead ones included: their files stay), gauges of prometheus-client
objects (connections, loop lag) one series per worker with a ``pid`` label. The custom
collectors (certificate cache, replay checks, store fallbacks, AMI) read this process's
objects, which multiprocess mode cannot see: :meth:`Metrics.sync` copies their samples
into multiprocess metrics of the same names (counters as increments, so summed over the
workers; gauges as ``livesum``), every second and before each render.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from stird.services.certcache import CacheStats
from stird.services.status_expiry import ANCHOR, CREDENTIAL, Expiry
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


class _ExpiryCollector(Collector):
    """Certificate lifecycle: each signing credential's and trust anchor's not_after."""

    def __init__(self, items: Callable[[], list[Expiry]]) -> None:
        self._items = items

    def collect(self) -> Iterable[GaugeMetricFamily]:
        creds = GaugeMetricFamily(
            "stird_credential_not_after_seconds",
            "When each signing credential's certificate expires (POSIX time)", labels=["name"],
        )  # fmt: skip
        anchors = GaugeMetricFamily(
            "stird_trust_anchor_not_after_seconds",
            "When each trust anchor expires (POSIX time)", labels=["subject"],
        )  # fmt: skip
        for item in self._items():
            family = creds if item.kind == CREDENTIAL else anchors if item.kind == ANCHOR else None
            if family is not None:
                family.add_metric([item.name], float(item.not_after))
        yield creds
        yield anchors


class _PeerCollector(Collector):
    """``stird_kamailio_reachable``: 1 while Kamailio's jsonrpcs answers the health probe."""

    def __init__(self, reachable: Callable[[], bool | None]) -> None:
        self._reachable = reachable

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = self._reachable()
        if up is not None:
            yield GaugeMetricFamily("stird_kamailio_reachable",
                                    "1 while Kamailio's jsonrpcs answered the last probe",
                                    value=1.0 if up else 0.0)  # fmt: skip


_MAX_CHILDREN = 1024
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


_pid = os.getpid()


def _process_id() -> int:
    """This process's PID, as prometheus-client's multiprocess values check it on every
    update to notice a fork. Its default, ``os.getpid``, is a system call each time (glibc
    does not cache it): three per sign request in a worker; this one is refreshed in the
    child by ``os.fork`` itself (``register_at_fork``) and by :func:`enable_multiprocess`."""
    return _pid


def _refresh_pid() -> None:
    global _pid  # noqa: PLW0603 - one value per process, refreshed at fork
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def enable_multiprocess(directory: Path) -> None:
    """From now on, every metric this process creates keeps its value in a file under
    ``directory`` (call in each worker before building :class:`Metrics`)."""
    os.environ[_MULTIPROC_ENV] = str(directory)
    _refresh_pid()
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(_process_id)  # type: ignore[no-untyped-call]


def forget_process(directory: Path, pid: int) -> None:
    """A worker died: drop its gauges (its counters and histograms still count)."""
    for mode in ("all", "liveall", "livesum", "livemax", "livemin", "livemostrecent"):
        (directory / f"gauge_{mode}_{pid}.db").unlink(missing_ok=True)


class _Mirror:
    """Custom collectors' samples copied into multiprocess metrics of the same names."""

    def __init__(self) -> None:
        self.collectors: list[Collector] = []
        self._metrics: dict[str, Counter | Gauge] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    def sync(self) -> None:
        for collector in self.collectors:
            for family in collector.collect():
                if family.type in ("counter", "gauge"):
                    self._copy(family)

    def _copy(self, family: Metric) -> None:
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            names = tuple(sorted(sample.labels))
            metric = self._metric(family, names)
            values = tuple(sample.labels[n] for n in names)
            child = metric.labels(*values) if names else metric
            if isinstance(child, Gauge):
                child.set(sample.value)
                continue
            key = (sample.name, values)
            last = self._last.get(key, 0.0)
            # a counter that went down was replaced (a reload): it counts from zero again
            delta = sample.value - last if sample.value >= last else sample.value
            self._last[key] = sample.value
            if delta > 0:
                child.inc(delta)

    def _metric(self, family: Metric, labels: tuple[str, ...]) -> Counter | Gauge:
        metric = self._metrics.get(family.name)
        if metric is None:
            if family.type == "counter":
                metric = Counter(family.name, family.documentation, labels, registry=None)
            else:
                metric = Gauge(family.name, family.documentation, labels, registry=None,
                               multiprocess_mode="livesum")  # fmt: skip
            self._metrics[family.name] = metric
        return metric


class _Registry(CollectorRegistry):
    """A registry that, in multiprocess mode, also hands custom collectors to the mirror."""

    def __init__(self, mirror: _Mirror | None) -> None:
        super().__init__()
        self._mirror = mirror

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if self._mirror is not None and not isinstance(collector, MetricWrapperBase):
            self._mirror.collectors.append(collector)


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        """``multiprocess_dir``: this process is one of several workers whose metrics live
        there (:func:`enable_multiprocess` was called); ``render`` shows them all."""
        self._children: dict[tuple[str, str, int | None, str], tuple[Counter, Histogram]] = {}
        self.multiprocess_dir = multiprocess_dir
        self._mirror = _Mirror() if multiprocess_dir is not None else None
        self.registry: CollectorRegistry = _Registry(self._mirror)
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
        self.fail_open = Counter(
            "stird_fail_open",
            "Calls stird could not sign or verify and told the PBX to let through anyway "
            "(FastAGI fail_action = continue); Kamailio counts its own (stird.cfg)",
            ["interface", "route", "code"], registry=self.registry,
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

    def watch_expiry(self, items: Callable[[], list[Expiry]]) -> None:
        """``stird_credential_not_after_seconds{name}``, ``stird_trust_anchor_...{subject}``."""
        self.registry.register(_ExpiryCollector(items))

    def watch_kamailio(self, reachable: Callable[[], bool | None]) -> None:
        """``stird_kamailio_reachable`` (absent until the first probe answered)."""
        self.registry.register(_PeerCollector(reachable))

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

    def sync(self) -> None:
        """Multiprocess mode: publish this worker's custom collectors (no-op otherwise)."""
        if self._mirror is not None:
            self._mirror.sync()

    async def run_sync(self, period: float = 1.0) -> None:
        """Publish every ``period`` seconds until cancelled (a supervised task)."""
        while True:
            self.sync()
            await asyncio.sleep(period)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.sync()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)
