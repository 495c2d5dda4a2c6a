"""What the benchmark runs: its profiles, the Pods it admits, the registries behind them.

- :class:`Profile`: run lengths and sizes (:data:`FULL`, :data:`QUICK`).
- :func:`review_body`: an AdmissionReview for a Pod CREATE, as the API server sends it.
- :func:`start_registries` and :func:`populate`: two real registries on loopback, one
  anonymous and one behind htpasswd, holding every image the scenarios name.
- :func:`build_scenarios`: the Pods of warm-3, warm-100 and cold-1000.
- :func:`write_config` and :func:`expected_answer`: the webhook's config, and the answer
  the same core computes in-process (the benchmark never measures errors).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import BenchError

HOST = "127.0.0.1"
NAMESPACE = "bench"  # the webhook covers it; the Pods are created in it
PUSH_USERS = {"pusher": "push-secret"}


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
        "namespaces": [NAMESPACE],
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
    from webhook.probes import Visibility

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
