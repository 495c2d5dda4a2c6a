"""A small aiohttp app on a free loopback port, for the fakes the tests need."""

from __future__ import annotations

from aiohttp import web


async def serve_app(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    """Start ``app`` on a free port of ``host``; the runner (to clean up) and the port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])
