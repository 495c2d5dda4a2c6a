"""The HTTP layer over real TLS, with a client that verifies the server certificate."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.reviews import StaticResolver, apply, images_of, pod, review
from webhook import config, pki, tls
from webhook.admission import Admitter
from webhook.images import ImageRef
from webhook.metrics import Metrics
from webhook.policy import Repository
from webhook.probes import Visibility
from webhook.server import MAX_BODY_BYTES, Gate, Health, Place, health_app, webhook_app

PROXY = "proxy.replicated.com/proxy/my-app"
SETTINGS = config.parse({"appSlug": "my-app", "licenseID": "lic", "namespaces": ["my-app"]})


class BrokenResolver:
    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        raise RuntimeError("boom")


@pytest.fixture
def client_ssl(certs: pki.CertPaths) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))


Serve = Callable[[Admitter], Awaitable[str]]


@pytest.fixture
async def serve(certs: pki.CertPaths) -> AsyncIterator[Serve]:
    servers: list[TestServer] = []

    async def start(admitter: Admitter) -> str:
        # auto_decompress off, as the service runs it: the parser never inflates a body
        server = TestServer(webhook_app(admitter), host="localhost")
        await server.start_server(ssl=tls.server_context(certs), auto_decompress=False)
        servers.append(server)
        return f"https://localhost:{server.port}"

    yield start
    for server in servers:
        await server.close()


async def post(url: str, body: bytes | dict[str, Any], context: ssl.SSLContext) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, ssl=context) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text)


async def test_mutate_over_verified_tls(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    resolver = StaticResolver(
        {
            ("gcr.io", "a/priv"): Visibility.PRIVATE,
            ("docker.io", "library/nginx"): Visibility.PUBLIC,
        }
    )
    base = await serve(Admitter(SETTINGS, resolver=resolver))
    obj = pod("gcr.io/a/priv:1", "nginx:1.25", "gcr.io/a/priv:2")
    rv = review(obj)
    status, answer = await post(f"{base}/mutate", rv, client_ssl)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == rv["request"]["uid"]
    result = apply(answer, obj)
    assert images_of(result) == [
        f"{PROXY}/gcr.io/a/priv:1",
        "nginx:1.25",
        f"{PROXY}/gcr.io/a/priv:2",
    ]
    assert result["spec"]["imagePullSecrets"] == [{"name": "my-app-registry"}]
    # one question per distinct repository
    assert sorted(resolver.asked) == [("docker.io", "library/nginx"), ("gcr.io", "a/priv")]


async def test_untrusted_client_refuses_the_certificate(serve: Serve) -> None:
    base = await serve(Admitter(SETTINGS))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await post(f"{base}/mutate", review(pod("nginx")), ssl.create_default_context())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "request body is not valid JSON"),
        (b"[]", 400, "request body must be a JSON object (an AdmissionReview)"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}
            ).encode(),
            400,
            "expected kind AdmissionReview with apiVersion admission.k8s.io/v1, got kind "
            "'AdmissionReview' apiVersion 'admission.k8s.io/v1beta1'",
        ),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            400,
            "AdmissionReview has no request object",
        ),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            400,
            "request.uid is missing or empty",
        ),
        (
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"uid": "u", "operation": "CREATE", "kind": {"kind": "Pod"}},
                }
            ).encode(),
            400,
            "request.object is missing for a CREATE request",
        ),
        (
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {"uid": "u", "operation": "CREATE", "object": []},
                }
            ).encode(),
            400,
            "request.object must be a dict, got list",
        ),
        (b"x" * (MAX_BODY_BYTES + 1), 413, f"request body larger than {MAX_BODY_BYTES} bytes"),
    ],
)
async def test_bad_requests(
    serve: Serve, client_ssl: ssl.SSLContext, body: bytes, status: int, message: str
) -> None:
    base = await serve(Admitter(SETTINGS))
    for endpoint in ("mutate", "validate"):
        got_status, answer = await post(f"{base}/{endpoint}", body, client_ssl)
        assert got_status == status
        assert answer["error"].startswith(message)


async def test_largest_legal_review_is_accepted(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    """An object and its old version of 3 MiB each fit under the body limit."""
    base = await serve(Admitter(SETTINGS))
    obj = pod("nginx", annotations={"big": "x" * (3 * 1024 * 1024 - 1024)})
    rv = review(obj, operation="UPDATE", old=obj)
    status, answer = await post(f"{base}/mutate", rv, client_ssl)
    assert status == 200
    assert answer["response"]["allowed"] is True


async def test_validate_endpoint(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    base = await serve(Admitter(SETTINGS, resolver=StaticResolver({})))
    status, answer = await post(f"{base}/validate", review(pod("gcr.io/x/y:1")), client_ssl)
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["message"].startswith(
        "container 'c0' image 'gcr.io/x/y:1' is private and must be pulled through the proxy"
    )


async def test_internal_error_is_answered_not_crashed(
    serve: Serve, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    base = await serve(Admitter(SETTINGS, resolver=BrokenResolver()))
    rv = review(pod("gcr.io/x/y:1"))
    status, answer = await post(f"{base}/mutate", rv, client_ssl)
    assert status == 200
    assert answer["response"] == {
        "uid": rv["request"]["uid"],
        "allowed": True,
        "warnings": [
            "image-proxy-webhook hit an internal error; see its log; pod admitted unchanged"
        ],
    }
    status, answer = await post(f"{base}/validate", rv, client_ssl)
    assert answer["response"]["allowed"] is False
    assert "Traceback" in caplog.text and "RuntimeError: boom" in caplog.text


async def test_slow_body_gets_408(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    fast = config.parse(
        {"appSlug": "my-app", "licenseID": "l", "server": {"admissionDeadlineSeconds": 0.3}}
    )
    base = await serve(Admitter(fast))

    async def drip() -> AsyncIterator[bytes]:
        yield b'{"apiVersion":'
        await asyncio.sleep(2)
        yield b'"x"}'

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/mutate", data=drip(), ssl=client_ssl) as response,
    ):
        assert response.status == 408
        assert (await response.json())["error"] == "request body not received within 0.3s"


async def test_health_readiness_and_metrics(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    metrics = Metrics()
    health = Health()
    probes = TestServer(health_app(health, metrics), host="127.0.0.1")
    await probes.start_server()
    base = await serve(Admitter(SETTINGS, resolver=StaticResolver({}), metrics=metrics))
    try:
        async with aiohttp.ClientSession() as session:
            plain = f"http://127.0.0.1:{probes.port}"
            async with session.get(f"{plain}/healthz") as r:
                assert (r.status, await r.text()) == (200, "ok\n")
            async with session.get(f"{plain}/readyz") as r:
                assert (r.status, await r.text()) == (503, "not ready: not-serving\n")
            health.serving = True
            async with session.get(f"{plain}/readyz") as r:
                assert r.status == 200
            health.checks["certificate"] = lambda: False
            async with session.get(f"{plain}/readyz") as r:
                assert (r.status, await r.text()) == (503, "not ready: certificate\n")
            health.checks.clear()
            health.shutting_down = True
            async with session.get(f"{plain}/readyz") as r:
                assert (r.status, await r.text()) == (503, "not ready: shutting-down\n")

            await post(f"{base}/mutate", review(pod("gcr.io/x/y:1")), client_ssl)
            await post(f"{base}/mutate", review(pod("nginx", namespace="elsewhere")), client_ssl)
            await post(f"{base}/mutate", b"{", client_ssl)
            async with session.get(f"{plain}/metrics") as r:
                text = await r.text()
        assert (
            'image_proxy_webhook_admission_requests_total{endpoint="mutate",kind="Pod",'
            'operation="CREATE",outcome="mutated"} 1.0' in text
        )
        assert (
            'image_proxy_webhook_admission_requests_total{endpoint="mutate",kind="Pod",'
            'operation="CREATE",outcome="allowed"} 1.0' in text
        )
        assert "image_proxy_webhook_images_rewritten_total 1.0" in text
        assert 'image_proxy_webhook_admission_duration_seconds_count{endpoint="mutate"} 2.0' in text
    finally:
        await probes.close()


def _tls11_client(ca_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_below_1_2_is_refused(serve: Serve, certs: pki.CertPaths) -> None:
    assert certs.ca_file is not None
    client = _tls11_client(certs.ca_file)
    # Control: this client does speak TLS 1.1 to a server that allows it ...
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(certs.cert_file, certs.key_file)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    control = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=permissive)
    port = control.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
    writer.close()
    control.close()
    # ... and the webhook refuses it.
    base = await serve(Admitter(SETTINGS))
    with pytest.raises(aiohttp.ClientConnectorError):
        await post(f"{base}/mutate", review(pod("nginx")), client)


def test_self_signed_certificate_is_for_localhost(tmp_path: Path) -> None:
    paths = pki.DevelopmentCertificate(tmp_path).paths
    assert paths.ca_file is not None and paths.ca_file.exists()
    context = ssl.create_default_context(cafile=str(paths.ca_file))
    server = tls.server_context(paths)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert oct(paths.key_file.stat().st_mode & 0o777) == "0o600"


def test_text_log_lines_cannot_be_forged() -> None:
    import logging

    from webhook.logs import TextFormatter

    record = logging.LogRecord(
        "webhook.admission",
        logging.INFO,
        __file__,
        1,
        "mutate Pod %s/%s: allowed",
        ("ns", "web\n2026-01-01 00:00:00 INFO forged: line"),
        None,
    )
    record.fields = {"uid": "u\r\nx"}
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("web\\n2026-01-01 00:00:00 INFO forged: line: allowed uid=u\\r\\nx")


# --- what a client can make one request cost ----------------------------------------


async def raw_exchange(
    base: str, head: str, context: ssl.SSLContext, body: bytes = b""
) -> tuple[int, Any]:
    """Send a request head (and maybe part of its body) over TLS; read one answer."""
    host, port = base.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=context, server_hostname=host
    )
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), json.loads(answer)
    finally:
        writer.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
async def test_compressed_bodies_are_refused_before_the_body_is_read(
    serve: Serve, client_ssl: ssl.SSLContext, encoding: str
) -> None:
    """The API server never compresses a review: 415 from the headers alone (the
    body announced here is never sent, and the answer comes anyway)."""
    base = await serve(Admitter(SETTINGS))
    head = (
        "POST /mutate HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
        f"Content-Encoding: {encoding}\nContent-Length: 5000000\n"
    )
    status, answer = await raw_exchange(base, head, client_ssl)
    assert status == 415
    assert answer["error"] == (
        f"Content-Encoding {encoding.lower()!r} is not accepted: the API server sends "
        "uncompressed reviews"
    )


async def test_identity_encoding_is_accepted(serve: Serve, client_ssl: ssl.SSLContext) -> None:
    base = await serve(Admitter(SETTINGS))
    body = json.dumps(review(pod("nginx"))).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/mutate", data=body, ssl=client_ssl, headers={"Content-Encoding": "identity"}
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["response"]["allowed"] is True


async def test_a_body_announced_too_large_is_refused_before_it_is_sent(
    serve: Serve, client_ssl: ssl.SSLContext
) -> None:
    base = await serve(Admitter(SETTINGS))
    head = (
        "POST /validate HTTP/1.1\nHost: localhost\nContent-Type: application/json\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\n"
    )
    status, answer = await raw_exchange(base, head, client_ssl)
    assert status == 413
    assert answer["error"] == (
        f"request body larger than {MAX_BODY_BYTES} bytes (server.maxRequestBytes)"
    )


async def test_more_images_than_the_cap_is_a_400_that_names_it(
    serve: Serve, client_ssl: ssl.SSLContext
) -> None:
    capped = config.parse(
        {"appSlug": "my-app", "licenseID": "l", "server": {"maxImagesPerObject": 3}}
    )
    resolver = StaticResolver({})
    base = await serve(Admitter(capped, resolver=resolver))
    status, answer = await post(
        f"{base}/mutate", review(pod("a:1", "b:1", init=("c:1", "d:1"))), client_ssl
    )
    assert status == 400
    assert answer["error"] == "the Pod lists 4 images, more than server.maxImagesPerObject (3)"
    assert resolver.asked == []  # refused before anything was probed
    status, answer = await post(f"{base}/mutate", review(pod("a:1", "b:1", "c:1")), client_ssl)
    assert status == 200
    # an image volume is an image too, and the old object is held to the same cap
    with_volume = pod("a:1", "b:1", "c:1")
    with_volume["spec"]["volumes"] = [{"name": "v", "image": {"reference": "d:1"}}]
    status, answer = await post(f"{base}/mutate", review(with_volume), client_ssl)
    assert answer["error"] == "the Pod lists 4 images, more than server.maxImagesPerObject (3)"
    update = review(pod("a:1"), operation="UPDATE", old=with_volume)
    status, answer = await post(f"{base}/mutate", update, client_ssl)
    assert status == 400
    assert answer["error"] == (
        "the old Pod lists 4 images, more than server.maxImagesPerObject (3)"
    )


class HeldResolver:
    """Holds every admission until released (a registry that is slow to answer)."""

    def __init__(self, expected: int) -> None:
        self.waiting = 0
        self.expected = expected
        self.all_waiting = asyncio.Event()  # ``expected`` admissions are held
        self.release = asyncio.Event()

    async def resolve_all(
        self, wanted: Mapping[Repository, ImageRef], timeout: float
    ) -> dict[Repository, Visibility]:
        self.waiting += 1
        if self.waiting == self.expected:
            self.all_waiting.set()
        await self.release.wait()
        return {key: Visibility.PUBLIC for key in wanted}


@pytest.mark.parametrize(
    ("limits", "held"),
    [
        ({"maxAdmissionsInFlight": 2}, 2),
        # two bodies of at most 4 KiB fit, a third does not
        ({"maxRequestBytes": 4096, "maxBodyBytesInFlight": 8192}, 2),
    ],
)
async def test_admissions_past_the_in_flight_cap_are_refused_at_once(
    serve: Serve, client_ssl: ssl.SSLContext, limits: dict[str, int], held: int
) -> None:
    settings = config.parse({"appSlug": "my-app", "licenseID": "l", "server": limits})
    resolver = HeldResolver(held)
    base = await serve(Admitter(settings, resolver=resolver))
    body = json.dumps(review(pod("gcr.io/x/y:1"))).encode()
    body = body + b" " * (4000 - len(body))  # 4 000 bytes each
    waiting = [asyncio.create_task(post(f"{base}/mutate", body, client_ssl)) for _ in range(held)]
    await resolver.all_waiting.wait()

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/mutate", data=body, ssl=client_ssl) as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        error = (await response.json())["error"]
    assert error.startswith("too many admissions in flight")
    assert "server.maxAdmissionsInFlight" in error and "server.maxBodyBytesInFlight" in error

    resolver.release.set()
    for status, answer in await asyncio.gather(*waiting):
        assert status == 200 and answer["response"]["allowed"] is True
    status, answer = await post(f"{base}/mutate", body, client_ssl)  # room again
    assert status == 200


async def test_more_json_values_than_the_cap_is_a_400_before_decoding(
    serve: Serve, client_ssl: ssl.SSLContext
) -> None:
    capped = config.parse({"appSlug": "my-app", "licenseID": "l", "server": {"maxJsonValues": 50}})
    base = await serve(Admitter(capped))
    rv = review(pod("nginx"))
    status, answer = await post(f"{base}/mutate", rv, client_ssl)
    assert status == 200  # a small review fits
    rv["request"]["object"]["metadata"]["labels"] = {f"l{i}": "x" for i in range(50)}
    status, answer = await post(f"{base}/mutate", rv, client_ssl)
    assert status == 400
    assert answer["error"] == ("request body holds more than 50 JSON values (server.maxJsonValues)")


async def test_the_json_values_cap_holds_at_its_boundary(
    serve: Serve, client_ssl: ssl.SSLContext
) -> None:
    """A body shorter than the cap is never counted (each value counted is one of its
    bytes); one as long as the cap can hold one value more than it, and is refused."""
    capped = config.parse({"appSlug": "my-app", "licenseID": "l", "server": {"maxJsonValues": 50}})
    base = await serve(Admitter(capped))
    refused = "request body holds more than 50 JSON values (server.maxJsonValues)"
    status, answer = await post(f"{base}/mutate", b"[" * 50, client_ssl)  # 51 values counted
    assert (status, answer["error"]) == (400, refused)
    status, answer = await post(f"{base}/mutate", b"[" * 49, client_ssl)  # 50: not above it
    assert status == 400
    assert answer["error"] != refused and "JSON" in answer["error"]


# --- the gate: one client's slow bodies give way to another client's request ----------


def _gate(count: int, size: int = 1000) -> Gate:
    return Gate(
        config.ServerSettings(max_admissions_in_flight=count, max_body_bytes_in_flight=size)
    )


async def _waiting(gate: Gate, place: Place) -> str:
    """A request whose body never arrives: how its wait ended."""
    try:
        async with asyncio.timeout(60) as timer:
            gate.waiting(place, timer)
            await asyncio.Event().wait()
    except TimeoutError:
        return "cut" if place.cut else "deadline"
    finally:
        gate.leave(place)
    return "arrived"


async def test_a_full_gate_cuts_the_longest_wait_of_the_largest_holder() -> None:
    gate = _gate(3)
    places = [gate.enter(10, "attacker") for _ in range(3)]
    assert all(places)
    waits = [asyncio.create_task(_waiting(gate, p)) for p in places if p is not None]
    await asyncio.sleep(0)
    place = gate.enter(10, "api-server")
    assert place is not None and not place.cut
    assert await waits[0] == "cut"  # the longest waiting
    await asyncio.sleep(0)
    assert not waits[1].done() and not waits[2].done()
    assert (gate.count, gate.bytes) == (3, 30)
    assert gate.holders["attacker"].count == 2
    for wait in waits[1:]:
        wait.cancel()
    await asyncio.gather(*waits[1:], return_exceptions=True)
    gate.leave(place)
    assert (gate.count, gate.bytes, gate.holders) == (0, 0, {})


async def test_a_full_gate_refuses_when_no_larger_holder_has_a_body_on_the_way() -> None:
    gate = _gate(2)
    admitting = gate.enter(10, "attacker"), gate.enter(10, "attacker")  # bodies all here
    assert gate.enter(10, "api-server") is None
    # a client never cuts its own waits, nor those of a client holding no more than it
    gate = _gate(2)
    first, second = gate.enter(10, "a"), gate.enter(10, "b")
    assert first is not None and second is not None
    waits = [asyncio.create_task(_waiting(gate, p)) for p in (first, second)]
    await asyncio.sleep(0)
    assert gate.enter(10, "a") is None
    assert gate.enter(10, "c") is None  # "a" and "b" hold one each: not more than c's 0 + 1
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    assert all(admitting)


async def test_requests_arriving_before_the_cut_ones_leave_cut_one_wait_each() -> None:
    gate = _gate(3)
    places = [gate.enter(10, "attacker") for _ in range(3)]
    waits = [asyncio.create_task(_waiting(gate, p)) for p in places if p is not None]
    await asyncio.sleep(0)
    first, second = gate.enter(10, "a"), gate.enter(10, "b")  # in the same tick
    assert first is not None and second is not None
    assert await asyncio.gather(*waits[:2]) == ["cut", "cut"]
    assert not waits[2].done()
    assert (gate.count, gate.bytes) == (3, 30)
    waits[2].cancel()
    await asyncio.gather(waits[2], return_exceptions=True)
    gate.leave(first)
    gate.leave(second)
    assert (gate.count, gate.bytes, gate.holders) == (0, 0, {})


async def test_bytes_past_the_budget_cut_as_many_waits_as_they_need() -> None:
    gate = _gate(10, size=1000)
    places = [gate.enter(300, "attacker") for _ in range(3)]
    waits = [asyncio.create_task(_waiting(gate, p)) for p in places if p is not None]
    await asyncio.sleep(0)
    big = gate.enter(700, "api-server")  # 900 + 700 > 1000: two waits of 300 cut
    assert big is not None
    assert await asyncio.gather(*waits[:2]) == ["cut", "cut"]
    assert (gate.count, gate.bytes) == (2, 1000)
    waits[2].cancel()
    await asyncio.gather(waits[2], return_exceptions=True)
    gate.leave(big)
