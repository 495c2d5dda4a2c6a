"""The chart with ``tls.mode: selfManaged`` (the default) and ``createNamespaces``.

selfManaged: nothing random is rendered, so `helm template` gives the same bytes on
every run (GitOps tools render again on every sync); the webhook configurations carry
no caBundle (the webhook sets it); the server's config names the Secret and the two
configurations the RBAC grants, and nothing more.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.chartlib import NAMESPACE, RELEASE, Rendered, RenderFn
from webhook import config as server_config

pytestmark = pytest.mark.chart

BASE = {"appSlug": "my-app", "license": {"id": "test-license-id"}}
FULLNAME = f"{RELEASE}-image-proxy-webhook"
VALIDATING = {**BASE, "validatingWebhook": {"enabled": True}}


def template(chart: Any, values: dict[str, Any]) -> dict[str, str]:
    """`helm template` output: template path → rendered text."""
    rendered: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return rendered


def settings_of(rendered: Rendered) -> server_config.SelfManagedTLSSettings:
    parsed = server_config.parse(yaml.safe_load(rendered.config_text))
    assert parsed.self_managed_tls is not None
    return parsed.self_managed_tls


def rules_of(doc: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '*') for every rule."""
    return {
        (group, resource, verb, name)
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or ["*"]
    }


@pytest.mark.parametrize("values", [BASE, VALIDATING], ids=["defaults", "validating"])
def test_template_gives_the_same_bytes_every_time(chart: Any, values: dict[str, Any]) -> None:
    first = template(chart, values)
    assert all(template(chart, values) == first for _ in range(3))
    manifests = "".join(text for path, text in first.items() if not path.endswith("NOTES.txt"))
    assert "caBundle" not in manifests


def test_helm_mode_is_not_stable_under_template(chart: Any) -> None:
    """Why selfManaged is the default: `lookup` finds nothing under `helm template`,
    so tls.mode helm renders a new CA every time."""
    values = {**BASE, "tls": {"mode": "helm"}}
    assert template(chart, values) != template(chart, values)


@pytest.mark.parametrize("validating", [False, True])
def test_config_names_the_secret_and_the_configurations(render: RenderFn, validating: bool) -> None:
    rendered = render(VALIDATING if validating else BASE)
    tls = settings_of(rendered)
    assert tls.secret_name == f"{FULLNAME}-certs"
    service = rendered.one("Service")["metadata"]["name"]
    assert tls.dns_names == (
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
    )
    assert (
        tls.mutating_webhook_configuration
        == (rendered.one("MutatingWebhookConfiguration")["metadata"]["name"])
    )
    validating_docs = rendered.all("ValidatingWebhookConfiguration")
    assert tls.validating_webhook_configuration == (
        validating_docs[0]["metadata"]["name"] if validating else ""
    )
    assert len(validating_docs) == int(validating)
    assert (tls.ca_validity_days, tls.cert_validity_days) == (3650, 365)
    # Nothing of the certificate is rendered: no Secret holds one.
    assert all(s["type"] != "kubernetes.io/tls" for s in rendered.all("Secret"))
    for _, _, hook in _webhooks(rendered):
        assert "caBundle" not in hook["clientConfig"]


def test_url_host_is_in_the_certificate(render: RenderFn) -> None:
    rendered = render({**BASE, "webhook": {"url": "https://127.0.0.1:9443"}})
    assert settings_of(rendered).dns_names[-1] == "127.0.0.1"
    for _, _, hook in _webhooks(rendered):
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate"}


@pytest.mark.parametrize("validating", [False, True])
def test_rbac_is_exactly_what_selfcerts_calls(render: RenderFn, validating: bool) -> None:
    rendered = render(VALIDATING if validating else BASE)
    tls = settings_of(rendered)
    account = rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    name = f"{FULLNAME}-tls"

    [role] = [r for r in rendered.all("Role") if r["metadata"]["name"] == name]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == {
        ("", "secrets", "create", "*"),  # create cannot be limited by name
        ("", "secrets", "get", tls.secret_name),
        ("", "secrets", "update", tls.secret_name),
    }
    [cluster_role] = [r for r in rendered.all("ClusterRole") if r["metadata"]["name"] == name]
    configurations = {("mutatingwebhookconfigurations", tls.mutating_webhook_configuration)}
    if validating:
        configurations.add(
            ("validatingwebhookconfigurations", tls.validating_webhook_configuration)
        )
    assert rules_of(cluster_role) == {
        ("admissionregistration.k8s.io", resource, verb, configuration)
        for resource, configuration in configurations
        for verb in ("get", "update", "watch")
    }
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        [binding] = [b for b in rendered.all(kind) if b["metadata"]["name"] == name]
        assert binding["subjects"] == subject
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": name,
        }


@pytest.mark.parametrize("mode", ["helm", "certManager"])
def test_other_modes_have_no_self_managed_rbac(render: RenderFn, mode: str) -> None:
    rendered = render({**BASE, "tls": {"mode": mode}})
    names = [d["metadata"]["name"] for d in rendered.all("Role") + rendered.all("ClusterRole")]
    assert f"{FULLNAME}-tls" not in names
    assert "selfManagedTLS" not in rendered.config_text


def test_create_namespaces(render: RenderFn) -> None:
    namespaces = ["my-app", "my-app-jobs"]
    rendered = render({**BASE, "namespaces": namespaces, "createNamespaces": True})
    created = rendered.all("Namespace")
    assert [n["metadata"]["name"] for n in created] == namespaces
    for namespace in created:
        name = namespace["metadata"]["name"]
        # What the webhooks' namespaceSelector matches (set by Kubernetes only from 1.21).
        assert namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] == name
        # Uninstalling the webhook must not delete the application.
        assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # Each namespace the chart puts a Role into is one it creates.
    assert {r["metadata"]["namespace"] for r in rendered.all("Role")} == {*namespaces, NAMESPACE}
    assert render(BASE).all("Namespace") == []


def test_certificate_outliving_its_ca_is_refused(chart: Any) -> None:
    values = {**BASE, "tls": {"selfManaged": {"caValidityDays": 30, "certValidityDays": 60}}}
    with pytest.raises(Exception, match="certValidityDays must not exceed"):
        template(chart, values)


def test_create_namespaces_needs_a_list(chart: Any) -> None:
    with pytest.raises(Exception, match=r"createNamespaces: namespaces is \[\\?\"\*\\?\"\]"):
        template(chart, {**BASE, "namespaces": ["*"], "createNamespaces": True})


def _webhooks(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (kind, configuration, hook)
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for configuration in rendered.all(kind)
        for hook in configuration["webhooks"]
    ]
