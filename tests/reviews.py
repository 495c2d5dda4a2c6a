"""Building AdmissionReviews and applying the webhook's answers, for tests."""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import jsonpatch

from webhook.images import ImageRef
from webhook.policy import Repository
from webhook.probes import Visibility

# Config files (as parsed YAML) for the rule tests: visibility from overrides alone.
ONLINE_CONFIG: dict[str, Any] = {
    "appSlug": "my-app",
    "licenseID": "lic",
    "namespaces": ["my-app"],
    "visibility": {
        "overrides": [
            {"match": "quay.io/private-org/*", "visibility": "private"},
            {"match": "quay.io/my-org/*", "visibility": "private"},
            {"match": "docker.io/library/*", "visibility": "public"},
            {"match": "docker.io/acme/*", "visibility": "private"},
            {"match": "registry.example.com:5000/*", "visibility": "private"},
            {"match": "ghcr.io/public/*", "visibility": "public"},
        ]
    },
}
AIRGAP_CONFIG: dict[str, Any] = {
    "appSlug": "my-app",
    "mode": "airgap",
    "airgap": {"registry": "registry.local:5000", "namespace": "my-app"},
}


class StaticResolver:
    """Fakes the registry probes with a fixed table (unknown when absent); records the asks."""

    def __init__(self, table: Mapping[Repository, Visibility] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[Repository] = []

    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        self.asked.extend(wanted)
        return {key: self.table[key] for key in wanted if key in self.table}


class NoSecrets:
    """Fakes a cluster where no pull secret is ever needed: every ensure succeeds at once."""

    async def ensure(self, namespace: str, timeout: float) -> str | None:
        return None

    async def close(self) -> None:
        pass


def pod(
    *images: str,
    name: str = "web",
    namespace: str = "my-app",
    init: tuple[str, ...] = (),
    ephemeral: tuple[str, ...] = (),
    pull_secrets: list[dict[str, str]] | None = None,
    annotations: dict[str, str] | None = None,
    image_volumes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod whose containers are named c0, c1, ... (init i0..., ephemeral e0...).

    ``image_volumes``: volume name → ``spec.volumes[].image.reference``.
    """
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    }
    if init:
        spec["initContainers"] = [{"name": f"i{i}", "image": im} for i, im in enumerate(init)]
    if ephemeral:
        spec["ephemeralContainers"] = [
            {"name": f"e{i}", "image": im} for i, im in enumerate(ephemeral)
        ]
    if image_volumes is not None:
        spec["volumes"] = [
            {"name": name, "image": {"reference": ref, "pullPolicy": "IfNotPresent"}}
            for name, ref in image_volumes.items()
        ]
    if pull_secrets is not None:
        spec["imagePullSecrets"] = pull_secrets
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    kind: str = "Pod",
    group: str = "",
    namespace: str | None = None,
    subresource: str | None = None,
    dry_run: bool = False,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if namespace is None and obj is not None:
        namespace = obj.get("metadata", {}).get("namespace", "my-app")
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "operation": operation,
        "namespace": namespace or "my-app",
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "userInfo": {"username": "admin"},
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's JSONPatch operations, each checked to be well formed."""
    response = answer["response"]
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(ops, list) and ops, f"a patch is a non-empty list of operations: {ops!r}"
    for op in ops:
        problem = operation_problem(op)
        assert problem is None, f"{problem}: {op!r}"
    return ops


# RFC 6901: "" or "/"-separated reference tokens in which "~" is only "~0" or "~1".
_JSON_POINTER = re.compile(r"(/([^~/]|~[01])*)*")


def operation_problem(op: object) -> str | None:
    """Why ``op`` is not a well-formed operation of the webhook's patches (RFC 6902), or None.

    The webhook writes "add" and "replace" only, each with exactly op, path and value.
    """
    if not isinstance(op, dict):
        return "an operation is a JSON object"
    if op.get("op") not in ("add", "replace"):
        return "op is add or replace"
    if set(op) != {"op", "path", "value"}:
        return "an operation has exactly op, path and value"
    path = op["path"]
    if not isinstance(path, str) or not _JSON_POINTER.fullmatch(path):
        return "path is a JSON pointer"
    if path.endswith("/-") and op["op"] != "add":
        return "only add may append with /-"
    return None


def apply(answer: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would store it after this answer."""
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), patch_of(answer))
    return result


def images_of(obj: dict[str, Any], key: str = "containers") -> list[str]:
    return [c["image"] for c in obj["spec"].get(key, [])]


def volume_images_of(spec: dict[str, Any]) -> dict[str, str]:
    """Image volume name → reference."""
    return {v["name"]: v["image"]["reference"] for v in spec.get("volumes", []) if "image" in v}


def workload(kind: str, template_spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """A workload of ``kind`` whose pod template has this spec (a CronJob nests it)."""
    template = {"metadata": {"labels": {"app": "w"}}, "spec": template_spec}
    spec: dict[str, Any] = {"template": template}
    if kind == "CronJob":
        spec = {"schedule": "@hourly", "jobTemplate": {"spec": {"template": template}}}
    api = {"ReplicationController": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}
    return {
        "apiVersion": api.get(kind, "apps/v1"),
        "kind": kind,
        "metadata": {"name": "w", "namespace": "my-app", **metadata},
        "spec": spec,
    }


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a workload made by :func:`workload`."""
    spec = obj["spec"]
    template: dict[str, Any] = (
        spec["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else spec["template"]
    )
    return template
