"""Image references: the distribution grammar, normalisation, and both rewrite forms."""

from __future__ import annotations

import pytest

from webhook import images
from webhook.images import InvalidImageError

D = "sha256:" + "0123456789abcdef" * 4
P, S = "proxy.replicated.com", "my-app"
L, N = "registry.local:5000", "my-app"

# image, normalised repository, suffix as written, online proxied form, air-gap form
VALID = [
    (
        "nginx",
        "docker.io/library/nginx",
        "",
        f"{P}/proxy/{S}/docker.io/library/nginx",
        f"{L}/{N}/nginx:latest",
    ),
    (
        "nginx:1.25",
        "docker.io/library/nginx",
        ":1.25",
        f"{P}/proxy/{S}/docker.io/library/nginx:1.25",
        f"{L}/{N}/nginx:1.25",
    ),
    (
        "library/nginx:1.25",
        "docker.io/library/nginx",
        ":1.25",
        f"{P}/proxy/{S}/docker.io/library/nginx:1.25",
        f"{L}/{N}/nginx:1.25",
    ),
    (
        "docker.io/nginx",
        "docker.io/library/nginx",
        "",
        f"{P}/proxy/{S}/docker.io/library/nginx",
        f"{L}/{N}/nginx:latest",
    ),
    (
        "docker.io/library/nginx:latest",
        "docker.io/library/nginx",
        ":latest",
        f"{P}/proxy/{S}/docker.io/library/nginx:latest",
        f"{L}/{N}/nginx:latest",
    ),
    (
        "index.docker.io/nginx",
        "docker.io/library/nginx",
        "",
        f"{P}/proxy/{S}/docker.io/library/nginx",
        f"{L}/{N}/nginx:latest",
    ),
    (
        "index.docker.io/acme/app:2",
        "docker.io/acme/app",
        ":2",
        f"{P}/proxy/{S}/docker.io/acme/app:2",
        f"{L}/{N}/app:2",
    ),
    (
        "registry-1.docker.io/acme/app:2",
        "docker.io/acme/app",
        ":2",
        f"{P}/proxy/{S}/docker.io/acme/app:2",
        f"{L}/{N}/app:2",
    ),
    (
        "acme/app",
        "docker.io/acme/app",
        "",
        f"{P}/proxy/{S}/docker.io/acme/app",
        f"{L}/{N}/app:latest",
    ),
    (
        "acme/team/app:v1",
        "docker.io/acme/team/app",
        ":v1",
        f"{P}/proxy/{S}/docker.io/acme/team/app:v1",
        f"{L}/{N}/app:v1",
    ),
    (
        "quay.io/my-org/api:v1.0.1",
        "quay.io/my-org/api",
        ":v1.0.1",
        f"{P}/proxy/{S}/quay.io/my-org/api:v1.0.1",
        f"{L}/{N}/api:v1.0.1",
    ),
    (
        "quay.io/my-org/api",
        "quay.io/my-org/api",
        "",
        f"{P}/proxy/{S}/quay.io/my-org/api",
        f"{L}/{N}/api:latest",
    ),
    (
        "ghcr.io/org/sub/deep/image:1",
        "ghcr.io/org/sub/deep/image",
        ":1",
        f"{P}/proxy/{S}/ghcr.io/org/sub/deep/image:1",
        f"{L}/{N}/image:1",
    ),
    (
        f"quay.io/my-org/api@{D}",
        "quay.io/my-org/api",
        f"@{D}",
        f"{P}/proxy/{S}/quay.io/my-org/api@{D}",
        None,
    ),
    (
        f"quay.io/my-org/api:v1@{D}",
        "quay.io/my-org/api",
        f":v1@{D}",
        f"{P}/proxy/{S}/quay.io/my-org/api:v1@{D}",
        None,
    ),
    (
        f"nginx@{D}",
        "docker.io/library/nginx",
        f"@{D}",
        f"{P}/proxy/{S}/docker.io/library/nginx@{D}",
        None,
    ),
    (
        f"nginx:1.25@{D}",
        "docker.io/library/nginx",
        f":1.25@{D}",
        f"{P}/proxy/{S}/docker.io/library/nginx:1.25@{D}",
        None,
    ),
    (
        "registry.example.com:5000/team/app:v1",
        "registry.example.com:5000/team/app",
        ":v1",
        None,
        f"{L}/{N}/app:v1",
    ),
    ("localhost/app", "localhost/app", "", f"{P}/proxy/{S}/localhost/app", f"{L}/{N}/app:latest"),
    ("localhost:5000/app:dev", "localhost:5000/app", ":dev", None, f"{L}/{N}/app:dev"),
    (
        "127.0.0.3/team/app:v1",
        "127.0.0.3/team/app",
        ":v1",
        f"{P}/proxy/{S}/127.0.0.3/team/app:v1",
        f"{L}/{N}/app:v1",
    ),
    ("[::1]:5000/app:v1", "[::1]:5000/app", ":v1", None, f"{L}/{N}/app:v1"),
    (
        "Registry.Example.COM/team/app",
        "registry.example.com/team/app",
        "",
        f"{P}/proxy/{S}/registry.example.com/team/app",
        f"{L}/{N}/app:latest",
    ),
    (
        "gcr.io/a_b/c__d/e-f/g.h:T_1.x-y",
        "gcr.io/a_b/c__d/e-f/g.h",
        ":T_1.x-y",
        f"{P}/proxy/{S}/gcr.io/a_b/c__d/e-f/g.h:T_1.x-y",
        f"{L}/{N}/g.h:T_1.x-y",
    ),
    (
        "my-registry/app",
        "docker.io/my-registry/app",
        "",
        f"{P}/proxy/{S}/docker.io/my-registry/app",
        f"{L}/{N}/app:latest",
    ),
    ("a--b/c", "docker.io/a--b/c", "", f"{P}/proxy/{S}/docker.io/a--b/c", f"{L}/{N}/c:latest"),
    (
        "x.io/app:" + "t" * 128,
        "x.io/app",
        ":" + "t" * 128,
        f"{P}/proxy/{S}/x.io/app:" + "t" * 128,
        f"{L}/{N}/app:" + "t" * 128,
    ),
    (
        "proxy.replicated.com/proxy/my-app/quay.io/org/api:v1",
        "proxy.replicated.com/proxy/my-app/quay.io/org/api",
        ":v1",
        f"{P}/proxy/{S}/proxy.replicated.com/proxy/my-app/quay.io/org/api:v1",
        f"{L}/{N}/api:v1",
    ),
]

COMPONENT_RULE = "must be lower-case letters and digits, separated by '.', '_', '__' or '-'"

INVALID = [
    ("", "empty"),
    (" nginx", "contains whitespace"),
    ("nginx ", "contains whitespace"),
    ("ngi nx", "contains whitespace"),
    ("Nginx", "repository name 'Nginx' must be lower case"),
    ("quay.io/My-Org/api", "repository name 'My-Org' must be lower case"),
    ("quay.io//api", "empty path component (double or trailing slash)"),
    ("quay.io/org/", "empty path component (double or trailing slash)"),
    ("/nginx", "empty path component (double or trailing slash)"),
    ("nginx:", "tag '' must be 1-128 of letters, digits, '_', '.', '-'"),
    ("nginx:-bad", "tag '-bad' must be 1-128 of letters, digits, '_', '.', '-'"),
    (
        "nginx:" + "t" * 129,
        "tag '" + "t" * 77 + "...' must be 1-128 of letters, digits, '_', '.', '-'",
    ),
    ("nginx@sha256:abc", "a sha256 digest has 64 hex characters, got 3"),
    ("nginx@sha256:xyz", "a sha256 digest has 64 hex characters, got 3"),
    ("nginx@sha256:" + "g" * 64, "the sha256 digest is not hex"),
    ("nginx@sha256", "digest 'sha256' is not algorithm:hex"),
    ("nginx@md5:" + "a" * 32, "digest algorithm 'md5' is not supported (sha256, sha384, sha512)"),
    ("nginx@sha256:" + "A" * 64, "the sha256 digest must be lower-case hex"),
    ("nginx@sha512:" + "a" * 64, "a sha512 digest has 128 hex characters, got 64"),
    ("nginx@1sha:" + "a" * 64, f"digest '1sha:{'a' * 64}' is not algorithm:hex"),
    ("a" * 64, "a 64-character hexadecimal name is an image ID"),
    ("[abcd]/foo", f"path component '[abcd]' {COMPONENT_RULE}"),
    ("LOCALDOMAIN/Debian", "repository name 'Debian' must be lower case"),
    ("foo_bar.com/app", "registry host 'foo_bar.com' is not valid"),
    ("nginx@sha256:" + "a" * 63, "a sha256 digest has 64 hex characters, got 63"),
    ("nginx@" + D[7:], f"digest '{D[7:]}' is not algorithm:hex"),
    (
        "-nginx",
        f"path component '-nginx' {COMPONENT_RULE}",
    ),
    (
        "nginx_",
        f"path component 'nginx_' {COMPONENT_RULE}",
    ),
    (
        "a___b",
        f"path component 'a___b' {COMPONENT_RULE}",
    ),
    ("bad_host.io:x/app", "registry host 'bad_host.io:x' is not valid"),
    ("-host.io/app", "registry host '-host.io' is not valid"),
    (":tag", "no repository name"),
    ("a/" * 130 + "b", "repository path longer than 255 characters"),
    # The limit counts the normalised path: library/ makes 8 more.
    ("a" * 250, "repository path longer than 255 characters"),
]


@pytest.mark.parametrize(("image", "repository", "suffix", "online", "airgap"), VALID)
def test_valid_reference(
    image: str, repository: str, suffix: str, online: str | None, airgap: str | None
) -> None:
    ref = images.parse(image)
    assert ref.repository == repository
    assert ref.suffix == suffix
    if online is None:
        # A registry port cannot be carried in the proxy path: the result would not
        # parse, which is why the policy leaves such images unchanged.
        assert ref.has_port
        with pytest.raises(InvalidImageError):
            images.parse(images.proxied(ref, P, S))
    else:
        assert images.proxied(ref, P, S) == online
        # Every image the webhook writes parses under the same grammar.
        assert images.parse(online).domain == P
    if airgap is not None:
        assert images.airgapped(ref, L, N) == airgap
        assert images.parse(airgap).domain == L


@pytest.mark.parametrize(("image", "problem"), INVALID)
def test_invalid_reference(image: str, problem: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        images.parse(image)
    assert caught.value.problem == problem
    assert str(caught.value).startswith("invalid image reference ")
    assert problem in str(caught.value) or len(image) > 120


def test_table_size() -> None:
    assert len(VALID) + len(INVALID) >= 40


def test_port_detection() -> None:
    assert images.parse("registry.example.com:5000/app").has_port
    assert images.parse("[::1]:5000/app").has_port
    assert not images.parse("[::1]/app").has_port
    assert not images.parse("registry.example.com/app").has_port


def test_reference_prefers_digest() -> None:
    assert images.parse(f"app:v1@{D}").reference == D
    assert images.parse("app:v1").reference == "v1"
    assert images.parse("app").reference == "latest"


def test_airgap_empty_namespace() -> None:
    assert (
        images.airgapped(images.parse("quay.io/org/api:v2"), "reg.local", "") == "reg.local/api:v2"
    )


@pytest.mark.parametrize(
    "image",
    [
        # Inputs that make a literal port of the reference grammar backtrack
        # exponentially: a long run of letters followed by a character that fails.
        "a" * 250 + "A",
        "a-" * 120 + "A",
        "x.io/" + "a" * 240 + "_",
        "x.io/" + "a." * 120 + "-",
        "a" * 5000 + "!",
        "a" * 100_000,
        "h" * 60 + "." + "a" * 60 + ":" + "1" * 60 + "/x",
        # ... and in a host: runs of label characters and hyphens, then one that fails.
        "a-" * 50_000 + ".io/x",
        "a" * 50_000 + "-.io/x",
        ("a." * 50_000) + "-/x",
        "[" + ":" * 100_000 + "/x",
        "x.io/app@sha256+" + "a+" * 50_000 + ":" + "a" * 64,
    ],
)
def test_adversarial_inputs_are_rejected_or_parsed(image: str) -> None:
    # Completes at all only if matching is linear; the outcome is checked too.
    try:
        ref = images.parse(image)
    except InvalidImageError as exc:
        assert exc.image == image
    else:
        assert ref.original == image


@pytest.mark.parametrize(
    "image",
    [
        "x.io/app:" + "t" * 100_000,
        "x.io/" + "A" * 100_000,
        "x.io/" + "a" * 100_000 + "_",
        "bad_" + "h" * 100_000 + ".io/app",
        "x.io/app@sha256:" + "g" * 100_000,
        "x.io/app@" + "sha" * 100_000 + ":" + "a" * 64,
    ],
)
def test_the_problem_stays_short_whatever_the_reference(image: str) -> None:
    # It goes into warnings and log lines: the part of a huge reference it names is cut.
    with pytest.raises(InvalidImageError) as caught:
        images.parse(image)
    assert len(caught.value.problem) < 200
    assert len(str(caught.value)) < 350
