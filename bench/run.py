"""The benchmark: the webhook against a bare aiohttp TLS floor, in one run.

    python -m bench.run            # full run (about 10 minutes on 2 cores)
    python -m bench.run --quick    # CI-sized (about 2 minutes)

Starts two real registries on loopback (CNCF distribution: one anonymous, one
behind htpasswd), the webhook as a subprocess (the CLI, a fixed config, JSON
logs) and the floor (:mod:`bench.floor`: the same aiohttp/TLS stack answering a
constant AdmissionReview), then drives both with wrk over keep-alive TLS. Every
figure is compared with the floor's in the same run, floor and webhook taking
turns, so a busy machine moves both. The end-to-end part (:mod:`bench.e2e`)
sends dry-run Pod creates through a real kube-apiserver to the webhook and to an
echo floor in turns. See bench/README.md for what each figure means. Figures go
to bench/results/latest.json (``--out``) and a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.e2e import run_e2e
from bench.harness import (
    ROOT,
    BenchError,
    default_loop,
    log,
    post,
    start_floor,
    start_webhook,
    write_bodies,
    wrk_binary,
)
from bench.measure import (
    cache_fill,
    cold,
    histogram_mean,
    histogram_quantile,
    measure,
    scrape,
    server_time,
)
from bench.report import libraries, machine, render, targets
from bench.scenarios import (
    FULL,
    HOST,
    NAMESPACE,
    QUICK,
    Profile,
    build_scenarios,
    expected_answer,
    images_of,
    populate,
    start_registries,
    write_config,
)
from tests.support import free_port

RESULTS = ROOT / "bench" / "results" / "latest.json"


PARTS = ("warm-3", "warm-100", "cold", "e2e", "cache-fill")


@dataclass
class Run:
    profile: Profile
    profile_name: str
    out: Path
    loop: str
    workdir: Path
    parts: tuple[str, ...] = PARTS


def run(options: Run) -> dict[str, Any]:
    from webhook import pki

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
        certs = pki.generate(work / "tls", pki.DEV_NAMES)
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
        if "e2e" in options.parts:
            log("e2e: dry-run Pod creates through kube-apiserver")
            results["e2e"] = run_e2e(
                webhook,
                NAMESPACE,
                scenarios["warm-3"].bodies[0],
                responses["/warm-3"],
                certs,
                work,
                profile,
                loop=options.loop,
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
