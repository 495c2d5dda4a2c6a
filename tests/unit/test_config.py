"""Config validation: defaults, and a precise message for every bad value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from webhook import config
from webhook.config import ConfigError, Mode, OnProbeFailure
from webhook.probes import Visibility

MINIMAL: dict[str, Any] = {"appSlug": "my-app", "licenseID": "lic"}


def test_defaults() -> None:
    s = config.parse(MINIMAL)
    assert s.proxy_domain == "proxy.replicated.com"
    assert s.registry_domain == "registry.replicated.com"
    assert s.secret_name == "my-app-registry"
    assert s.namespaces == ("my-app",)
    assert s.exclude_namespaces == {"kube-system", "kube-public", "kube-node-lease"}
    assert s.mode is Mode.ONLINE
    assert s.visibility.on_probe_failure is OnProbeFailure.PROXY
    assert s.visibility.ttl_seconds == 3600
    assert s.visibility.failure_ttl_seconds == 30
    assert s.probe.timeout_seconds == 2
    assert s.probe.allow_private_networks is False
    assert s.mutate_workloads is False
    assert (s.server.port, s.server.health_port) == (8443, 8080)
    assert s.server.admission_deadline_seconds == 8
    assert s.server.max_request_bytes == 7 * 1024 * 1024
    assert (s.server.max_images_per_object, s.server.max_admissions_in_flight) == (1000, 256)
    assert (s.server.max_json_values, s.server.max_body_bytes_in_flight) == (250_000, 8 << 20)
    assert s.server.max_connections == 512
    assert (s.server.tls_handshake_timeout_seconds, s.server.header_timeout_seconds) == (5, 5)
    assert s.server.idle_timeout_seconds == 120


def test_a_missing_key_means_the_dataclass_default() -> None:
    empty_sections: dict[str, Any] = {"airgap": {}, "visibility": {}, "probe": {}, "server": {}}
    expected = config.Settings("my-app", license_id="lic", namespaces=("my-app",))
    assert config.parse(MINIMAL) == expected
    assert config.parse({**MINIMAL, **empty_sections}) == expected
    tls = {"secretName": "webhook-tls", "dnsNames": ["webhook.svc"]}
    server = {"certFile": "/c", "keyFile": "/k"}
    parsed = config.parse({**MINIMAL, "server": server, "selfManagedTLS": tls})
    assert parsed.self_managed_tls == config.SelfManagedTLSSettings("webhook-tls", ("webhook.svc",))


def test_example_config_loads() -> None:
    s = config.load(Path(__file__).parents[2] / "examples" / "config.yaml")
    assert s.app_slug == "my-app"
    assert s.visibility.override_for("quay.io/my-org/api") is Visibility.PRIVATE
    assert s.visibility.override_for("quay.io/other/api") is None


def test_first_matching_override_wins() -> None:
    s = config.parse(
        {
            **MINIMAL,
            "visibility": {
                "overrides": [
                    {"match": "quay.io/org/public-*", "visibility": "public"},
                    {"match": "quay.io/org/*", "visibility": "private"},
                ]
            },
        }
    )
    assert s.visibility.override_for("quay.io/org/public-api") is Visibility.PUBLIC
    assert s.visibility.override_for("quay.io/org/api") is Visibility.PRIVATE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"appSlug": None}, "appSlug: required (the application slug, e.g. my-app)"),
        ({"appSlug": "My_App"}, "appSlug: 'My_App' must be a lower-case DNS label"),
        ({"licenseID": None}, "licenseID or licenseIDFile: required when mode is online"),
        ({"licenseIDFile": "/x"}, "licenseID and licenseIDFile: set one, not both"),
        ({"colour": "blue"}, "config: unknown key 'colour'"),
        ({"mode": "offline"}, "mode: 'offline' is not one of online, airgap"),
        ({"mode": "airgap"}, "airgap.registry: required when mode is airgap"),
        ({"mutateWorkloads": "yes"}, "mutateWorkloads: expected bool, got str ('yes')"),
        ({"namespaces": "my-app"}, "namespaces: expected list, got str ('my-app')"),
        ({"namespaces": ["Bad NS"]}, "namespaces[0]: 'Bad NS' is not a namespace name"),
        ({"namespaces": [3]}, "namespaces[0]: expected str, got int"),
        (
            {"excludeNamespaces": "kube-system"},
            "excludeNamespaces: expected list, got str ('kube-system')",
        ),
        (
            {"excludeNamespaces": ["kube-system", "Bad NS"]},
            "excludeNamespaces[1]: 'Bad NS' is not a namespace name",
        ),
        ({"excludeNamespaces": ["*"]}, "excludeNamespaces[0]: '*' is not a namespace name"),
        ({"excludeNamespaces": [None]}, "excludeNamespaces[0]: expected str, got NoneType"),
        (
            {"namespaces": ["my-app", "kube-public"]},
            "namespaces[1]: 'kube-public' is also in excludeNamespaces; list it in one of them",
        ),
        (
            {"namespaces": ["tools"], "excludeNamespaces": ["tools"]},
            "namespaces[0]: 'tools' is also in excludeNamespaces; list it in one of them",
        ),
        ({"proxyDomain": "https://proxy"}, "proxyDomain: 'https://proxy' is not a registry host"),
        # read as a Docker Hub path at the start of an image reference
        ({"proxyDomain": "proxy"}, "proxyDomain: 'proxy' is not a registry host"),
        (
            {"mode": "airgap", "airgap": {"registry": "registry"}},
            "airgap.registry: 'registry' is not a registry host",
        ),
        ({"pullSecretName": "Bad_Name"}, "pullSecretName: 'Bad_Name' is not a valid Secret name"),
        ({"visibility": {"ttlSeconds": 0}}, "visibility.ttlSeconds: must be greater than 0, got 0"),
        ({"visibility": {"ttlSeconds": "1h"}}, "visibility.ttlSeconds: expected float, got str"),
        (
            {"visibility": {"onProbeFailure": "retry"}},
            "visibility.onProbeFailure: 'retry' is not one of proxy, direct, deny",
        ),
        (
            {"visibility": {"overrides": [{"match": "x/*", "visibility": "secret"}]}},
            "visibility.overrides[0].visibility: 'secret' is not one of public, private",
        ),
        (
            {"visibility": {"overrides": [{"visibility": "public"}]}},
            "visibility.overrides[0].match: required",
        ),
        (
            {"visibility": {"overrides": [{"match": "x", "visibility": "public", "why": 1}]}},
            "visibility.overrides[0]: unknown key 'why'",
        ),
        ({"probe": {"timeoutSecs": 2}}, "probe: unknown key 'timeoutSecs'"),
        ({"probe": []}, "probe: expected a mapping, got list"),
        ({"server": {"port": 70000}}, "server.port: 70000 is not a TCP port (1-65535)"),
        ({"server": {"port": 8080}}, "server.healthPort: must differ from server.port"),
        ({"server": {"certFile": "/c"}}, "server.certFile and server.keyFile: set both or neither"),
        (
            {"server": {"admissionDeadlineSeconds": 30}},
            "server.admissionDeadlineSeconds: must stay below",
        ),
        ({"server": {"maxConnections": 0}}, "server.maxConnections: must be at least 1, got 0"),
        (
            {"server": {"maxImagesPerObject": 2.5}},
            "server.maxImagesPerObject: expected int, got float",
        ),
        (
            {"server": {"idleTimeoutSeconds": 0}},
            "server.idleTimeoutSeconds: must be greater than 0",
        ),
        (
            {"server": {"maxRequestBytes": 2048, "maxBodyBytesInFlight": 1024}},
            "server.maxBodyBytesInFlight: must be at least server.maxRequestBytes (2048)",
        ),
        (
            {"airgap": {"registry": "reg.local", "namespace": "Bad"}},
            "airgap.namespace: 'Bad' is not",
        ),
    ],
)
def test_bad_values(changes: dict[str, Any], message: str) -> None:
    data = {**MINIMAL, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        config.parse(data)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("changes", "covered", "not_covered"),
    [
        # The default: Kubernetes' own namespaces stay out of ["*"].
        (
            {"namespaces": ["*"]},
            {"my-app", "default", "kube-systems"},
            {"kube-system", "kube-public", "kube-node-lease", "webhook-ns"},
        ),
        # An explicit list replaces the default; [] excludes nothing but the webhook's own.
        (
            {"namespaces": ["*"], "excludeNamespaces": ["batch"]},
            {"my-app", "kube-system", "kube-public"},
            {"batch", "webhook-ns"},
        ),
        ({"namespaces": ["*"], "excludeNamespaces": []}, {"kube-system"}, {"webhook-ns"}),
        # A null key keeps the default, as for every other key.
        ({"namespaces": ["*"], "excludeNamespaces": None}, {"default"}, {"kube-node-lease"}),
        # Listed namespaces: only those, and kube-system once it is no longer excluded.
        (
            {"namespaces": ["my-app", "kube-system"], "excludeNamespaces": []},
            {"my-app", "kube-system"},
            {"default", "kube-public", "webhook-ns"},
        ),
    ],
)
def test_namespace_coverage(
    changes: dict[str, Any], covered: set[str], not_covered: set[str]
) -> None:
    s = config.parse({**MINIMAL, **changes})
    assert {n for n in covered | not_covered if s.covers(n, "webhook-ns")} == covered


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config: expected a mapping, got list$"):
        config.parse(["appSlug"])


def test_load_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("appSlug: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        config.load(bad)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read config file"):
        config.load(missing)
    typo = tmp_path / "typo.yaml"
    typo.write_text("appSlug: a\nlicenseID: x\nmdoe: airgap\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: config: unknown key 'mdoe'"):
        config.load(typo)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"appSlug: caf\xe9\nlicenseID: x\n")
    with pytest.raises(ConfigError) as caught:
        config.load(latin1)
    assert str(caught.value) == (f"{latin1}: not UTF-8 text (an undecodable byte at offset 12)")


def test_airgap_config() -> None:
    s = config.parse(
        {"appSlug": "a", "mode": "airgap", "airgap": {"registry": "registry.local:5000"}}
    )
    assert s.mode is Mode.AIRGAP
    assert s.airgap.registry == "registry.local:5000"
