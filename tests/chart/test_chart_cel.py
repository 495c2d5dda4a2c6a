"""The ValidatingAdmissionPolicy's CEL, as the chart renders it, evaluated by a
real CEL engine (cel-expr-python, Google's C++ CEL with the strings and
optional extensions Kubernetes enables) against sample Pods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from chartlib import KUBE_VERSION, VAP_API, RenderFn, require

pytestmark = pytest.mark.chart

REGISTRY = "registry.local:5000"
DIGEST = "sha256:" + "ab" * 32
GOOD = f"{REGISTRY}/my-app/api:1.0"
AIRGAP = {
    "appSlug": "my-app",
    "mode": "airgap",
    "airgap": {"registry": REGISTRY, "namespace": "my-app"},
}


@dataclass
class Policy:
    """A ValidatingAdmissionPolicy evaluated the way the API server does:
    variables in order under `variables`, then each validation; a false
    validation denies with its messageExpression."""

    env: Any
    variables: list[tuple[str, Any]]
    validations: list[tuple[Any, Any]]

    def denials(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        data: dict[str, Any] = {"object": obj, "oldObject": old, "variables": {}}
        for name, expression in self.variables:
            data["variables"][name] = expression.eval(data=data).plain_value()
        messages = []
        for check, message in self.validations:
            allowed = check.eval(data=data).plain_value()
            assert isinstance(allowed, bool), allowed
            if not allowed:
                messages.append(message.eval(data=data).plain_value())
        return messages


def compile_policy(render: RenderFn, values: dict[str, Any]) -> Policy:
    cel = require("cel_expr_python.cel", "cel-expr-python")
    strings = require("cel_expr_python.ext.ext_strings", "cel-expr-python")
    optional = require("cel_expr_python.ext.ext_optional", "cel-expr-python")
    env = cel.NewEnv(
        variables={
            "object": cel.Type.DYN,
            "oldObject": cel.Type.DYN,
            "variables": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
        },
        extensions=[strings.ExtStrings(), optional.ExtOptional()],
    )
    rendered = render(values, api_versions=(VAP_API,), kube_version=KUBE_VERSION)
    spec = rendered.one("ValidatingAdmissionPolicy")["spec"]
    return Policy(
        env,
        [(v["name"], env.compile(v["expression"])) for v in spec["variables"]],
        [
            (env.compile(v["expression"]), env.compile(v["messageExpression"]))
            for v in spec["validations"]
        ],
    )


@pytest.fixture(scope="module")
def policy(render: RenderFn) -> Policy:
    return compile_policy(render, AIRGAP)


def pod(
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    ephemeral: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    if ephemeral is not None:
        spec["ephemeralContainers"] = ephemeral
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def c(name: str, image: str | None) -> dict[str, Any]:
    return {"name": name} if image is None else {"name": name, "image": image}


PINNED = "images pinned by digest are not allowed"
OFF = f"every image must be on the local registry {REGISTRY}"

CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, list[str]]] = [
    # id, object, oldObject, expected denial messages (substrings, in order)
    (
        "local-images",
        pod(
            [c("app", GOOD)],
            [c("init", f"{REGISTRY}/my-app/init:2")],
            [c("debug", f"{REGISTRY}/my-app/debug:1")],
        ),
        None,
        [],
    ),
    ("no-optional-lists", pod([c("app", GOOD)]), None, []),
    ("empty-optional-lists", pod([c("app", GOOD)], [], []), None, []),
    ("registry-host-case", pod([c("app", "Registry.LOCAL:5000/my-app/api:1.0")]), None, []),
    (
        "digest",
        pod([c("app", f"{REGISTRY}/my-app/api@{DIGEST}")]),
        None,
        [f"{PINNED}, use a tag: container app image {REGISTRY}/my-app/api@{DIGEST}"],
    ),
    ("tag-and-digest", pod([c("app", f"{REGISTRY}/my-app/api:1.0@{DIGEST}")]), None, [PINNED]),
    ("docker-hub", pod([c("app", "nginx:1.25")]), None, [f"{OFF}: container app image nginx:1.25"]),
    ("other-registry-digest", pod([c("app", f"quay.io/org/api@{DIGEST}")]), None, [PINNED, OFF]),
    (
        "init-container",
        pod([c("app", GOOD)], [c("init", "busybox:1.36")]),
        None,
        [f"{OFF}: container init image busybox:1.36"],
    ),
    (
        "ephemeral-container",
        pod([c("app", GOOD)], None, [c("debug", f"{REGISTRY}/debug@{DIGEST}")]),
        None,
        [f"{PINNED}, use a tag: container debug image"],
    ),
    ("lookalike-port", pod([c("app", "registry.local:50001/my-app/api:1.0")]), None, [OFF]),
    ("lookalike-host", pod([c("app", "registry.local:5000-evil.example/api:1.0")]), None, [OFF]),
    ("registry-without-path", pod([c("app", "registry.local:5000")]), None, [OFF]),
    ("no-image-field", pod([c("app", None)]), None, [f"{OFF}: container app image "]),
    (
        "several-named",
        pod([c("a", "nginx"), c("b", GOOD), c("c", "redis")]),
        None,
        [f"{OFF}: container a image nginx, container c image redis"],
    ),
    # UPDATE: only images the request introduces are checked.
    ("update-keeps-old-image", pod([c("app", "nginx:1.25")]), pod([c("app", "nginx:1.25")]), []),
    (
        "update-new-ephemeral",
        pod([c("app", "nginx:1.25")], None, [c("debug", "busybox")]),
        pod([c("app", "nginx:1.25")]),
        [f"{OFF}: container debug image busybox"],
    ),
    (
        "update-to-digest",
        pod([c("app", f"{REGISTRY}/my-app/api@{DIGEST}")]),
        pod([c("app", GOOD)]),
        [PINNED],
    ),
    ("update-to-local", pod([c("app", GOOD)]), pod([c("app", "nginx:1.25")]), []),
]


@pytest.mark.parametrize(
    ("obj", "old", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_airgap_policy(
    policy: Policy, obj: dict[str, Any], old: dict[str, Any] | None, expected: list[str]
) -> None:
    messages = policy.denials(obj, old)
    assert len(messages) == len(expected), messages
    for message, part in zip(messages, expected, strict=True):
        assert message.startswith("air-gap mode: ") and part in message, message


def test_registry_value_is_compared_case_insensitively(render: RenderFn) -> None:
    upper = compile_policy(render, {**AIRGAP, "airgap": {"registry": "Registry.Local"}})
    assert upper.denials(pod([c("app", "registry.local/my-app/api:1")])) == []
    assert len(upper.denials(pod([c("app", "registry.local:5000/my-app/api:1")]))) == 1
