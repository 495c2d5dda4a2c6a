"""Property-based fuzzing of /mutate and /validate through the real aiohttp app.

Inputs: schema-valid Pods and workloads with random shapes and image strings;
AdmissionReviews with missing, null and wrongly typed fields; arbitrary JSON
where objects, specs, container lists and images should be; unicode; huge and
deeply nested bodies.

Properties, for every input:
- the answer is HTTP 200 with a well-formed AdmissionReview for the same uid, or a
  4xx with a JSON ``error`` (400 not a review, 413 too large); never a 5xx, and no
  exception reaches the handler's unexpected-error path (its log is watched);
- the admission is answered within the admission deadline (the parser must stay
  linear on hostile image strings);
- the returned patch applies with ``jsonpatch`` to the request object;
- when the input is a valid Kubernetes object, so is the result (Kubernetes 1.30
  schemas, strict), and every image the webhook wrote parses;
- mutating the result again yields no patch (idempotence), and /validate refuses
  the fixed point only for things /mutate warned about or denied.

Every failure hypothesis found is pinned below as an ``@example`` (and, for the
bugs it found in webhook/, as a regression test in tests/regressions/).

``FUZZ_EXAMPLES`` scales the number of examples (default 100 per test; try 2000).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import string
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jsonpatch
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support import require
from webhook import config
from webhook.admission import Admitter
from webhook.images import ImageRef, InvalidImageError, parse
from webhook.policy import Repository
from webhook.probes import Visibility
from webhook.server import MAX_BODY_BYTES, webhook_app

kubernetes_validate = require("kubernetes_validate", "kubernetes-validate")

KUBE_VERSION = "1.30.0"
DEADLINE = 2.0  # server.admissionDeadlineSeconds of every fuzzed server
SLACK = 3.0  # a shared 2-core CI machine; a backtracking parser would take minutes
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
SECRET = "my-app-registry"

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # wall-clock per example is not the property; the admission deadline is
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
    print_blob=True,
)


# --- the servers under test ------------------------------------------------------------


class HashResolver:
    """Visibility decided by a hash of the repository: stable across requests."""

    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        answers: dict[Repository, Visibility] = {}
        for key in wanted:
            digest = hashlib.sha256("/".join(key).encode()).digest()[0] % 4
            if digest == 3:
                continue  # not known: onProbeFailure decides
            answers[key] = (Visibility.PUBLIC, Visibility.PRIVATE, Visibility.PRIVATE)[digest]
        return answers


class FlakySecrets:
    """The pull-secret manager: fails in namespaces whose name hashes odd."""

    async def ensure(self, namespace: str, timeout: float) -> str | None:
        if hashlib.sha256(namespace.encode()).digest()[0] % 2:
            return f"pull secret {SECRET!r} could not be written in {namespace}: fake failure"
        return None

    async def close(self) -> None:
        pass


def _settings(**extra: Any) -> config.Settings:
    base: dict[str, Any] = {
        "appSlug": "my-app",
        "licenseID": "fuzz-license",
        "namespaces": ["my-app", "other"],
        "server": {"admissionDeadlineSeconds": DEADLINE},
    }
    base.update(extra)
    return config.parse(base)


VARIANTS: dict[str, config.Settings] = {
    "proxy": _settings(
        visibility={"overrides": [{"match": "quay.io/my-org/*", "visibility": "private"}]}
    ),
    "direct": _settings(visibility={"onProbeFailure": "direct"}),
    "deny": _settings(visibility={"onProbeFailure": "deny"}, namespaces=["*"]),
    "workloads": _settings(mutateWorkloads=True, registryDomain="images.example.com"),
    "airgap": _settings(
        licenseID="",
        mode="airgap",
        airgap={"registry": "registry.local:5000", "namespace": "my-app", "username": "u"},
        mutateWorkloads=True,
    ),
}


class ErrorLog(logging.Handler):
    """Records what reaches the handler's unexpected-error path (logged at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Answer:
    status: int
    body: Any
    seconds: float


class Servers:
    """One real webhook app per settings variant, on an event loop of this thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: dict[str, TestServer] = {}
        self.errors = ErrorLog()
        self.session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        async def start() -> None:
            for name, variant in VARIANTS.items():
                admitter = Admitter(variant, resolver=HashResolver(), secrets=FlakySecrets())
                server = TestServer(webhook_app(admitter), host="127.0.0.1")
                await server.start_server()
                self.servers[name] = server
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

        self.loop.run_until_complete(start())
        logging.getLogger("webhook").addHandler(self.errors)

    def stop(self) -> None:
        logging.getLogger("webhook").removeHandler(self.errors)

        async def stop() -> None:
            if self.session is not None:
                await self.session.close()
            for server in self.servers.values():
                await server.close()

        self.loop.run_until_complete(stop())
        self.loop.close()

    def post(self, variant: str, endpoint: str, body: bytes) -> Answer:
        server = self.servers[variant]
        url = f"http://127.0.0.1:{server.port}/{endpoint}"

        async def post() -> Answer:
            assert self.session is not None
            started = time.perf_counter()
            async with self.session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                text = await response.read()
                elapsed = time.perf_counter() - started
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = text
                return Answer(response.status, parsed, elapsed)

        return self.loop.run_until_complete(post())


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    s.start()
    try:
        yield s
    finally:
        s.stop()


# --- checking one answer --------------------------------------------------------------


def decoded_patch(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(ops, list) and ops, "an empty patch must be left out"
    return ops


RESPONSE_KEYS = {"uid", "allowed", "patchType", "patch", "warnings", "auditAnnotations", "status"}


def check_answer(servers: Servers, answer: Answer, uid: Any) -> dict[str, Any] | None:
    """The universal properties; the AdmissionResponse when the answer is one."""
    errors = [r.getMessage() for r in servers.errors.records]
    servers.errors.records.clear()
    assert not errors, f"the unexpected-error path was taken: {errors}"
    assert answer.seconds < DEADLINE + SLACK, f"answered in {answer.seconds:.2f}s"
    assert answer.status < 500, f"HTTP {answer.status}: {answer.body!r}"
    if answer.status != 200:
        assert answer.status in (400, 413), answer.status
        assert isinstance(answer.body, dict) and isinstance(answer.body.get("error"), str)
        return None
    review = answer.body
    assert isinstance(review, dict)
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    assert set(response) <= RESPONSE_KEYS
    for warning in response.get("warnings", []):
        assert isinstance(warning, str)
    if not response["allowed"]:
        assert "patch" not in response
        assert response["status"]["code"] == 403 and response["status"]["message"]
    if "auditAnnotations" in response:
        assert all(isinstance(v, str) for v in response["auditAnnotations"].values())
    return dict(response)


def request_body(
    obj: Any,
    *,
    kind: Any = "Pod",
    operation: Any = "CREATE",
    namespace: Any = "my-app",
    subresource: Any = None,
    dry_run: Any = False,
    group: str = "",
    uid: Any = None,
) -> tuple[dict[str, Any], Any]:
    uid = str(uuid.uuid4()) if uid is None else uid
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": group, "version": "v1", "kind": kind},
        "operation": operation,
        "namespace": namespace,
        "object": obj,
        "dryRun": dry_run,
    }
    if subresource is not None:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}, uid


def applied(body: bytes, response: Mapping[str, Any]) -> Any:
    """The request object after the patch (a fresh copy of it from the request body)."""
    obj = json.loads(body)["request"]["object"]
    ops = decoded_patch(response)
    if not ops:
        return obj
    return jsonpatch.apply_patch(obj, ops, in_place=True)


def schema_valid(obj: Any) -> bool:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return False
    return True


def assert_schema_valid(obj: Any) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in getattr(exc, "path", ()))
        message = getattr(exc, "message", str(exc)[:300])
        raise AssertionError(
            f"result is not a valid {obj.get('kind')}: {where}: {message}"
        ) from None


def roundtrip(
    servers: Servers, variant: str, obj: Any, **request: Any
) -> tuple[dict[str, Any] | None, Any]:
    """Mutate, check, apply, re-mutate (idempotence), validate the fixed point."""
    review, uid = request_body(obj, **request)
    body = json.dumps(review).encode()
    response = check_answer(servers, servers.post(variant, "mutate", body), uid)
    validation = check_answer(servers, servers.post(variant, "validate", body), uid)
    if response is None:
        assert validation is None
        return None, None
    assert validation is not None
    result = applied(body, response)
    if not response["allowed"]:
        return response, result
    # Idempotence: the webhook on its own output changes nothing.
    again, uid2 = request_body(result, **request)
    again_body = json.dumps(again).encode()
    second = check_answer(servers, servers.post(variant, "mutate", again_body), uid2)
    assert second is not None
    assert "patch" not in second, f"second pass patched: {decoded_patch(second)}"
    # The policy refuses a fixed point only for what /mutate said something about.
    verdict = check_answer(servers, servers.post(variant, "validate", again_body), uid2)
    assert verdict is not None
    if not verdict["allowed"]:
        assert second.get("warnings") or not second["allowed"], verdict["status"]
    return response, result


def images_in(obj: Any) -> list[str]:
    """Every image string under container lists, wherever the pod spec is."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(
                    value, list
                ):
                    for container in value:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            found.append(container["image"])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(obj)
    return found


def assert_written_images_parse(before: Any, after: Any) -> None:
    for old, new in zip(images_in(before), images_in(after), strict=True):
        if old != new:
            try:
                parse(new)
            except InvalidImageError as exc:
                raise AssertionError(f"{old!r} was rewritten to an invalid {new!r}") from exc


# --- strategies -------------------------------------------------------------------------

LOWER = string.ascii_lowercase + string.digits
component = st.from_regex(r"\A[a-z0-9]{1,12}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,8}){0,2}\Z")
long_component = st.integers(100, 260).map(lambda n: "a" * n)
path = st.lists(st.one_of(component, long_component), min_size=1, max_size=4).map("/".join)
domains = st.sampled_from(
    [
        "",
        "docker.io/",
        "index.docker.io/",
        "registry-1.docker.io/",
        "gcr.io/",
        "quay.io/",
        "quay.io/my-org/",
        "ghcr.io/",
        "localhost/",
        "localhost:5000/",
        "registry.example.com:5000/",
        "127.0.0.1/",
        "[::1]/",
        "[2001:db8::1]:5000/",
        "REGISTRY.Example.COM/",
        "proxy.replicated.com/",
        "proxy.replicated.com/proxy/my-app/quay.io/",
        "registry.replicated.com/",
        "images.example.com/",
        "registry.local:5000/",
    ]
)
tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
digest = st.sampled_from(["sha256", "sha512", "sha384"]).flatmap(
    lambda algo: st.text("0123456789abcdef", min_size=64, max_size=128).map(
        lambda hexes: f"@{algo}:{hexes[: {'sha256': 64, 'sha384': 96}.get(algo, 128)]}"
    )
)
suffix = st.tuples(
    st.one_of(st.just(""), tag.map(lambda t: ":" + t)), st.one_of(st.just(""), digest)
)
reference_like = st.builds(lambda d, p, s: d + p + s[0] + s[1], domains, path, suffix)
# Strings near the grammar: its characters, in random order, and its ReDoS shapes.
grammar_noise = st.text(LOWER + "ABCXYZ/:@._-[]", min_size=0, max_size=80)
redos = st.builds(
    lambda n, tail: "a" * n + tail,
    st.integers(1_000, 50_000),
    st.sampled_from(["A", "-A", "_-_A", ":", "@sha256:", "/" + "a-" * 50 + "A", "!"]),
)
images = st.one_of(
    reference_like,
    reference_like,
    reference_like,
    grammar_noise,
    st.text(max_size=40),  # any unicode, surrogates excluded by JSON anyway
    redos,
)

dns_label = st.from_regex(r"\A[a-z]([a-z0-9-]{0,10}[a-z0-9])?\Z")
annotation_values = st.one_of(
    st.text(max_size=30),
    st.just('{"c0":"quay.io/my-org/old:v0"}'),
    st.just("not json"),
    st.just("[1,2]"),
)
pod_annotations = st.dictionaries(
    st.one_of(st.just("image-proxy-webhook.io/original-images"), st.text(min_size=1, max_size=20)),
    annotation_values,
    max_size=3,
)


@st.composite
def containers(draw: st.DrawFn, prefix: str, min_size: int, max_size: int) -> list[dict[str, Any]]:
    count = draw(st.integers(min_size, max_size))
    result = []
    for index in range(count):
        container: dict[str, Any] = {"name": f"{prefix}{index}"}
        choice = draw(st.integers(0, 9))
        if choice < 8:
            container["image"] = draw(images)
        elif choice == 8:
            container["image"] = None
        if draw(st.booleans()):
            container["imagePullPolicy"] = draw(st.sampled_from(["Always", "IfNotPresent"]))
        if draw(st.booleans()):
            container["args"] = draw(st.lists(st.text(max_size=10), max_size=3))
        result.append(container)
    return result


@st.composite
def pod_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(containers("c", 1, 4))}
    if draw(st.booleans()):
        spec["initContainers"] = draw(containers("i", 0, 2))
    if draw(st.integers(0, 3)) == 0:
        spec["ephemeralContainers"] = draw(containers("e", 0, 2))
    secrets: object = draw(
        st.one_of(
            st.none(),
            st.just("absent"),
            st.lists(
                st.builds(dict, name=st.one_of(dns_label, st.just(SECRET))), min_size=0, max_size=3
            ),
        )
    )
    if secrets != "absent":
        spec["imagePullSecrets"] = secrets
    if draw(st.booleans()):
        spec["restartPolicy"] = draw(st.sampled_from(["Always", "OnFailure", "Never"]))
    return spec


@st.composite
def metadata(draw: st.DrawFn, namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(dns_label), "namespace": namespace}
    notes = draw(st.one_of(st.just("absent"), st.none(), pod_annotations))
    if notes != "absent":
        meta["annotations"] = notes
    if draw(st.booleans()):
        meta["labels"] = {"app": draw(dns_label)}
    return meta


NAMESPACES = st.sampled_from(["my-app", "other", "elsewhere", "kube-system"])


@st.composite
def kube_objects(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """A schema-valid Pod or workload: (object, its API group, its namespace)."""
    namespace = draw(NAMESPACES)
    spec = draw(pod_specs())
    kind = draw(
        st.sampled_from(
            ["Pod", "Pod", "Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"]
        )
    )
    meta = draw(metadata(namespace))
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}, "", namespace
    template: dict[str, Any] = {"spec": spec}
    if draw(st.booleans()):
        template["metadata"] = draw(metadata(namespace))
        del template["metadata"]["name"], template["metadata"]["namespace"]
    if kind in ("Job", "CronJob"):
        spec.setdefault("restartPolicy", "Never")
        if spec["restartPolicy"] == "Always":
            spec["restartPolicy"] = "Never"
    workload: dict[str, Any] = {"template": template}
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        workload["selector"] = {"matchLabels": {"app": "x"}}
    if kind == "StatefulSet":
        workload["serviceName"] = "x"
    group = "batch" if kind in ("Job", "CronJob") else "apps"
    if kind == "CronJob":
        workload = {"schedule": "*/5 * * * *", "jobTemplate": {"spec": workload}}
    obj = {"apiVersion": f"{group}/v1", "kind": kind, "metadata": meta, "spec": workload}
    return obj, group, namespace


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
any_json = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.slow
@FUZZ
@given(
    case=kube_objects(),
    variant=st.sampled_from(sorted(VARIANTS)),
    operation=st.sampled_from(["CREATE", "CREATE", "UPDATE"]),
    dry_run=st.booleans(),
)
@example(  # IPv6-literal registry: its proxied reference would not parse (bd43ea9)
    case=(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "my-app"},
            "spec": {"containers": [{"name": "c0", "image": "[::1]/a"}]},
        },
        "",
        "my-app",
    ),
    variant="proxy",
    operation="CREATE",
    dry_run=False,
).via("discovered failure")
@example(  # a long private name outgrows 255 characters behind the proxy prefix (bd43ea9)
    case=(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "my-app"},
            "spec": {"containers": [{"name": "c0", "image": "gcr.io/" + "a" * 240}]},
        },
        "",
        "my-app",
    ),
    variant="proxy",
    operation="CREATE",
    dry_run=False,
).via("discovered failure")
@example(  # air gap: a long last segment outgrows 255 characters in the local registry (1a4f8fd)
    case=(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "namespace": "my-app"},
            "spec": {"containers": [{"name": "c0", "image": "b" * 250}]},
        },
        "",
        "my-app",
    ),
    variant="airgap",
    operation="CREATE",
    dry_run=False,
).via("discovered failure")
def test_valid_objects_stay_valid(
    servers: Servers,
    case: tuple[dict[str, Any], str, str],
    variant: str,
    operation: str,
    dry_run: bool,
) -> None:
    obj, group, namespace = case
    assert schema_valid(obj), "the strategy must build valid objects"
    response, result = roundtrip(
        servers,
        variant,
        obj,
        kind=obj["kind"],
        group=group,
        operation=operation,
        namespace=namespace,
        dry_run=dry_run,
    )
    assert response is not None
    assert_schema_valid(result)
    assert_written_images_parse(obj, result)
    if operation == "UPDATE" and obj["kind"] == "Pod":
        # on a Pod UPDATE only images may change: never imagePullSecrets (a workload's
        # template may get it, docs/design.md §1)
        paths = [op["path"] for op in decoded_patch(response)]
        assert not any("imagePullSecrets" in p for p in paths), paths


@FUZZ
@given(image=images, variant=st.sampled_from(sorted(VARIANTS)))
@example(image="[::1]/a", variant="proxy").via("discovered failure")
@example(image="gcr.io/" + "a" * 240, variant="direct").via("discovered failure")
@example(image="b" * 250, variant="airgap").via("discovered failure")
@example(image="a" * 50_000 + "A", variant="proxy").via("docs/design.md §1: ReDoS shape")
def test_any_image_string(servers: Servers, image: str, variant: str) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "my-app"},
        "spec": {"containers": [{"name": "c0", "image": image}]},
    }
    response, result = roundtrip(servers, variant, obj)
    assert response is not None
    assert_schema_valid(result)
    assert_written_images_parse(obj, result)


@FUZZ
@given(
    spec=pod_specs(),
    legacy=st.booleans(),
    variant=st.sampled_from(sorted(VARIANTS)),
    annotations=st.one_of(st.none(), pod_annotations),
)
def test_ephemeral_containers_subresource(
    servers: Servers,
    spec: dict[str, Any],
    legacy: bool,
    variant: str,
    annotations: dict[str, str] | None,
) -> None:
    """pods/ephemeralcontainers, as a Pod (1.22+) or a v1 EphemeralContainers object.

    Only images may change there: never imagePullSecrets, never metadata.
    """
    meta: dict[str, Any] = {"name": "p", "namespace": "my-app"}
    if annotations is not None:
        meta["annotations"] = annotations
    if legacy:
        ephemeral = spec.get("ephemeralContainers") or []
        obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "EphemeralContainers",
            "metadata": meta,
            "ephemeralContainers": ephemeral,
        }
    else:
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    response, result = roundtrip(
        servers,
        variant,
        obj,
        kind=obj["kind"],
        operation="UPDATE",
        subresource="ephemeralcontainers",
    )
    assert response is not None
    for op in decoded_patch(response):
        assert op["op"] == "replace" and op["path"].endswith("/image"), op
    if not legacy:
        assert_schema_valid(result)
    assert_written_images_parse(obj, result)


@st.composite
def broken_reviews(draw: st.DrawFn) -> Any:
    """An AdmissionReview with junk in one or more places (or the whole body junk)."""
    obj: Any = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "my-app"},
        "spec": {"containers": [{"name": "c0", "image": draw(images)}]},
    }
    review, _ = request_body(obj)
    request = review["request"]
    junk = draw(
        st.lists(
            st.sampled_from(
                [
                    "review",
                    "request",
                    "uid",
                    "kind",
                    "operation",
                    "namespace",
                    "subResource",
                    "dryRun",
                    "object",
                    "metadata",
                    "annotations",
                    "spec",
                    "containers",
                    "container",
                    "image",
                    "imagePullSecrets",
                    "delete",
                ]
            ),
            min_size=1,
            max_size=4,
        )
    )
    for place in junk:
        value = draw(any_json)
        spec = obj.get("spec") if isinstance(obj, dict) else None
        if place == "review":
            return {"junk": value} if draw(st.booleans()) else value
        if place == "request":
            review["request"] = value
        elif place in ("uid", "operation", "namespace", "subResource", "dryRun"):
            request[place] = value
        elif place == "kind":
            request["kind"] = draw(st.one_of(any_json, st.builds(dict, kind=any_json)))
        elif place == "object":
            request["object"] = obj = value
        elif place == "metadata" and isinstance(obj, dict):
            obj["metadata"] = value
        elif place == "annotations" and isinstance(obj, dict):
            if isinstance(obj.get("metadata"), dict):
                obj["metadata"]["annotations"] = value
        elif place == "spec" and isinstance(obj, dict):
            obj["spec"] = value
        elif place == "containers" and isinstance(spec, dict):
            spec[draw(st.sampled_from(["containers", "initContainers", "ephemeralContainers"]))] = (
                value
            )
        elif place == "container" and isinstance(spec, dict):
            if isinstance(spec.get("containers"), list):
                spec["containers"].append(value)
        elif place == "image" and isinstance(spec, dict):
            if isinstance(spec.get("containers"), list) and spec["containers"]:
                first = spec["containers"][0]
                if isinstance(first, dict):
                    first["image"] = value
        elif place == "imagePullSecrets" and isinstance(spec, dict):
            spec["imagePullSecrets"] = value
        elif place == "delete":
            target = draw(st.sampled_from(["uid", "kind", "operation", "object", "namespace"]))
            request.pop(target, None)
    return review


@FUZZ
@given(review=broken_reviews(), variant=st.sampled_from(sorted(VARIANTS)))
def test_malformed_reviews(servers: Servers, review: Any, variant: str) -> None:
    body = json.dumps(review).encode()
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    for endpoint in ("mutate", "validate"):
        answer = servers.post(variant, endpoint, body)
        response = check_answer(servers, answer, uid)
        if response is None or "patch" not in response:
            continue
        assert endpoint == "mutate" and isinstance(request, dict)
        obj = applied(body, response)  # the patch applies to whatever object was sent
        again, uid2 = request_body(
            obj,
            kind=request["kind"]["kind"],
            operation=request["operation"],
            namespace=request.get("namespace"),
            subresource=request.get("subResource"),
        )
        second = check_answer(
            servers, servers.post(variant, "mutate", json.dumps(again).encode()), uid2
        )
        assert second is not None and "patch" not in second


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_bytes(servers: Servers, body: bytes) -> None:
    for endpoint in ("mutate", "validate"):
        answer = servers.post("proxy", endpoint, body)
        assert check_answer(servers, answer, object()) is None or answer.status == 200


# --- huge and deep: explicit cases ---------------------------------------------------------


def nested_json(depth: int) -> str:
    """``depth`` levels of alternating lists and objects, as text (json.dumps would recurse)."""
    opening = "".join("[" if level % 2 else '{"n":' for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return opening + '"leaf"' + closing


@pytest.mark.parametrize("depth", [10, 400, 5_000, 100_000])
@pytest.mark.parametrize("where", ["spec", "metadata", "object"])
def test_deeply_nested(servers: Servers, depth: int, where: str) -> None:
    """Below the decoder's recursion limit the Pod is answered; above it, a 400."""
    marker = "__DEEP__"
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "my-app", "deep": marker},
        "spec": {"containers": [{"name": "c0", "image": "quay.io/my-org/app:v1"}], "x": marker},
    }
    review, uid = request_body(marker if where == "object" else obj)
    if where != "metadata":
        del obj["metadata"]["deep"]
    if where != "spec":
        del obj["spec"]["x"]
    body = json.dumps(review).replace(f'"{marker}"', nested_json(depth)).encode()
    for endpoint in ("mutate", "validate"):
        answer = servers.post("proxy", endpoint, body)
        response = check_answer(servers, answer, uid)
        if depth >= 5_000:
            assert answer.status == 400 and "nested too deeply" in answer.body["error"]
            continue
        assert response is not None
        if where == "object":
            assert response == {"uid": uid, "allowed": True}  # not a Pod: left alone
        elif endpoint == "mutate":
            result = applied(body, response)
            assert_written_images_parse(obj, result)
            assert images_in(result) == ["proxy.replicated.com/proxy/my-app/quay.io/my-org/app:v1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("containers", "annotation_bytes", "status"),
    [
        (1_000, 0, 200),  # the most containers accepted: one rewrite each
        (1_001, 0, 400),  # over server.maxImagesPerObject
        (1, 3 * 1024 * 1024, 200),  # a 3 MiB object, the API server's limit
        (1, MAX_BODY_BYTES, 413),  # over the body limit
    ],
)
def test_huge_objects(
    servers: Servers, containers: int, annotation_bytes: int, status: int
) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "my-app",
            "annotations": {"big": "é" * (annotation_bytes // 2)},
        },
        "spec": {
            "containers": [
                {"name": f"c{i}", "image": f"gcr.io/team/app{i}:v1"} for i in range(containers)
            ]
        },
    }
    review, uid = request_body(obj)
    body = json.dumps(review, ensure_ascii=False).encode()
    answer = servers.post("proxy", "mutate", body)
    response = check_answer(servers, answer, uid)
    assert answer.status == status
    if response is not None:
        result = applied(body, response)
        assert_schema_valid(result)
        assert_written_images_parse(obj, result)
