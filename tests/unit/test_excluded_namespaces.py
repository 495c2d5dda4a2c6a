"""excludeNamespaces through the server's admission path (webhook.admission.Admitter,
the code behind /mutate and /validate): an excluded namespace is answered "allowed,
unchanged" by both endpoints, even in air gap, where both refuse the same Pod in a
covered namespace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reviews import apply, images_of, pod, review
from webhook import config
from webhook.admission import Admitter

REGISTRY = "registry.local:5000"
PINNED = "quay.io/org/api@sha256:" + "ab" * 32
TAGGED = "quay.io/org/api:1.0"
AIRGAP: dict[str, Any] = {
    "appSlug": "my-app",
    "mode": "airgap",
    "airgap": {"registry": REGISTRY, "namespace": "my-app"},
    "namespaces": ["*"],
}


async def answers(
    settings: config.Settings, obj: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The /mutate and /validate answers for a Pod CREATE."""
    admitter = Admitter(settings, webhook_namespace="ipw")
    body = json.dumps(review(obj)).encode()
    mutated = await admitter.admit(body, "mutate")
    validated = await admitter.admit(body, "validate")
    return dict(mutated.answer), dict(validated.answer)


@pytest.mark.parametrize(
    ("exclude", "namespace", "covered"),
    [
        (None, "kube-system", False),  # the default list
        (None, "kube-public", False),
        (None, "kube-node-lease", False),
        (None, "ipw", False),  # the webhook's own namespace, always
        (None, "default", True),
        (["batch"], "batch", False),
        (["batch"], "kube-system", True),  # an explicit list replaces the default
        ([], "kube-public", True),
        ([], "ipw", False),
    ],
)
async def test_excluded_namespaces_are_left_alone(
    exclude: list[str] | None, namespace: str, covered: bool
) -> None:
    settings = config.parse({**AIRGAP, "excludeNamespaces": exclude})

    # /mutate rewrites a tagged image to the local registry; /validate refuses it as sent.
    mutated, validated = await answers(settings, pod(TAGGED, namespace=namespace))
    assert mutated["response"]["allowed"]
    expected = f"{REGISTRY}/my-app/api:1.0" if covered else TAGGED
    assert images_of(apply(mutated, pod(TAGGED, namespace=namespace))) == [expected]
    assert validated["response"]["allowed"] is not covered

    # An image pinned by digest is refused by both, only where the namespace is covered.
    mutated, validated = await answers(settings, pod(PINNED, namespace=namespace))
    for answer in (mutated, validated):
        response = answer["response"]
        assert response["allowed"] is not covered, response
        if covered:
            assert PINNED in response["status"]["message"]
        else:
            assert "patch" not in response and "status" not in response
