"""The chart's alerts, checked and evaluated by promtool on the webhook's own series.

The rule file is the PrometheusRule spec the chart renders with real Helm. The
input series come from a real webhook process (``serve``) scraped on /metrics,
once after being driven into every fault the alerts watch and once after healthy
traffic:

- faults: a registry that accepts and never answers (the admission waits its
  whole deadline, the probe ends ``timeout``), a registry port nothing listens on
  (``connection-error``), a kubeconfig naming an API server port nothing listens
  on (pull secret writes fail), a request body that is not an AdmissionReview
  (HTTP 400), and a serving certificate that expires in five days;
- health: real registries (CNCF distribution) answering a public and a private
  repository, fast admissions, a certificate valid for a year, no API server.

Every sample of a scrape becomes one series with the target labels the chart's
ServiceMonitor gives it (job = the Service's name, namespace, pod, instance,
endpoint = the port name), merged as Prometheus merges them under the
ServiceMonitor's honorLabels (without it, the webhook's own ``endpoint`` label
would be renamed ``exported_endpoint`` and the rules would group by port): a
counter grows by its scraped value every minute (the same traffic again each
minute), a gauge keeps its value. promtool's clock starts at 0 at the moment of
the scrape, so the certificate's expiry time is given relative to it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.chartlib import NAMESPACE, Rendered, RenderFn
from tests.fakes.registries import HangingRegistry
from tests.integration.registries import Registry, require_registry_binary
from tests.reliability.harness import FakeThread, ServerProcess, write_config
from tests.reviews import pod, review
from tests.support import free_port, unavailable
from webhook import pki

pytestmark = pytest.mark.chart

DEADLINE = 1.0  # server.admissionDeadlineSeconds of the webhook and of the rendered rules
PROBE_TIMEOUT = 3.0  # above the deadline: the probe outlives the admission that started it
STEPS = 40  # minutes of input series
EVAL = "30m"  # every alert's `for` and range have elapsed by then
CERT_DAYS_FAULTY = 5
ALERTS = (
    "ImageProxyWebhookRegistryProbesFailing",
    "ImageProxyWebhookPullSecretWriteFailing",
    "ImageProxyWebhookAdmissionErrors",
    "ImageProxyWebhookAdmissionsNearDeadline",
    "ImageProxyWebhookCertificateExpiresSoon",
)
PROXIED = "proxy.replicated.com/proxy/my-app/quay.io/acme/api:1"  # needs the secret, no probe
PUSH_USERS = {"pusher": "push-secret"}


def promtool() -> str:
    """The promtool binary; skip locally, fail in CI when it is missing."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed: apt-get install -y prometheus"
        unavailable(message)
    return found


# --- the chart's side ------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(render: RenderFn) -> Rendered:
    return render(
        {
            "appSlug": "my-app",
            "license": {"id": "test-license-id"},
            "server": {"admissionDeadlineSeconds": DEADLINE},
            "monitoring": {
                "serviceMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
            },
        }
    )


@pytest.fixture(scope="module")
def rule_file(rendered: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered.one("PrometheusRule")["spec"]))
    return path


def target_labels(rendered: Rendered) -> dict[str, str]:
    """The labels Prometheus puts on every series scraped through the ServiceMonitor."""
    service = rendered.one("Service")["metadata"]["name"]
    return {
        "job": service,  # the Prometheus Operator's default: the Service's name
        "namespace": NAMESPACE,
        "service": service,
        "endpoint": "metrics",
        "container": "webhook",
        "pod": f"{service}-7c9d8f6b5-x2x4k",
        "instance": "10.0.3.17:8080",
    }


def test_service_monitor_scrapes_the_metrics_port(rendered: Rendered) -> None:
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    [health] = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    config = yaml.safe_load(rendered.config_text)
    assert health["containerPort"] == config["server"]["healthPort"]
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"


def test_rules_pass_promtool_check(rule_file: Path) -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_monitoring_is_off_by_default(render: RenderFn) -> None:
    default = render({"appSlug": "my-app", "license": {"id": "test-license-id"}})
    assert default.all("ServiceMonitor") == [] and default.all("PrometheusRule") == []


# --- the webhook's side -------------------------------------------------------------


@dataclass
class Scrape:
    text: str
    at: float  # Unix time of the scrape


class Webhook:
    """A `serve` process and the client calls a test makes to it."""

    def __init__(self, process: ServerProcess, ca: Path) -> None:
        self.process = process
        self.context = ssl.create_default_context(cafile=str(ca))

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.process.port, context=self.context, timeout=30
        )
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def admit(self, *images: str) -> dict[str, Any]:
        status, answer = self.post("/mutate", json.dumps(review(pod(*images))).encode())
        assert status == 200, answer
        response: dict[str, Any] = answer["response"]
        assert response["allowed"] is True
        return response

    def scrape(self) -> Scrape:
        connection = http.client.HTTPConnection("127.0.0.1", self.process.health_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        return Scrape(text, time.time())

    def scrape_when(self, fragment: str, timeout: float = 20) -> Scrape:
        """Scrape once ``fragment`` shows on /metrics (a probe finishing in the background)."""
        end = time.monotonic() + timeout
        while True:
            scrape = self.scrape()
            if fragment in scrape.text or time.monotonic() > end:
                assert fragment in scrape.text, scrape.text
                return scrape
            time.sleep(0.1)


def certificate(directory: Path, days: int) -> pki.CertPaths:
    ca = pki.CertificateAuthority()
    cert, key = ca.issue(pki.DEV_NAMES, days=days)
    paths = pki.CertPaths(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    paths.cert_file.write_bytes(cert)
    paths.key_file.write_bytes(key)
    assert paths.ca_file is not None
    paths.ca_file.write_bytes(ca.pem)
    return paths


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.fixture
def webhook_process(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(certs: pki.CertPaths, env: dict[str, str] | None = None, **config: Any) -> Webhook:
        path = tmp_path / "config.yaml"
        write_config(path, certs, **config)
        process = ServerProcess(path, tmp_path / "webhook.log", env=env)
        started.append(process.start())
        assert certs.ca_file is not None
        return Webhook(process, certs.ca_file)

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def faulty_scrape(tmp_path: Path, webhook_process: Any) -> Iterator[Scrape]:
    fakes = FakeThread()
    try:
        hanging = HangingRegistry()
        fakes.run(fakes.start(hanging))
        refused = f"127.0.0.1:{free_port()}"  # nothing listens there
        api = kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
        webhook = webhook_process(
            certificate(tmp_path, CERT_DAYS_FAULTY),
            env={"KUBECONFIG": str(api)},
            probe={
                "timeoutSeconds": PROBE_TIMEOUT,
                "insecureRegistries": [hanging.domain, refused],
            },
            server={"admissionDeadlineSeconds": DEADLINE},
        )
        started = time.monotonic()
        slow = webhook.admit(hanging.image())
        assert time.monotonic() - started >= DEADLINE
        assert any("unchanged" in w for w in slow["warnings"])
        webhook.admit(f"{refused}/team/app:v1")
        no_secret = webhook.admit(PROXIED)
        assert any("could not be reached" in w for w in no_secret["warnings"]), no_secret
        status, _ = webhook.post("/mutate", b"not an AdmissionReview")
        assert status == 400
        yield webhook.scrape_when('reason="timeout"')
    finally:
        fakes.close()


@pytest.fixture
def healthy_scrape(tmp_path: Path, webhook_process: Any) -> Iterator[Scrape]:
    binary = require_registry_binary()
    with (
        Registry(tmp_path / "public", binary=binary) as public,
        Registry(tmp_path / "private", auth="htpasswd", users=PUSH_USERS, binary=binary) as private,
    ):
        public.push_image("team/app", "v1")
        private.push_image("team/secret", "v1")
        webhook = webhook_process(
            certificate(tmp_path, 365),
            probe={"insecureRegistries": [public.domain, private.domain]},
            server={"admissionDeadlineSeconds": DEADLINE},
        )
        webhook.admit(public.image("team/app"), private.image("team/secret"))
        webhook.admit(public.image("team/app"), private.image("team/secret"))
        yield webhook.scrape_when('reason="auth-required"')


# --- from a scrape to promtool's input ------------------------------------------------------


def _number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def with_target(labels: dict[str, str], target: dict[str, str], honor: bool) -> dict[str, str]:
    """A scraped series' labels as Prometheus stores them (``honor_labels``)."""
    merged = dict(labels)
    for name, value in target.items():
        if name in labels:
            if honor:
                continue  # the scraped value wins
            merged[f"exported_{name}"] = labels[name]
        merged[name] = value
    return merged


def input_series(scrape: Scrape, target: dict[str, str], honor: bool) -> list[dict[str, str]]:
    series = []
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # creation times: no rule reads them
            labels = with_target(sample.labels, target, honor)
            selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            name = f"{sample.name}{{{selector}}}"
            if family.type == "gauge":
                value = sample.value
                if sample.name.endswith("_timestamp_seconds"):
                    value -= scrape.at  # promtool's time 0 is the scrape
                values = f"{_number(value)}x{STEPS}"
            else:  # counters and histograms: the same traffic every minute
                values = f"0+{_number(sample.value)}x{STEPS}"
            series.append({"series": name, "values": values})
    return series


def evaluate(rendered: Rendered, rule_file: Path, scrape: Scrape, expected: Any) -> None:
    [endpoint] = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    honor = bool(endpoint.get("honorLabels"))
    tests = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series(scrape, target_labels(rendered), honor),
                "alert_rule_test": [
                    {"eval_time": EVAL, "alertname": name, "exp_alerts": expected.get(name, [])}
                    for name in ALERTS
                ],
            }
        ],
    }
    path = rule_file.parent / "alerts.test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_on_its_fault(
    rendered: Rendered, rule_file: Path, faulty_scrape: Scrape
) -> None:
    target = target_labels(rendered)
    job, ns = target["job"], target["namespace"]
    where = f"{job} in {ns}"
    threshold = 0.75 * DEADLINE

    def probes(reason: str) -> dict[str, Any]:
        return {
            "exp_labels": {"severity": "warning", "namespace": ns, "job": job, "reason": reason},
            "exp_annotations": {
                "summary": f"Registry probes of image-proxy-webhook end unknown ({reason}).",
                "description": (
                    f"50% of the registry probes of {job} in {ns} end unknown with reason "
                    f"{reason}; those images follow visibility.onProbeFailure instead of the "
                    "registry's answer."
                ),
            },
        }

    expected = {
        # one probe timed out and one was refused, of two
        ALERTS[0]: [probes("connection-error"), probes("timeout")],
        ALERTS[1]: [
            {
                "exp_labels": {
                    "severity": "critical",
                    "namespace": ns,
                    "job": job,
                    "action": "ensure",
                    "result": "unreachable",
                },
                "exp_annotations": {
                    "summary": "image-proxy-webhook cannot write its pull secret "
                    "(ensure unreachable).",
                    "description": (
                        f"{where} keeps failing to write the pull secret (ensure: unreachable); "
                        "Pods with private images fail to pull until it is written. Check its "
                        "RBAC, the API server and the license Secret."
                    ),
                },
            }
        ],
        ALERTS[2]: [
            {
                "exp_labels": {
                    "severity": "warning",
                    "namespace": ns,
                    "job": job,
                    "endpoint": "mutate",
                    "reason": "bad-request",
                },
                "exp_annotations": {
                    "summary": "image-proxy-webhook answers admissions with errors "
                    "(mutate bad-request).",
                    # one bad request a minute, over ten minutes
                    "description": f"{where} answered 10 /mutate requests in 10 minutes with "
                    "bad-request; see its log.",
                },
            }
        ],
        ALERTS[3]: [
            {
                "exp_labels": {
                    "severity": "warning",
                    "namespace": ns,
                    "job": job,
                    "endpoint": "mutate",
                },
                "exp_annotations": {
                    "summary": "image-proxy-webhook admissions take close to their deadline.",
                    "description": (
                        f"The 99th percentile of /mutate admissions of {where} stays above "
                        f"{threshold:g}s against a deadline of {DEADLINE:g}s: registries answer "
                        "slowly or not at all."
                    ),
                },
            }
        ],
        ALERTS[4]: [
            {
                "exp_labels": {"severity": "warning", **target},
                "exp_annotations": {
                    "summary": "The serving certificate of image-proxy-webhook expires soon.",
                    "description": (
                        f"The certificate served by {target['instance']} ({where}) expires within "
                        "14 days. Renew it (tls.mode); the webhook loads a renewed certificate "
                        "without a restart."
                    ),
                },
            }
        ],
    }
    evaluate(rendered, rule_file, faulty_scrape, expected)


def test_no_alert_fires_on_healthy_traffic(
    rendered: Rendered, rule_file: Path, healthy_scrape: Scrape
) -> None:
    probes = {
        (sample.labels["visibility"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(healthy_scrape.text)
        for sample in family.samples
        if sample.name == "image_proxy_webhook_registry_probes_total"
    }
    assert probes == {("public", "anonymous-ok"): 1, ("private", "auth-required"): 1}
    evaluate(rendered, rule_file, healthy_scrape, expected={})
