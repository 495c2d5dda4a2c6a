"""Regression: metric labels taken from the request body stay a bounded set.

``kind`` and ``operation`` of an AdmissionReview are written by whoever posts it;
anything reaching the webhook's port could grow one Prometheus series per distinct
value, without bound (memory, and /metrics output size).
"""

from __future__ import annotations

import json

from tests.reviews import pod, review
from webhook import config
from webhook.admission import Admitter
from webhook.metrics import Metrics


async def test_unknown_kinds_and_operations_share_one_series() -> None:
    metrics = Metrics()
    admitter = Admitter(config.parse({"appSlug": "my-app", "licenseID": "l"}), metrics=metrics)
    for i in range(200):
        body = review(pod("nginx"), kind=f"Kind{i}", operation=f"OP{i}")
        await admitter.admit(json.dumps(body).encode(), "mutate")
    await admitter.admit(json.dumps(review(pod("nginx"))).encode(), "mutate")
    await admitter.admit(json.dumps(review(pod("nginx"), kind="Deployment")).encode(), "mutate")
    text = metrics.render().decode()
    series = [
        line
        for line in text.splitlines()
        if line.startswith("image_proxy_webhook_admission_requests_total{")
    ]
    assert sorted(series) == [
        'image_proxy_webhook_admission_requests_total{endpoint="mutate",kind="Deployment",'
        'operation="CREATE",outcome="allowed"} 1.0',
        'image_proxy_webhook_admission_requests_total{endpoint="mutate",kind="Pod",'
        'operation="CREATE",outcome="mutated"} 1.0',
        'image_proxy_webhook_admission_requests_total{endpoint="mutate",kind="other",'
        'operation="other",outcome="allowed"} 200.0',
    ]
