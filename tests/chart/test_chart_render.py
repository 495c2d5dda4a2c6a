"""The Helm chart, rendered with real Helm over the values matrix in
charts/image-proxy-webhook/ci/, checked against the Kubernetes schemas, the
server's own config parser and the product contract (docs/design.md)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.chart.chartlib import (
    BASE,
    CAPABLE,
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    NAMESPACE,
    Rendered,
    RenderFn,
    container,
    load_values,
    merged,
)
from webhook import config as server_config
from webhook.__main__ import _parser as cli_parser

pytestmark = pytest.mark.chart

NAME_LABEL = "kubernetes.io/metadata.name"
OPT_OUT = "image-proxy-webhook.io/ignore"
CONFIG_PATH = "/etc/image-proxy-webhook/config.yaml"

POD_RULES = {
    ("", "v1", resource, op)
    for resource in ("pods", "pods/ephemeralcontainers")
    for op in ("CREATE", "UPDATE")
}
WORKLOAD_RULES = {
    (group, "v1", resource, op)
    for group, resources in {
        "apps": ("deployments", "statefulsets", "daemonsets", "replicasets"),
        "": ("replicationcontrollers",),
        "batch": ("jobs", "cronjobs"),
    }.items()
    for resource in resources
    for op in ("CREATE", "UPDATE")
}


# --- small evaluators of Kubernetes semantics --------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector as the API server evaluates it."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    for rule in rules:
        assert rule.get("scope", "Namespaced") == "Namespaced"
    return {
        (group, version, resource, op)
        for rule in rules
        for group in rule["apiGroups"]
        for version in rule["apiVersions"]
        for resource in rule["resources"]
        for op in rule["operations"]
    }


def permissions(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(resource, verb, resourceName or '*') for every RBAC rule."""
    result = set()
    for rule in rules:
        assert rule["apiGroups"] == [""], rule
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                for name in rule.get("resourceNames") or ["*"]:
                    result.add((resource, verb, name))
    return result


def mounted_file(rendered: Rendered, path: str) -> tuple[dict[str, Any], str]:
    """The volume and the key in it that a file path of the container comes from."""
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container(rendered)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "subPath" in mount:
            if mount["mountPath"] == path:
                return volume, mount["subPath"]
            continue
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            relative = path[len(prefix) :]
            source = volume.get("secret") or volume.get("configMap") or {}
            items = source.get("items")
            if items is None:
                return volume, relative
            [key] = [item["key"] for item in items if item["path"] == relative]
            return volume, key
    raise AssertionError(f"{path} is not mounted into the webhook container")


def secret_value(rendered: Rendered, name: str, key: str) -> str | None:
    """The decoded value of a Secret the chart renders, or None if it renders none."""
    for secret in rendered.all("Secret"):
        if secret["metadata"]["name"] == name:
            return base64.b64decode(secret["data"][key]).decode()
    return None


def webhooks(rendered: Rendered) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind, configuration, webhook) for every admission webhook rendered."""
    found = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for configuration in rendered.all(kind):
            for hook in configuration["webhooks"]:
                found.append((kind, configuration, hook))
    return found


# --- the values matrix -------------------------------------------------------


@pytest.fixture(scope="module", params=CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def case(request: pytest.FixtureRequest, render: RenderFn) -> Rendered:
    return render(load_values(request.param), **CAPABLE)


def test_matrix_covers_the_issue() -> None:
    values = [load_values(path) for path in CI_VALUES]
    modes = {v.get("tls", {}).get("mode", "selfManaged") for v in values}
    assert modes == {"selfManaged", "helm", "certManager", "existingSecret"}
    assert {v.get("mode", "online") for v in values} == {"online", "airgap"}
    assert {v.get("validatingWebhook", {}).get("enabled", False) for v in values} == {True, False}
    assert {v.get("mutateWorkloads", False) for v in values} == {True, False}
    assert any(v.get("namespaces") == ["*"] for v in values)
    assert any("excludeNamespaces" in v for v in values)
    assert any(v.get("webhook", {}).get("matchConditions") == "disabled" for v in values)
    assert any(v.get("webhook", {}).get("url") for v in values)


@pytest.mark.parametrize(
    "values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults"
)
def test_lint_strict(helm: ModuleType, values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_reports_a_values_typo(helm: ModuleType) -> None:
    report = helm.lint(CHART, merged(BASE, {"replicas": 3}), strict=True, namespace=NAMESPACE)
    assert any("replicas" in m["error"] for m in report["messages"] if m["severity"] >= 2), report


def test_documents_are_valid_kubernetes(case: Rendered, kubernetes_validate: ModuleType) -> None:
    cert_manager_spec_keys = {
        "Certificate": {
            "secretName",
            "dnsNames",
            "duration",
            "renewBefore",
            "usages",
            "privateKey",
            "issuerRef",
            "isCA",
            "commonName",
        },
        "Issuer": {"selfSigned", "ca"},
    }
    # The Prometheus Operator's kinds: only the fields the chart sets.
    monitoring_spec_keys = {
        "ServiceMonitor": {"selector", "namespaceSelector", "endpoints"},
        "PrometheusRule": {"groups"},
    }
    for path, doc in case.documents:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rel", path
        assert labels["app.kubernetes.io/name"] == "image-proxy-webhook", path
        if doc["apiVersion"] == "cert-manager.io/v1":  # no schema in kubernetes-validate
            assert set(doc["spec"]) <= cert_manager_spec_keys[doc["kind"]], path
            continue
        # kubernetes-validate has no schema for monitoring.coreos.com CRDs; the
        # PrometheusRule's rules are checked by promtool in test_alerts.py.
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            assert set(doc["spec"]) <= monitoring_spec_keys[doc["kind"]], path
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_config_file_is_accepted_by_the_server(case: Rendered) -> None:
    v = case.values
    data = yaml.safe_load(case.config_text)
    settings = server_config.parse(data)  # raises ConfigError on any key the server rejects

    assert settings.app_slug == v["appSlug"]
    assert settings.namespaces == tuple(v["namespaces"] or [v["appSlug"]])
    assert settings.exclude_namespaces == set(v["excludeNamespaces"])
    assert settings.mode.value == v["mode"]
    assert settings.proxy_domain == v["proxyDomain"]
    assert settings.registry_domain == v["registryDomain"]
    assert settings.secret_name == (v["pullSecretName"] or f"{v['appSlug']}-registry")
    assert settings.mutate_workloads is v["mutateWorkloads"]
    assert [(o.match, o.visibility.value) for o in settings.visibility.overrides] == [
        (o["match"], o["visibility"]) for o in v["visibility"]["overrides"]
    ]
    assert settings.visibility.on_probe_failure.value == v["visibility"]["onProbeFailure"]
    assert settings.visibility.ttl_seconds == v["visibility"]["ttlSeconds"]
    assert settings.probe.timeout_seconds == v["probe"]["timeoutSeconds"]
    assert settings.probe.insecure_registries == frozenset(v["probe"]["insecureRegistries"])
    assert settings.server.admission_deadline_seconds == v["server"]["admissionDeadlineSeconds"]
    assert settings.server.shutdown_timeout_seconds == v["server"]["shutdownTimeoutSeconds"]
    limits = settings.server
    assert (limits.max_request_bytes, limits.max_body_bytes_in_flight) == (
        v["server"]["maxRequestBytes"],
        v["server"]["maxBodyBytesInFlight"],
    )
    assert (limits.max_images_per_object, limits.max_json_values) == (
        v["server"]["maxImagesPerObject"],
        v["server"]["maxJsonValues"],
    )
    assert (limits.max_admissions_in_flight, limits.max_connections) == (
        v["server"]["maxAdmissionsInFlight"],
        v["server"]["maxConnections"],
    )
    assert (
        limits.tls_handshake_timeout_seconds,
        limits.header_timeout_seconds,
        limits.idle_timeout_seconds,
    ) == (
        v["server"]["tlsHandshakeTimeoutSeconds"],
        v["server"]["headerTimeoutSeconds"],
        v["server"]["idleTimeoutSeconds"],
    )

    # The config file is what the container reads, and each file it names is mounted.
    args = container(case)["args"]
    assert args == ["--log-format", v["server"]["logFormat"], "serve", "--config", CONFIG_PATH]
    parsed = cli_parser().parse_args(args)  # the server's own command line accepts them
    assert (parsed.command, parsed.config) == ("serve", CONFIG_PATH)
    assert container(case)["command"] == ["image-proxy-webhook"]
    volume, key = mounted_file(case, CONFIG_PATH)
    assert volume["configMap"]["name"] == case.one("ConfigMap")["metadata"]["name"]
    assert key == "config.yaml"

    mode = v["tls"]["mode"]
    if mode == "selfManaged":
        # The webhook writes the pair from its Secret into a volume of its own
        # (tests/chart/test_chart_tls.py checks the rest).
        assert settings.self_managed_tls is not None
        for path in (settings.server.cert_file, settings.server.key_file):
            volume, _ = mounted_file(case, path)
            assert volume["emptyDir"]["medium"] == "Memory"
        tls_secret = ""
    elif mode == "helm":
        [tls] = [s for s in case.all("Secret") if s["type"] == "kubernetes.io/tls"]
        tls_secret = tls["metadata"]["name"]
    elif mode == "certManager":
        [serving] = [c for c in case.all("Certificate") if not c["spec"].get("isCA")]
        tls_secret = serving["spec"]["secretName"]
    else:
        tls_secret = v["tls"]["existingSecret"]
    for path, key in (
        (settings.server.cert_file, "tls.crt"),
        (settings.server.key_file, "tls.key"),
    ):
        if not tls_secret:
            break
        volume, mounted_key = mounted_file(case, path)
        assert (volume["secret"]["secretName"], mounted_key) == (tls_secret, key)

    # Secrets reach the server as files, never through the ConfigMap.
    assert settings.license_id == ""
    if v["license"]["id"] or v["license"]["existingSecret"]:
        volume, key = mounted_file(case, settings.license_id_file)
        name = volume["secret"]["secretName"]
        if v["license"]["existingSecret"]:
            assert name == v["license"]["existingSecret"]
            assert secret_value(case, name, key) is None
        else:
            assert secret_value(case, name, key) == v["license"]["id"]
            assert v["license"]["id"] not in case.config_text
    else:
        assert settings.license_id_file == ""

    if v["mode"] == "airgap":
        assert settings.airgap.registry == v["airgap"]["registry"]
        assert settings.airgap.namespace == v["airgap"]["namespace"]
        assert settings.airgap.username == v["airgap"]["username"]
        if v["airgap"]["password"] or v["airgap"]["existingSecret"]:
            volume, key = mounted_file(case, settings.airgap.password_file)
            name = volume["secret"]["secretName"]
            expected = None if v["airgap"]["existingSecret"] else v["airgap"]["password"]
            assert secret_value(case, name, key) == expected
            if v["airgap"]["password"]:
                assert v["airgap"]["password"] not in case.config_text
        else:
            assert settings.airgap.password_file == ""
    else:
        assert "airgap" not in data


def test_webhook_configurations(case: Rendered) -> None:
    v = case.values
    covered = v["namespaces"] or [v["appSlug"]]
    rules = POD_RULES | (WORKLOAD_RULES if v["mutateWorkloads"] else set())
    kinds = [kind for kind, _, _ in webhooks(case)]
    expected_kinds = ["MutatingWebhookConfiguration"]
    if v["validatingWebhook"]["enabled"]:
        expected_kinds.append("ValidatingWebhookConfiguration")
    assert kinds == expected_kinds

    for kind, _, hook in webhooks(case):
        mutating = kind == "MutatingWebhookConfiguration"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert rule_set(hook["rules"]) == rules
        assert hook["sideEffects"] == "NoneOnDryRun"
        assert hook["timeoutSeconds"] == v["webhook"]["timeoutSeconds"]
        assert v["server"]["admissionDeadlineSeconds"] < hook["timeoutSeconds"]
        policy = v["webhook" if mutating else "validatingWebhook"]["failurePolicy"]
        assert hook["failurePolicy"] == policy
        if mutating:
            assert hook["reinvocationPolicy"] == "IfNeeded"
        else:
            assert "reinvocationPolicy" not in hook

        selector = hook["namespaceSelector"]
        for namespace in (NAMESPACE, *v["excludeNamespaces"]):
            assert not selects(selector, {NAME_LABEL: namespace}), namespace
        for namespace in covered:
            if namespace != "*":
                assert selects(selector, {NAME_LABEL: namespace}), namespace
        assert selects(selector, {NAME_LABEL: "unrelated"}) is (covered == ["*"])

        # The matrix renders for Kubernetes 1.30, which has matchConditions.
        conditions = [c["name"] for c in hook.get("matchConditions", [])]
        enabled = v["webhook"]["matchConditions"] != "disabled"
        assert conditions == (MATCH_CONDITION_NAMES if enabled else [])

        objects = hook.get("objectSelector", {})
        assert selects(objects, {}) and selects(objects, {OPT_OUT: "false"})
        # The opt-out label stops mutation only; the admin's policy still applies.
        assert selects(objects, {OPT_OUT: "true"}) is not mutating


def test_client_config_and_ca(case: Rendered) -> None:
    v = case.values
    service = case.one("Service")
    [https] = [p for p in service["spec"]["ports"] if p["name"] == "https"]
    ports = {p["name"]: p["containerPort"] for p in container(case)["ports"]}
    assert https["targetPort"] == "https" and ports["https"] == v["server"]["port"]

    for kind, configuration, hook in webhooks(case):
        path = "/mutate" if kind.startswith("Mutating") else "/validate"
        client = hook["clientConfig"]
        annotations = configuration["metadata"].get("annotations", {})
        mode = v["tls"]["mode"]
        if v["webhook"]["url"]:
            expected = {"url": v["webhook"]["url"] + path}
            if mode != "selfManaged":  # the webhook sets it itself
                expected["caBundle"] = v["tls"]["caBundle"]
            assert client == expected
            assert annotations == {}
            continue
        assert client["service"] == {
            "name": service["metadata"]["name"],
            "namespace": NAMESPACE,
            "path": path,
            "port": https["port"],
        }
        if mode in ("certManager", "selfManaged"):
            assert "caBundle" not in client
        if mode == "selfManaged":
            assert annotations == {}
            assert all(s["type"] != "kubernetes.io/tls" for s in case.all("Secret"))
        elif mode == "certManager":
            [serving] = [c for c in case.all("Certificate") if not c["spec"].get("isCA")]
            assert annotations == {
                "cert-manager.io/inject-ca-from": f"{NAMESPACE}/{serving['metadata']['name']}"
            }
        elif mode == "existingSecret":
            assert annotations == {}
            pem = base64.b64decode(client["caBundle"]).decode()
            assert pem.strip() == v["tls"]["caBundle"].strip()
            assert not case.all("Secret") or all(
                s["type"] != "kubernetes.io/tls" for s in case.all("Secret")
            )
        else:
            assert annotations == {}
            [secret] = [s for s in case.all("Secret") if s["type"] == "kubernetes.io/tls"]
            assert client["caBundle"] == secret["data"]["ca.crt"]


def test_helm_generated_certificate(render: RenderFn) -> None:
    rendered = render(
        merged(BASE, {"validatingWebhook": {"enabled": True}, "tls": {"mode": "helm"}})
    )
    [secret] = [s for s in rendered.all("Secret") if s["type"] == "kubernetes.io/tls"]
    pem = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(pem["ca.crt"])
    leaf = x509.load_pem_x509_certificate(pem["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(pem["tls.key"], password=None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    service = rendered.one("Service")["metadata"]["name"]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{service}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    # Both webhooks trust the CA of that Secret: one pair per render, shared by the templates.
    bundles = [hook["clientConfig"]["caBundle"] for _, _, hook in webhooks(rendered)]
    assert bundles == [secret["data"]["ca.crt"]] * 2


def test_cert_manager_chain(render: RenderFn) -> None:
    rendered = render(merged(BASE, {"tls": {"mode": "certManager"}}))
    issuers = {i["metadata"]["name"]: i["spec"] for i in rendered.all("Issuer")}
    certificates = {c["metadata"]["name"]: c["spec"] for c in rendered.all("Certificate")}
    [serving] = [c for c in certificates.values() if not c.get("isCA")]
    [ca] = [c for c in certificates.values() if c.get("isCA")]
    ca_issuer = issuers[serving["issuerRef"]["name"]]
    assert ca_issuer == {"ca": {"secretName": ca["secretName"]}}
    assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
    service = rendered.one("Service")["metadata"]["name"]
    assert f"{service}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert "server auth" in serving["usages"]

    own = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    rendered = render(
        merged(BASE, {"tls": {"mode": "certManager", "certManager": {"issuerRef": own}}})
    )
    assert rendered.all("Issuer") == []
    assert rendered.one("Certificate")["spec"]["issuerRef"] == own


def test_deployment(case: Rendered) -> None:
    v = case.values
    deployment = case.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == v["replicaCount"]
    assert selects(deployment["spec"]["selector"], labels)
    assert selects({"matchLabels": case.one("Service")["spec"]["selector"]}, labels)

    # Restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("runAsUser", "runAsGroup"):
        assert pod["securityContext"].get(key) == v["securityContext"].get(key)
    c = container(case)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "hostNetwork" not in pod and "hostPID" not in pod

    # Health on the plain HTTP port the server is configured with.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == v["server"]["healthPort"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in c["env"]

    # Shutdown: the preStop pause, then the server's drain, both inside the grace period.
    pause = v["preStopSleepSeconds"]
    if pause:
        assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": pause}}
    else:
        assert "lifecycle" not in c
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pause + v["server"]["shutdownTimeoutSeconds"]
    if v.get("terminationGracePeriodSeconds") is not None:
        assert grace == v["terminationGracePeriodSeconds"]

    tag = v["image"]["tag"] or "0.1.0"
    digest = f"@{v['image']['digest']}" if v["image"]["digest"] else ""
    assert c["image"] == f"{v['image']['repository']}:{tag}{digest}"
    assert c["volumeMounts"][-1] == {"name": "tmp", "mountPath": "/tmp"}  # writable scratch

    # Replicas spread over nodes unless the admin sets an affinity.
    if not v["affinity"]:
        [term] = pod["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert selects(term["podAffinityTerm"]["labelSelector"], labels)

    # A config change rolls the Pods (the file is mounted by subPath).
    checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(case.config_text.rstrip("\n").encode()).hexdigest()

    pdb = case.maybe("PodDisruptionBudget")
    assert (pdb is not None) is v["podDisruptionBudget"]["enabled"]
    if pdb:
        assert pdb["apiVersion"] == "policy/v1"
        assert selects(pdb["spec"]["selector"], labels)
        assert pdb["spec"]["maxUnavailable"] == v["podDisruptionBudget"]["maxUnavailable"]


def test_rbac_is_least_privilege(case: Rendered) -> None:
    v = case.values
    covered = v["namespaces"] or [v["appSlug"]]
    account = case.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert case.one("ServiceAccount")["metadata"]["name"] == account
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    secret = server_config.parse(yaml.safe_load(case.config_text)).secret_name
    # What webhook/pullsecrets.py calls; tests/e2e/test_rbac.py shows each is used.
    secret_rights = {("secrets", "create", "*")} | {
        ("secrets", verb, secret) for verb in ("list", "watch", "update", "delete")
    }
    namespace_rights = {("namespaces", verb, "*") for verb in ("list", "watch")}

    # The self-managed certificate's RBAC (name "<fullname>-tls") is checked in
    # tests/chart/test_chart_tls.py.
    def own(kind: str) -> list[dict[str, Any]]:
        return [d for d in case.all(kind) if not d["metadata"]["name"].endswith("-tls")]

    roles = {r["metadata"]["namespace"]: r for r in own("Role")}
    role_bindings = {b["metadata"]["namespace"]: b for b in own("RoleBinding")}
    if covered == ["*"]:
        [cluster_role] = own("ClusterRole")
        [binding] = own("ClusterRoleBinding")
        assert binding["subjects"] == subject
        assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
        assert permissions(cluster_role["rules"]) == namespace_rights | secret_rights
        assert roles == {} and role_bindings == {}
    else:
        # Nothing cluster-wide: the namespaces are listed only for ["*"].
        assert own("ClusterRole") == [] and own("ClusterRoleBinding") == []
        assert set(roles) == set(role_bindings) == set(covered)
        for namespace, role in roles.items():
            assert permissions(role["rules"]) == secret_rights
            assert role_bindings[namespace]["subjects"] == subject
            assert role_bindings[namespace]["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            }


def test_network_policy(case: Rendered) -> None:
    policy = case.maybe("NetworkPolicy")
    assert (policy is not None) is case.values["networkPolicy"]["enabled"]
    if policy:
        labels = case.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert selects(policy["spec"]["podSelector"], labels)
        by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
        assert "from" not in by_port["https"]  # the API server's address is unknown
        assert by_port["health"].get("from", []) == case.values["networkPolicy"]["metricsFrom"]


def test_notes_tell_how_to_check(case: Rendered) -> None:
    name = case.one("Deployment")["metadata"]["name"]
    assert f"rollout status deployment/{name}" in case.notes
    assert "--dry-run=server" in case.notes
    assert "image-proxy-webhook.io/original-images" in case.notes


# --- capabilities ------------------------------------------------------------

AIRGAP = {"appSlug": "my-app", "mode": "airgap", "airgap": {"registry": "registry.local:5000"}}


@pytest.mark.parametrize(
    ("values", "capable", "expected"),
    [
        (AIRGAP, True, True),
        (AIRGAP, False, False),
        (BASE, True, False),  # online mode: every rule needs the registry
        (merged(AIRGAP, {"validatingAdmissionPolicy": {"enabled": False}}), True, False),
    ],
    ids=["airgap-capable", "airgap-old-cluster", "online", "disabled"],
)
def test_policy_renders_only_with_the_api(
    render: RenderFn, values: dict[str, Any], capable: bool, expected: bool
) -> None:
    rendered = render(values, **(CAPABLE if capable else {}))
    policy = rendered.maybe("ValidatingAdmissionPolicy")
    binding = rendered.maybe("ValidatingAdmissionPolicyBinding")
    assert (policy is not None, binding is not None) == (expected, expected)
    if policy and binding:
        assert binding["spec"]["policyName"] == policy["metadata"]["name"]
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert rule_set(policy["spec"]["matchConstraints"]["resourceRules"]) == POD_RULES
        selector = binding["spec"]["matchResources"]["namespaceSelector"]
        assert not selects(selector, {NAME_LABEL: NAMESPACE})
        assert not selects(selector, {NAME_LABEL: "kube-system"})
        assert selects(selector, {NAME_LABEL: "my-app"})


MATCH_CONDITION_NAMES = ["not-a-mirror-pod", "changes-an-image"]
WITH_VALIDATING = merged(BASE, {"validatingWebhook": {"enabled": True}, "mutateWorkloads": True})


@pytest.mark.parametrize(
    ("kube_version", "setting", "expected"),
    [
        ("1.27.0", "auto", False),  # no matchConditions on this API server
        ("1.28.0", "auto", True),  # beta, on by default
        ("1.28.5-eks-5e0fdde", "auto", True),  # a provider's build of 1.28
        ("1.27.16-gke.1287000", "auto", False),
        ("1.30.0", "auto", True),  # GA
        ("1.27.0", "enabled", True),  # e.g. 1.27 with the feature gate on
        ("1.30.0", "disabled", False),
    ],
)
def test_match_conditions_render_only_where_the_cluster_has_them(
    render: RenderFn,
    kubernetes_validate: ModuleType,
    kube_version: str,
    setting: str,
    expected: bool,
) -> None:
    values = merged(WITH_VALIDATING, {"webhook": {"matchConditions": setting}})
    rendered = render(values, kube_version=kube_version)
    hooks = webhooks(rendered)
    assert [kind for kind, _, _ in hooks] == [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ]
    for _, configuration, hook in hooks:
        if expected:
            names = [condition["name"] for condition in hook["matchConditions"]]
            assert names == MATCH_CONDITION_NAMES
        else:
            assert "matchConditions" not in hook
        schema_version = ".".join(kube_version.split(".")[:2]) + ".0"
        kubernetes_validate.validate(configuration, schema_version, strict=True)
    # Both webhooks skip the same requests: what the server would leave alone.
    if expected:
        assert hooks[0][2]["matchConditions"] == hooks[1][2]["matchConditions"]


@pytest.mark.parametrize(
    ("values", "covered", "not_covered"),
    [
        (
            merged(BASE, {"namespaces": ["*"]}),
            {"default", "my-app"},
            {NAMESPACE, "kube-system", "kube-public", "kube-node-lease"},
        ),
        (
            merged(BASE, {"namespaces": ["*"], "excludeNamespaces": ["monitoring"]}),
            {"default", "kube-system"},
            {NAMESPACE, "monitoring"},
        ),
        (
            merged(BASE, {"namespaces": ["*"], "excludeNamespaces": []}),
            {"kube-system", "kube-public"},
            {NAMESPACE},
        ),
        (
            merged(BASE, {"namespaces": ["my-app", "kube-system"], "excludeNamespaces": []}),
            {"my-app", "kube-system"},
            {NAMESPACE, "default", "kube-public"},
        ),
    ],
    ids=["default", "own-list", "none", "listed"],
)
def test_excluded_namespaces(
    render: RenderFn, values: dict[str, Any], covered: set[str], not_covered: set[str]
) -> None:
    rendered = render(merged(values, {"validatingWebhook": {"enabled": True}}))
    settings = server_config.parse(yaml.safe_load(rendered.config_text))
    selectors = [hook["namespaceSelector"] for _, _, hook in webhooks(rendered)]
    assert len(selectors) == 2
    for namespace in covered | not_covered:
        expected = namespace in covered
        # The API server and the server agree on every namespace.
        assert settings.covers(namespace, NAMESPACE) is expected, namespace
        for selector in selectors:
            assert selects(selector, {NAME_LABEL: namespace}) is expected, namespace


@pytest.mark.parametrize(
    ("kube_version", "pre_stop"),
    [
        ("1.29.0", {"exec": {"command": ["python3", "-c", "import time; time.sleep(5)"]}}),
        ("1.30.0", {"sleep": {"seconds": 5}}),
    ],
)
def test_pre_stop_pause_fits_the_cluster(
    render: RenderFn, kube_version: str, pre_stop: dict[str, Any]
) -> None:
    rendered = render(BASE, kube_version=kube_version)
    assert container(rendered)["lifecycle"]["preStop"] == pre_stop


# --- values that must not install --------------------------------------------


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"replicas": 3}, "'replicas' not allowed"),
        ({"webhook": {"timeoutSecond": 5}}, "'timeoutSecond' not allowed"),
        ({"tls": {"certManager": {"issuer": "x"}}}, "'issuer' not allowed"),
        ({"visibility": {"overrides": [{"match": "a/*", "visibilty": "private"}]}}, "'visibilty'"),
        ({"mode": "offline"}, "/mode"),
        ({"tls": {"mode": "certmanager"}}, "/tls/mode"),
        ({"appSlug": "My_App"}, "/appSlug"),
        ({"namespaces": ["Bad_NS"]}, "/namespaces/0"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"failurePolicy": "ignore"}}, "/webhook/failurePolicy"),
        ({"server": {"port": "8443"}}, "/server/port"),
        ({"server": {"maxConnections": 0}}, "/server/maxConnections"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
        (
            {"validatingAdmissionPolicy": {"validationActions": ["Deny", "Warn"]}},
            "validationActions",
        ),
        ({"airgap": {"registry": "https://registry.local"}}, "/airgap/registry"),
        ({"excludeNamespaces": ["*"]}, "/excludeNamespaces/0"),
        ({"excludeNamespaces": "kube-system"}, "/excludeNamespaces"),
        ({"webhook": {"matchConditions": True}}, "/webhook/matchConditions"),
    ],
)
def test_schema_rejects(
    render: RenderFn, helm: ModuleType, patch: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as error:
        render(merged(BASE, patch))
    assert where in str(error.value)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"server": {"admissionDeadlineSeconds": 10}}, "must be below webhook.timeoutSeconds"),
        (
            {"server": {"admissionDeadlineSeconds": 5.5}, "webhook": {"timeoutSeconds": 5}},
            "must be below webhook.timeoutSeconds",
        ),
        ({"terminationGracePeriodSeconds": 20}, "must be above preStopSleepSeconds"),
        ({"server": {"healthPort": 8443}}, "server.healthPort must differ"),
        (
            {"server": {"maxRequestBytes": 9000000}},
            "server.maxBodyBytesInFlight (8388608) must be at least server.maxRequestBytes",
        ),
        ({"license": {"id": ""}}, "license.id or license.existingSecret is required"),
        ({"appSlug": ""}, "appSlug is required"),
        ({"mode": "airgap"}, "airgap.registry is required"),
        ({"tls": {"mode": "existingSecret", "existingSecret": "x"}}, "tls.caBundle is required"),
        ({"tls": {"mode": "existingSecret", "caBundle": "x"}}, "tls.existingSecret is required"),
        ({"namespaces": [NAMESPACE]}, "is never mutated"),
        (
            {"namespaces": ["kube-system"]},
            'namespaces: "kube-system" is also in excludeNamespaces; list it in one of them',
        ),
        (
            {"namespaces": ["tools"], "excludeNamespaces": ["tools"]},
            'namespaces: "tools" is also in excludeNamespaces',
        ),
        ({"excludeNamespaces": None}, "excludeNamespaces must be a list"),
        ({"namespaces": ["*", "my-app"]}, "list it alone"),
    ],
)
def test_inconsistent_values_fail_clearly(
    render: RenderFn, helm: ModuleType, patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as error:
        render(merged(BASE, patch))
    assert message in str(error.value)


def test_the_limits_themselves_render(render: RenderFn) -> None:
    rendered = render(
        merged(
            BASE, {"server": {"admissionDeadlineSeconds": 9.5}, "terminationGracePeriodSeconds": 21}
        )
    )
    assert (
        rendered.one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        == 21
    )


# --- values.yaml and values.schema.json --------------------------------------


def _schema_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if node.get("properties"):
        found.append((path, node))
        for key, child in node["properties"].items():
            found.extend(_schema_objects(child, f"{path}.{key}".lstrip(".")))
    if isinstance(node.get("items"), dict):
        found.extend(_schema_objects(node["items"], f"{path}[]"))
    return found


def _documented_keys(text: str) -> dict[str, bool]:
    """Dotted key path -> whether a comment sits directly above the key."""
    result: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            result[".".join(k for _, k in stack)] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return result


def test_schema_is_closed_and_every_value_documented(chart: Any) -> None:
    schema = chart.schema
    for path, node in _schema_objects(schema):
        assert node.get("additionalProperties") is False, f"{path or 'root'} is open"

    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    documented = _documented_keys(text)
    leaves = []

    def walk(values: dict[str, Any], node: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            path = f"{prefix}{key}"
            child = node["properties"].get(key)
            assert child is not None, f"{path} is in values.yaml but not in the schema"
            if isinstance(value, dict) and child.get("properties"):
                walk(value, child, f"{path}.")
            else:
                leaves.append(path)

    walk(yaml.safe_load(text), schema, "")
    undocumented = [path for path in leaves if not documented.get(path)]
    assert undocumented == []
    missing = set(schema["properties"]) - set(yaml.safe_load(text)) - {"global"}
    assert missing == set(), "schema keys without a default in values.yaml"
