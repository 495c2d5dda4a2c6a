"""The series counted in plain numbers render exactly as prometheus_client's own classes.

The admission counter, its duration histogram, the images-rewritten counter and the
cache-lookup counter are counted per admission without prometheus_client's locks
(webhook/metrics.py). Here the same admissions run once against them and once
against prometheus_client's Counter and Histogram defined as those series were, and
/metrics must come out byte for byte the same: names, HELP and TYPE, labels, bucket
bounds, values, and the ``_created`` samples (shown, or hidden by
prometheus_client's switch). Durations and creation times are scripted clocks, so
both runs see the same numbers.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import metrics as client_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from tests.reviews import pod, review
from webhook import config
from webhook.admission import Admitter
from webhook.metrics import Metrics, PlainCounter, PlainHistogram
from webhook.probes import ProbeResult, Reason, Visibility
from webhook.visibility import VisibilityResolver

SETTINGS = config.parse({"appSlug": "my-app", "licenseID": "lic", "namespaces": ["my-app"]})
PRIVATE, PUBLIC = "quay.io/acme/private:1", "quay.io/acme/public:1"
# Every bucket bound hit exactly, between bounds, past the last one, and zero.
DURATIONS = (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.05, 0.25, 1.0, 2.5, 10.0, 11.0, 0.0001)


def client_series(metrics: Metrics) -> CollectorRegistry:
    """``metrics`` with the plain series swapped for prometheus_client's classes, defined
    as they were before they were counted in plain numbers; their own registry."""
    registry = CollectorRegistry()
    metrics.admissions = Counter(  # type: ignore[assignment]
        "image_proxy_webhook_admission_requests",
        "Admission requests answered, by endpoint, operation, kind and outcome.",
        ["endpoint", "operation", "kind", "outcome"],
        registry=registry,
    )
    metrics.admission_duration = Histogram(  # type: ignore[assignment]
        "image_proxy_webhook_admission_duration_seconds",
        "Server time per admission request.",
        ["endpoint"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )
    metrics.images_rewritten = Counter(  # type: ignore[assignment]
        "image_proxy_webhook_images_rewritten",
        "Container images rewritten by the mutating endpoint.",
        registry=registry,
    )
    metrics.cache_lookups = Counter(  # type: ignore[assignment]
        "image_proxy_webhook_visibility_cache_lookups",
        "Visibility cache lookups, by result (hit or miss).",
        ["result"],
        registry=registry,
    )
    return registry


def plain_series(metrics: Metrics) -> CollectorRegistry:
    """The plain series of ``metrics`` alone, in their own registry."""
    registry = CollectorRegistry()
    for family in (
        metrics.admissions,
        metrics.admission_duration,
        metrics.images_rewritten,
        metrics.cache_lookups,
    ):
        registry.register(family)
    return registry


async def probe(domain: str, path: str, reference: str) -> ProbeResult:
    if path == "acme/private":
        return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)
    return ProbeResult(Visibility.PUBLIC, Reason.ANONYMOUS_OK)


def scripted_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    """admit() reads time.perf_counter() at its start and end: each admission lasts the
    next of DURATIONS, round and round."""
    ticks: Iterator[float] = itertools.chain.from_iterable(
        (0.0, d) for d in itertools.cycle(DURATIONS)
    )
    monkeypatch.setattr("time.perf_counter", lambda: next(ticks))


async def admissions(metrics: Metrics) -> None:
    """A mix of outcomes, endpoints, kinds and operations, cache misses then hits."""
    resolver = VisibilityResolver(SETTINGS.visibility, probe, 4, metrics=metrics)
    admitter = Admitter(SETTINGS, resolver=resolver, metrics=metrics)
    bodies: list[tuple[dict[str, Any], str]] = [
        (review(pod(PRIVATE, PUBLIC)), "mutate"),
        (review(pod(PRIVATE, PUBLIC)), "mutate"),
        (review(pod(PRIVATE)), "validate"),
        (review(pod(PUBLIC)), "mutate"),
        (review(pod(PUBLIC, "quay.io/Bad:1")), "validate"),
        (review(pod(PRIVATE), operation="UPDATE", old=pod(PRIVATE)), "mutate"),
        (review(pod(PRIVATE), kind="Unheard", operation="PATCH"), "mutate"),
        (review(pod(PRIVATE, namespace="elsewhere")), "mutate"),
    ]
    try:
        for body, endpoint in bodies * 2:
            await admitter.admit(json.dumps(body).encode(), endpoint)  # type: ignore[arg-type]
    finally:
        await resolver.close()


class Clock:
    """time.time() for both runs: still while the metrics are built, then moving on
    every reading from the same start, so each series shows when it was first used."""

    def __init__(self) -> None:
        self.now, self.step = 1_700_000_000.0, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def still(self) -> None:
        self.now, self.step = 1_700_000_000.0, 0.0

    def run(self) -> None:
        self.now, self.step = 1_700_000_000.0, 0.25


@pytest.fixture(params=[True, False], ids=["created", "no-created"])
def clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The scripted time.time(), with prometheus_client's own switch for ``_created``
    samples each way (``clock.created``)."""
    clock = Clock()
    monkeypatch.setattr("time.time", clock)
    monkeypatch.setattr(client_metrics, "_use_created", request.param)
    return clock


async def test_plain_series_render_as_prometheus_client_does(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = client_metrics._use_created
    clock.still()
    plain = Metrics()
    clock.run()
    scripted_durations(monkeypatch)
    await admissions(plain)

    clock.still()
    reference = Metrics()
    reference_registry = client_series(reference)
    clock.run()
    scripted_durations(monkeypatch)
    await admissions(reference)

    expected = generate_latest(reference_registry).decode()
    assert generate_latest(plain_series(plain)).decode() == expected
    openmetrics = generate_openmetrics(reference_registry)  # type: ignore[no-untyped-call]
    assert generate_openmetrics(plain_series(plain)) == openmetrics  # type: ignore[no-untyped-call]
    # what was compared holds every kind of sample, so the comparison means something
    assert 'outcome="denied"' in expected and 'kind="other",operation="other"' in expected
    assert '{endpoint="mutate",le="+Inf"} 12.0' in expected
    assert 'cache_lookups_total{result="hit"} 12.0' in expected
    assert ("_created" in expected) == created
    # and /metrics lists every family in the order it always has
    assert [family.name for family in plain.registry.collect()] == [
        f"image_proxy_webhook_{name}"
        for name in (
            "admission_requests",
            "admission_duration_seconds",
            "images_rewritten",
            "registry_probes",
            "registry_probe_duration_seconds",
            "visibility_cache_lookups",
            "visibility_cache_entries",
            "pull_secret_operations",
            "admission_errors",
            "serving_certificate_expiry_timestamp_seconds",
            "pull_secrets_healthy",
            "open_connections",
        )
    ]


def test_unusual_observations_land_where_prometheus_client_puts_them(clock: Clock) -> None:
    bounds = (-1.0, 0.0, 0.5, 2.0)
    values = (-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 2.0, 3.0, math.inf, math.nan, 1e-300)
    odd_label = 'quote " and \\ and \n'

    def exercise(histogram: Any, counter: Any) -> None:
        for value in values:
            histogram.observe(value)
            counter.labels("x", odd_label).inc(0.5)
        counter.labels(1, "y").inc()

    clock.run()
    plain_registry = CollectorRegistry()
    exercise(
        PlainHistogram("h", "help", [], plain_registry, buckets=bounds),
        PlainCounter("c", "help", ["a", "b"], plain_registry),
    )
    clock.run()
    client_registry = CollectorRegistry()
    exercise(
        Histogram("h", "help", registry=client_registry, buckets=bounds),
        Counter("c", "help", ["a", "b"], registry=client_registry),
    )
    assert generate_latest(plain_registry) == generate_latest(client_registry)


def test_what_prometheus_client_refuses_is_refused() -> None:
    counter = PlainCounter("c", "help", ["a", "b"], CollectorRegistry())
    with pytest.raises(ValueError):
        counter.labels("x", "y").inc(-1)
    with pytest.raises(ValueError):
        counter.labels("x")
    with pytest.raises(ValueError):
        PlainHistogram("g", "help", [], CollectorRegistry(), buckets=(1.0, 0.5))
