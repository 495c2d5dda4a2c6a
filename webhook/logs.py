"""Log setup: human text or one JSON object per line (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class JSONFormatter(logging.Formatter):
    """One JSON object per line; structured ``extra={"fields": {...}}`` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        uid = fields.get("uid") if isinstance(fields, dict) else None
        return f"{text} uid={uid}" if uid else text


def setup(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats our per-request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # At DEBUG the Kubernetes client logs every response body, and the pull
    # secret's create/read/replace responses carry its data: the license ID.
    logging.getLogger(SECRET_BEARING_LOGGER).setLevel(logging.INFO)


SECRET_BEARING_LOGGER = "kubernetes_asyncio.client.rest"
