"""Shared pieces of the Helm chart tests: real Helm (helm-python-sdk), the Kubernetes
schemas (kubernetes-validate) and a real CEL engine (cel-expr-python).

A missing tool skips the tests that need it on a developer machine and fails
them in CI (CI=true, tests/support.py), so CI can never pass by skipping.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "image-proxy-webhook"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "rel"
NAMESPACE = "ipw"
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
KUBE_VERSION = "1.30.0"


@dataclass(frozen=True)
class Rendered:
    """One `helm template` run: the documents with the template each came from."""

    documents: list[tuple[str, dict[str, Any]]]
    notes: str
    values: dict[str, Any]  # the values as Helm merged them with the defaults

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for _, doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"expected at most one {kind}, got {len(found)}"
        return found[0] if found else None

    @property
    def config_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["config.yaml"]
        return text


RenderFn = Callable[..., Rendered]


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict)
    return data


# Values every render starts from, and what a capable API server offers.
BASE = {"appSlug": "my-app", "license": {"id": "test-license-id"}}
CAPABLE = {"api_versions": (VAP_API,), "kube_version": KUBE_VERSION}


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def container(rendered: Rendered) -> dict[str, Any]:
    """The Deployment's one container."""
    containers: list[dict[str, Any]] = rendered.one("Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    [only] = containers
    return only
