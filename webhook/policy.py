"""The rewrite decision (docs/design.md §1): a pure function of object, visibilities, settings.

One admission goes down this module once: :func:`plan` finds the pod spec the
request is about (coverage), keeps the images the request changes and parses each
of them once, naming the repositories whose visibility only a probe can tell;
:func:`decide` then takes the probe results and says what to rewrite, add, refuse
and warn about.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

from webhook import images, podspec
from webhook.config import UPSTREAM_REGISTRY_DOMAIN, Mode, OnProbeFailure, Settings
from webhook.images import ImageRef, InvalidImageError
from webhook.podspec import ImageField, PodTemplate
from webhook.probes import Visibility

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # the API server's copy of a static Pod

_NOTHING: Mapping[Any, Any] = MappingProxyType({})  # an empty default no one can fill

# Enum members read through their class cost a descriptor call each (Python 3.11), and
# the decision reads them for every image: bound once here.
_PUBLIC, _INTERNAL, _UNKNOWN = Visibility.PUBLIC, Visibility.INTERNAL, Visibility.UNKNOWN
_ONLINE, _AIRGAP = Mode.ONLINE, Mode.AIRGAP
_THROUGH_PROXY = OnProbeFailure.PROXY

Repository = tuple[str, str]  # (normalised domain, path): the visibility cache key


class Operation(enum.StrEnum):
    """What the API server asks about (the AdmissionReview's ``request.operation``)."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    CONNECT = "CONNECT"


_CREATE, _UPDATE = Operation.CREATE, Operation.UPDATE
MUTATED_OPERATIONS = frozenset({_CREATE, _UPDATE})
# An operation as sent → its member; one Kubernetes does not define stays the string
# sent (logged as it came, counted as "other").
OPERATIONS: Mapping[str, Operation] = {operation.value: operation for operation in Operation}

# Warnings reach the client through the API server, which may truncate one over 256
# characters; names and images in them are shortened to keep each near 120.
WARNING_MAX = 256
_NAME_SHOWN = 40
_IMAGE_SHOWN = 80
_PROBLEM_SHOWN = 80  # with the name and image shown, at most 256 in all


class Request(NamedTuple):
    """What the decision depends on: the object and how the request changes it.

    This and the other records built on every admission (Plan, Decision, PodTemplate,
    AdmissionRequest) are NamedTuples, immutable as frozen dataclasses are but built in
    a third of the time.
    """

    kind: str  # the object's kind, e.g. Pod, EphemeralContainers, Deployment
    object: Mapping[str, Any] | None
    operation: Operation | str = Operation.CREATE
    subresource: str = ""
    namespace: str = ""
    old_object: Mapping[str, Any] | None = None  # on UPDATE

    @property
    def may_add_secret(self) -> bool:
        # On a Pod UPDATE and on pods/ephemeralcontainers only images may change:
        # adding imagePullSecrets would make the API server refuse the whole request.
        # A workload's template is free to change on UPDATE.
        if self.subresource:
            return False
        return self.operation == _CREATE or self.kind in podspec.WORKLOAD_TEMPLATES

    @property
    def may_annotate(self) -> bool:
        # The ephemeralcontainers subresource drops metadata changes.
        return not self.subresource


class PlannedImage(NamedTuple):
    """One image the request changes, parsed once.

    A NamedTuple, not a frozen dataclass: one is built per image on every admission,
    and a frozen dataclass takes about twice as long to build.
    """

    field: ImageField
    ref: ImageRef | InvalidImageError  # the error when the image is not a valid reference
    override: Visibility | None = None  # the visibility an override gives, if any


class Plan(NamedTuple):
    """The pod spec a request is about, the images to decide and the repositories to probe."""

    request: Request
    template: PodTemplate | None = None
    images: tuple[PlannedImage, ...] = ()
    # One reference per repository: visibility is a property of the repository.
    to_probe: Mapping[Repository, ImageRef] = _NOTHING


class Rewrite(NamedTuple):
    """One image to rewrite (a NamedTuple for the reason PlannedImage is one)."""

    pointer: str
    key: str  # the image's key in the original-images record
    original: str
    image: str


class Decision(NamedTuple):
    """What the webhook does with one object.

    ``denials`` refuse the object in both endpoints; ``violations`` are what the
    validating endpoint refuses (denials, plus images that should have been
    rewritten or cannot be; empty unless :func:`decide` is asked to explain, as the
    mutating endpoint never shows them); ``warnings`` go back to the client, short,
    and ``details`` say the same in full for the log.
    """

    template: PodTemplate | None = None
    rewrites: tuple[Rewrite, ...] = ()
    needs_secret: bool = False
    add_secret: bool = False  # append {name: secret} to spec.imagePullSecrets
    annotate: bool = False  # record originals in the pod (template) annotation
    original_images: Mapping[str, str] = _NOTHING
    denials: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    details: tuple[str, ...] = ()


# --- coverage and plan --------------------------------------------------------------


def covered_template(
    request: Request, settings: Settings, webhook_namespace: str = ""
) -> PodTemplate | None:
    """The pod spec this request asks about, or None when the webhook leaves it alone."""
    obj = request.object
    if request.operation not in MUTATED_OPERATIONS or obj is None:
        return None
    if request.namespace and not settings.covers(request.namespace, webhook_namespace):
        return None
    if MIRROR_ANNOTATION in podspec.annotations_of(obj):
        return None  # a static Pod's mirror: the kubelet owns it
    if request.kind in podspec.WORKLOAD_TEMPLATES:
        if podspec.owned_by_workload(obj):
            return None  # its owner's template is rewritten; rewriting this one makes a loop
        if request.kind == "Job" and request.operation == _UPDATE:
            return None  # a Job's template is immutable
    return podspec.find(request.kind, obj, workloads=settings.mutate_workloads)


def _unchanged(request: Request) -> Mapping[tuple[str, str], str]:
    """On UPDATE, each image of oldObject by its place (list and name)."""
    if request.operation != _UPDATE or request.old_object is None:
        return {}
    old = podspec.find(request.kind, request.old_object, workloads=True)
    return {image.place: image.image for image in old.images} if old is not None else {}


def plan(request: Request, settings: Settings, webhook_namespace: str = "") -> Plan:
    """The images this request changes, each parsed once, and the repositories to probe.

    On UPDATE an image equal to the one at the same place in oldObject is not
    decided at all: label, annotation and finalizer updates always pass.
    """
    template = covered_template(request, settings, webhook_namespace)
    if template is None or not template.images:
        return Plan(request, template)
    unchanged = _unchanged(request)
    online = settings.mode is _ONLINE
    own_hosts = (settings.proxy_domain, settings.registry_domain, UPSTREAM_REGISTRY_DOMAIN)
    overrides = settings.visibility.overrides
    planned: list[PlannedImage] = []
    to_probe: dict[Repository, ImageRef] = {}
    for image in template.images:
        if unchanged and unchanged.get(image.place) == image.image:
            continue
        try:
            ref = images.parse(image.image)
        except InvalidImageError as exc:
            planned.append(PlannedImage(image, exc))
            continue
        override = None
        if online and ref.domain not in own_hosts:
            override = settings.visibility.override_for(ref.repository) if overrides else None
            if override is None:
                to_probe.setdefault((ref.domain, ref.path), ref)
        planned.append(PlannedImage(image, ref, override))
    return Plan(request, template, tuple(planned), to_probe)


# --- decision -----------------------------------------------------------------------


def shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (both ends stay readable)."""
    if len(text) <= limit:
        return text
    tail = (limit - 3) // 3
    return f"{text[: limit - 3 - tail]}...{text[len(text) - tail :]}"


def _label(image: ImageField, shown: str, *, short: bool = False) -> str:
    """``container 'name' image 'ref'``; shortened for a warning."""
    name, text = repr(image.name), repr(shown)
    if short:
        name, text = shorten(name, _NAME_SHOWN), shorten(text, _IMAGE_SHOWN)
    return f"{image.what} {name} {image.field_name} {text}"


def _secret_listed(spec: Mapping[str, Any], name: str) -> bool:
    secrets = spec.get("imagePullSecrets")
    return isinstance(secrets, list) and any(
        podspec.is_mapping(s) and s.get("name") == name for s in secrets
    )


class _Builder:
    def __init__(
        self, settings: Settings, request: Request, template: PodTemplate, explain: bool
    ) -> None:
        self.settings = settings
        self.request = request
        self.template = template
        self.explain = explain  # collect violations (each is a formatted message)
        self.rewrites: list[Rewrite] = []
        self.denials: list[str] = []
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.details: list[str] = []
        self.needs_secret = False

    def deny(self, message: str) -> None:
        self.denials.append(message)
        if self.explain:
            self.violations.append(message)

    def warn(self, short: str, detail: str, *, violation: bool = False) -> None:
        self.warnings.append(short)
        self.details.append(detail)
        if violation and self.explain:
            self.violations.append(detail)

    def warn_about(
        self, image: ImageField, shown: str, reason: str, detail: str, *, violation: bool = False
    ) -> None:
        """A warning about one image: ``reason`` follows the short label, ``detail`` the full."""
        self.warn(
            _label(image, shown, short=True) + reason,
            _label(image, shown) + detail,
            violation=violation,
        )

    def rewrite(self, image: ImageField, original: str, new: str) -> None:
        self.rewrites.append(Rewrite(image.pointer, image.record_key, original, new))

    def invalid(self, image: ImageField, error: InvalidImageError) -> None:
        name = shorten(repr(image.name), _NAME_SHOWN)
        shown = shorten(repr(error.image), _IMAGE_SHOWN)
        problem = shorten(error.problem, _PROBLEM_SHOWN)
        self.warn(
            f"{image.what} {name} left unchanged: invalid image reference {shown}: {problem}",
            f"{image.what} {image.name!r} left unchanged: {error}",
            violation=True,
        )

    def online(self, image: ImageField, ref: ImageRef, visibility: Visibility) -> None:
        """The online rules (docs/design.md §1), by the image's registry and visibility."""
        s = self.settings
        if ref.domain in (s.proxy_domain, s.registry_domain):  # already proxied, or the vendor's
            self.needs_secret = True
        elif ref.domain == UPSTREAM_REGISTRY_DOMAIN:  # registryDomain is a custom domain
            self._to_registry_domain(image, ref)
        elif visibility is _PUBLIC:
            return  # the common case: nothing to say, so no message is formatted
        elif visibility is _INTERNAL:
            self._internal(image, ref)
        elif visibility is _UNKNOWN and s.visibility.on_probe_failure is not _THROUGH_PROXY:
            self._unknown(image, ref)
        else:
            self._through_proxy(image, ref)

    def _to_registry_domain(self, image: ImageField, ref: ImageRef) -> None:
        self.needs_secret = True
        new = images.format_image(self.settings.registry_domain, ref.path, ref.suffix)
        self.rewrite(image, ref.original, new)
        if self.explain:
            self.violations.append(
                f"{_label(image, ref.original)} must use the registry domain: use {new!r}"
            )

    def _internal(self, image: ImageField, ref: ImageRef) -> None:
        self.warn_about(
            image,
            ref.original,
            ": registry on an internal address, left unchanged "
            "(add a visibility override to route it)",
            ": its registry is on an internal address, which the webhook does not probe and "
            "the proxy cannot reach; left unchanged (add a visibility override to route it)",
        )

    def _unknown(self, image: ImageField, ref: ImageRef) -> None:
        """Visibility unknown and onProbeFailure deny or direct (proxy goes through it)."""
        if self.settings.visibility.on_probe_failure is OnProbeFailure.DENY:
            self.deny(
                f"{_label(image, ref.original)}: the registry could not be checked for "
                "anonymous access and onProbeFailure is deny; retry shortly"
            )
            return
        reason = ": registry visibility unknown; left unchanged (onProbeFailure: direct)"
        self.warn_about(image, ref.original, reason, reason)

    def _through_proxy(self, image: ImageField, ref: ImageRef) -> None:
        """A private image (or an unknown one under onProbeFailure proxy)."""
        s = self.settings
        new, problem = _proxy_target(ref.original, s.proxy_domain, s.app_slug)
        if problem:
            shape = f"{s.proxy_domain}/proxy/{s.app_slug}/<registry>/<path>"
            self.warn_about(
                image,
                ref.original,
                f" is private but {problem}; left unchanged",
                f" is private but {problem} ({shape}); left unchanged",
                violation=True,
            )
            return
        self.needs_secret = True
        self.rewrite(image, ref.original, new)
        if self.explain:
            self.violations.append(
                f"{_label(image, ref.original)} is private and must be pulled through the "
                f"proxy: use {new!r}"
            )

    def airgap(self, image: ImageField, ref: ImageRef) -> None:
        s = self.settings.airgap
        label = _label(image, ref.original)
        if ref.digest is not None:
            self.deny(
                f"{label} is pinned by digest, which air-gap mode cannot serve from the local "
                f"registry {s.registry}: use a tag instead"
            )
            return
        self.needs_secret = bool(s.username)  # a local registry without credentials needs none
        if ref.domain == s.registry.lower():
            return
        new = images.airgapped(ref, s.registry, s.namespace)
        if _parse(new) is None:
            # e.g. a long last segment under a long namespace outgrows 255 characters
            self.deny(
                f"{label} cannot be served from the local registry: {new!r} would not be "
                "a valid image reference; use a shorter repository name"
            )
            return
        self.rewrite(image, ref.original, new)
        if self.explain:
            self.violations.append(f"{label} must come from the local registry: use {new!r}")

    def secret(self) -> bool:
        """Whether to add the pull secret; a warning when it is missing and cannot be."""
        s, request = self.settings, self.request
        missing = self.needs_secret and not _secret_listed(self.template.spec, s.secret_name)
        if not missing:
            return False
        if request.may_add_secret:
            if self.explain:
                self.violations.append(f"pod needs imagePullSecret {s.secret_name!r}")
            return True
        where = request.operation + (f" of {request.subresource}" if request.subresource else "")

        def text(name: str) -> str:
            if self.template.shows_pull_secrets:
                return (
                    f"pod needs imagePullSecret {name}, which cannot be added on {where}; "
                    "recreate the pod so it can pull its private images"
                )
            # Kubernetes before 1.22: the request holds the ephemeral containers only.
            return (
                f"pod needs imagePullSecret {name} for these images; {where} can neither "
                "add it nor show whether the pod lists it: if not, recreate the pod"
            )

        self.warn(text(shorten(repr(s.secret_name), _NAME_SHOWN)), text(repr(s.secret_name)))
        return False

    def decision(self) -> Decision:
        add_secret = self.secret()
        return Decision(
            template=self.template,
            rewrites=tuple(self.rewrites),
            needs_secret=self.needs_secret,
            add_secret=add_secret,
            annotate=bool(self.rewrites) and self.request.may_annotate,
            original_images={r.key: r.original for r in self.rewrites},
            denials=tuple(self.denials),
            violations=tuple(self.violations),
            warnings=tuple(self.warnings),
            details=tuple(self.details),
        )


def _parse(image: str) -> ImageRef | None:
    try:
        return images.parse(image)
    except InvalidImageError:
        return None


def _proxy_target(original: str, proxy_domain: str, app_slug: str) -> tuple[str, str]:
    """The proxied image for a (valid) private image, and why it cannot be used ("" when
    it can). Cached as parsing is, with the same bound on what is kept: the same images
    come back on every admission."""
    if len(original) > images.CACHEABLE_LENGTH:
        return _find_proxy_target(original, proxy_domain, app_slug)
    return _cached_proxy_target(original, proxy_domain, app_slug)


def _find_proxy_target(original: str, proxy_domain: str, app_slug: str) -> tuple[str, str]:
    ref = images.parse(original)
    new = images.proxied(ref, proxy_domain, app_slug)
    if ref.has_port:
        return new, "its registry has a port, which cannot be carried in the proxy path"
    if _parse(new) is None:
        # An IPv6 literal cannot be a path segment; a long name can outgrow the
        # 255-character limit once the proxy prefix is added. Writing an image
        # that does not parse would break the pod for sure.
        return new, "the proxied reference would not be a valid image reference"
    return new, ""


_cached_proxy_target = lru_cache(maxsize=images.CACHE_SIZE)(_find_proxy_target)


def decide(
    planned: Plan,
    visibilities: Mapping[Repository, Visibility],
    settings: Settings,
    *,
    explain: bool = True,
) -> Decision:
    """Decide the rewrites, pull secret, denials and warnings for the planned images.

    ``visibilities`` holds the probe results; overrides in the settings come first,
    and a repository found in neither is unknown and follows ``onProbeFailure``.
    ``explain``: also say what each violation is (the validating endpoint's message;
    the mutating endpoint skips formatting them).
    """
    if planned.template is None:
        return Decision()
    builder = _Builder(settings, planned.request, planned.template, explain)
    airgap = settings.mode is _AIRGAP
    for item in planned.images:
        if isinstance(item.ref, InvalidImageError):
            builder.invalid(item.field, item.ref)
        elif airgap:
            builder.airgap(item.field, item.ref)
        else:
            visibility = item.override or visibilities.get(
                (item.ref.domain, item.ref.path), _UNKNOWN
            )
            builder.online(item.field, item.ref, visibility)
    return builder.decision()
