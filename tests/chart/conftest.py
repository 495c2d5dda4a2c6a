"""Fixtures for the Helm chart tests: real Helm (helm-python-sdk), the Kubernetes
schemas (kubernetes-validate) and a real CEL engine (cel-expr-python)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.chart.chartlib import CHART, NAMESPACE, RELEASE, Rendered, RenderFn
from tests.support import require, unavailable


@pytest.fixture(scope="session")
def helm() -> ModuleType:
    return require("helm_python", "helm-python-sdk")


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    return require("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="session")
def chart(helm: ModuleType) -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(helm: ModuleType, chart: Any) -> RenderFn:
    """`helm template` with optional cluster capabilities.

    helm-python-sdk's `Chart.render` does not expose `--api-versions` and
    `--kube-version`, but the library call under it takes them
    (`api_versions`, `kube_version`), so it is called directly.
    """
    from helm_python import _native

    def run(
        values: dict[str, Any],
        *,
        api_versions: tuple[str, ...] = (),
        kube_version: str | None = None,
        name: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> Rendered:
        opts: dict[str, Any] = {"name": name, "namespace": namespace}
        if api_versions:
            opts["api_versions"] = list(api_versions)
        if kube_version:
            opts["kube_version"] = f"v{kube_version}"
        try:
            raw = _native.call_string(
                "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)
            )
        except helm.HelmInvalidArgError as exc:
            if "unknown field" not in str(exc):
                raise
            # An SDK build whose render options lack the capabilities.
            message = f"helm-python-sdk cannot set capabilities: {exc}"
            unavailable(message)
        manifests: dict[str, str] = json.loads(raw)
        documents = []
        notes = ""
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    documents.append((path, doc))
        return Rendered(documents, notes, chart.merge_values(values))

    return run
