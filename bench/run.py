"""The benchmark: the webhook against a bare aiohttp TLS floor, in one run.

    python -m bench.run            # full run (about 6 minutes on 2 cores)
    python -m bench.run --quick    # CI-sized (about 1 minute)

Starts two real registries on loopback (CNCF distribution: one anonymous, one
behind htpasswd), the webhook as a subprocess (the CLI, a fixed config, JSON
logs) and the floor (:mod:`bench.floor`: the same aiohttp/TLS stack answering a
constant AdmissionReview), then drives both with wrk over keep-alive TLS. Every
figure is compared with the floor's in the same run, floor and webhook taking
turns, so a busy machine moves both. See bench/README.md for what each figure
means. Figures go to bench/results/latest.json (``--out``) and a table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    BenchError,
    Process,
    WrkResult,
    default_loop,
    free_port,
    get_text,
    post,
    start_floor,
    start_webhook,
    write_bodies,
    wrk,
    wrk_binary,
)

RESULTS = ROOT / "bench" / "results" / "latest.json"
HOST = "127.0.0.1"
PUSH_USERS = {"pusher": "push-secret"}

# Targets (DESIGN/issue 6): ratios to the floor from the same run.
TARGET_THROUGHPUT_RATIO = 0.8  # warm 3-container Pod, 16 connections
TARGET_P99_RATIO = 1.5
TARGET_SERVER_MS = 5.0  # 100-container Pod, p50
TARGET_CONNECTIONS = 16


@dataclass(frozen=True)
class Profile:
    seconds: float  # one measured wrk run
    warmup: float  # one unmeasured wrk run before a scenario's rounds
    rounds: int  # floor and webhook take turns this many times
    cold_repositories: int
    cold_seconds: float
    fill_entries: int
    fill_cache_size: int
    server_time_samples: int


FULL = Profile(10, 2, 3, 1000, 8, 100_000, 10_000, 2000)
QUICK = Profile(2, 1, 1, 1000, 4, 20_000, 2_000, 300)


# --- objects ---------------------------------------------------------------------------


def review_body(uid: str, name: str, images: Sequence[str]) -> bytes:
    """An AdmissionReview for a Pod CREATE, as the API server sends it (compact JSON)."""
    containers = [
        {
            "name": f"c{i}",
            "image": image,
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
        for i, image in enumerate(images)
    ]
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name,
            "namespace": "bench",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "bench",
                    "labels": {"app": "bench", "pod-template-hash": "5d4f8c7b9"},
                },
                "spec": {
                    "containers": containers,
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                    "enableServiceLinks": True,
                },
                "status": {},
            },
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    return json.dumps(review, separators=(",", ":")).encode()


# --- registries ---------------------------------------------------------------------------


def _repositories_dir(registry: Any) -> Path:
    return Path(registry.directory) / "storage" / "docker" / "registry" / "v2" / "repositories"


def populate(registry: Any, images: Sequence[tuple[str, str]]) -> None:
    """Push one image, then give every (repository, tag) wanted the same manifest.

    The registry stores a repository as links to global blobs; copying those
    links is what a cross-repository mount plus a manifest push would write,
    in milliseconds instead of a dozen HTTP requests per repository.
    """
    seed, seed_tag = "bench/seed", "v1"
    registry.push_image(seed, seed_tag)
    source = _repositories_dir(registry) / seed
    for name, tag in images:
        target = _repositories_dir(registry) / name
        if not target.exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("_uploads"))
        tag_dir = target / "_manifests" / "tags" / tag
        if not tag_dir.exists():
            shutil.copytree(source / "_manifests" / "tags" / seed_tag, tag_dir)
    # The registry itself must agree: the last one answers as a pushed image would.
    name, tag = images[-1]
    status, _, _ = registry.http(
        "HEAD",
        f"/v2/{name}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    if status != 200:
        raise BenchError(f"populated image {name}:{tag} answers {status}")


@dataclass
class Registries:
    public: Any
    private: Any

    def stop(self) -> None:
        self.public.stop()
        self.private.stop()


def start_registries(directory: Path) -> Registries:
    from tests.integration import registries

    if registries.registry_binary() is None:
        raise BenchError("docker-registry is not installed: apt-get install -y docker-registry")
    public = registries.Registry(directory / "public").start()
    try:
        private = registries.Registry(
            directory / "private", auth="htpasswd", users=dict(PUSH_USERS)
        ).start()
    except Exception:
        public.stop()
        raise
    return Registries(public, private)


# --- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    path: str  # the floor's path for this scenario's constant answer
    bodies: list[bytes]
    connections: tuple[int, ...]
    expect_rewrites: int | None = None


def build_scenarios(regs: Registries, profile: Profile) -> dict[str, Scenario]:
    pub, priv = regs.public.domain, regs.private.domain
    warm3 = [f"{priv}/team/api:v1.0.1", f"{priv}/team/worker:v1.0.1", f"{pub}/library/nginx:1.25"]
    warm100 = [
        f"{priv}/big/p{i:02d}:v1" if i % 3 != 2 else f"{pub}/big/q{i // 3:02d}:v1"
        for i in range(100)
    ]
    n = profile.cold_repositories
    cold_bodies = [
        review_body(
            f"cold-{j:04d}",
            f"cold-{j:04d}",
            [f"{priv}/cold/r{(j + m) % n:04d}:v1" for m in range(10)],
        )
        for j in range(n)
    ]
    return {
        "warm-3": Scenario(
            "warm-3",
            "/warm-3",
            [review_body("bench-warm-3", "web-0", warm3)],
            (1, 16, 64),
            2,
        ),
        "warm-100": Scenario(
            "warm-100",
            "/warm-100",
            [review_body("bench-warm-100", "big-0", warm100)],
            (16,),
            sum(1 for i in range(100) if i % 3 != 2),
        ),
        "cold-1000": Scenario("cold-1000", "/cold-1000", cold_bodies, (64,)),
    }


def images_of(
    scenarios: Mapping[str, Scenario], regs: Registries
) -> dict[str, list[tuple[str, str]]]:
    """(repository, tag) of every image the scenarios' Pods name, by registry domain."""
    found: dict[str, set[tuple[str, str]]] = {regs.public.domain: set(), regs.private.domain: set()}
    for scenario in scenarios.values():
        for body in scenario.bodies:
            for container in json.loads(body)["request"]["object"]["spec"]["containers"]:
                domain, _, rest = container["image"].partition("/")
                path, _, tag = rest.rpartition(":")
                found[domain].add((path, tag))
    return {domain: sorted(images) for domain, images in found.items()}


def write_config(directory: Path, regs: Registries, port: int, health: int, cert: Any) -> Path:
    settings = {
        "appSlug": "bench",
        "licenseID": "bench-license-id",
        "namespaces": ["bench"],
        "visibility": {"cacheSize": 10000},
        "probe": {
            "insecureRegistries": [regs.public.domain, regs.private.domain],
            "allowPrivateNetworks": True,
            "timeoutSeconds": 5,
        },
        "server": {
            "host": HOST,
            "port": port,
            "healthPort": health,
            "certFile": str(cert.cert_file),
            "keyFile": str(cert.key_file),
        },
    }
    path = directory / "config.yaml"
    path.write_text(json.dumps(settings, indent=2) + "\n")  # JSON is YAML
    return path


def expected_answer(config_path: Path, body: bytes, public_hosts: set[str]) -> dict[str, Any]:
    """The answer computed in this process by the same core, visibility by registry."""
    from webhook import config, review
    from webhook.admission import Admitter
    from webhook.config import Visibility

    class ByHost:
        async def resolve_all(
            self, wanted: Mapping[tuple[str, str], Any], timeout: float
        ) -> dict[tuple[str, str], Visibility]:
            return {
                key: Visibility.PUBLIC if key[0] in public_hosts else Visibility.PRIVATE
                for key in wanted
            }

    settings = config.load(str(config_path))
    outcome = asyncio.run(Admitter(settings, resolver=ByHost()).admit(body, "mutate"))
    answer: dict[str, Any] = json.loads(review.encode(outcome.answer))
    return answer


# --- measuring -----------------------------------------------------------------------------


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


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def measure(
    scenario: Scenario,
    connections: int,
    webhook: Process,
    floor: Process,
    bodies_file: Path,
    profile: Profile,
) -> Pair:
    pair = Pair(scenario.name, connections)
    targets = (
        (floor, f"{floor.base_url}{scenario.path}", pair.floor, pair.floor_cpu_us),
        (webhook, f"{webhook.base_url}/mutate", pair.webhook, pair.webhook_cpu_us),
    )
    for process, url, _, _ in targets:
        process.reset_peak()
        if profile.warmup:
            wrk(url, bodies_file, connections=connections, seconds=profile.warmup)
    for round_ in range(profile.rounds):
        # alternate who goes first, so a trend in the machine's load hits both alike
        order = targets if round_ % 2 == 0 else targets[::-1]
        for process, url, runs, cpu in order:
            cpu_before = process.cpu_seconds()
            result = wrk(url, bodies_file, connections=connections, seconds=profile.seconds)
            if result.requests:
                cpu.append((process.cpu_seconds() - cpu_before) / result.requests * 1e6)
            if result.error_count:
                raise BenchError(
                    f"{process.name} {scenario.name} c={connections}: errors {result.errors}\n"
                    f"{process.log_tail()}"
                )
            runs.append(result)
            log(
                f"{scenario.name} c={connections} {process.name}: {result.rps:.0f} req/s, "
                f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"{cpu[-1] if cpu else 0:.0f} CPU us/request"
            )
    pair.floor_peak_rss_mib = floor.rss_mib()[1]
    pair.webhook_peak_rss_mib = webhook.rss_mib()[1]
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
    from webhook.config import Visibility
    from webhook.registry import ProbeResult
    from webhook.visibility import VisibilityResolver

    settings = config.load(str(config_path))

    async def private(domain: str, path: str, reference: str) -> ProbeResult:
        return ProbeResult(Visibility.PRIVATE, "auth-required")

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


# --- report ----------------------------------------------------------------------------------


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
    if not fill:
        return checks
    checks.append(
        {
            "target": f"RSS bounded by visibility.cacheSize ({fill['cache_size']}) "
            f"with {fill['entries']} repositories",
            "value": f"{fill['rss_at_cache_size_mib']} -> {fill['rss_at_end_mib']} MiB",
            "met": fill["bounded"],
        }
    )
    return checks


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
                f"{w['rps']:.0f}",
                f"{f['rps']:.0f}",
                f"{r['throughput_ratio']:.2f}",
                f"{w['p50_ms']:.2f}",
                f"{f['p50_ms']:.2f}",
                f"{w['p99_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f"{r['p99_ratio']:.2f}",
                _number(w["cpu_us_per_request"]),
                _number(f["cpu_us_per_request"]),
                f"{w['peak_rss_mib']:.1f}",
                f"{f['peak_rss_mib']:.1f}",
            ]
        )
    out.append(_table(rows))
    out.append("")
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
    out += ["", "targets:"]
    for check in results["targets"]:
        out.append(f"  [{'met' if check['met'] else 'MISSED'}] {check['target']}: {check['value']}")
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------


PARTS = ("warm-3", "warm-100", "cold", "cache-fill")


@dataclass
class Run:
    profile: Profile
    profile_name: str
    out: Path
    loop: str
    workdir: Path
    parts: tuple[str, ...] = PARTS


def run(options: Run) -> dict[str, Any]:
    from webhook import tls

    profile = options.profile
    work = options.workdir
    results: dict[str, Any] = {
        "machine": machine(),
        "libraries": libraries(),
        "profile": {
            "name": options.profile_name,
            "seconds": profile.seconds,
            "rounds": profile.rounds,
            "warmup_seconds": profile.warmup,
            "loop": options.loop,
            "parts": list(options.parts),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(),
    }
    with ExitStack() as stack:
        log("starting registries")
        regs = start_registries(work / "registries")
        stack.callback(regs.stop)
        scenarios = build_scenarios(regs, profile)
        wanted = images_of(scenarios, regs)
        populate(regs.public, wanted[regs.public.domain])
        populate(regs.private, wanted[regs.private.domain])
        certs = tls.generate(work / "tls", tls.DEV_NAMES)
        port, health = free_port(HOST), free_port(HOST)
        config_path = write_config(work, regs, port, health, certs)
        results["config"] = json.loads(config_path.read_text())

        bodies = {
            name: write_bodies(work / f"{name}.jsonl", s.bodies) for name, s in scenarios.items()
        }
        public_hosts = {regs.public.domain}
        responses = {
            s.path: expected_answer(config_path, s.bodies[0], public_hosts)
            for s in scenarios.values()
        }
        responses_file = work / "floor-responses.json"
        responses_file.write_text(json.dumps(responses))

        log("starting the webhook and the floor")
        webhook = start_webhook(
            config_path, HOST, port, health, work / "webhook.log", loop=options.loop
        )
        stack.callback(webhook.stop)
        floor = start_floor(
            HOST,
            free_port(HOST),
            certs.cert_file,
            certs.key_file,
            responses_file,
            work / "floor.log",
            loop=options.loop,
        )
        stack.callback(floor.stop)
        results["idle_rss_mib"] = {
            "webhook": round(webhook.rss_mib()[0], 1),
            "floor": round(floor.rss_mib()[0], 1),
        }

        # Warm the cache, and check the webhook answers what the core decides.
        for name in ("warm-3", "warm-100"):
            s = scenarios[name]
            status, answer = post(f"{webhook.base_url}/mutate", s.bodies[0])
            if status != 200 or answer != responses[s.path]:
                raise BenchError(f"{name}: the webhook answered {status} {answer}")
            rewrites = len(json.loads(_b64(answer["response"].get("patch", "")) or "[]"))
            # image rewrites plus the pull secret and the annotation (a registry named
            # with a port cannot be proxied: then nothing is rewritten)
            portless = regs.private.port in (80, 443)
            if s.expect_rewrites is not None and portless and rewrites != s.expect_rewrites + 2:
                raise BenchError(f"{name}: {rewrites} patch operations, {answer}")

        results["warm"] = []
        for name in ("warm-3", "warm-100"):
            if name not in options.parts:
                continue
            s = scenarios[name]
            for connections in s.connections:
                before = scrape(webhook.extra["metrics_url"])
                pair = measure(s, connections, webhook, floor, bodies[name], profile)
                after = scrape(webhook.extra["metrics_url"])
                summary = pair.summary()
                p50 = histogram_quantile(
                    0.5,
                    before,
                    after,
                    "image_proxy_webhook_admission_duration_seconds",
                    endpoint="mutate",
                )
                summary["metrics_histogram_p50_ms"] = None if p50 is None else round(p50 * 1000, 3)
                summary["metrics_histogram_mean_ms"] = histogram_mean(
                    before, after, "image_proxy_webhook_admission_duration_seconds", "mutate"
                )
                results["warm"].append(summary)

        if "warm-100" in options.parts:
            log("100-container Pod: server time in-process")
            warm100 = next(r for r in results["warm"] if r["scenario"] == "warm-100")
            results["server_time_100"] = {
                "in_process": server_time(
                    config_path, scenarios["warm-100"].bodies[0], profile.server_time_samples
                ),
                "metrics_histogram_p50_ms": warm100["metrics_histogram_p50_ms"],
            }

        if "cold" in options.parts:
            log(f"cold: {profile.cold_repositories} repositories")
            results["cold"] = cold(
                scenarios["cold-1000"], webhook, floor, regs, bodies["cold-1000"], profile
            )
        results["webhook_log_lines"] = _count_lines(webhook.log_file)

    if "cache-fill" in options.parts:
        results["cache_fill"] = cache_fill(profile)
    results["targets"] = targets(results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def _commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    return done.stdout.strip()


def _b64(text: str) -> str:
    import base64

    return base64.b64decode(text).decode() if text else ""


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized: short runs, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default=default_loop(),
        help="event loop of both servers (default: the webhook's own choice, "
        f"{default_loop()} here)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    parser.add_argument("--rounds", type=int, help="override the profile's rounds")
    parser.add_argument("--seconds", type=int, help="override the profile's seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if wrk_binary() is None:
        print("error: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    parts = tuple(p for p in args.only.split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile = replace(profile, rounds=args.rounds)
    if args.seconds:
        profile = replace(profile, seconds=args.seconds)
    work = Path(tempfile.mkdtemp(prefix="image-proxy-webhook-bench-"))
    name = "quick" if args.quick else "full"
    options = Run(profile, name, args.out, args.loop, work, parts)
    try:
        results = run(options)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"work directory kept: {work}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nfigures: {args.out}")
    return 0 if all(c["met"] for c in results["targets"]) else 3


if __name__ == "__main__":
    sys.exit(main())
