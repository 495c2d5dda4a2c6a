"""WWW-Authenticate parsing, Retry-After and manifest URLs (webhook.registry helpers)."""

from __future__ import annotations

import email.utils
import time

import pytest

from webhook.netguard import NetGuard
from webhook.registry import (
    Challenge,
    ChallengeError,
    manifest_url,
    parse_challenges,
    parse_retry_after,
    registry_host,
)

DOCKER_HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/nginx:pull"'
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            DOCKER_HUB,
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull",
                    },
                )
            ],
        ),
        ('Basic realm="private-registry"', [Challenge("basic", {"realm": "private-registry"})]),
        ("Bearer", [Challenge("bearer", {})]),
        ("Bearer realm", [Challenge("bearer", {"token68": "realm"})]),  # no realm: unusable
        ("bEaReR realm=x", [Challenge("bearer", {"realm": "x"})]),
        # commas inside quotes, escaped quotes, spaces around "="
        (
            'Bearer realm = "http://x/t?a=1,b=2" , error="say \\"no\\", twice"',
            [Challenge("bearer", {"realm": "http://x/t?a=1,b=2", "error": 'say "no", twice'})],
        ),
        # several challenges in one value (RFC 9110's example)
        (
            'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
            [
                Challenge("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
                Challenge("basic", {"realm": "simple"}),
            ],
        ),
        (
            'Negotiate abc==, Bearer realm="r"',
            [Challenge("negotiate", {"token68": "abc=="}), Challenge("bearer", {"realm": "r"})],
        ),
        ("Basic, Bearer realm=r", [Challenge("basic", {}), Challenge("bearer", {"realm": "r"})]),
        # a repeated parameter: the first wins
        ('Bearer realm="a",realm="b"', [Challenge("bearer", {"realm": "a"})]),
        (
            '  ,, Bearer realm="x" , , scope="s",',
            [Challenge("bearer", {"realm": "x", "scope": "s"})],
        ),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


def test_challenges_across_several_header_values() -> None:
    assert [c.scheme for c in parse_challenges(['Basic realm="x"', DOCKER_HUB])] == [
        "basic",
        "bearer",
    ]


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="unterminated',
        'Bearer realm="ends in a backslash\\',
        "Bearer realm=",
        "Bearer realm=a b",
        "\x00garbage",
        '=== ,,, "',
        "Bearer realm=x;scope=y",
        "Bearer a=b c",
    ],
)
def test_garbage_raises(header: str) -> None:
    with pytest.raises(ChallengeError):
        parse_challenges([header])


def test_parsing_is_linear() -> None:
    header = "Bearer " + ",".join(f'k{i}="{"v" * 50},\\"x\\""' for i in range(4000))
    started = time.perf_counter()
    (challenge,) = parse_challenges([header])
    assert len(challenge.params) == 4000
    assert time.perf_counter() - started < 2.0
    with pytest.raises(ChallengeError):
        parse_challenges(['Bearer realm="' + "\\a" * 100_000])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-1", None),
     ("1.5", None)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0


def test_manifest_url() -> None:
    guard = NetGuard(frozenset({"127.0.0.3", "registry.local:5000"}))
    assert str(manifest_url("docker.io", "library/nginx", "latest", guard)) == (
        "https://registry-1.docker.io/v2/library/nginx/manifests/latest"
    )
    assert str(manifest_url("quay.io", "org/app", f"sha256:{'a' * 64}", guard)) == (
        f"https://quay.io/v2/org/app/manifests/sha256:{'a' * 64}"
    )
    assert str(manifest_url("127.0.0.3", "team/app", "v1", guard)) == (
        "http://127.0.0.3/v2/team/app/manifests/v1"
    )
    assert str(manifest_url("registry.local:5000", "a/b", "v1", guard)).startswith(
        "http://registry.local:5000/"
    )
    assert str(manifest_url("registry.local:5001", "a/b", "v1", guard)).startswith("https://")
    assert str(manifest_url("[::1]:5000", "a/b", "v1", guard)).startswith("https://[::1]:5000/")
    for path, reference in (("a/b?x=1", "v1"), ("a/b", "v1/../x"), ("a/b", "v1#f"), ("A/b", "v")):
        with pytest.raises(ValueError):
            manifest_url("quay.io", path, reference, guard)
    with pytest.raises(ValueError):
        manifest_url("evil.com/x?", "a", "v1", guard)


def test_registry_host() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("index.docker.io") == "registry-1.docker.io"
    assert registry_host("Quay.io") == "quay.io"
