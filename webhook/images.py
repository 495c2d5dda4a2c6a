"""Image references: parse, normalise and format (pure).

Follows the distribution reference grammar
``[domain[:port]/]path[:tag][@algo:hex]``. Image strings come from anyone who may
create a Pod, so every pattern here is written to match in linear time: each
repetition is separated by a character the repeated part cannot contain, so the
regex engine never has two ways to split the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
NAME_MAX = 255  # the whole name, domain included (distribution's NameTotalLengthMax)

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidImageError(ValueError):
    """An image string that is not a valid reference; the message names it and the problem."""

    def __init__(self, image: str, problem: str) -> None:
        shown = image if len(image) <= 120 else image[:117] + "..."
        super().__init__(f"invalid image reference {shown!r}: {problem}")
        self.image = image
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference; ``domain`` and ``path`` are normalised."""

    original: str
    domain: str  # normalised: docker.io for Docker Hub, as written (lower case) otherwise
    path: str  # normalised: library/ added for one-segment Docker Hub paths
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """The normalised "domain/path": the key for overrides and the visibility cache."""
        return f"{self.domain}/{self.path}"

    @property
    def suffix(self) -> str:
        """ ":tag", "@digest" or ":tag@digest", exactly as written (empty when neither)."""
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    @property
    def reference(self) -> str:
        """What a registry is asked for: the digest when pinned, else the tag (or latest)."""
        return self.digest or self.tag or "latest"

    @property
    def has_port(self) -> bool:
        return self.domain.rsplit("]", 1)[-1].find(":") >= 0

    @property
    def last_segment(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _looks_like_domain(segment: str) -> bool:
    return "." in segment or ":" in segment or segment == "localhost" or segment.startswith("[")


@lru_cache(maxsize=4096)
def parse(image: str) -> ImageRef:
    """Parse and normalise an image reference, or raise InvalidImageError.

    Cached: a cluster runs the same few hundred images over and over.
    """
    if not image:
        raise InvalidImageError(image, "empty")
    if image != image.strip() or any(c.isspace() for c in image):
        raise InvalidImageError(image, "contains whitespace")
    name, at, digest = image.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise InvalidImageError(image, f"digest {digest!r} is not algorithm:hex")
        algorithm, _, hex_part = digest.partition(":")
        expected = _DIGEST_HEX_LENGTHS.get(algorithm)
        if expected is not None and len(hex_part) != expected:
            raise InvalidImageError(
                image, f"a {algorithm} digest has {expected} hex characters, got {len(hex_part)}"
            )
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidImageError(
                image, f"tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-'"
            )
    if not name:
        raise InvalidImageError(image, "no repository name")
    if len(name) > NAME_MAX:
        raise InvalidImageError(image, f"name longer than {NAME_MAX} characters")
    first, sep, rest = name.partition("/")
    if sep and _looks_like_domain(first):
        if not _DOMAIN.fullmatch(first):
            raise InvalidImageError(image, f"registry host {first!r} is not valid")
        domain, path = first.lower(), rest
    else:
        domain, path = DOCKER_HUB, name
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidImageError(image, _component_problem(component))
    if domain in DOCKER_HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return ImageRef(image, domain, path, tag, None if not at else digest)


def _component_problem(component: str) -> str:
    if not component:
        return "empty path component (double or trailing slash)"
    if component.lower() != component:
        return f"repository name {component!r} must be lower case"
    return (
        f"path component {component!r} must be lower-case letters and digits, "
        "separated by '.', '_', '__' or '-'"
    )


def format_image(domain: str, path: str, suffix: str) -> str:
    return f"{domain}/{path}{suffix}"


def proxied(ref: ImageRef, proxy_domain: str, app_slug: str) -> str:
    """``P/proxy/S/<normalised domain>/<path>`` plus the original suffix as written."""
    return format_image(proxy_domain, f"proxy/{app_slug}/{ref.domain}/{ref.path}", ref.suffix)


def airgapped(ref: ImageRef, registry: str, namespace: str) -> str:
    """``L/N/<last path segment>:<tag>`` (KOTS layout); a missing tag is written as latest."""
    path = (
        f"{namespace.strip('/')}/{ref.last_segment}" if namespace.strip("/") else ref.last_segment
    )
    return format_image(registry, path, f":{ref.tag or 'latest'}")
