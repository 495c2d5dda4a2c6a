"""Prometheus metrics, one registry per process (built by the service, passed in)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.admissions = Counter(
            "image_proxy_webhook_admission_requests",
            "Admission requests answered, by endpoint, operation, kind and outcome.",
            ["endpoint", "operation", "kind", "outcome"],
            registry=r,
        )
        self.admission_duration = Histogram(
            "image_proxy_webhook_admission_duration_seconds",
            "Server time per admission request.",
            ["endpoint"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.images_rewritten = Counter(
            "image_proxy_webhook_images_rewritten",
            "Container images rewritten by the mutating endpoint.",
            registry=r,
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
        self.cache_lookups = Counter(
            "image_proxy_webhook_visibility_cache_lookups",
            "Visibility cache lookups, by result (hit or miss).",
            ["result"],
            registry=r,
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
            "1 while the credentials can be read and no covered namespace's pull secret "
            "is failing to be written, else 0.",
            registry=r,
        )
        self.pull_secrets_present = Gauge(
            "image_proxy_webhook_pull_secrets_present",
            "Covered namespaces holding the current pull secret, as last seen by the watch.",
            registry=r,
        )
        self.pull_secret_restores = Counter(
            "image_proxy_webhook_pull_secret_restores",
            "Pull secrets written back after someone else deleted or changed them.",
            registry=r,
        )
        self.pull_secret_watch_restarts = Counter(
            "image_proxy_webhook_pull_secret_watch_restarts",
            "Watches of the pull secrets or namespaces started over, by resource and reason "
            "(expired: listed again; error: resumed after a pause).",
            ["resource", "reason"],
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
