"""Where the pod specs and their images are in each kind of object (pure).

Every kind is described by the JSON pointer of its pod template; images are then
enumerated the same way for every kind, in one place (:func:`_images`). Objects
come from the API server but are treated as untrusted shapes: anything that is not
where it should be is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, TypeGuard

# The lists of a pod spec that hold images: the containers' ``image``, and the image
# volumes' ``image.reference`` (Kubernetes 1.31+).
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
VOLUMES = "volumes"
# Key prefix of an image volume in the original-images record: container names are
# DNS labels, which cannot hold ":", so "volume:<name>" never clashes with one.
VOLUME_KEY_PREFIX = "volume:"

# The workload kinds: (API group, kind, pointer of the pod template, whose "metadata"
# and "spec" live under it).
_WORKLOADS = (
    ("apps", "Deployment", "/spec/template"),
    ("apps", "StatefulSet", "/spec/template"),
    ("apps", "DaemonSet", "/spec/template"),
    ("apps", "ReplicaSet", "/spec/template"),
    ("", "ReplicationController", "/spec/template"),
    ("batch", "Job", "/spec/template"),
    ("batch", "CronJob", "/spec/jobTemplate/spec/template"),
)
WORKLOAD_TEMPLATES: Mapping[str, str] = {kind: pointer for _, kind, pointer in _WORKLOADS}
# To recognise a workload in an ownerReference, by its apiVersion's group.
WORKLOAD_GROUPS: Mapping[str, str] = {kind: group for group, kind, _ in _WORKLOADS}
# Where each kind keeps its pod spec: (pointer of the template, pointer of the spec).
# Kubernetes before 1.22 sends the pods/ephemeralcontainers subresource as a v1
# EphemeralContainers object: metadata plus a top-level list, its own spec.
_SPECS: Mapping[str, tuple[str, str]] = {"Pod": ("", "/spec"), "EphemeralContainers": ("", "")}
_WORKLOAD_SPECS: Mapping[str, tuple[str, str]] = {
    kind: (pointer, f"{pointer}/spec") for kind, pointer in WORKLOAD_TEMPLATES.items()
}


class ImageField(NamedTuple):
    """One image in a pod spec: a container's ``image`` or an image volume's ``reference``.

    A NamedTuple, not a frozen dataclass: one is built per image on every admission,
    and a frozen dataclass takes about twice as long to build.
    """

    pointer: str  # JSON pointer of the image string
    list_name: str  # a CONTAINER_LISTS entry, or VOLUMES
    name: str  # the container's or the volume's name ("" when missing)
    image: str

    @property
    def place(self) -> tuple[str, str]:
        """Where the image is, to find the same one in oldObject."""
        return (self.list_name, self.name)

    @property
    def record_key(self) -> str:
        """Its key in the original-images record (docs/design.md §1)."""
        return VOLUME_KEY_PREFIX + self.name if self.list_name == VOLUMES else self.name

    @property
    def what(self) -> str:
        return "image volume" if self.list_name == VOLUMES else "container"

    @property
    def field_name(self) -> str:
        return "reference" if self.list_name == VOLUMES else "image"


class PodTemplate(NamedTuple):
    """One pod spec in an object, with where its metadata and spec live."""

    pointer: str  # "" for a Pod itself
    metadata: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    spec_pointer: str
    images: tuple[ImageField, ...]
    # False for the pre-1.22 EphemeralContainers object: it carries no imagePullSecrets,
    # so whether the pod lists the pull secret cannot be told from the request.
    shows_pull_secrets: bool = True


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(value, Mapping), answered first for the dict a parsed body holds: the
    ABC check alone goes through a Python-level __instancecheck__ (four times the cost)."""
    return type(value) is dict or isinstance(value, Mapping)


def child(parent: object, key: str) -> Any:
    """``parent[key]`` when parent is a mapping, else None."""
    if type(parent) is dict:  # what a parsed body holds: no ABC check (a third of the call)
        return parent.get(key)
    return parent.get(key) if isinstance(parent, Mapping) else None


def _resolve(obj: Mapping[str, Any], pointer: str) -> Any:
    node: Any = obj
    for key in pointer.split("/")[1:]:
        node = child(node, key)
    return node


def _images(spec: Mapping[str, Any], spec_pointer: str) -> tuple[ImageField, ...]:
    """Every image of a pod spec: the containers of each list, then the image volumes.

    Written out per list and without helpers: it runs on every admission, and a call
    per field read was half its cost.
    """
    found: list[ImageField] = []
    for list_name in CONTAINER_LISTS:
        entries = spec.get(list_name)
        if not isinstance(entries, list):
            continue
        prefix = f"{spec_pointer}/{list_name}/"
        for index, entry in enumerate(entries):
            if not is_mapping(entry):
                continue
            image = entry.get("image")
            if isinstance(image, str):
                name = entry.get("name")
                found.append(
                    ImageField(
                        f"{prefix}{index}/image",
                        list_name,
                        name if isinstance(name, str) else "",
                        image,
                    )
                )
    volumes = spec.get(VOLUMES)
    if isinstance(volumes, list):
        prefix = f"{spec_pointer}/{VOLUMES}/"
        for index, entry in enumerate(volumes):
            image = child(child(entry, "image"), "reference")
            if isinstance(image, str):
                name = child(entry, "name")
                found.append(
                    ImageField(
                        f"{prefix}{index}/image/reference",
                        VOLUMES,
                        name if isinstance(name, str) else "",
                        image,
                    )
                )
    return tuple(found)


def _where(kind: str, workloads: bool) -> tuple[str, str] | None:
    """(template pointer, spec pointer) of the kind's pod spec; None for a kind not covered."""
    found = _SPECS.get(kind)
    if found is None and workloads:
        found = _WORKLOAD_SPECS.get(kind)
    return found


def _spec(obj: Mapping[str, Any], pointer: str, spec_pointer: str) -> tuple[Any, Any]:
    """The template at ``pointer`` ("" for the object itself) and its spec, at
    ``spec_pointer`` ("" when the object is its own spec); either may be anything."""
    base = _resolve(obj, pointer) if pointer else obj
    return base, child(base, "spec") if spec_pointer else obj


def image_count(kind: str, obj: Mapping[str, Any], *, workloads: bool) -> int:
    """How many images the object's pod spec holds, counted without parsing any (a cap
    on it keeps the cost of a hostile object bounded): every container, and every
    volume that is an image volume."""
    where = _where(kind, workloads)
    if where is None:
        return 0
    spec = _spec(obj, *where)[1]
    if not is_mapping(spec):
        return 0
    count = 0
    for name in CONTAINER_LISTS:
        containers = spec.get(name)
        if isinstance(containers, list):
            count += len(containers)
    volumes = spec.get(VOLUMES)
    if isinstance(volumes, list):
        count += sum(1 for volume in volumes if is_mapping(child(volume, "image")))
    return count


def find(kind: str, obj: Mapping[str, Any], *, workloads: bool) -> PodTemplate | None:
    """The pod spec of a Pod, an EphemeralContainers object or (if enabled) a workload."""
    where = _where(kind, workloads)
    if where is None:
        return None
    pointer, spec_pointer = where
    base, spec = _spec(obj, pointer, spec_pointer)
    if not is_mapping(spec):
        return None
    metadata = child(base, "metadata")
    return PodTemplate(
        pointer,
        metadata if is_mapping(metadata) else None,
        spec,
        spec_pointer,
        _images(spec, spec_pointer),
        # An object that is its own spec (EphemeralContainers) lists no imagePullSecrets.
        shows_pull_secrets=bool(spec_pointer),
    )


def annotations_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The object's own metadata.annotations (empty when missing or malformed)."""
    found = child(child(obj, "metadata"), "annotations")
    return found if is_mapping(found) else {}


def controller_kind(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(API group, kind) of the object's controller (ownerReferences[].controller: true)."""
    owners = child(child(obj, "metadata"), "ownerReferences")
    if not isinstance(owners, list):
        return None
    for owner in owners:
        if child(owner, "controller") is True:
            api_version, kind = child(owner, "apiVersion"), child(owner, "kind")
            if isinstance(api_version, str) and isinstance(kind, str):
                group = api_version.rpartition("/")[0]
                return (group, kind)
    return None


def owned_by_workload(obj: Mapping[str, Any]) -> bool:
    """Whether the object's controller is a workload kind whose template is rewritten."""
    owner = controller_kind(obj)
    return owner is not None and WORKLOAD_GROUPS.get(owner[1]) == owner[0]
