"""Where the pod specs and their images are in each kind of object (pure).

Every kind is described by the JSON pointer of its pod template; containers are
then walked the same way for every kind. Objects come from the API server but are
treated as untrusted shapes: anything that is not where it should be is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

# kind -> pointer of the pod template (its "metadata" and "spec" live under it).
WORKLOAD_TEMPLATES: Mapping[str, str] = {
    "Deployment": "/spec/template",
    "StatefulSet": "/spec/template",
    "DaemonSet": "/spec/template",
    "ReplicaSet": "/spec/template",
    "ReplicationController": "/spec/template",
    "Job": "/spec/template",
    "CronJob": "/spec/jobTemplate/spec/template",
}


@dataclass(frozen=True, slots=True)
class ContainerImage:
    pointer: str  # JSON pointer of the image field
    container: str  # container name ("" when missing)
    image: str


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """One pod spec in an object, with where its metadata and spec live."""

    pointer: str  # "" for a Pod itself
    metadata: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    spec_pointer: str
    images: tuple[ContainerImage, ...]
    # False for the pre-1.22 EphemeralContainers object: it carries no imagePullSecrets,
    # so whether the pod lists the pull secret cannot be told from the request.
    shows_pull_secrets: bool = True

    @property
    def metadata_pointer(self) -> str:
        return f"{self.pointer}/metadata"


def _child(parent: object, key: str) -> Any:
    return parent.get(key) if isinstance(parent, Mapping) else None


def _resolve(obj: Mapping[str, Any], pointer: str) -> Any:
    node: Any = obj
    for key in pointer.split("/")[1:]:
        node = _child(node, key)
    return node


def _images(spec: Mapping[str, Any], spec_pointer: str) -> Iterator[ContainerImage]:
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        if not isinstance(containers, list):
            continue
        for index, container in enumerate(containers):
            image = _child(container, "image")
            if isinstance(image, str):
                name = _child(container, "name")
                yield ContainerImage(
                    f"{spec_pointer}/{list_name}/{index}/image",
                    name if isinstance(name, str) else "",
                    image,
                )


def _template(obj: Mapping[str, Any], pointer: str, spec_pointer: str) -> PodTemplate | None:
    spec = _resolve(obj, spec_pointer) if spec_pointer else obj
    if not isinstance(spec, Mapping):
        return None
    metadata = _resolve(obj, f"{pointer}/metadata")
    return PodTemplate(
        pointer,
        metadata if isinstance(metadata, Mapping) else None,
        spec,
        spec_pointer,
        tuple(_images(spec, spec_pointer)),
    )


def container_count(kind: str, obj: Mapping[str, Any], *, workloads: bool) -> int:
    """How many containers the object's pod spec lists, counted without walking them
    (a cap on it keeps the cost of a hostile object bounded)."""
    if kind == "EphemeralContainers":
        spec: Any = obj
    elif kind == "Pod":
        spec = obj.get("spec")
    elif workloads and kind in WORKLOAD_TEMPLATES:
        spec = _resolve(obj, f"{WORKLOAD_TEMPLATES[kind]}/spec")
    else:
        return 0
    if not isinstance(spec, Mapping):
        return 0
    lists = (spec.get(name) for name in CONTAINER_LISTS)
    return sum(len(containers) for containers in lists if isinstance(containers, list))


def find(kind: str, obj: Mapping[str, Any], *, workloads: bool) -> PodTemplate | None:
    """The pod spec of a Pod, an EphemeralContainers object or (if enabled) a workload."""
    if kind == "Pod":
        return _template(obj, "", "/spec")
    if kind == "EphemeralContainers":
        # Kubernetes before 1.22 sends the pods/ephemeralcontainers subresource as a
        # v1 EphemeralContainers object: metadata plus a top-level list.
        template = _template(obj, "", "")
        return replace(template, shows_pull_secrets=False) if template is not None else None
    if workloads and kind in WORKLOAD_TEMPLATES:
        pointer = WORKLOAD_TEMPLATES[kind]
        return _template(obj, pointer, f"{pointer}/spec")
    return None
