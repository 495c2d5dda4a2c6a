"""The floor: a bare aiohttp TLS server that answers a constant AdmissionReview.

The same stack as the webhook (aiohttp, the webhook's own TLS context, the same
body-size limit, no access log, the same event loop) doing no work: it reads the
body and answers with bytes prepared at start. What the webhook costs beyond
this is what the benchmark measures.

``--responses FILE`` is a JSON object mapping a request path to the answer to
send for it (so each scenario's floor answers with as many bytes as the webhook
does); any other POST gets a constant ``allowed: true`` review.

``--echo`` makes it the echo floor of the end-to-end scenario, the least any
Python webhook must do: parse the review, echo its uid in the path's answer (the
same patch the webhook returns), encode. ``GET /answered`` counts its answers.

    python -m bench.floor --port 9443 --cert tls.crt --key tls.key [--responses r.json] [--echo]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from webhook import pki, tls
from webhook.server import MAX_BODY_BYTES

ALLOW = json.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "00000000-0000-0000-0000-000000000000", "allowed": True},
    },
    separators=(",", ":"),
).encode()


def app(responses: dict[str, bytes]) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=responses.get(request.path, ALLOW), content_type="application/json"
        )

    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application.router.add_post("/{tail:.*}", answer)
    return application


def echo_app(responses: dict[str, bytes]) -> web.Application:
    templates: dict[str, dict[str, Any]] = {k: orjson.loads(v) for k, v in responses.items()}
    answered = 0

    async def echo(request: web.Request) -> web.Response:
        nonlocal answered
        uid = orjson.loads(await request.read())["request"]["uid"]
        template = templates[request.path]
        answer = {**template, "response": {**template["response"], "uid": uid}}
        answered += 1
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(answered))

    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application.router.add_get("/answered", count)
    application.router.add_post("/{tail:.*}", echo)
    return application


async def serve(host: str, port: int, paths: pki.CertPaths, application: web.Application) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=tls.server_context(paths)).start()
    print(f"floor serving on https://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def load_responses(path: str | None) -> dict[str, bytes]:
    if not path:
        return {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {key: json.dumps(value, separators=(",", ":")).encode() for key, value in data.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--responses", help="JSON: request path -> AdmissionReview to answer")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--echo", action="store_true", help="echo each review's uid")
    args = parser.parse_args(argv)
    paths = pki.CertPaths(Path(args.cert), Path(args.key))
    responses = load_responses(args.responses)
    application = echo_app(responses) if args.echo else app(responses)
    if args.loop == "uvloop":
        import uvloop

        # as the webhook's serve command runs it
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port, paths, application))
    else:
        asyncio.run(serve(args.host, args.port, paths, application))


if __name__ == "__main__":
    main()
