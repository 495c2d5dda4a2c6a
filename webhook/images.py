"""Image references: parse, normalise and format (pure).

Parses as distribution/reference's ``ParseNormalizedNamed`` does (the parser the
kubelet and containerd use), with the deliberate differences of docs/design.md §1:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ host [ ":" port ] "/" ] path-component [ "/" path-component ]*
    host       := domain-label [ "." domain-label ]* | "[" ipv6-hex-and-colons "]"
    digest     := "sha256:" 64 hex | "sha384:" 96 hex | "sha512:" 128 hex  (lower case)

Image strings come from anyone who may create a Pod, so nothing here backtracks:
the reference is cut at its separators with ``str`` methods, and in every regex
each repetition is separated by characters the repeated part cannot contain, so
the engine never has two ways to split the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# The normalised path, library/ included (distribution's RepositoryNameTotalLengthMax).
NAME_MAX = 255
TAG_MAX = 128
# go-digest's registered algorithms and their hex lengths; any other is refused.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
CACHE_SIZE = 4096

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# Labels of letters and digits, "-" only inside: runs of each alternate, so there
# is one way to split any text.
_LABEL = r"[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*"
_DOMAIN_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_IPV6 = re.compile(r"[0-9A-Fa-f:]+")
_DIGITS = re.compile(r"[0-9]+")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_HEX = re.compile(r"[0-9a-fA-F]+")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
_IDENTIFIER = re.compile(r"[0-9a-f]{64}")

# The longest reference worth caching: a host of DNS length with a port, then the
# longest path, tag and digest the grammar allows. Only a host can be longer (the
# grammar does not bound it); such a reference is parsed every time, so the cache
# holds at most CACHE_SIZE references of this length.
CACHEABLE_LENGTH = (253 + len(":65535")) + 1 + NAME_MAX + 1 + TAG_MAX + 1 + len("sha512:") + 128


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
    domain: str  # normalised: docker.io for Docker Hub, lower case (see _normal_host)
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


def parse(image: str) -> ImageRef:
    """Parse and normalise an image reference, or raise InvalidImageError.

    Cached: a cluster runs the same few hundred images over and over. Only what
    parses is cached, and only up to CACHEABLE_LENGTH characters, so the cache's
    memory is bounded whatever clients send.
    """
    if len(image) > CACHEABLE_LENGTH:
        return _parse(image)
    return _cached_parse(image)


@lru_cache(maxsize=CACHE_SIZE)
def _cached_parse(image: str) -> ImageRef:
    return _parse(image)


def _parse(image: str) -> ImageRef:
    if not image:
        raise InvalidImageError(image, "empty")
    if image.split() != [image]:  # str.split scans in C; a regex would take 20 times longer
        raise InvalidImageError(image, "contains whitespace")
    if _IDENTIFIER.fullmatch(image):
        raise InvalidImageError(image, "a 64-character hexadecimal name is an image ID")
    name, at, digest = image.partition("@")
    if at:
        _check_digest(image, digest)
    tag: str | None = None
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:  # a ":" in the last path segment starts the tag
        name, tag = name[:colon], name[colon + 1 :]
        if len(tag) > TAG_MAX or not _TAG.fullmatch(tag):
            raise InvalidImageError(
                image, f"tag {_shown(tag)!r} must be 1-{TAG_MAX} of letters, digits, '_', '.', '-'"
            )
    if not name:
        raise InvalidImageError(image, "no repository name")
    domain, path = _split_domain(image, name)
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidImageError(image, _component_problem(component))
    if len(path) > NAME_MAX:
        raise InvalidImageError(image, f"repository path longer than {NAME_MAX} characters")
    return ImageRef(image, domain, path, tag, digest if at else None)


def _split_domain(image: str, name: str) -> tuple[str, str]:
    """The normalised (domain, path) of a name, as distribution's splitDockerDomain.

    The first segment is a host when it is ``localhost``, holds ``.`` or ``:``, or
    has an upper-case letter (path components are lower case).
    """
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first or first.lower() != first):
        if not _valid_host(first):
            raise InvalidImageError(image, f"registry host {_shown(first)!r} is not valid")
        domain, path = _normal_host(first), rest
    else:
        domain, path = DOCKER_HUB, name
    if domain in DOCKER_HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return domain, path


def _valid_host(host: str) -> bool:
    """``domain-name | [ipv6]`` with an optional ``:port``, as distribution's domainAndPort."""
    if host.startswith("["):
        address, bracket, port = host[1:].partition("]")
        if not bracket or not _IPV6.fullmatch(address):
            return False
    else:
        address = host.partition(":")[0]
        port = host[len(address) :]
        if not _DOMAIN_NAME.fullmatch(address):
            return False
    return not port or (port[0] == ":" and _DIGITS.fullmatch(port, 1) is not None)


def _normal_host(host: str) -> str:
    """The host lower-cased (host names are case-insensitive), unless that would unmake it.

    A first segment like ``LOCALDOMAIN`` is a host only because of its upper case:
    it keeps its case, so that the normalised name still parses to the same host.
    """
    lowered = host.lower()
    if lowered == "localhost" or "." in lowered or ":" in lowered:
        return lowered
    return host


def _check_digest(image: str, digest: str) -> None:
    """go-digest's rules: a registered algorithm, its exact length, lower-case hex.

    The hex is looked at only once its length is right, so a huge digest costs
    no more than finding its ``:``.
    """
    algorithm, colon, hex_part = digest.partition(":")
    if not colon or not _ALGORITHM.fullmatch(algorithm):
        raise InvalidImageError(image, f"digest {_shown(digest)!r} is not algorithm:hex")
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        supported = ", ".join(DIGEST_HEX_LENGTHS)
        raise InvalidImageError(
            image, f"digest algorithm {_shown(algorithm)!r} is not supported ({supported})"
        )
    if len(hex_part) != expected:
        raise InvalidImageError(
            image, f"a {algorithm} digest has {expected} hex characters, got {len(hex_part)}"
        )
    if not _LOWER_HEX.fullmatch(hex_part):
        problem = "must be lower-case hex" if _HEX.fullmatch(hex_part) else "is not hex"
        raise InvalidImageError(image, f"the {algorithm} digest {problem}")


def _shown(text: str) -> str:
    """A part of the reference as a problem names it: short, whatever the client sent."""
    return text if len(text) <= 80 else text[:77] + "..."


def _component_problem(component: str) -> str:
    if not component:
        return "empty path component (double or trailing slash)"
    if component.lower() != component:
        return f"repository name {_shown(component)!r} must be lower case"
    return (
        f"path component {_shown(component)!r} must be lower-case letters and digits, "
        "separated by '.', '_', '__' or '-'"
    )


def format_image(domain: str, path: str, suffix: str) -> str:
    return f"{domain}/{path}{suffix}"


def proxied(ref: ImageRef, proxy_domain: str, app_slug: str) -> str:
    """``P/proxy/S/<normalised domain>/<path>`` plus the original suffix as written.

    The domain is lower-cased: in the proxy path it is a path component.
    """
    domain = ref.domain.lower()
    return format_image(proxy_domain, f"proxy/{app_slug}/{domain}/{ref.path}", ref.suffix)


def airgapped(ref: ImageRef, registry: str, namespace: str) -> str:
    """``L/N/<last path segment>:<tag>`` (KOTS layout); a missing tag is written as latest."""
    path = (
        f"{namespace.strip('/')}/{ref.last_segment}" if namespace.strip("/") else ref.last_segment
    )
    return format_image(registry, path, f":{ref.tag or 'latest'}")
