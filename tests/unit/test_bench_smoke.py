"""Smoke test of bench/: the floor, the webhook CLI and wrk, one tiny scenario (~1 s each).

Keeps the benchmark code from rotting; it asserts that the pieces work and the
figures are sane, not how fast anything is. Needs wrk, and for the end-to-end
scenario a kube-apiserver: skipped locally without them, failed under CI=true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import cachefill, e2e, harness, measure, report, scenarios
from tests.e2e import kubeapi
from tests.integration.registries import require_binary
from tests.support import free_port, unavailable
from webhook import pki

HOST = "127.0.0.1"
PRIVATE = "quay.io/acme/api:v1"
PUBLIC = "docker.io/library/nginx:1.25"
SMOKE = scenarios.Profile(
    seconds=1,
    warmup=0,
    rounds=1,
    cold_repositories=0,
    cold_seconds=0,
    fill_entries=0,
    fill_cache_size=0,
    server_time_samples=0,
)


@pytest.fixture(scope="module")
def wrk_binary() -> str:
    return require_binary("wrk", "wrk")


@pytest.fixture(scope="module")
def kube_binaries() -> tuple[Path, Path]:
    found = kubeapi.find_binaries()
    if isinstance(found, str):
        unavailable(f"e2e: {found}")
    return found


def write_config(directory: Path, port: int, health: int, certs: pki.CertPaths) -> Path:
    """Overrides settle every image, so no registry is needed."""
    settings = {
        "appSlug": "bench",
        "licenseID": "bench-license-id",
        "namespaces": ["bench"],
        "visibility": {
            "overrides": [
                {"match": "quay.io/acme/*", "visibility": "private"},
                {"match": "docker.io/*", "visibility": "public"},
            ]
        },
        "server": {
            "host": HOST,
            "port": port,
            "healthPort": health,
            "certFile": str(certs.cert_file),
            "keyFile": str(certs.key_file),
        },
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(settings))
    return path


def test_floor_and_webhook_under_wrk(wrk_binary: str, tmp_path: Path) -> None:
    certs = pki.generate(tmp_path / "tls", pki.DEV_NAMES)
    port, health = free_port(HOST), free_port(HOST)
    config_path = write_config(tmp_path, port, health, certs)
    body = scenarios.review_body("smoke-uid", "web-0", [PRIVATE, PRIVATE, PUBLIC])
    expected = scenarios.expected_answer(config_path, body, set())
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps({"/warm-3": expected}))
    bodies = harness.write_bodies(tmp_path / "bodies.jsonl", [body])

    webhook = harness.start_webhook(config_path, HOST, port, health, tmp_path / "webhook.log")
    try:
        floor = harness.start_floor(
            HOST,
            free_port(HOST),
            certs.cert_file,
            certs.key_file,
            responses,
            tmp_path / "floor.log",
        )
        try:
            # both answer what the core decides, byte for byte the same review
            status, answer = harness.post(f"{webhook.base_url}/mutate", body)
            assert (status, answer) == (200, expected)
            assert harness.post(f"{floor.base_url}/warm-3", body) == (200, expected)
            assert answer["response"]["patchType"] == "JSONPatch"

            scenario = scenarios.Scenario("warm-3", "/warm-3", [body], (4,))
            before = measure.scrape(webhook.extra["metrics_url"])
            pair = measure.measure(scenario, 4, webhook, floor, bodies, SMOKE)
            after = measure.scrape(webhook.extra["metrics_url"])
        finally:
            floor.stop()
    finally:
        webhook.stop()

    summary = pair.summary()
    for side in ("floor", "webhook"):
        figures = summary[side]
        assert figures["requests"] > 10, summary
        assert figures["errors"] == 0
        assert figures["rps"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert figures["cpu_us_per_request"] > 0
        assert figures["peak_rss_mib"] > 10
    assert summary["throughput_ratio"] > 0 and summary["p99_ratio"] > 0

    # the webhook's own histogram saw what wrk sent
    admitted = measure.metric(
        after, "image_proxy_webhook_admission_duration_seconds_count", endpoint="mutate"
    ) - measure.metric(
        before, "image_proxy_webhook_admission_duration_seconds_count", endpoint="mutate"
    )
    assert admitted >= summary["webhook"]["requests"]
    p50 = measure.histogram_quantile(
        0.5, before, after, "image_proxy_webhook_admission_duration_seconds", endpoint="mutate"
    )
    assert p50 is not None and 0 < p50 < 1

    # the report renders from these figures
    results = {
        "machine": report.machine(),
        "profile": {"name": "smoke", "seconds": 1, "rounds": 1},
        "warm": [summary],
    }
    results["targets"] = report.targets(results)
    text = report.render(results)
    assert "warm-3" in text and "targets:" in text


@pytest.mark.e2e
def test_end_to_end_through_the_api_server(
    wrk_binary: str, kube_binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    certs = pki.generate(tmp_path / "tls", pki.DEV_NAMES)
    port, health = free_port(HOST), free_port(HOST)
    config_path = write_config(tmp_path, port, health, certs)
    body = scenarios.review_body("smoke-uid", "web-0", [PRIVATE, PRIVATE, PUBLIC])
    expected = scenarios.expected_answer(config_path, body, set())

    webhook = harness.start_webhook(config_path, HOST, port, health, tmp_path / "webhook.log")
    try:
        # run_e2e first checks that both webhooks turn the Pod into the same stored Pod
        results = e2e.run_e2e(
            webhook, "bench", body, expected, certs, tmp_path, SMOKE, connections=(4,)
        )
    finally:
        webhook.stop()

    assert [c["image"] for c in results["pod"]["spec"]["containers"]] == [
        PRIVATE,
        PRIVATE,
        PUBLIC,
    ]
    [row] = results["rows"]
    assert row["connections"] == 4
    for side in ("floor", "webhook"):
        figures = row[side]
        assert figures["requests"] > 5, row
        assert figures["errors"] == 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        # CPU per admission: the server's own CPU time over the admissions it counted
        assert 0 < figures["cpu_us_per_request"] < 1e6
    assert row["cpu_ratio"] > 0

    summary: dict[str, Any] = {
        "machine": report.machine(),
        "profile": {"name": "smoke", "seconds": 1, "rounds": 1},
        "warm": [],
        "e2e": {**results, "rows": [{**row, "connections": 16}]},
    }
    summary["targets"] = report.targets(summary)
    [check] = summary["targets"]
    assert check["value"] == row["cpu_ratio"]
    text = report.render(summary)
    assert "end to end" in text and "CPU us/admission" in text


async def test_cache_fill_stays_within_cache_size() -> None:
    points = await cachefill.fill(cache_size=300, entries=1000, checkpoints=[500])
    assert [p["repositories"] for p in points] == [0, 500, 1000]
    assert points[-1]["cache_entries"] == 300
    assert all(p["rss_mib"] > 0 for p in points)
