"""One admission from end to end, in one pass down the request path.

Read the review → plan (the pod spec, the images the request changes, each parsed
once, and the repositories to probe) → resolve visibility → decide → ensure the
pull secret → respond.

The I/O it needs (registry probes, the API server) comes in through two small
protocols, so the server, the CLI and the tests drive the same code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import Counter, Histogram

from webhook import podspec, policy, review
from webhook.config import Settings
from webhook.images import ImageRef
from webhook.metrics import Metrics
from webhook.podspec import WORKLOAD_TEMPLATES
from webhook.policy import Decision, Operation, Repository, Request
from webhook.probes import Visibility

log = logging.getLogger(__name__)

Endpoint = Literal["mutate", "validate"]

# Metric labels come from the request body, which anyone reaching the port can
# write: unknown values are counted as "other" instead of growing new series.
OPERATIONS = frozenset(Operation)
KINDS = frozenset({"Pod", "EphemeralContainers", *WORKLOAD_TEMPLATES})

_LINE = "%s %s %s/%s: %s in %.1f ms"


class Resolver(Protocol):
    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]: ...


class SecretEnsurer(Protocol):
    async def ensure(self, namespace: str, timeout: float) -> str | None:
        """Make sure the pull secret is current in the namespace; a warning if not."""
        ...

    async def close(self) -> None:
        """Stop work still running in the background."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    answer: review.AdmissionReview
    request: review.AdmissionRequest
    decision: Decision
    seconds: float

    @property
    def label(self) -> str:
        response = self.answer["response"]
        if not response["allowed"]:
            return "denied"
        if "patch" in response:
            return "mutated"
        return "allowed"


class Admitter:
    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        secrets: SecretEnsurer | None = None,
        metrics: Metrics | None = None,
        webhook_namespace: str = "",
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.secrets = secrets
        self.metrics = metrics
        self.webhook_namespace = webhook_namespace
        # metric series by the request's own values when those are their labels (known
        # values: a bounded set), and the duration series by endpoint: labels() on
        # every request costs more than the increment
        self._counters: dict[tuple[Endpoint, str, str, str], Counter] = {}
        self._durations: dict[Endpoint, Histogram] = {}

    async def decide(self, request: Request, deadline: float, *, explain: bool = True) -> Decision:
        """The decision for one object, probing what the overrides do not settle;
        ``explain``: with its violations (policy.decide)."""
        planned = policy.plan(request, self.settings, self.webhook_namespace)
        visibilities: dict[Repository, Visibility] = {}
        if planned.to_probe and self.resolver is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            visibilities = await self.resolver.resolve_all(planned.to_probe, max(remaining, 0.0))
        return policy.decide(planned, visibilities, self.settings, explain=explain)

    async def admit(self, body: bytes, endpoint: Endpoint) -> Outcome:
        """Answer one AdmissionReview; ReviewError when the body is not one."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.server.admission_deadline_seconds
        request = review.parse(body)
        self._check_size(request)
        decision = await self.decide(
            request.policy_request, deadline, explain=endpoint == "validate"
        )
        if endpoint == "validate":
            answer = review.validate_response(request.uid, decision)
        else:
            # awaited only when needed: most admissions (dry runs, public images, no
            # pull-secret manager) need no coroutine for it
            warning = (
                await self._ensure_secret(request, deadline)
                if self._ensures_secret(request, decision)
                else None
            )
            if warning:
                decision = decision._replace(
                    warnings=(*decision.warnings, warning),
                    details=(*decision.details, warning),
                )
            answer = review.mutate_response(request.uid, decision, self.settings.secret_name)
        outcome = Outcome(answer, request, decision, time.perf_counter() - started)
        self._record(outcome, endpoint)
        return outcome

    def _check_size(self, request: review.AdmissionRequest) -> None:
        """Refuse (HTTP 400) an object, or its old version, with more images than any
        real Pod has: every image is parsed and decided, so this bounds the work."""
        cap = self.settings.server.max_images_per_object
        change = request.policy_request
        for which, obj in (("", change.object), ("old ", change.old_object)):
            if obj is None:
                continue
            count = podspec.image_count(change.kind, obj, workloads=self.settings.mutate_workloads)
            if count > cap:
                raise review.ReviewError(
                    f"the {which}{change.kind} lists {count} images, more than "
                    f"server.maxImagesPerObject ({cap})"
                )

    def _ensures_secret(self, request: review.AdmissionRequest, decision: Decision) -> bool:
        return not (
            self.secrets is None
            or not decision.needs_secret
            or decision.denials
            or request.dry_run  # sideEffects: NoneOnDryRun
            or not request.policy_request.namespace
        )

    async def _ensure_secret(self, request: review.AdmissionRequest, deadline: float) -> str | None:
        assert self.secrets is not None
        remaining = deadline - asyncio.get_running_loop().time()
        return await self.secrets.ensure(request.policy_request.namespace, max(remaining, 0.0))

    def _record(self, outcome: Outcome, endpoint: Endpoint) -> None:
        """The admission's metrics and its log line (docs/design.md §8)."""
        label = outcome.label
        if self.metrics is not None:
            self._count(outcome, endpoint, label, self.metrics)
        if log.isEnabledFor(logging.INFO):
            self._log(outcome, endpoint, label)

    def _count(self, outcome: Outcome, endpoint: Endpoint, label: str, metrics: Metrics) -> None:
        change = outcome.request.policy_request
        key = (endpoint, change.operation, change.kind, label)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counter(key, metrics)
        counter.inc()
        duration = self._durations.get(endpoint)
        if duration is None:
            duration = self._durations[endpoint] = metrics.admission_duration.labels(endpoint)
        duration.observe(outcome.seconds)
        rewrites = outcome.decision.rewrites
        if endpoint == "mutate" and rewrites:
            metrics.images_rewritten.inc(len(rewrites))

    def _log(self, outcome: Outcome, endpoint: Endpoint, label: str) -> None:
        request, decision = outcome.request, outcome.decision
        change = request.policy_request
        fields: dict[str, Any] = {
            "uid": request.uid,
            "endpoint": endpoint,
            "operation": change.operation,
            "kind": change.kind,
            "namespace": change.namespace,
            "name": request.name,
            "outcome": label,
            "duration_ms": round(outcome.seconds * 1000, 3),
        }
        if decision.rewrites:
            images = fields["images"] = {}
            for rewrite in decision.rewrites:  # a loop: no comprehension frame (3.11)
                images[rewrite.original] = rewrite.image
        if decision.denials or (endpoint == "validate" and decision.violations):
            fields["reasons"] = list(
                decision.violations if endpoint == "validate" else decision.denials
            )
        if decision.details:
            fields["warnings"] = list(decision.details)  # in full; the client gets them short
        log.info(
            _LINE,
            endpoint,
            change.kind or "-",
            change.namespace or "-",
            request.name or "-",
            label,
            outcome.seconds * 1000,
            extra={"fields": fields},
        )

    def _counter(self, key: tuple[Endpoint, str, str, str], metrics: Metrics) -> Counter:
        """The admission counter's series for these request values, kept by them when
        they are their own labels (known values: a bounded set of keys)."""
        endpoint, operation, kind, label = key
        labels = (endpoint, _label(operation, OPERATIONS), _label(kind, KINDS), label)
        counter = metrics.admissions.labels(*labels)
        if labels == key:
            self._counters[key] = counter
        return counter


def _label(value: str, known: frozenset[str]) -> str:
    """A metric label from the request: known values only, so series stay bounded."""
    if not value:
        return "-"
    return value if value in known else "other"
