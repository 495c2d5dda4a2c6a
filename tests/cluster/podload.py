"""Steady Pod creates at a fixed rate, each one's outcome counted.

Open loop: create *i* is sent at ``i / rate`` seconds after the start whether or
not the earlier ones were answered, so a stalled webhook does not slow the load
down (as controllers and users do not wait for each other either).

Every create is a **dry-run** create (``?dryRun=All``) of a Pod whose one
container has a private image. The API server runs the whole admission chain for
it, the mutating and the validating webhooks included, exactly as for a stored
Pod, and answers with the Pod it would have stored; only the write to etcd is
skipped. That is what a disruption can change, and it keeps the node's Pod count,
the scheduler and the kubelet out of the measurement (50 real creates a second
would reach the node's 110-Pod limit within 3 s). Each create ends as one of:

- ``mutated``: created with the image rewritten to the proxy;
- ``unmutated``: created with the original image (the mutating webhook was not
  reached and failed open, and nothing refused it): a Pod that cannot pull;
- ``refused``: any non-2xx answer (the validating webhook refused the unrewritten
  Pod, or could not be reached and failed closed); controllers retry these;
- ``unanswered``: no answer within the client's timeout.

A create taking longer than :data:`SLOW_SECONDS` is counted as slow whatever its
outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s

SLOW_SECONDS = 2.0
CLIENT_TIMEOUT = 30.0


class Outcome(enum.Enum):
    MUTATED = "mutated"
    UNMUTATED = "unmutated"
    REFUSED = "refused"
    UNANSWERED = "unanswered"


@dataclass(frozen=True)
class Create:
    sent: float  # time.monotonic() when sent
    seconds: float
    outcome: Outcome
    detail: str = ""  # the answer's message for anything but "mutated"


@dataclass
class Tally:
    """The creates of one load run."""

    rate: float
    creates: list[Create] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for c in self.creates if c.outcome is outcome)

    @property
    def slow(self) -> int:
        return sum(1 for c in self.creates if c.seconds > SLOW_SECONDS)

    def not_mutated(self) -> list[Create]:
        return [c for c in self.creates if c.outcome is not Outcome.MUTATED]

    def summary(self) -> dict[str, Any]:
        seconds = sorted(c.seconds for c in self.creates)
        span = (self.creates[-1].sent - self.creates[0].sent) if len(self.creates) > 1 else 0.0
        quantiles = statistics.quantiles(seconds, n=100) if len(seconds) > 1 else seconds * 99
        return {
            "rate": self.rate,
            "creates": len(self.creates),
            "sent_per_second": round((len(self.creates) - 1) / span, 1) if span else 0.0,
            **{o.value: self.count(o) for o in Outcome},
            "slow": self.slow,
            "p50_ms": round(quantiles[49] * 1000, 1) if seconds else None,
            "p99_ms": round(quantiles[98] * 1000, 1) if seconds else None,
            "max_ms": round(seconds[-1] * 1000, 1) if seconds else None,
            "details": dict(Counter(c.detail[:400] for c in self.not_mutated())),
        }


def fast_client(configuration: k8s.Configuration) -> k8s.ApiClient:
    """A client whose connection pool never queues a create behind another."""
    configuration.connection_pool_maxsize = 2000
    return k8s.ApiClient(configuration)


class PodLoad:
    """Dry-run creates of a one-container Pod in ``namespace`` at ``rate`` a second.

    ``expected`` is the image a create must come back with: the rewritten one where
    the webhook covers the namespace, ``image`` itself where nothing should change.
    """

    def __init__(
        self, api: k8s.ApiClient, namespace: str, image: str, expected: str, rate: float
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.image = image
        self.expected = expected  # the image a create must come back with
        self.rate = rate
        self._names = itertools.count()

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"load-{next(self._names)}"},
            "spec": {"containers": [{"name": "app", "image": self.image}]},
        }

    async def create(self) -> Create:
        """One dry-run create, classified."""
        sent = time.monotonic()
        try:
            response = await self.api.call_api(
                f"/api/v1/namespaces/{self.namespace}/pods",
                "POST",
                query_params=[("dryRun", "All")],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=self.manifest(),
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=CLIENT_TIMEOUT,
            )
            async with response:
                data = await response.read()
                status = response.status
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            return Create(sent, time.monotonic() - sent, Outcome.UNANSWERED, repr(exc))
        seconds = time.monotonic() - sent
        body: Mapping[str, Any] = json.loads(data) if data else {}
        if not 200 <= status < 300:
            return Create(sent, seconds, Outcome.REFUSED, f"{status} {body.get('message', '')}")
        image = body["spec"]["containers"][0]["image"]
        if image == self.expected:
            return Create(sent, seconds, Outcome.MUTATED)
        if image == self.image:
            return Create(sent, seconds, Outcome.UNMUTATED, "created with its original image")
        raise AssertionError(f"a create came back with an image never expected: {image}")

    async def run(self, stop: asyncio.Event) -> Tally:
        """Create at the fixed rate until ``stop`` is set; every create answered or timed out."""
        tally = Tally(self.rate)
        tasks: list[asyncio.Task[Create]] = []
        start = time.monotonic()
        for i in itertools.count():
            if stop.is_set():
                break
            tasks.append(asyncio.create_task(self.create()))
            delay = start + (i + 1) / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        tally.creates = sorted(await asyncio.gather(*tasks), key=lambda c: c.sent)
        return tally
