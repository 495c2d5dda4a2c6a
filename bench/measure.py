"""Measuring: floor and webhook in turns under wrk, the webhook's own metrics, memory.

- :func:`measure`: one scenario at one concurrency, floor and webhook taking turns,
  each run's throughput, latency and server CPU per request (:class:`Pair`).
- :func:`scrape`, :func:`histogram_quantile`, :func:`histogram_mean`: ``/metrics``.
- :func:`server_time`: admit + encode in-process; :func:`cold`: the cache empty at
  start; :func:`cache_fill`: RSS as distinct repositories pass (:mod:`bench.cachefill`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import ROOT, BenchError, Process, WrkResult, get_text, log, wrk
from bench.scenarios import Profile, Registries, Scenario

# --- floor and webhook in turns ---------------------------------------------------------


@dataclass
class Pair:
    """Floor and webhook runs of one scenario at one concurrency, round by round."""

    scenario: str
    connections: int
    floor: list[WrkResult] = field(default_factory=list)
    webhook: list[WrkResult] = field(default_factory=list)
    # server CPU time per request, run by run: robust to a busy machine, unlike req/s
    floor_cpu_us: list[float] = field(default_factory=list)
    webhook_cpu_us: list[float] = field(default_factory=list)
    floor_peak_rss_mib: float = 0.0
    webhook_peak_rss_mib: float = 0.0

    @staticmethod
    def _median(runs: list[WrkResult], get: Callable[[WrkResult], float]) -> float:
        return statistics.median(get(r) for r in runs)

    def summary(self) -> dict[str, Any]:
        def side(runs: list[WrkResult], cpu: list[float], peak: float) -> dict[str, Any]:
            return {
                "rps": round(self._median(runs, lambda r: r.rps), 1),
                "cpu_us_per_request": round(statistics.median(cpu), 1) if cpu else None,
                "p50_ms": round(self._median(runs, lambda r: r.p50_ms), 3),
                "p99_ms": round(self._median(runs, lambda r: r.p99_ms), 3),
                "requests": sum(r.requests for r in runs),
                "errors": sum(r.error_count for r in runs),
                "peak_rss_mib": round(peak, 1),
                "rounds": [
                    {"rps": round(r.rps, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms} for r in runs
                ],
            }

        floor = side(self.floor, self.floor_cpu_us, self.floor_peak_rss_mib)
        hook = side(self.webhook, self.webhook_cpu_us, self.webhook_peak_rss_mib)
        cpu_ratio = None
        if floor["cpu_us_per_request"] and hook["cpu_us_per_request"]:
            cpu_ratio = round(hook["cpu_us_per_request"] / floor["cpu_us_per_request"], 3)
        return {
            "scenario": self.scenario,
            "connections": self.connections,
            "floor": floor,
            "webhook": hook,
            "throughput_ratio": round(hook["rps"] / floor["rps"], 3) if floor["rps"] else None,
            "p50_ratio": round(hook["p50_ms"] / floor["p50_ms"], 3) if floor["p50_ms"] else None,
            "p99_ratio": round(hook["p99_ms"] / floor["p99_ms"], 3) if floor["p99_ms"] else None,
            "cpu_ratio": cpu_ratio,
        }


@dataclass(frozen=True)
class Target:
    """One side of a pair: its server process, the URL wrk drives, how its answers count."""

    process: Process
    url: str
    # admissions the process has answered so far (its own counter); None: wrk's requests
    answered: Callable[[], float] | None = None


def measure(
    scenario: Scenario,
    connections: int,
    webhook: Process,
    floor: Process,
    bodies_file: Path,
    profile: Profile,
) -> Pair:
    return alternate(
        Pair(scenario.name, connections),
        Target(floor, f"{floor.base_url}{scenario.path}"),
        Target(webhook, f"{webhook.base_url}/mutate"),
        bodies_file,
        profile,
    )


def alternate(
    pair: Pair,
    floor: Target,
    webhook: Target,
    bodies_file: Path,
    profile: Profile,
    *,
    bearer: str | None = None,
) -> Pair:
    """Floor and webhook under the same wrk load in turns, ``profile.rounds`` runs each.

    CPU per request: the server's user + system time over a run, divided by the
    admissions it answered in that run.
    """
    connections = pair.connections
    sides = (
        (floor, pair.floor, pair.floor_cpu_us),
        (webhook, pair.webhook, pair.webhook_cpu_us),
    )
    for target, _, _ in sides:
        target.process.reset_peak()
        if profile.warmup:
            wrk(
                target.url,
                bodies_file,
                connections=connections,
                seconds=profile.warmup,
                bearer=bearer,
            )
    for round_ in range(profile.rounds):
        # alternate who goes first, so a trend in the machine's load hits both alike
        order = sides if round_ % 2 == 0 else sides[::-1]
        for target, runs, cpu in order:
            process = target.process
            answered_before = target.answered() if target.answered else 0.0
            cpu_before = process.cpu_seconds()
            result = wrk(
                target.url,
                bodies_file,
                connections=connections,
                seconds=profile.seconds,
                bearer=bearer,
            )
            cpu_used = process.cpu_seconds() - cpu_before
            answered = target.answered() - answered_before if target.answered else result.requests
            if answered:
                cpu.append(cpu_used / answered * 1e6)
            if result.error_count:
                raise BenchError(
                    f"{process.name} {pair.scenario} c={connections}: errors {result.errors}\n"
                    f"{process.log_tail()}"
                )
            runs.append(result)
            log(
                f"{pair.scenario} c={connections} {process.name}: {result.rps:.0f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"{cpu[-1] if cpu else 0:.0f} CPU us/request"
            )
    pair.floor_peak_rss_mib = floor.process.rss_mib()[1]
    pair.webhook_peak_rss_mib = webhook.process.rss_mib()[1]
    return pair


# --- /metrics --------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for line in get_text(url).splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric(samples: Mapping[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def histogram_quantile(
    q: float, before: Mapping[Any, float], after: Mapping[Any, float], name: str, **labels: str
) -> float | None:
    """Prometheus' histogram_quantile over the increase between two scrapes."""
    buckets = []
    for (n, ls), value in after.items():
        if n != f"{name}_bucket" or not set(labels.items()) <= ls:
            continue
        le = dict(ls)["le"]
        bound = math.inf if le == "+Inf" else float(le)
        buckets.append((bound, value - before.get((n, ls), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def histogram_mean(
    before: Mapping[Any, float], after: Mapping[Any, float], name: str, endpoint: str
) -> float | None:
    """Mean of the observations between two scrapes (its _sum over its _count), in ms."""
    count = metric(after, f"{name}_count", endpoint=endpoint)
    count -= metric(before, f"{name}_count", endpoint=endpoint)
    total = metric(after, f"{name}_sum", endpoint=endpoint)
    total -= metric(before, f"{name}_sum", endpoint=endpoint)
    return round(total / count * 1000, 3) if count else None


# --- server time in-process ----------------------------------------------------------------


def server_time(config_path: Path, body: bytes, samples: int) -> dict[str, float]:
    """admit + encode of one body, in this process, the cache warm: p50 and p99 in ms."""
    from webhook import config, review
    from webhook.admission import Admitter
    from webhook.probes import ProbeResult, Reason, Visibility
    from webhook.visibility import VisibilityResolver

    settings = config.load(str(config_path))

    async def private(domain: str, path: str, reference: str) -> ProbeResult:
        return ProbeResult(Visibility.PRIVATE, Reason.AUTH_REQUIRED)

    async def run() -> list[float]:
        resolver = VisibilityResolver(settings.visibility, private, 32)
        admitter = Admitter(settings, resolver=resolver)
        await admitter.admit(body, "mutate")  # fills the cache
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            review.encode((await admitter.admit(body, "mutate")).answer)
            times.append((time.perf_counter() - started) * 1000)
        await resolver.close()
        return times

    times = sorted(asyncio.run(run()))
    return {
        "p50_ms": round(times[len(times) // 2], 3),
        "p99_ms": round(times[int(len(times) * 0.99)], 3),
        "samples": samples,
    }


# --- cold -------------------------------------------------------------------------------------


def cold(
    scenario: Scenario,
    webhook: Process,
    floor: Process,
    regs: Registries,
    bodies_file: Path,
    profile: Profile,
) -> dict[str, Any]:
    """Every repository new to the webhook, many admissions asking for each at once."""
    before = scrape(webhook.extra["metrics_url"])
    seen_before = len(regs.private.requests())
    pair = Pair(scenario.name, scenario.connections[0])
    webhook.reset_peak()
    url = f"{webhook.base_url}/mutate"
    result = wrk(url, bodies_file, connections=pair.connections, seconds=profile.cold_seconds)
    if result.error_count:
        raise BenchError(f"cold: errors {result.errors}\n{webhook.log_tail()}")
    pair.webhook.append(result)
    pair.webhook_peak_rss_mib = webhook.rss_mib()[1]
    log(f"cold webhook: {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms")
    floor.reset_peak()
    floor_url = f"{floor.base_url}{scenario.path}"
    pair.floor.append(
        wrk(floor_url, bodies_file, connections=pair.connections, seconds=profile.cold_seconds)
    )
    pair.floor_peak_rss_mib = floor.rss_mib()[1]
    time.sleep(0.5)  # the registry writes its access log line after answering
    after = scrape(webhook.extra["metrics_url"])
    per_repository: collections.Counter[str] = collections.Counter()
    for entry in regs.private.requests()[seen_before:]:
        match = re.match(r"^/v2/(cold/r\d+)/manifests/", entry.uri)
        if match:
            per_repository[match[1]] += 1
    n = profile.cold_repositories
    counts = collections.Counter(per_repository.values())
    misses = metric(after, "image_proxy_webhook_visibility_cache_lookups_total", result="miss")
    misses -= metric(before, "image_proxy_webhook_visibility_cache_lookups_total", result="miss")
    probes = metric(after, "image_proxy_webhook_registry_probes_total")
    probes -= metric(before, "image_proxy_webhook_registry_probes_total")
    hits = metric(after, "image_proxy_webhook_visibility_cache_lookups_total", result="hit")
    hits -= metric(before, "image_proxy_webhook_visibility_cache_lookups_total", result="hit")
    return {
        **pair.summary(),
        "repositories": n,
        "admissions": result.requests,
        "registry_manifest_requests": sum(per_repository.values()),
        "repositories_asked": len(per_repository),
        "requests_per_repository": {str(k): v for k, v in sorted(counts.items())},
        "exactly_one_each": len(per_repository) == n and set(counts) == {1},
        "webhook_cache_misses": int(misses),
        "webhook_misses_joining_a_probe": int(misses - probes),
        "webhook_probes": int(probes),
        "webhook_cache_hits": int(hits),
    }


# --- cache fill -----------------------------------------------------------------------------


def cache_fill(profile: Profile) -> dict[str, Any]:
    """RSS with ``fill_entries`` distinct repositories: bounded cache vs one that holds all."""
    entries = profile.fill_entries
    checkpoints = ",".join(str(entries * k // 10) for k in (1, 2, 5))
    runs = {}
    for size in (profile.fill_cache_size, entries):
        argv = [sys.executable, "-m", "bench.cachefill", "--cache-size", str(size)]
        argv += ["--entries", str(entries), "--checkpoints", checkpoints]
        log(f"cache fill: {entries} repositories, cacheSize {size}")
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=ROOT, check=False, timeout=600
        )
        if done.returncode:
            raise BenchError(f"cachefill failed:\n{done.stderr}")
        runs[str(size)] = json.loads(done.stdout.strip().splitlines()[-1])
    bounded = runs[str(profile.fill_cache_size)]
    points = bounded["points"]
    at_size = next(p for p in points if p["repositories"] >= profile.fill_cache_size)
    return {
        "entries": entries,
        "cache_size": profile.fill_cache_size,
        "runs": runs,
        "cache_entries_at_end": points[-1]["cache_entries"],
        "rss_at_cache_size_mib": at_size["rss_mib"],
        "rss_at_end_mib": points[-1]["rss_mib"],
        "unbounded_rss_at_end_mib": runs[str(entries)]["points"][-1]["rss_mib"],
        "bounded": points[-1]["cache_entries"] <= profile.fill_cache_size,
    }
