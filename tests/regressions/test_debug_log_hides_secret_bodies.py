"""Regression: ``--log-level DEBUG`` does not log the Kubernetes client's response bodies.

kubernetes_asyncio logs ``response body: ...`` at DEBUG; the pull secret's
create/read/replace responses carry its data, so the license ID reached the log.
Found by tests/reliability/test_secret_hygiene.py.
"""

from __future__ import annotations

import io
import logging

from webhook import logs


def test_kubernetes_client_bodies_are_not_logged_at_debug() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    rest = logging.getLogger("kubernetes_asyncio.client.rest")
    saved_rest = rest.level
    try:
        logs.setup("json", "DEBUG")
        buffer = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        rest.debug("response body: %s", "secret data")
        logging.getLogger("webhook.x").debug("our own debug line")
        text = buffer.getvalue()
        assert "secret data" not in text
        assert "our own debug line" in text  # DEBUG still works for the webhook
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        rest.setLevel(saved_rest)
