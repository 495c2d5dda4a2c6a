"""Prometheus metrics, one registry per process (built by the service, passed in)."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as _client_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


# --- series counted on every admission ---------------------------------------------
#
# prometheus_client's Counter and Histogram take a lock and walk several method
# calls per increment; the series below are counted in plain Python numbers instead
# and turned into samples only when /metrics is scraped, exactly as those classes
# render them (names, HELP/TYPE, labels, bucket bounds, _created). Plain numbers are
# safe here: the webhook is one event-loop thread, and the /metrics handler runs on
# that same loop, so an increment never races a scrape.


_S = TypeVar("_S", "CounterSeries", "HistogramSeries")


def _created_series() -> bool:
    """Whether prometheus_client shows ``_created`` samples (its
    PROMETHEUS_DISABLE_CREATED_SERIES switch), so these series follow it too."""
    return bool(getattr(_client_metrics, "_use_created", True))


class CounterSeries:
    """One labelled counter series."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramSeries:
    """One labelled histogram series: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount <= math.inf:  # NaN lands in no bucket, as in prometheus_client
            self.counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount


class _PlainFamily(Collector, Generic[_S]):
    """Series by label values, as a prometheus_client metric with labels keeps them."""

    _type = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _S] = {}
        if not self._labelnames:
            self._series[()] = self._new_series()  # shown from the start, as prometheus_client does
        registry.register(self)

    def _new_series(self) -> _S:
        raise NotImplementedError

    def labels(self, *values: str) -> _S:
        """The series for these label values, created on first use."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
        key = tuple(str(value) for value in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = self._new_series()
        return series

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._documentation, self._type)]

    def collect(self) -> list[Metric]:
        metric = Metric(self._name, self._documentation, self._type)
        created = _created_series()
        for values, series in self._series.items():
            labels = list(zip(self._labelnames, values, strict=True))
            self._add_samples(metric, labels, series, created)
        return [metric]

    def _add_samples(
        self, metric: Metric, labels: list[tuple[str, str]], series: _S, created: bool
    ) -> None:
        raise NotImplementedError


class PlainCounter(_PlainFamily[CounterSeries]):
    """prometheus_client's Counter, counted in a plain float."""

    _type = "counter"

    def _new_series(self) -> CounterSeries:
        return CounterSeries()

    def inc(self, amount: float = 1) -> None:
        """The unlabelled counter's increment."""
        self._series[()].inc(amount)

    def _add_samples(
        self, metric: Metric, labels: list[tuple[str, str]], series: CounterSeries, created: bool
    ) -> None:
        metric.add_sample(self._name + "_total", dict(labels), series.value)
        if created:
            metric.add_sample(self._name + "_created", dict(labels), series.created)


class PlainHistogram(_PlainFamily[HistogramSeries]):
    """prometheus_client's Histogram, counted in plain floats."""

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: bucket bounds not in order")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        # the "le" labels as prometheus_client spells them (untyped there)
        self._les = tuple(str(floatToGoString(b)) for b in bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._bounds)

    def observe(self, amount: float) -> None:
        """The unlabelled histogram's observation."""
        self._series[()].observe(amount)

    def _add_samples(
        self,
        metric: Metric,
        labels: list[tuple[str, str]],
        series: HistogramSeries,
        created: bool,
    ) -> None:
        cumulative = 0.0
        for le, count in zip(self._les, series.counts, strict=True):
            cumulative += count
            metric.add_sample(self._name + "_bucket", dict([*labels, ("le", le)]), cumulative)
        metric.add_sample(self._name + "_count", dict(labels), cumulative)
        if self._bounds[0] >= 0:  # no sum with negative buckets, as in prometheus_client
            metric.add_sample(self._name + "_sum", dict(labels), series.sum)
        if created:
            metric.add_sample(self._name + "_created", dict(labels), series.created)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # counted per admission: plain numbers (above)
        self.admissions = PlainCounter(
            "image_proxy_webhook_admission_requests",
            "Admission requests answered, by endpoint, operation, kind and outcome.",
            ["endpoint", "operation", "kind", "outcome"],
            r,
        )
        self.admission_duration = PlainHistogram(
            "image_proxy_webhook_admission_duration_seconds",
            "Server time per admission request.",
            ["endpoint"],
            r,
            buckets=_LATENCY_BUCKETS,
        )
        self.images_rewritten = PlainCounter(
            "image_proxy_webhook_images_rewritten",
            "Container images rewritten by the mutating endpoint.",
            [],
            r,
        )
        self.probes = Counter(
            "image_proxy_webhook_registry_probes",
            "Anonymous registry probes, by visibility and reason.",
            ["visibility", "reason"],
            registry=r,
        )
        self.probe_duration = Histogram(
            "image_proxy_webhook_registry_probe_duration_seconds",
            "Duration of one registry probe.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = PlainCounter(
            "image_proxy_webhook_visibility_cache_lookups",
            "Visibility cache lookups, by result (hit or miss).",
            ["result"],
            r,
        )
        self.cache_size = Gauge(
            "image_proxy_webhook_visibility_cache_entries",
            "Repositories in the visibility cache.",
            registry=r,
        )
        self.pull_secret_operations = Counter(
            "image_proxy_webhook_pull_secret_operations",
            "Pull secret operations against the API server, by action and result.",
            ["action", "result"],
            registry=r,
        )
        # Requests answered without an AdmissionReview verdict (the API server then
        # applies failurePolicy), and internal errors answered by the fallback rule.
        self.admission_errors = Counter(
            "image_proxy_webhook_admission_errors",
            "Admission requests answered with an error, by endpoint and reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "image_proxy_webhook_serving_certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time).",
            registry=r,
        )

        self.pull_secrets_healthy = Gauge(
            "image_proxy_webhook_pull_secrets_healthy",
            "1 when the last reconcile brought the pull secret current in every covered "
            "namespace and the credentials could be read, else 0.",
            registry=r,
        )
        self.open_connections = Gauge(
            "image_proxy_webhook_open_connections",
            "Open connections to the webhook port (at most server.maxConnections).",
            registry=r,
        )

    def track_cache_size(self, size: Callable[[], int]) -> None:
        self.cache_size.set_function(size)

    def track_certificate_expiry(self, not_after: Callable[[], float]) -> None:
        self.certificate_expiry.set_function(not_after)

    def render(self) -> bytes:
        return generate_latest(self.registry)
