"""distribution/reference's own test tables, run against ``webhook.images.parse``.

The kubelet and containerd read an image with distribution/reference's
``ParseNormalizedNamed`` (github.com/distribution/reference, the grammar of
docs/design.md §1). Each vector below is a case of that repository's
``reference_test.go``, ``normalize_test.go`` or ``regexp_test.go``, named by the
upstream test it comes from, with the result the Go code returns for that input
through ``ParseNormalizedNamed``: the normalised domain, path, tag and digest, or
a refusal. Tables that upstream runs through ``Parse`` (no normalisation) or
through a bare regexp keep their input and their verdict; the expectation here is
what ``ParseNormalizedNamed`` makes of the same string (``test_com`` is
``docker.io/library/test_com``; a string such as ``[fc00::1]:5000`` that is a
valid host but no image is refused). The tables are those of the 2024 code, which
counts only the path against the 255-character limit; digests are checked by
go-digest with sha256, sha384 and sha512 registered, as in the kubelet.

Deliberate differences, applied by ``here`` to each Go result (docs/design.md §1):

1. A host is lower-cased (host names are case-insensitive; in a proxied
   reference the host becomes a path component, which must be lower case).
   ``Asdf.com/repo`` is ``asdf.com/repo``. A first segment that is a host only
   because of its upper case (``LOCALDOMAIN/debian``, ``Docker/docker``: no ``.``,
   no ``:``, not ``localhost``) keeps its case, so that the normalised name still
   parses to the same host; the proxied form lower-cases it.
2. ``registry-1.docker.io`` (Docker Hub's real registry host) and, through the
   lower-casing, ``Docker.IO`` are Docker Hub, normalised as ``docker.io`` is
   (``library/`` added to a one-segment path).
3. A first segment that is taken for a host (it holds ``.`` or ``:``) but is not
   a valid host is refused. Go then reads the whole name as a path with no domain
   (``foo_bar.com/app``), which no client resolves to one registry.

Upstream's remaining tables (Familiar*, WithTag/WithDigest, Match, serialisation)
test Go APIs this project does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from webhook import images
from webhook.images import DOCKER_HUB, DOCKER_HUB_ALIASES, InvalidImageError


@dataclass(frozen=True, slots=True)
class Go:
    """What ``ParseNormalizedNamed`` returns: Domain(), Path(), Tag(), Digest()."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None


REFUSED = None
F64 = "f" * 64
SHA256 = "sha256:" + F64
SHA512 = "sha512:" + "f" * 128
BE17 = "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912"
DBCC = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
E669 = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"
LONG_NAMESPACE = "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4


def hub(path: str, tag: str | None = None, digest: str | None = None) -> Go:
    return Go("docker.io", path, tag, digest)


# reference_test.go, TestReferenceParse (upstream runs these through Parse).
REFERENCE_PARSE: list[tuple[str, Go | None]] = [
    ("test_com", hub("library/test_com")),
    ("test.com:tag", hub("library/test.com", "tag")),
    ("test.com:5000", hub("library/test.com", "5000")),
    ("test.com/repo:tag", Go("test.com", "repo", "tag")),
    ("test:5000/repo", Go("test:5000", "repo")),
    ("test:5000/repo:tag", Go("test:5000", "repo", "tag")),
    (f"test:5000/repo@{SHA256}", Go("test:5000", "repo", None, SHA256)),
    (f"test:5000/repo:tag@{SHA256}", Go("test:5000", "repo", "tag", SHA256)),
    ("", REFUSED),
    (":justtag", REFUSED),
    (f"@{SHA256}", REFUSED),
    ("repo@sha256:" + "f" * 34, REFUSED),  # digest.ErrDigestInvalidLength
    (f"validname@invaliddigest:{F64}", REFUSED),  # digest.ErrDigestUnsupported
    ("Uppercase:tag", REFUSED),  # ErrNameContainsUppercase
    # Upstream's commented-out FIXME case: normalised, "Uppercase" is a host.
    ("Uppercase/lowercase:tag", Go("Uppercase", "lowercase", "tag")),
    ("test:5000/Uppercase/lowercase:tag", REFUSED),
    ("lowercase:Uppercase", hub("library/lowercase", "Uppercase")),
    ("domain/" + "a" * 256 + ":tag", REFUSED),  # ErrNameTooLong
    ("a/" * 127 + "a:tag-puts-this-over-max", hub("a/" * 127 + "a", "tag-puts-this-over-max")),
    ("aa/asdf$$^/aa", REFUSED),
    ("sub-dom1.foo.com/bar/baz/quux", Go("sub-dom1.foo.com", "bar/baz/quux")),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        Go("sub-dom1.foo.com", "bar/baz/quux", "some-long-tag"),
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        Go("b.gcr.io", "test.example.com/my-app", "test.example.com"),
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", Go("xn--n3h.com", "myimage", "xn--n3h.com")),
    (
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512}",
        Go("xn--7o8h.com", "myimage", "xn--7o8h.com", SHA512),
    ),
    ("foo_bar.com:8080", hub("library/foo_bar.com", "8080")),
    ("foo/foo_bar.com:8080", hub("foo/foo_bar.com", "8080")),
    ("192.168.1.1", hub("library/192.168.1.1")),
    ("192.168.1.1:tag", hub("library/192.168.1.1", "tag")),
    ("192.168.1.1:5000", hub("library/192.168.1.1", "5000")),
    ("192.168.1.1/repo", Go("192.168.1.1", "repo")),
    ("192.168.1.1:5000/repo", Go("192.168.1.1:5000", "repo")),
    ("192.168.1.1:5000/repo:5050", Go("192.168.1.1:5000", "repo", "5050")),
    ("[2001:db8::1]", REFUSED),
    ("[2001:db8::1]:5000", REFUSED),
    ("[2001:db8::1]:tag", REFUSED),
    ("[2001:db8::1]/repo", Go("[2001:db8::1]", "repo")),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", Go("[2001:db8:1:2:3:4:5:6]", "repo", "tag")),
    ("[2001:db8::1]:5000/repo", Go("[2001:db8::1]:5000", "repo")),
    ("[2001:db8::1]:5000/repo:tag", Go("[2001:db8::1]:5000", "repo", "tag")),
    (f"[2001:db8::1]:5000/repo@{SHA256}", Go("[2001:db8::1]:5000", "repo", None, SHA256)),
    (
        f"[2001:db8::1]:5000/repo:tag@{SHA256}",
        Go("[2001:db8::1]:5000", "repo", "tag", SHA256),
    ),
    ("[2001:db8::]:5000/repo", Go("[2001:db8::]:5000", "repo")),
    ("[::1]:5000/repo", Go("[::1]:5000", "repo")),
    ("[fe80::1%eth0]:5000/repo", REFUSED),
    ("[fe80::1%@invalidzone]:5000/repo", REFUSED),
    ("example.com/" + "a" * 255 + ":tag", Go("example.com", "a" * 255, "tag")),
]

# normalize_test.go, TestValidateReferenceName.
VALIDATE_REFERENCE_NAME: list[tuple[str, Go | None]] = [
    ("docker/docker", hub("docker/docker")),
    ("library/debian", hub("library/debian")),
    ("debian", hub("library/debian")),
    ("docker.io/docker/docker", hub("docker/docker")),
    ("docker.io/library/debian", hub("library/debian")),
    ("docker.io/debian", hub("library/debian")),
    ("index.docker.io/docker/docker", hub("docker/docker")),
    ("index.docker.io/library/debian", hub("library/debian")),
    ("index.docker.io/debian", hub("library/debian")),
    ("127.0.0.1:5000/docker/docker", Go("127.0.0.1:5000", "docker/docker")),
    ("127.0.0.1:5000/library/debian", Go("127.0.0.1:5000", "library/debian")),
    ("127.0.0.1:5000/debian", Go("127.0.0.1:5000", "debian")),
    ("192.168.0.1", hub("library/192.168.0.1")),
    ("192.168.0.1:80", hub("library/192.168.0.1", "80")),
    ("192.168.0.1:8/debian", Go("192.168.0.1:8", "debian")),
    ("192.168.0.2:25000/debian", Go("192.168.0.2:25000", "debian")),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        hub("library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev"),
    ),
    ("[fc00::1]:5000/docker", Go("[fc00::1]:5000", "docker")),
    ("[fc00::1]:5000/docker/docker", Go("[fc00::1]:5000", "docker/docker")),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        Go("[fc00:1:2:3:4:5:6:7]:5000", "library/debian"),
    ),
    (
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        hub("library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"),
    ),
    ("Docker/docker", Go("Docker", "docker")),
    ("DOCKER/docker", Go("DOCKER", "docker")),
    ("https://github.com/docker/docker", REFUSED),
    ("docker/Docker", REFUSED),
    ("-docker", REFUSED),
    ("-docker/docker", REFUSED),
    ("-docker.io/docker/docker", REFUSED),
    ("docker///docker", REFUSED),
    ("docker.io/docker/Docker", REFUSED),
    ("docker.io/docker///docker", REFUSED),
    ("[fc00::1]", REFUSED),
    ("[fc00::1]:5000", REFUSED),
    ("fc00::1:5000/debian", REFUSED),
    ("[fe80::1%eth0]:5000/debian", REFUSED),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", REFUSED),
    ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", REFUSED),
]

# normalize_test.go, TestValidateRemoteName.
VALIDATE_REMOTE_NAME: list[tuple[str, Go | None]] = [
    ("docker/docker", hub("docker/docker")),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        hub("library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev"),
    ),
    ("docker-rules/docker", hub("docker-rules/docker")),
    ("docker---rules/docker", hub("docker---rules/docker")),
    ("doc/docker", hub("doc/docker")),
    ("d/docker", hub("d/docker")),
    ("jess/t", hub("jess/t")),
    ("dock__er/docker", hub("dock__er/docker")),
    ("docker/Docker", REFUSED),
    ("docker///docker", REFUSED),
    ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", REFUSED),
    ("-docker/docker", REFUSED),
    ("docker-/docker", REFUSED),
    ("-docker-/docker", REFUSED),
    ("____/____", REFUSED),
    ("_docker/_docker", REFUSED),
    ("dock..er/docker", REFUSED),
    ("dock_.er/docker", REFUSED),
    ("dock-.er/docker", REFUSED),
    ("docker/", REFUSED),
    (LONG_NAMESPACE + "/docker", REFUSED),
]

# normalize_test.go, TestParseRepositoryInfo: each familiar, full and ambiguous
# name of one repository parses to its Domain() and Path().
REPOSITORY_INFO: list[tuple[str, Go | None]] = [
    (name, Go(domain, path))
    for domain, path, names in [
        ("docker.io", "fooo/bar", ["fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar"]),
        ("docker.io", "library/ubuntu", ["ubuntu", "docker.io/library/ubuntu", "library/ubuntu"]),
        ("docker.io", "nonlibrary/ubuntu", ["nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"]),
        ("docker.io", "other/library", ["other/library", "docker.io/other/library"]),
        ("127.0.0.1:8000", "private/moonbase", ["127.0.0.1:8000/private/moonbase"]),
        ("127.0.0.1:8000", "privatebase", ["127.0.0.1:8000/privatebase"]),
        ("example.com", "private/moonbase", ["example.com/private/moonbase"]),
        ("example.com", "privatebase", ["example.com/privatebase"]),
        ("example.com:8000", "private/moonbase", ["example.com:8000/private/moonbase"]),
        ("example.com:8000", "privatebasee", ["example.com:8000/privatebasee"]),
        (
            "docker.io",
            "library/ubuntu-12.04-base",
            [
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
            ],
        ),
        ("docker.io", "library/foo", ["foo", "docker.io/library/foo", "docker.io/foo"]),
        ("docker.io", "library/foo/bar", ["library/foo/bar", "docker.io/library/foo/bar"]),
        ("docker.io", "store/foo/bar", ["store/foo/bar", "docker.io/store/foo/bar"]),
        ("Foo", "bar", ["Foo/bar"]),
        ("FOO", "bar", ["FOO/bar"]),
    ]
    for name in names
]

# normalize_test.go, TestParseReferenceWithTagAndDigest.
TAG_AND_DIGEST: list[tuple[str, Go | None]] = [
    (
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        hub(
            "library/busybox",
            "latest",
            "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        ),
    ),
]

# normalize_test.go, TestInvalidReferenceComponents.
INVALID_COMPONENTS: list[tuple[str, Go | None]] = [("-foo", REFUSED)]

# normalize_test.go, TestParseAnyReference (ParseAnyReference reads a bare 64-hex
# string or a lone digest as a digest reference; as an image name it is refused).
PARSE_ANY_REFERENCE: list[tuple[str, Go | None]] = [
    ("redis", hub("library/redis")),
    ("redis:latest", hub("library/redis", "latest")),
    ("docker.io/library/redis:latest", hub("library/redis", "latest")),
    (f"redis@sha256:{DBCC}", hub("library/redis", None, f"sha256:{DBCC}")),
    (f"docker.io/library/redis@sha256:{DBCC}", hub("library/redis", None, f"sha256:{DBCC}")),
    ("dmcgowan/myapp", hub("dmcgowan/myapp")),
    ("dmcgowan/myapp:latest", hub("dmcgowan/myapp", "latest")),
    ("docker.io/mcgowan/myapp:latest", hub("mcgowan/myapp", "latest")),
    (f"dmcgowan/myapp@sha256:{DBCC}", hub("dmcgowan/myapp", None, f"sha256:{DBCC}")),
    (f"docker.io/dmcgowan/myapp@sha256:{DBCC}", hub("dmcgowan/myapp", None, f"sha256:{DBCC}")),
    (DBCC, REFUSED),
    (f"sha256:{DBCC}", hub("library/sha256", DBCC)),
    (DBCC[:-1], hub(f"library/{DBCC[:-1]}")),
    ("dbcc1", hub("library/dbcc1")),
]

# normalize_test.go, TestNormalizedSplitHostname.
NORMALIZED_SPLIT_HOSTNAME: list[tuple[str, Go | None]] = [
    ("test.com/foo", Go("test.com", "foo")),
    ("test_com/foo", hub("test_com/foo")),
    ("docker/migrator", hub("docker/migrator")),
    ("test.com:8080/foo", Go("test.com:8080", "foo")),
    ("test-com:8080/foo", Go("test-com:8080", "foo")),
    ("foo", hub("library/foo")),
    ("xn--n3h.com/foo", Go("xn--n3h.com", "foo")),
    ("xn--n3h.com:18080/foo", Go("xn--n3h.com:18080", "foo")),
    ("docker.io/foo", hub("library/foo")),
    ("docker.io/library/foo", hub("library/foo")),
    ("docker.io/library/foo/bar", hub("library/foo/bar")),
]

# normalize_test.go, TestParseNamed: ParseNamed refuses a name that is not already
# canonical (ErrNameNotCanonical); here is what normalising each one gives.
PARSE_NAMED: list[tuple[str, Go | None]] = [
    ("test.com/foo", Go("test.com", "foo")),
    ("test:8080/foo", Go("test:8080", "foo")),
    ("test_com/foo", hub("test_com/foo")),
    ("test.com", hub("library/test.com")),
    ("foo", hub("library/foo")),
    ("library/foo", hub("library/foo")),
    ("docker.io/library/foo", hub("library/foo")),
    ("docker.io/foo", hub("library/foo")),
]

# normalize_test.go, TestParseDockerRef: ParseDockerRef then drops the tag of a
# digested reference and adds "latest" to a bare name, decisions of its caller.
PARSE_DOCKER_REF: list[tuple[str, Go | None]] = [
    ("busybox", hub("library/busybox")),
    ("busybox:latest", hub("library/busybox", "latest")),
    (f"busybox@{E669}", hub("library/busybox", None, E669)),
    ("library/busybox", hub("library/busybox")),
    ("docker.io/busybox", hub("library/busybox")),
    ("docker.io/library/busybox", hub("library/busybox")),
    ("docker.io/busybox:latest", hub("library/busybox", "latest")),
    ("library/busybox:latest", hub("library/busybox", "latest")),
    ("docker.io/library/busybox:latest", hub("library/busybox", "latest")),
    ("gcr.io/library/busybox", Go("gcr.io", "library/busybox")),
    (f"gcr.io/library/busybox:latest@{E669}", Go("gcr.io", "library/busybox", "latest", E669)),
]

# regexp_test.go, TestDomainRegexp: each host as the registry of "<host>/repo".
# "a" has no "." or ":" and is lower case, so it is a Docker Hub namespace.
DOMAIN: list[tuple[str, Go | None]] = [
    (f"{host}/repo", Go(domain, "repo") if domain else REFUSED)
    for host, domain in [
        ("test.com", "test.com"),
        ("test.com:10304", "test.com:10304"),
        ("test.com:http", ""),
        ("localhost", "localhost"),
        ("localhost:8080", "localhost:8080"),
        ("a.b", "a.b"),
        ("ab.cd.com", "ab.cd.com"),
        ("a-b.com", "a-b.com"),
        ("-ab.com", ""),
        ("ab-.com", ""),
        ("ab.c-om", "ab.c-om"),
        ("ab.-com", ""),
        ("ab.com-", ""),
        ("0101.com", "0101.com"),
        ("001a.com", "001a.com"),
        ("b.gbc.io:443", "b.gbc.io:443"),
        ("b.gbc.io", "b.gbc.io"),
        ("xn--n3h.com", "xn--n3h.com"),
        ("Asdf.com", "Asdf.com"),
        ("192.168.1.1:75050", "192.168.1.1:75050"),
        ("192.168.1.1:750050", "192.168.1.1:750050"),
        ("[fd00:1:2::3]:75050", "[fd00:1:2::3]:75050"),
        ("[fd00:1:2::3]75050", ""),
        ("[fd00:1:2::3]::75050", ""),
        ("[fd00:1:2::3%eth0]:75050", ""),
        ("[fd00123123123]:75050", "[fd00123123123]:75050"),
        (
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050",
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:75050",
        ),
        (
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505",
            "[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:750505",
        ),
        ("fd00:1:2::3:75050", ""),
    ]
] + [("a/repo", hub("a/repo"))]

# regexp_test.go, TestFullNameRegexp.
FULL_NAME_REGEXP: list[tuple[str, Go | None]] = [
    ("", REFUSED),
    ("short", hub("library/short")),
    ("simple/name", hub("simple/name")),
    ("library/ubuntu", hub("library/ubuntu")),
    ("docker/stevvooe/app", hub("docker/stevvooe/app")),
    (
        "aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb",
        hub("aa/aa/aa/aa/aa/aa/aa/aa/aa/bb/bb/bb/bb/bb/bb"),
    ),
    ("aa/aa/bb/bb/bb", hub("aa/aa/bb/bb/bb")),
    ("a/a/a/a", hub("a/a/a/a")),
    ("a/a/a/a/", REFUSED),
    ("a//a/a", REFUSED),
    ("a", hub("library/a")),
    ("a/aa", hub("a/aa")),
    ("a/aa/a", hub("a/aa/a")),
    ("foo.com", hub("library/foo.com")),
    ("foo.com/", REFUSED),
    ("foo.com:8080/bar", Go("foo.com:8080", "bar")),
    ("foo.com:http/bar", REFUSED),
    ("foo.com/bar", Go("foo.com", "bar")),
    ("foo.com/bar/baz", Go("foo.com", "bar/baz")),
    ("localhost:8080/bar", Go("localhost:8080", "bar")),
    ("sub-dom1.foo.com/bar/baz/quux", Go("sub-dom1.foo.com", "bar/baz/quux")),
    ("blog.foo.com/bar/baz", Go("blog.foo.com", "bar/baz")),
    ("a^a", REFUSED),
    ("aa/asdf$$^/aa", REFUSED),
    ("asdf$$^/aa", REFUSED),
    ("aa-a/a", hub("aa-a/a")),
    ("a/" * 128 + "a", REFUSED),  # 257 characters of Docker Hub path
    ("a-/a/a/a", REFUSED),
    ("foo.com/a-/a/a", REFUSED),
    ("-foo/bar", REFUSED),
    ("foo/bar-", REFUSED),
    ("foo-/bar", REFUSED),
    ("foo/-bar", REFUSED),
    ("_foo/bar", REFUSED),
    ("foo_bar", hub("library/foo_bar")),
    ("foo_bar.com", hub("library/foo_bar.com")),
    ("foo_bar.com:8080", hub("library/foo_bar.com", "8080")),
    ("foo_bar.com:8080/app", REFUSED),
    ("foo.com/foo_bar", Go("foo.com", "foo_bar")),
    ("____/____", REFUSED),
    ("_docker/_docker", REFUSED),
    ("docker_/docker_", REFUSED),
    ("b.gcr.io/test.example.com/my-app", Go("b.gcr.io", "test.example.com/my-app")),
    ("xn--n3h.com/myimage", Go("xn--n3h.com", "myimage")),
    ("xn--7o8h.com/myimage", Go("xn--7o8h.com", "myimage")),
    ("example.com/xn--7o8h.com/myimage", Go("example.com", "xn--7o8h.com/myimage")),
    (
        "example.com/some_separator__underscore/myimage",
        Go("example.com", "some_separator__underscore/myimage"),
    ),
    ("example.com/__underscore/myimage", REFUSED),
    ("example.com/..dots/myimage", REFUSED),
    ("example.com/.dots/myimage", REFUSED),
    ("example.com/nodouble..dots/myimage", REFUSED),
    ("docker./docker", REFUSED),
    (".docker/docker", REFUSED),
    ("docker-/docker", REFUSED),
    ("-docker/docker", REFUSED),
    ("do..cker/docker", REFUSED),
    ("do__cker:8080/docker", REFUSED),
    ("do__cker/docker", hub("do__cker/docker")),
    (
        "registry.io/foo/project--id.module--name.ver---sion--name",
        Go("registry.io", "foo/project--id.module--name.ver---sion--name"),
    ),
    ("Asdf.com/foo/bar", Go("Asdf.com", "foo/bar")),
    ("Foo/FarB", REFUSED),
]

# regexp_test.go, TestReferenceRegexp.
REFERENCE_REGEXP: list[tuple[str, Go | None]] = [
    ("registry.com:8080/myapp:tag", Go("registry.com:8080", "myapp", "tag")),
    (f"registry.com:8080/myapp@{BE17}", Go("registry.com:8080", "myapp", None, BE17)),
    (f"registry.com:8080/myapp:tag2@{BE17}", Go("registry.com:8080", "myapp", "tag2", BE17)),
    ("registry.com:8080/myapp@sha256:badbadbadbad", REFUSED),
    ("registry.com:8080/myapp:invalid~tag", REFUSED),
    ("bad_hostname.com:8080/myapp:tag", REFUSED),
    (f"localhost:8080@{BE17}", hub("library/localhost", "8080", BE17)),
    (f"localhost:8080/name@{BE17}", Go("localhost:8080", "name", None, BE17)),
    (f"localhost:http/name@{BE17}", REFUSED),
    (f"localhost@{BE17}", hub("library/localhost", None, BE17)),
    ("registry.com:8080/myapp@bad", REFUSED),
    ("registry.com:8080/myapp@2bad", REFUSED),
]

# regexp_test.go, TestIdentifierRegexp, each string as an image.
IDENTIFIER_REGEXP: list[tuple[str, Go | None]] = [
    ("da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821", REFUSED),
    ("7EC43B381E5AEFE6E04EFB0B3F0693FF2A4A50652D64AEC573905F2DB5889A1C", REFUSED),
    (
        "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf",
        hub("library/da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf"),
    ),
    (
        "sha256:da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
        hub(
            "library/sha256",
            "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf9821",
        ),
    ),
    (
        "da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482",
        hub("library/da304e823d8ca2b9d863a3c897baeb852ba21ea9a9f1414736394ae7fcaf98218482"),
    ),
]

TABLES = {
    "reference_test.go TestReferenceParse": REFERENCE_PARSE,
    "normalize_test.go TestValidateReferenceName": VALIDATE_REFERENCE_NAME,
    "normalize_test.go TestValidateRemoteName": VALIDATE_REMOTE_NAME,
    "normalize_test.go TestParseRepositoryInfo": REPOSITORY_INFO,
    "normalize_test.go TestParseReferenceWithTagAndDigest": TAG_AND_DIGEST,
    "normalize_test.go TestInvalidReferenceComponents": INVALID_COMPONENTS,
    "normalize_test.go TestParseAnyReference": PARSE_ANY_REFERENCE,
    "normalize_test.go TestNormalizedSplitHostname": NORMALIZED_SPLIT_HOSTNAME,
    "normalize_test.go TestParseNamed": PARSE_NAMED,
    "normalize_test.go TestParseDockerRef": PARSE_DOCKER_REF,
    "regexp_test.go TestDomainRegexp": DOMAIN,
    "regexp_test.go TestFullNameRegexp": FULL_NAME_REGEXP,
    "regexp_test.go TestReferenceRegexp": REFERENCE_REGEXP,
    "regexp_test.go TestIdentifierRegexp": IDENTIFIER_REGEXP,
}
VECTORS = [
    pytest.param(image, go, id=f"{table}:{image[:60]}")
    for table, vectors in TABLES.items()
    for image, go in vectors
]


def here(go: Go) -> Go:
    """Go's result with this project's deliberate differences applied (see above)."""
    domain, path = go.domain, go.path
    lowered = domain.lower()
    if lowered == "localhost" or "." in lowered or ":" in lowered:
        domain = lowered
    if domain in DOCKER_HUB_ALIASES:
        if domain != DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        domain = DOCKER_HUB
    return Go(domain, path, go.tag, go.digest)


@pytest.mark.parametrize(("image", "go"), VECTORS)
def test_upstream_vector(image: str, go: Go | None) -> None:
    if go is None:
        with pytest.raises(InvalidImageError):
            images.parse(image)
        return
    ref = images.parse(image)
    assert Go(ref.domain, ref.path, ref.tag, ref.digest) == here(go)


@pytest.mark.parametrize(("image", "go"), [v for v in VECTORS if v.values[1] is not None])
def test_normalising_is_idempotent(image: str, go: Go) -> None:
    """A normalised name parses to the same parts (and so does its proxied form's tail)."""
    ref = images.parse(image)
    again = images.parse(images.format_image(ref.domain, ref.path, ref.suffix))
    assert (again.domain, again.path, again.tag, again.digest) == (
        ref.domain,
        ref.path,
        ref.tag,
        ref.digest,
    )


# Each deliberate difference, with what Go returns and what the webhook does.
DELIBERATE: list[tuple[str, Go | None, Go | None]] = [
    ("Asdf.com/foo/bar", Go("Asdf.com", "foo/bar"), Go("asdf.com", "foo/bar")),
    ("registry-1.docker.io/nginx", Go("registry-1.docker.io", "nginx"), hub("library/nginx")),
    ("Docker.IO/nginx", Go("Docker.IO", "nginx"), hub("library/nginx")),
    ("foo_bar.com/app", Go("", "foo_bar.com/app"), REFUSED),
]


@pytest.mark.parametrize(("image", "go", "webhook"), DELIBERATE)
def test_deliberate_difference(image: str, go: Go | None, webhook: Go | None) -> None:
    assert go != webhook
    if webhook is None:
        with pytest.raises(InvalidImageError, match="is not valid"):
            images.parse(image)
        return
    ref = images.parse(image)
    assert Go(ref.domain, ref.path, ref.tag, ref.digest) == webhook


def test_upper_case_host_is_lower_cased_in_the_proxied_path() -> None:
    ref = images.parse("LOCALDOMAIN/debian:12")
    proxied = images.proxied(ref, "proxy.example.com", "my-app")
    assert proxied == "proxy.example.com/proxy/my-app/localdomain/debian:12"
    assert images.parse(proxied).path == "proxy/my-app/localdomain/debian"


def test_tables_are_all_here() -> None:
    # Upstream's vectors, less its exact duplicates (one in TestReferenceParse, two in
    # TestFullNameRegexp, the familiar and full names that coincide in
    # TestParseRepositoryInfo), plus TestReferenceParse's commented-out FIXME case:
    # a vector lost in an edit shows here.
    assert {name: len(vectors) for name, vectors in TABLES.items()} == {
        "reference_test.go TestReferenceParse": 47,
        "normalize_test.go TestValidateReferenceName": 37,
        "normalize_test.go TestValidateRemoteName": 21,
        "normalize_test.go TestParseRepositoryInfo": 28,
        "normalize_test.go TestParseReferenceWithTagAndDigest": 1,
        "normalize_test.go TestInvalidReferenceComponents": 1,
        "normalize_test.go TestParseAnyReference": 14,
        "normalize_test.go TestNormalizedSplitHostname": 11,
        "normalize_test.go TestParseNamed": 8,
        "normalize_test.go TestParseDockerRef": 11,
        "regexp_test.go TestDomainRegexp": 30,
        "regexp_test.go TestFullNameRegexp": 61,
        "regexp_test.go TestReferenceRegexp": 12,
        "regexp_test.go TestIdentifierRegexp": 5,
    }
