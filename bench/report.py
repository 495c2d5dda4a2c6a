"""The report: the machine, the targets, and the table printed at the end of a run."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.harness import wrk_binary

# Targets (bench/README.md): ratios to the floor from the same run.
TARGET_THROUGHPUT_RATIO = 0.8  # warm 3-container Pod, 16 connections
TARGET_P99_RATIO = 1.5
TARGET_SERVER_MS = 5.0  # 100-container Pod, p50
TARGET_CONNECTIONS = 16
TARGET_E2E_CPU_RATIO = 1.3  # CPU per admission through the API server, to the echo floor's


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // 1024
    except OSError:
        pass
    wrk_version = subprocess.run(
        [wrk_binary() or "wrk", "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": memory,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version[0].strip() if wrk_version else "",
    }


def libraries() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("aiohttp", "orjson", "uvloop", "prometheus-client", "jsonpatch", "cachetools"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    warm = {r["connections"]: r for r in results["warm"] if r["scenario"] == "warm-3"}
    checks = []
    at = warm.get(TARGET_CONNECTIONS)
    if at:
        checks.append(
            {
                "target": f"warm throughput >= {TARGET_THROUGHPUT_RATIO}x floor "
                f"at {TARGET_CONNECTIONS} connections",
                "value": at["throughput_ratio"],
                "met": at["throughput_ratio"] >= TARGET_THROUGHPUT_RATIO,
            }
        )
    for connections, row in sorted(warm.items()):
        checks.append(
            {
                "target": f"warm p99 <= {TARGET_P99_RATIO}x floor p99 "
                f"at {connections} connection{'s' if connections > 1 else ''}",
                "value": row["p99_ratio"],
                "met": row["p99_ratio"] <= TARGET_P99_RATIO,
            }
        )
    st = results.get("server_time_100")
    if st:
        checks.append(
            {
                "target": f"100-container Pod < {TARGET_SERVER_MS:g} ms server time at p50",
                "value": st["in_process"]["p50_ms"],
                "met": st["in_process"]["p50_ms"] < TARGET_SERVER_MS,
            }
        )
    cold_ = results.get("cold")
    if cold_:
        checks.append(
            {
                "target": "exactly one registry request per repository under concurrent load",
                "value": f"{cold_['registry_manifest_requests']} requests "
                f"for {cold_['repositories']} repositories",
                "met": cold_["exactly_one_each"],
            }
        )
    fill = results.get("cache_fill")
    if fill:
        checks.append(
            {
                "target": f"RSS bounded by visibility.cacheSize ({fill['cache_size']}) "
                f"with {fill['entries']} repositories",
                "value": f"{fill['rss_at_cache_size_mib']} -> {fill['rss_at_end_mib']} MiB",
                "met": fill["bounded"],
            }
        )
    e2e = {r["connections"]: r for r in results.get("e2e", {}).get("rows", [])}
    at = e2e.get(TARGET_CONNECTIONS)
    if at and at["cpu_ratio"] is not None:
        checks.append(
            {
                "target": f"end to end, CPU per admission <= {TARGET_E2E_CPU_RATIO}x the echo "
                f"floor's at {TARGET_CONNECTIONS} connections",
                "value": at["cpu_ratio"],
                "met": at["cpu_ratio"] <= TARGET_E2E_CPU_RATIO,
            }
        )
    return checks


def _speed_cells(row: dict[str, Any]) -> list[str]:
    """req/s, its floor's, their ratio; p50 and p99 beside the floor's."""
    f, w = row["floor"], row["webhook"]
    return [
        f"{w['rps']:.0f}",
        f"{f['rps']:.0f}",
        f"{row['throughput_ratio']:.2f}",
        f"{w['p50_ms']:.2f}",
        f"{f['p50_ms']:.2f}",
        f"{w['p99_ms']:.2f}",
        f"{f['p99_ms']:.2f}",
    ]


def _cpu_cells(row: dict[str, Any]) -> list[str]:
    return [
        _number(row["webhook"]["cpu_us_per_request"]),
        _number(row["floor"]["cpu_us_per_request"]),
    ]


def render_e2e(e2e: dict[str, Any]) -> list[str]:
    header = [
        "e2e conns",
        "req/s",
        "echo req/s",
        "ratio",
        "p50 ms",
        "echo p50",
        "p99 ms",
        "echo p99",
        "CPU us/admission",
        "echo CPU",
        "CPU ratio",
    ]
    rows = [header]
    for r in e2e["rows"]:
        cpu_ratio = "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}"
        rows.append([str(r["connections"]), *_speed_cells(r), *_cpu_cells(r), cpu_ratio])
    return [
        "end to end: dry-run Pod creates through kube-apiserver, the webhook against the echo "
        "floor (parses the review, echoes the uid, returns the same patch); CPU per admission "
        "is each server's own",
        _table(rows),
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_mib']} MiB, "
        f"Python {m['python']}, {m['wrk']}; load average at start {m['load_average_at_start']}",
        f"profile: {results['profile']['name']}, {results['profile']['seconds']:g} s per run, "
        f"{results['profile']['rounds']} round(s) each, median shown",
        "",
    ]
    header = [
        "scenario",
        "conns",
        "req/s",
        "floor req/s",
        "ratio",
        "p50 ms",
        "floor p50",
        "p99 ms",
        "floor p99",
        "p99 ratio",
        "CPU us/req",
        "floor CPU",
        "RSS MiB",
        "floor RSS",
    ]
    rows = [header]
    for r in [*results["warm"], *([results["cold"]] if "cold" in results else [])]:
        f, w = r["floor"], r["webhook"]
        rows.append(
            [
                r["scenario"],
                str(r["connections"]),
                *_speed_cells(r),
                f"{r['p99_ratio']:.2f}",
                *_cpu_cells(r),
                f"{w['peak_rss_mib']:.1f}",
                f"{f['peak_rss_mib']:.1f}",
            ]
        )
    if len(rows) > 1:
        out += [_table(rows), ""]
    means = [
        f"{r['scenario']} c={r['connections']}: {r['metrics_histogram_mean_ms']:.3f} ms"
        for r in results["warm"]
        if r.get("metrics_histogram_mean_ms") is not None
    ]
    if means:
        out.append("server time (mean, the webhook's duration histogram): " + ", ".join(means))
    st = results.get("server_time_100")
    if st:
        hist = st["metrics_histogram_p50_ms"]
        out.append(
            f"100-container Pod, server time: p50 {st['in_process']['p50_ms']:.2f} ms, "
            f"p99 {st['in_process']['p99_ms']:.2f} ms (admit + encode in-process, "
            f"{st['in_process']['samples']} samples); p50 from the webhook's duration "
            f"histogram under load: {'n/a' if hist is None else f'{hist:.2f} ms'}"
        )
    c = results.get("cold")
    if c:
        out.append(
            f"cold: {c['repositories']} private repositories, {c['admissions']} admissions at "
            f"{c['connections']} connections: {c['registry_manifest_requests']} registry "
            f"manifest requests for {c['repositories_asked']} repositories (per repository: "
            f"{c['requests_per_repository']}); webhook: {c['webhook_cache_misses']} misses, "
            f"{c['webhook_misses_joining_a_probe']} joined a probe in flight, "
            f"{c['webhook_probes']} probes, {c['webhook_cache_hits']} hits"
        )
    fill = results.get("cache_fill")
    if fill:
        bounded = fill["runs"][str(fill["cache_size"])]["points"]
        unbounded = fill["runs"][str(fill["entries"])]["points"]
        out.append(
            f"cache fill: {fill['entries']} distinct repositories; RSS MiB by repositories "
            f"seen (cacheSize {fill['cache_size']}): "
            + ", ".join(f"{p['repositories']}: {p['rss_mib']}" for p in bounded)
            + f"; cache entries at end {fill['cache_entries_at_end']}"
        )
        out.append(
            f"  for comparison, cacheSize {fill['entries']}: "
            + ", ".join(f"{p['repositories']}: {p['rss_mib']}" for p in unbounded)
        )
    if results.get("e2e"):
        out += ["", *render_e2e(results["e2e"])] if out[-1] else render_e2e(results["e2e"])
    out += ["", "targets:"]
    for check in results["targets"]:
        out.append(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}: {check['value']}")
    return "\n".join(out)
