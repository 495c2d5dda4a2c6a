"""The Helm chart as a release in the end-to-end kube-apiserver, for the chart and RBAC tests.

- :func:`require_helm`: real Helm v4 (embedded in helm-python-sdk); skips locally, fails in CI.
- :class:`HelmRelease`: ``helm install`` / ``upgrade`` / ``uninstall`` of the chart in
  ``charts/image-proxy-webhook`` against a :class:`KubeAPIServer`'s kubeconfig. Helm
  blocks, so each action runs in a worker thread and the event loop (where the
  webhook under test may be serving) keeps going.
- :func:`service_account_token`: a real token of a ServiceAccount from the TokenRequest
  API (there is no controller-manager to mint token Secrets), to act as the identity
  the chart's RBAC is bound to; :func:`kubeconfig_for` writes a kubeconfig for it.
- :func:`namespace`: a namespace labelled ``kubernetes.io/metadata.name`` as 1.21+ does
  on its own (the chart's namespaceSelector uses that label; 1.20 does not set it).
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from tests.e2e.admission_harness import call, client_for
from tests.e2e.kubeapi import KubeAPIServer
from tests.support import eventually, unavailable

CHART = Path(__file__).resolve().parents[2] / "charts" / "image-proxy-webhook"
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "Namespace",
}


def require_helm() -> ModuleType:
    """helm-python-sdk (Helm v4 in-process); skip locally, fail under CI=true."""
    try:
        return importlib.import_module("helm_python")
    except ImportError as exc:
        message = f"helm-python-sdk is not installed ({exc}); pip install -e '.[test]'"
        unavailable(message)


def object_path(doc: dict[str, Any], default_namespace: str) -> str:
    """The API path of one manifest object (every kind in the chart is plural + "s")."""
    group_version = doc["apiVersion"]
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    plural = doc["kind"].lower() + "s"
    name = doc["metadata"]["name"]
    if doc["kind"] in CLUSTER_SCOPED:
        return f"{prefix}/{plural}/{name}"
    namespace = doc["metadata"].get("namespace") or default_namespace
    return f"{prefix}/namespaces/{namespace}/{plural}/{name}"


@dataclass
class HelmRelease:
    """One release of the chart; ``manifest`` holds the documents of the last action."""

    kube: KubeAPIServer
    name: str
    namespace: str
    helm: ModuleType = field(default_factory=require_helm)
    revision: int = 0
    documents: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    def _run(self, action: str, values: dict[str, Any]) -> dict[str, Any]:
        with (
            self.helm.Config(
                kubeconfig_path=self.kube.kubeconfig_path, namespace=self.namespace
            ) as cfg,
            self.helm.Chart.load(CHART) as chart,
        ):
            method = cfg.install if action == "install" else cfg.upgrade
            result: dict[str, Any] = method(chart, self.name, values, timeout=120)
            return result

    async def _apply(self, action: str, values: dict[str, Any]) -> dict[str, Any]:
        result = await asyncio.to_thread(self._run, action, values)
        self.revision = int(result["revision"])
        self.documents = [d for d in yaml.safe_load_all(result["manifest"]) if d]
        self.notes = str(result.get("notes") or "")
        return result

    async def install(self, values: dict[str, Any]) -> dict[str, Any]:
        return await self._apply("install", values)

    async def upgrade(self, values: dict[str, Any]) -> dict[str, Any]:
        return await self._apply("upgrade", values)

    def _status(self) -> dict[str, Any]:
        with self.helm.Config(
            kubeconfig_path=self.kube.kubeconfig_path, namespace=self.namespace
        ) as cfg:
            result: dict[str, Any] = cfg.status(self.name)
            return result

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._status)

    def _uninstall(self) -> None:
        with self.helm.Config(
            kubeconfig_path=self.kube.kubeconfig_path, namespace=self.namespace
        ) as cfg:
            cfg.uninstall(self.name, ignore_not_found=True, timeout=60)

    async def uninstall(self) -> None:
        await asyncio.to_thread(self._uninstall)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        [only] = self.all(kind)
        return only

    def path(self, doc: dict[str, Any]) -> str:
        return object_path(doc, self.namespace)


async def namespace(kube: KubeAPIServer, name: str, **labels: str) -> str:
    await kube.create_namespace(name, labels={"kubernetes.io/metadata.name": name, **labels})
    return name


async def service_account_token(kube: KubeAPIServer, namespace: str, account: str) -> str:
    """A signed token of ``namespace/account`` from the TokenRequest API (1 h)."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    async with kube.api_client() as api:
        answer = await call(
            api, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", request
        )
    token: str = answer.ok()["status"]["token"]
    return token


def kubeconfig_for(kube: KubeAPIServer, token: str, path: Path) -> Path:
    """A kubeconfig that authenticates with ``token`` (what KUBECONFIG points the webhook at)."""
    config = json.loads(kube.kubeconfig_path.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def token_client(kube: KubeAPIServer, token: str) -> k8s.ApiClient:
    return client_for(kube.url, token=token, ca_file=kube.ca_file)


async def can(
    api: k8s.ApiClient,
    verb: str,
    resource: str,
    namespace: str = "",
    name: str = "",
    *,
    group: str = "",
) -> bool:
    """SelfSubjectAccessReview: may the client's identity do this?"""
    attributes: dict[str, str] = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = await call(
        api, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review
    )
    return bool(answer.ok()["status"].get("allowed"))


async def wait_authorized(
    api: k8s.ApiClient, verb: str, resource: str, namespace: str = "", name: str = ""
) -> None:
    """RBAC objects reach the authorizer through an informer: wait until one applies."""

    async def allowed() -> bool:
        return await can(api, verb, resource, namespace, name)

    await eventually(allowed, what=f"RBAC to allow {verb} {resource} {namespace}/{name}")


# --- the webhook Pod, run locally from what the chart stored -----------------------------


async def materialize_pod(kube: KubeAPIServer, release: HelmRelease, root: Path) -> dict[str, Any]:
    """Write the files the Deployment's Pod would see under ``root`` (its mount paths),
    from the ConfigMap and Secrets stored in the API server; return the container.

    Only configMap and secret volumes are written (emptyDir is left out); ``items``
    and ``subPath`` are honoured, so a key or path the chart gets wrong shows up
    as a missing file.
    """
    deployment = release.one("Deployment")
    async with kube.api_client() as api:
        stored = (await call(api, "GET", release.path(deployment))).ok()
        spec = stored["spec"]["template"]["spec"]
        [container] = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                source = volume["configMap"]
                path = f"/api/v1/namespaces/{release.namespace}/configmaps/{source['name']}"
                data = {
                    k: v.encode() for k, v in (await call(api, "GET", path)).ok()["data"].items()
                }
            elif "secret" in volume:
                source = volume["secret"]
                path = f"/api/v1/namespaces/{release.namespace}/secrets/{source['secretName']}"
                data = {
                    k: base64.b64decode(v)
                    for k, v in (await call(api, "GET", path)).ok()["data"].items()
                }
            else:
                continue
            files = (
                {i["path"]: data[i["key"]] for i in source["items"]} if "items" in source else data
            )
            target = root / mount["mountPath"].lstrip("/")
            if "subPath" in mount:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(files[mount["subPath"]])
                continue
            target.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (target / name).write_bytes(content)
    return dict(container)


def local_config(root: Path, container: dict[str, Any]) -> dict[str, Any]:
    """The config file named by the container's ``--config``, with its file paths
    under ``root`` and the listener on 127.0.0.1."""
    args = container["args"]
    config_file = root / args[args.index("--config") + 1].lstrip("/")
    data: dict[str, Any] = yaml.safe_load(config_file.read_text())

    def relocate(section: dict[str, Any]) -> None:
        for key, value in section.items():
            if isinstance(value, dict):
                relocate(value)
            elif key.endswith("File") and isinstance(value, str) and value.startswith("/"):
                section[key] = str(root / value.lstrip("/"))

    relocate(data)
    data["server"]["host"] = "127.0.0.1"
    return data
