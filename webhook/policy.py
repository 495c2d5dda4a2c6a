"""The rewrite decision (docs/design.md §1): a pure function of object, visibilities, settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook import images
from webhook.config import (
    UPSTREAM_REGISTRY_DOMAIN,
    Mode,
    OnProbeFailure,
    Settings,
    Visibility,
)
from webhook.images import ImageRef, InvalidImageError
from webhook.podspec import PodTemplate

ORIGINAL_IMAGES_ANNOTATION = "image-proxy-webhook.io/original-images"

Repository = tuple[str, str]  # (normalised domain, path): the visibility cache key


@dataclass(frozen=True, slots=True)
class Rewrite:
    pointer: str
    container: str
    original: str
    image: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook does with one object.

    ``denials`` refuse the object in both endpoints; ``violations`` are what the
    validating endpoint refuses (denials, plus images that should have been
    rewritten or cannot be); ``warnings`` go back to the client.
    """

    template: PodTemplate | None = None
    rewrites: tuple[Rewrite, ...] = ()
    needs_secret: bool = False
    add_secret: bool = False  # append {name: secret} to spec.imagePullSecrets
    annotate: bool = False  # record originals in the pod (template) annotation
    original_images: Mapping[str, str] = field(default_factory=dict)
    denials: tuple[str, ...] = ()
    violations: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.denials


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of an admission request the decision depends on."""

    operation: str  # CREATE | UPDATE
    subresource: str = ""

    @property
    def may_add_secret(self) -> bool:
        # On UPDATE and on pods/ephemeralcontainers only images may change: adding
        # imagePullSecrets would make the API server refuse the whole request.
        return self.operation == "CREATE" and not self.subresource

    @property
    def may_annotate(self) -> bool:
        # The ephemeralcontainers subresource drops metadata changes.
        return not self.subresource


def parse_image(image: str) -> ImageRef | None:
    try:
        return images.parse(image)
    except InvalidImageError:
        return None


def repositories_to_probe(
    template: PodTemplate | None, settings: Settings
) -> dict[Repository, ImageRef]:
    """Repositories whose visibility the decision needs and no override gives.

    One reference per repository: visibility is a property of the repository.
    """
    if template is None or settings.mode is Mode.AIRGAP:
        return {}
    wanted: dict[Repository, ImageRef] = {}
    own_hosts = {settings.proxy_domain, settings.registry_domain, UPSTREAM_REGISTRY_DOMAIN}
    overrides = settings.visibility.overrides
    for container in template.images:
        ref = parse_image(container.image)
        if ref is None or ref.domain in own_hosts:
            continue
        key = (ref.domain, ref.path)
        if key not in wanted and (
            not overrides or settings.visibility.override_for(ref.repository) is None
        ):
            wanted[key] = ref
    return wanted


def _secret_listed(spec: Mapping[str, Any], name: str) -> bool:
    secrets = spec.get("imagePullSecrets")
    return isinstance(secrets, list) and any(
        isinstance(s, Mapping) and s.get("name") == name for s in secrets
    )


def _label(container: str, image: str) -> str:
    return f"container {container!r} image {image!r}"


class _Builder:
    def __init__(self, settings: Settings, request: Request, template: PodTemplate) -> None:
        self.settings = settings
        self.request = request
        self.template = template
        self.rewrites: list[Rewrite] = []
        self.denials: list[str] = []
        self.violations: list[str] = []
        self.warnings: list[str] = []
        self.needs_secret = False

    def deny(self, message: str) -> None:
        self.denials.append(message)
        self.violations.append(message)

    def rewrite(self, pointer: str, container: str, original: str, image: str) -> None:
        self.rewrites.append(Rewrite(pointer, container, original, image))

    def online(self, pointer: str, container: str, ref: ImageRef, visibility: Visibility) -> None:
        s = self.settings
        if ref.domain in (s.proxy_domain, s.registry_domain):  # already proxied, or the vendor's
            self.needs_secret = True
            return
        if visibility is Visibility.PUBLIC and ref.domain != UPSTREAM_REGISTRY_DOMAIN:
            return  # the common case: nothing to say, so no message is formatted
        label = _label(container, ref.original)
        if ref.domain == UPSTREAM_REGISTRY_DOMAIN:  # registryDomain is a custom domain
            self.needs_secret = True
            new = images.format_image(s.registry_domain, ref.path, ref.suffix)
            self.rewrite(pointer, container, ref.original, new)
            self.violations.append(f"{label} must use the registry domain: use {new!r}")
            return
        if visibility is Visibility.PUBLIC:
            return
        if visibility is Visibility.INTERNAL:
            self.warnings.append(
                f"{label}: its registry is on an internal address, which the webhook does not "
                "probe and the proxy cannot reach; left unchanged (add a visibility override "
                "to route it)"
            )
            return
        if visibility is Visibility.UNKNOWN:
            failure = s.visibility.on_probe_failure
            if failure is OnProbeFailure.DENY:
                self.deny(
                    f"{label}: the registry could not be checked for anonymous access "
                    "and onProbeFailure is deny; retry shortly"
                )
                return
            if failure is OnProbeFailure.DIRECT:
                self.warnings.append(
                    f"{label}: registry visibility unknown; left unchanged (onProbeFailure: direct)"
                )
                return
        new = images.proxied(ref, s.proxy_domain, s.app_slug)
        shape = f"{s.proxy_domain}/proxy/{s.app_slug}/<registry>/<path>"
        problem = None
        if ref.has_port:
            problem = "its registry has a port, which cannot be carried in the proxy path " + shape
        elif parse_image(new) is None:
            # An IPv6 literal cannot be a path segment; a long name can outgrow the
            # 255-character limit once the proxy prefix is added. Writing an image
            # that does not parse would break the pod for sure.
            problem = f"the proxied reference {shape} would not be a valid image reference"
        if problem is not None:
            message = f"{label} is private but {problem}; left unchanged"
            self.warnings.append(message)
            self.violations.append(message)
            return
        self.needs_secret = True
        self.rewrite(pointer, container, ref.original, new)
        self.violations.append(
            f"{label} is private and must be pulled through the proxy: use {new!r}"
        )

    def airgap(self, pointer: str, container: str, ref: ImageRef) -> None:
        s = self.settings.airgap
        label = _label(container, ref.original)
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
        if parse_image(new) is None:
            # e.g. a long last segment under a long namespace outgrows 255 characters
            self.deny(
                f"{label} cannot be served from the local registry: {new!r} would not be "
                "a valid image reference; use a shorter repository name"
            )
            return
        self.rewrite(pointer, container, ref.original, new)
        self.violations.append(f"{label} must come from the local registry: use {new!r}")

    def decision(self) -> Decision:
        s, request = self.settings, self.request
        missing = self.needs_secret and not _secret_listed(self.template.spec, s.secret_name)
        add_secret = missing and request.may_add_secret
        if add_secret:
            self.violations.append(f"pod needs imagePullSecret {s.secret_name!r}")
        elif missing:
            where = (
                f"{request.operation} of {request.subresource}"
                if request.subresource
                else request.operation
            )
            if self.template.shows_pull_secrets:
                self.warnings.append(
                    f"pod needs imagePullSecret {s.secret_name!r}, which cannot be added on "
                    f"{where}; recreate the pod so it can pull its private images"
                )
            else:
                # Kubernetes before 1.22: the request holds the ephemeral containers only.
                self.warnings.append(
                    f"pod needs imagePullSecret {s.secret_name!r} for these images; {where} "
                    "cannot add it and does not show the pod's imagePullSecrets: if the pod "
                    "does not list it, recreate the pod so it can pull its private images"
                )
        originals = {r.container: r.original for r in self.rewrites}
        return Decision(
            template=self.template,
            rewrites=tuple(self.rewrites),
            needs_secret=self.needs_secret,
            add_secret=add_secret,
            annotate=bool(self.rewrites) and self.request.may_annotate,
            original_images=originals,
            denials=tuple(self.denials),
            violations=tuple(self.violations),
            warnings=tuple(self.warnings),
        )


def decide(
    template: PodTemplate | None,
    request: Request,
    visibilities: Mapping[Repository, Visibility],
    settings: Settings,
) -> Decision:
    """Decide the rewrites, pull secret, denials and warnings for one pod spec.

    ``visibilities`` holds the probe results; overrides in the settings come first,
    and a repository found in neither is unknown and follows ``onProbeFailure``.
    """
    if template is None:
        return Decision()
    builder = _Builder(settings, request, template)
    overrides = settings.visibility.overrides
    for container in template.images:
        try:
            ref = images.parse(container.image)
        except InvalidImageError as exc:
            message = f"container {container.container!r} left unchanged: {exc}"
            builder.warnings.append(message)
            builder.violations.append(message)
            continue
        if settings.mode is Mode.AIRGAP:
            builder.airgap(container.pointer, container.container, ref)
            continue
        override = settings.visibility.override_for(ref.repository) if overrides else None
        visibility = override or visibilities.get((ref.domain, ref.path), Visibility.UNKNOWN)
        builder.online(container.pointer, container.container, ref, visibility)
    return builder.decision()


def original_images_annotation(
    existing: Mapping[str, Any] | None, originals: Mapping[str, str]
) -> str:
    """The annotation value: earlier records kept, this request's originals added."""
    merged: dict[str, str] = {}
    if existing:
        try:
            previous = orjson.loads(existing.get(ORIGINAL_IMAGES_ANNOTATION) or "{}")
        except (TypeError, ValueError):
            previous = {}
        if isinstance(previous, dict):
            merged.update({k: v for k, v in previous.items() if isinstance(v, str)})
    merged.update(originals)
    return orjson.dumps(merged, option=orjson.OPT_SORT_KEYS).decode()
