"""The command line: rewrite, validate and certs on files, with their exit codes."""

from __future__ import annotations

import io
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from webhook.__main__ import main

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "examples" / "config.yaml"
PROXY = "proxy.replicated.com/proxy/my-app"

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
        - {name: api, image: "quay.io/my-org/api:v1.0.1"}
        - {name: web, image: "nginx:1.25"}
---
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  initContainers: [{name: init, image: "quay.io/my-org/init:2"}]
  containers: [{name: main, image: "nginx"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
"""


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv), out, err)
    finally:
        sys.stdin = old
    return code, out.getvalue(), err.getvalue()


def test_rewrite_reads_stdin_and_keeps_every_document() -> None:
    code, out, err = run("rewrite", "--config", str(CONFIG), "-f", "-", "--offline", stdin=MANIFEST)
    assert code == 0, err
    deployment, pod, configmap = yaml.safe_load_all(out)
    # mutateWorkloads is off in the example config: the Deployment is as written
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "quay.io/my-org/api:v1.0.1"
    )
    assert pod["spec"]["initContainers"][0]["image"] == f"{PROXY}/quay.io/my-org/init:2"
    assert pod["spec"]["containers"][0]["image"] == "nginx"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]
    assert configmap == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"a": "b"},
    }


def test_rewrite_workloads_flag() -> None:
    code, out, _ = run(
        "rewrite", "--config", str(CONFIG), "-f", "-", "--offline", "--workloads", stdin=MANIFEST
    )
    assert code == 0
    deployment = next(yaml.safe_load_all(out))
    spec = deployment["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["containers"]] == [
        f"{PROXY}/quay.io/my-org/api:v1.0.1",
        "nginx:1.25",
    ]
    assert spec["imagePullSecrets"] == [{"name": "my-app-registry"}]


def test_rewrite_denial_exit_1_and_stderr(tmp_path: Path) -> None:
    config = tmp_path / "airgap.yaml"
    config.write_text(
        "appSlug: my-app\nmode: airgap\nairgap: {registry: registry.local, namespace: my-app}\n"
    )
    manifest = (
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - {name: a, image: 'nginx@sha256:" + "a" * 64 + "'}\n"
    )
    code, out, err = run("rewrite", "--config", str(config), "-f", "-", stdin=manifest)
    assert code == 1
    assert err.strip() == (
        "denied: Pod/p: container 'a' image 'nginx@sha256:" + "a" * 64 + "' is pinned by digest, "
        "which air-gap mode cannot serve from the local registry registry.local: use a tag instead"
    )
    assert yaml.safe_load(out)["spec"]["containers"][0]["image"] == "nginx@sha256:" + "a" * 64


def test_validate_lines_and_exit_codes(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    code, out, _ = run("validate", "--config", str(CONFIG), "-f", str(manifest), "--offline")
    assert code == 1
    assert out.splitlines() == [
        f"Pod/job: container 'init' image 'quay.io/my-org/init:2' is private and must be pulled "
        f"through the proxy: use '{PROXY}/quay.io/my-org/init:2'",
        "Pod/job: pod needs imagePullSecret 'my-app-registry'",
    ]
    clean = tmp_path / "clean.yaml"
    clean.write_text(
        "kind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: a, image: nginx}]}\n"
    )
    assert run("validate", "--config", str(CONFIG), "-f", str(clean), "--offline")[0] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["rewrite", "--config", "/nonexistent.yaml", "-f", "-"],
            "error: /nonexistent.yaml: cannot read",
        ),
        (
            ["rewrite", "--config", str(CONFIG), "-f", "/nonexistent.yaml"],
            "error: /nonexistent.yaml: cannot read",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            ["rewrite", "--config", str(CONFIG)],
            "the following arguments are required: -f/--filename",
        ),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(*argv)
    assert code == 2
    assert message in err + capsys.readouterr().err


def test_bad_yaml_manifest_exits_2() -> None:
    code, _, err = run("rewrite", "--config", str(CONFIG), "-f", "-", "--offline", stdin="a: [b\n")
    assert code == 2
    assert err.startswith("error: -: not valid YAML")


def test_certs_command_writes_a_verifiable_pair(tmp_path: Path) -> None:
    code, out, _ = run("certs", "--out", str(tmp_path), "--dns", "webhook.ns.svc", "127.0.0.1")
    assert code == 0
    assert out.startswith("wrote ")
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert context.cert_store_stats()["x509_ca"] == 1
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "tls.crt"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", tmp_path / "tls.crt", "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:webhook.ns.svc" in text and "IP Address:127.0.0.1" in text


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "serve" in result.stdout and "rewrite" in result.stdout
