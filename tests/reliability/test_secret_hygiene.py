"""The license ID and the pull secret's content never appear in logs, answers or errors.

A distinctive license ID is run through every path that handles it or fails near
it, at log level DEBUG, in both log formats:

- in process: the pull-secret manager (webhook.pullsecrets) against a fake
  Kubernetes API that succeeds, conflicts, holds a stale secret or one of the
  wrong type, refuses (403), rejects (422), fails (500, echoing what it was sent,
  as verbose servers do), hangs, or is not there at all; a license file that is
  missing, then written, then changed;
- the real server process (``python -m webhook serve``) with a kubeconfig for
  that fake API: admissions in each of those namespaces, /validate, malformed and
  oversized bodies, dry runs, probe failures (blocked address, DNS, a hanging
  registry), /metrics and /readyz, and SIGTERM.

Everything captured — log lines, admission answers and warnings, HTTP error
bodies, metrics, exception texts — is searched for the license and every encoding
of it that the secret uses: base64 of ``<id>:<id>`` (the ``auth`` field) and
base64 of the whole ``.dockerconfigjson`` (the Secret's data), at every byte
alignment. As a check of the search itself, the same needles must be found in
what the fake API server received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as kube_client

from tests.fakes.registries import HangingRegistry
from tests.loopback import serve_app
from tests.reliability.harness import FakeThread, ServerProcess, http_status, run_cli, write_config
from tests.reviews import pod, review
from tests.support import certificates
from webhook import config, logs, pullsecrets
from webhook.metrics import Metrics
from webhook.server import MAX_BODY_BYTES

LICENSE = "LicCanary-7f3c9a1b-E5d2-QQ"
SLUG = "my-app"
SECRET_NAME = f"{SLUG}-registry"

# --- needles -----------------------------------------------------------------------------


def aligned_b64(text: str) -> set[str]:
    """The base64 characters that encode ``text`` wherever it sits in a longer string.

    Base64 works on 3-byte groups, so the encoding of a substring depends on its
    offset mod 3; for each offset, keep only the characters whose 6 bits come
    entirely from ``text``.
    """
    data = text.encode()
    found = set()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + data).decode()
        first = -(-(8 * pad) // 6)  # first 6-bit group starting inside text
        last = (8 * (pad + len(data))) // 6  # groups ending inside text
        piece = encoded[first:last]
        if len(piece) >= 12:
            found.add(piece)
            found.add(piece.replace("+", "-").replace("/", "_"))  # urlsafe
    return found


def needles() -> set[str]:
    """The license and each encoding of it the pull secret carries (two levels)."""
    level1 = {LICENSE} | aligned_b64(LICENSE) | aligned_b64(f"LICENSE_ID:{LICENSE}")
    level2 = {n for piece in level1 for n in aligned_b64(piece)}
    return level1 | level2


NEEDLES = needles()


def leaks(text: str) -> list[str]:
    return sorted(n for n in NEEDLES if n in text)


def test_needles_find_the_secret_content() -> None:
    """The search works: it finds the license in a real pull secret, at both levels."""
    settings = config.parse({"appSlug": SLUG, "licenseID": LICENSE})
    body = pullsecrets.secret_body(settings, pullsecrets.read_credentials(settings))
    data = body["data"][pullsecrets.SECRET_KEY]
    assert leaks(data)  # base64 of the dockerconfigjson
    assert leaks(base64.b64decode(data).decode())  # the dockerconfigjson
    assert leaks(json.dumps(body))
    assert not leaks(json.dumps({"auths": {"x": {"auth": base64.b64encode(b"a:b").decode()}}}))


# --- a fake Kubernetes API --------------------------------------------------------------------


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class FakeKubeAPI:
    """Just enough of /api/v1 for pull secrets (a list; a watch that ends at once),
    misbehaving per namespace.

    my-app / other: a normal API server (created, then found current).
    stale: already holds the secret with other content (replaced).
    wrong-type: already holds an Opaque secret of that name (recreated).
    forbidden: 403; invalid: 422; broken: 500; each echoes the body it was sent.
    slow: answers after a minute.
    """

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.received: list[str] = []  # every request body
        self.calls: list[tuple[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        stale = {"auths": {"x": {"auth": base64.b64encode(b"old:old").decode()}}}
        self.secrets["stale"] = self._object(
            "stale", "kubernetes.io/dockerconfigjson", base64.b64encode(json.dumps(stale).encode())
        )
        self.secrets["wrong-type"] = self._object("wrong-type", "Opaque", b"b3RoZXI=")

    @staticmethod
    def _object(namespace: str, kind: str, data: bytes | str) -> dict[str, Any]:
        text = data.decode() if isinstance(data, bytes) else data
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": kind,
            "metadata": {
                "name": SECRET_NAME,
                "namespace": namespace,
                "uid": f"uid-{namespace}",
                "resourceVersion": "1",
            },
            "data": {".dockerconfigjson": text},
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        text = await request.text()
        self.received.append(text)
        self.calls.append((request.method, namespace))
        if namespace == "slow":
            await asyncio.sleep(60)
        if namespace == "forbidden":
            return status(403, "Forbidden", f"secrets is forbidden: cannot accept {text}")
        if namespace == "invalid":
            return status(422, "Invalid", f"Secret is invalid: {text}")
        if namespace == "broken":
            return status(500, "InternalError", f"etcd is sad about {text}")
        name = request.match_info.get("name")
        existing = self.secrets.get(namespace)
        if request.method == "POST":
            if existing is not None:
                return status(409, "AlreadyExists", f'secrets "{SECRET_NAME}" already exists')
            obj = json.loads(text)
            obj.setdefault("metadata", {}).update(
                {"namespace": namespace, "uid": f"uid-{namespace}", "resourceVersion": "2"}
            )
            self.secrets[namespace] = obj
            return web.json_response(obj, status=201)
        if request.method == "GET" and name is None:
            if request.query.get("watch") == "true":  # a watch with nothing to report
                return web.Response(text="")
            items = [existing] if existing is not None else []
            return web.json_response({"metadata": {"resourceVersion": "1"}, "items": items})
        if existing is None or name != SECRET_NAME:
            return status(404, "NotFound", f'secrets "{name}" not found')
        if request.method == "GET":
            return web.json_response(existing)
        if request.method == "PUT":
            obj = json.loads(text)
            obj["metadata"].update({"namespace": namespace, "uid": f"uid-{namespace}"})
            self.secrets[namespace] = obj
            return web.json_response(obj)
        if request.method == "DELETE":
            del self.secrets[namespace]
            return web.json_response(existing)
        return status(405, "MethodNotAllowed", "no")

    async def start(self, host: str = "127.0.0.1") -> FakeKubeAPI:
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{namespace}/secrets", self.handle)
        app.router.add_route("*", "/api/v1/namespaces/{namespace}/secrets/{name}", self.handle)
        self._runner, self.port = await serve_app(app, host)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "webhook", "user": {"token": "not-the-license"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "webhook"}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path


NAMESPACES = ["my-app", "other", "stale", "wrong-type", "forbidden", "invalid", "broken", "slow"]


@contextlib.contextmanager
def captured_logs(fmt: str) -> Iterator[io.StringIO]:
    """logs.setup at DEBUG, as ``serve --log-level DEBUG`` does, into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logs.setup(fmt, "DEBUG")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


# --- in process: the pull-secret manager ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_pull_secret_paths_never_log_the_license(fmt: str, tmp_path: Path) -> None:
    api = await FakeKubeAPI().start()
    license_file = tmp_path / "license" / "id"
    settings = config.parse(
        {"appSlug": SLUG, "licenseIDFile": str(license_file), "namespaces": NAMESPACES}
    )
    seen: list[str] = []  # warnings and exception texts handed to callers
    configuration = kube_client.Configuration()
    configuration.host = f"http://127.0.0.1:{api.port}"
    with captured_logs(fmt) as buffer:
        async with kube_client.ApiClient(configuration) as kube:
            manager = pullsecrets.PullSecrets(
                kube, settings, lambda: pullsecrets.read_credentials(settings), metrics=Metrics()
            )
            # the license file is missing: a warning naming the path, not a crash
            seen.append(str(await manager.ensure("my-app", 1.0)))
            license_file.parent.mkdir()
            license_file.write_text(LICENSE + "\n")
            for namespace in NAMESPACES:
                seen.append(str(await manager.ensure(namespace, 1.0)))
            manager.refresh()
            seen.append(str(await manager.reconcile()))
            # the license changes: everything is re-applied
            license_file.write_text(LICENSE + "-rotated\n")
            runner = asyncio.create_task(manager.run())
            await asyncio.sleep(1.5)
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await manager.close()

        # an API server that is not there at all
        configuration.host = "http://127.0.0.1:9"  # discard port: connection refused
        async with kube_client.ApiClient(configuration) as kube:
            manager = pullsecrets.PullSecrets(
                kube, settings, lambda: pullsecrets.read_credentials(settings)
            )
            seen.append(str(await manager.ensure("my-app", 2.0)))
            await manager.close()
    await api.stop()

    log = buffer.getvalue()
    # the paths were taken
    assert "created pull secret" in log and "updated pull secret" in log
    assert "recreated it as kubernetes.io/dockerconfigjson" in log
    assert any("403" in s for s in seen) and any("500" in s for s in seen)
    assert any("422" in s for s in seen)
    assert any("not confirmed before the admission deadline" in s for s in seen)
    assert any("could not be reached" in s for s in seen)
    assert any("cannot read the license ID" in s for s in seen)
    assert any(leaks(body) for body in api.received), "the fake API never saw the secret"
    # ... and nothing of the license came out
    assert not leaks(log), f"license in the {fmt} log: {leaks(log)}\n{log[-3000:]}"
    for text in seen:
        assert not leaks(text), text


# --- the real server process ---------------------------------------------------------


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeThread]:
    thread = FakeThread()
    yield thread
    thread.close()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_server_process_never_logs_or_answers_the_license(
    fmt: str, tmp_path: Path, fakes: FakeThread
) -> None:
    api = FakeKubeAPI()
    await fakes.arun(api.start())
    hanging = await fakes.start(HangingRegistry())
    certs = certificates(tmp_path / "tls")
    config_file = tmp_path / "config.yaml"
    write_config(
        config_file,
        certs,
        licenseID=LICENSE,
        namespaces=NAMESPACES,
        visibility={
            "overrides": [
                {"match": "quay.io/my-org/*", "visibility": "private"},
                {"match": "docker.io/library/*", "visibility": "public"},
            ]
        },
        probe={"timeoutSeconds": 0.5, "insecureRegistries": ["127.0.0.1"]},
        server={"admissionDeadlineSeconds": 1.5},
    )
    server = ServerProcess(
        config_file,
        tmp_path / "server.log",
        log_format=fmt,
        log_level="DEBUG",
        env={"KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))},
    ).start()
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    base = f"https://localhost:{server.port}"
    answers: list[str] = []
    try:
        async with aiohttp.ClientSession() as session:

            async def post(endpoint: str, body: bytes) -> None:
                async with session.post(f"{base}/{endpoint}", data=body, ssl=context) as r:
                    answers.append(f"{r.status} {await r.text()}")

            images = [
                "quay.io/my-org/api:v1",  # private by override: proxied, needs the secret
                "nginx:1.25",
                "10.0.0.1/team/app:v1",  # blocked address
                "registry.does-not-exist.invalid/team/app:v1",  # DNS failure
                f"127.0.0.1:{hanging.port}/team/app:v1",  # hangs until the probe timeout
                "Not/Valid:Image!",
            ]
            for namespace in NAMESPACES:
                for endpoint in ("mutate", "validate"):
                    await post(
                        endpoint, json.dumps(review(pod(*images, namespace=namespace))).encode()
                    )
            await post("mutate", json.dumps(review(pod(images[0]), dry_run=True)).encode())
            await post(
                "mutate",
                json.dumps(review(pod(images[0]), operation="UPDATE", old=pod("x"))).encode(),
            )
            await post("mutate", b"{not json")
            await post("mutate", b"x" * (MAX_BODY_BYTES + 1))
            await post("validate", json.dumps({"apiVersion": "v1"}).encode())
            for path in ("/metrics", "/readyz", "/healthz"):
                async with session.get(f"http://127.0.0.1:{server.health_port}{path}") as r:
                    answers.append(await r.text())
        await asyncio.sleep(0.5)  # background secret applies finish or time out
    finally:
        server.signal()
        code = await asyncio.to_thread(server.wait, 30)
        server.kill()
        await fakes.arun(api.stop())
    log = server.log_text()
    assert code == 0, log[-3000:]
    assert http_status("127.0.0.1", server.health_port, "/readyz") is None
    # the paths were taken
    assert ("POST", "my-app") in api.calls and ("POST", "forbidden") in api.calls
    assert any(leaks(body) for body in api.received), "the fake API never saw the secret"
    assert "created pull secret" in log
    assert any("413 " in a for a in answers) and any("400 " in a for a in answers)
    assert any("could not be written in forbidden" in a for a in answers)
    assert any("image_proxy_webhook_registry_probes_total" in a for a in answers)
    # ... and nothing of the license came out
    assert not leaks(log), f"license in the {fmt} log: {leaks(log)}"
    for answer in answers:
        assert not leaks(answer), answer[:500]


def test_config_error_at_start_does_not_print_the_license(tmp_path: Path) -> None:
    """``serve`` with a broken config exits 2 with a message, and no license in it."""
    for n, text in enumerate(
        [
            f'appSlug: my-app\nlicenseID: "{LICENSE}\n',  # unterminated quote
            f"appSlug: my-app\nlicenseID: {LICENSE}: x\n",
            "appSlug: my-app\nlicenseID: 73519826410937\n",  # a number, not a string
            f"appSlug: my-app\nlicenseID: {LICENSE}\nmdoe: online\n",  # unknown key
            f"appSlug: My App\nlicenseID: {LICENSE}\n",  # bad slug
        ]
    ):
        config_file = tmp_path / f"bad{n}.yaml"
        config_file.write_text(text)
        code, output = run_cli(["--log-level", "DEBUG", "serve", "--config", str(config_file)])
        assert code == 2, output
        assert output.startswith("error: "), output
        assert not leaks(output) and "73519826410937" not in output, output
