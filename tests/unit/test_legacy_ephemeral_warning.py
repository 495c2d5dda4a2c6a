"""The pre-1.22 EphemeralContainers object shows no imagePullSecrets: warn without guessing."""

from __future__ import annotations

from typing import Any

from webhook import config, policy

SETTINGS = config.parse(
    {
        "appSlug": "my-app",
        "licenseID": "x",
        "visibility": {"overrides": [{"match": "docker.io/acme/*", "visibility": "private"}]},
    }
)
EPHEMERAL = {"name": "debug", "image": "acme/debug:1"}


def _decide(kind: str, obj: dict[str, Any]) -> policy.Decision:
    request = policy.Request(kind, obj, "UPDATE", "ephemeralcontainers", "my-app")
    return policy.decide(policy.plan(request, SETTINGS), {}, SETTINGS)


def test_legacy_object_warning_does_not_claim_the_pod_lacks_the_secret() -> None:
    obj = {"apiVersion": "v1", "kind": "EphemeralContainers", "ephemeralContainers": [EPHEMERAL]}
    decision = _decide("EphemeralContainers", obj)
    assert [r.image for r in decision.rewrites] == [
        "proxy.replicated.com/proxy/my-app/docker.io/acme/debug:1"
    ]
    assert not decision.add_secret
    assert decision.warnings == (
        "pod needs imagePullSecret 'my-app-registry' for these images; UPDATE of "
        "ephemeralcontainers can neither add it nor show whether the pod lists it: "
        "if not, recreate the pod",
    )


def test_pod_object_on_the_subresource_is_judged_from_its_pull_secrets() -> None:
    """From 1.22 the subresource carries the Pod: its imagePullSecrets are known."""
    spec: dict[str, Any] = {"containers": [], "ephemeralContainers": [EPHEMERAL]}
    without = _decide("Pod", {"kind": "Pod", "spec": spec})
    assert without.warnings == (
        "pod needs imagePullSecret 'my-app-registry', which cannot be added on UPDATE of "
        "ephemeralcontainers; recreate the pod so it can pull its private images",
    )
    spec_with = {**spec, "imagePullSecrets": [{"name": "my-app-registry"}]}
    assert _decide("Pod", {"kind": "Pod", "spec": spec_with}).warnings == ()
