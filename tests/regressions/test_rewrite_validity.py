"""Regressions: every image the webhook writes must parse under the same grammar.

Found by tests/reliability/test_fuzz.py. A private image whose proxied (or
air-gapped) reference would not be a valid reference used to be rewritten anyway,
so the kubelet would refuse the pod with InvalidImageName.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.reviews import apply, images_of, pod, review
from webhook import config, policy
from webhook import review as wire
from webhook.images import NAME_MAX, parse

ONLINE = config.parse({"appSlug": "my-app", "licenseID": "lic"})
AIRGAP = config.parse(
    {
        "appSlug": "my-app",
        "mode": "airgap",
        "airgap": {"registry": "registry.local:5000", "namespace": "my-app"},
    }
)


def mutate(obj: dict[str, Any], settings: config.Settings) -> dict[str, Any]:
    """The /mutate answer with no registry reachable (every probe unknown, so proxy)."""
    request = wire.parse(json.dumps(review(obj)))
    decision = policy.decide(policy.plan(request.policy_request, settings), {}, settings)
    return dict(wire.mutate_response(request.uid, decision, settings.secret_name))


@pytest.mark.parametrize(
    "image",
    [
        "[::1]/team/app:v1",  # an IPv6 literal cannot be a path segment
        "[2001:db8::1]/team/app@sha256:" + "a" * 64,
        "gcr.io/" + "a" * 240 + ":v1",  # the proxy prefix pushes its path past 255
        "gcr.io/team/" + "b" * 231,  # a 236-character path: fits alone, not proxied
    ],
)
def test_private_image_that_cannot_be_proxied_is_left_unchanged_with_a_warning(
    image: str,
) -> None:
    parse(image)  # valid as written
    obj = pod(image)
    answer = mutate(obj, ONLINE)
    response = answer["response"]
    assert response["allowed"] is True
    assert images_of(apply(answer, obj)) == [image]
    assert "patch" not in response  # no pull secret either: nothing goes through the proxy
    (warning,) = response["warnings"]
    assert "would not be a valid image reference" in warning and "left unchanged" in warning
    # ... and the validating endpoint refuses it, as it does the port case
    request = wire.parse(json.dumps(review(obj)))
    decision = policy.decide(policy.plan(request.policy_request, ONLINE), {}, ONLINE)
    (violation,) = decision.violations
    assert "would not be a valid image reference" in violation and image in violation


def test_longest_proxiable_name_is_still_rewritten() -> None:
    prefix = len("proxy/my-app/gcr.io/")  # the limit counts the path, not the host
    image = "gcr.io/" + "a" * (NAME_MAX - prefix) + ":v1"
    obj = pod(image)
    (written,) = images_of(apply(mutate(obj, ONLINE), obj))
    assert written.startswith("proxy.replicated.com/proxy/my-app/gcr.io/aaa")
    assert len(parse(written).path) == NAME_MAX


def test_port_message_is_unchanged() -> None:
    answer = mutate(pod("registry.example.com:5000/team/app:v1"), ONLINE)
    (warning,) = answer["response"]["warnings"]
    assert "has a port, which cannot be carried in the proxy path" in warning


def test_airgap_image_whose_local_name_would_not_parse_is_denied() -> None:
    image = "docker.io/team/" + "b" * 250 + ":v1"  # my-app/bbb… would be 257 characters
    parse(image)
    answer = mutate(pod(image), AIRGAP)
    response = answer["response"]
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "cannot be served from the local registry" in message
    assert "would not be a valid image reference" in message


def test_airgap_longest_local_name_is_rewritten() -> None:
    last = "c" * (NAME_MAX - len("my-app/"))
    obj = pod(f"docker.io/team/{last}:v1")
    (written,) = images_of(apply(mutate(obj, AIRGAP), obj))
    assert written == f"registry.local:5000/my-app/{last}:v1"
    parse(written)
