"""The one log line per admission and its metrics: every field, in both log formats.

The line is what an operator greps and ships: its fields are the contract of
docs/design.md §8, so they are checked in full, through the real formatters.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reviews import ONLINE_CONFIG, StaticResolver, pod, review
from webhook import config, logs
from webhook.admission import Admitter, Endpoint
from webhook.metrics import Metrics
from webhook.probes import Visibility

PROXY = "proxy.replicated.com/proxy/my-app"
TABLE = {("quay.io", "private-org/api"): Visibility.PRIVATE}


@pytest.fixture
def lines() -> Iterator[dict[str, io.StringIO]]:
    """The admission logger's output through each formatter, as `serve` sets them up."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for fmt, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JSONFormatter() if fmt == "json" else logs.TextFormatter())
        handlers.append(handler)
    logger = logging.getLogger("webhook.admission")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield streams
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def admit(obj: dict[str, Any], endpoint: Endpoint, metrics: Metrics | None = None) -> str:
    rv = review(obj)
    admitter = Admitter(
        config.parse(ONLINE_CONFIG), resolver=StaticResolver(TABLE), metrics=metrics
    )
    outcome = asyncio.run(admitter.admit(json.dumps(rv).encode(), endpoint))
    assert outcome.request.uid == rv["request"]["uid"]
    return outcome.request.uid


def one_json_line(streams: dict[str, io.StringIO]) -> dict[str, Any]:
    text = streams["json"].getvalue()
    assert text.count("\n") == 1
    entry: dict[str, Any] = json.loads(text)
    assert isinstance(entry.pop("time"), str)
    assert isinstance(entry.pop("duration_ms"), float)
    message = entry.pop("message")
    assert isinstance(message, str) and message.endswith(" ms")
    return entry


def test_mutated_pod_line(lines: dict[str, io.StringIO]) -> None:
    obj = pod("quay.io/private-org/api:v1", "nginx:1.25", name="web-0")
    uid = admit(obj, "mutate")
    assert one_json_line(lines) == {
        "level": "info",
        "logger": "webhook.admission",
        "uid": uid,
        "endpoint": "mutate",
        "operation": "CREATE",
        "kind": "Pod",
        "namespace": "my-app",
        "name": "web-0",
        "outcome": "mutated",
        "images": {"quay.io/private-org/api:v1": f"{PROXY}/quay.io/private-org/api:v1"},
    }
    text = lines["text"].getvalue()
    assert " INFO webhook.admission: mutate Pod my-app/web-0: mutated in " in text
    assert text.endswith(f" ms uid={uid}\n")


def test_validate_line_gives_reasons_and_warnings_in_full(lines: dict[str, io.StringIO]) -> None:
    long_name = "n" * 300
    obj = pod("quay.io/private-org/api:v1", "quay.io/Bad:1", name=long_name)
    uid = admit(obj, "validate")
    entry = one_json_line(lines)
    reasons, warnings = entry.pop("reasons"), entry.pop("warnings")
    assert entry == {
        "level": "info",
        "logger": "webhook.admission",
        "uid": uid,
        "endpoint": "validate",
        "operation": "CREATE",
        "kind": "Pod",
        "namespace": "my-app",
        "name": long_name,
        "outcome": "denied",
        # what the mutating endpoint would have rewritten
        "images": {"quay.io/private-org/api:v1": f"{PROXY}/quay.io/private-org/api:v1"},
    }
    assert reasons == [
        "container 'c0' image 'quay.io/private-org/api:v1' is private and must be pulled "
        f"through the proxy: use '{PROXY}/quay.io/private-org/api:v1'",
        "container 'c1' left unchanged: invalid image reference 'quay.io/Bad:1': "
        "repository name 'Bad' must be lower case",
        "pod needs imagePullSecret 'my-app-registry'",
    ]
    assert warnings == [reasons[1]]
    assert f"validate Pod my-app/{long_name}: denied in " in lines["text"].getvalue()


def test_metrics_count_each_admission_by_its_labels(lines: dict[str, io.StringIO]) -> None:
    metrics = Metrics()
    for _ in range(2):
        admit(pod("quay.io/private-org/api:v1", "quay.io/private-org/api:v2"), "mutate", metrics)
    admit(pod("nginx:1.25"), "mutate", metrics)
    get = metrics.registry.get_sample_value
    labels = {"endpoint": "mutate", "operation": "CREATE", "kind": "Pod"}
    assert (
        get("image_proxy_webhook_admission_requests_total", {**labels, "outcome": "mutated"}) == 2
    )
    assert (
        get("image_proxy_webhook_admission_requests_total", {**labels, "outcome": "allowed"}) == 1
    )
    assert get("image_proxy_webhook_images_rewritten_total") == 4
    assert get("image_proxy_webhook_admission_duration_seconds_count", {"endpoint": "mutate"}) == 3
    assert len(lines["json"].getvalue().splitlines()) == 3
