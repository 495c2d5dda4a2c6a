"""Log setup: human text or one JSON object per line (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson

# orjson writes what json.dumps(default=str) wrote, compact: dataclasses and
# datetimes go through str() as before, and keys need not be strings. Allowing
# other keys costs a third of the encoding, so it is asked for only when a key
# is not a string (orjson refuses it otherwise); the output is the same.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_ORJSON_ANY_KEYS = _ORJSON_OPTIONS | orjson.OPT_NON_STR_KEYS


class JSONFormatter(logging.Formatter):
    """One JSON object per line; structured ``extra={"fields": {...}}`` is merged in.

    On the admission hot path (one line per request): the time stamp is formatted
    once per second, and the line is encoded with orjson.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stamp: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """What formatTime(record, "%Y-%m-%dT%H:%M:%S") gives, once per second."""
        second, stamp = self._stamp
        if int(created) != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(created))
            self._stamp = (int(created), stamp)
        return stamp

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
            self.formatException(record.exc_info) if record.exc_info else None,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any] | None,
        exception: str | None = None,
    ) -> str:
        """The line for a record with these attributes (``level``: its level name)."""
        second, stamp = self._stamp  # _time's check, without its call: the same second
        entry: dict[str, Any] = {
            "time": stamp if int(created) == second else self._time(created),
            "level": level.lower(),
            "logger": logger,
            "message": message,
        }
        if fields is not None:
            entry.update(fields)
        if exception is not None:
            entry["exception"] = exception
        try:
            return orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS).decode()
        except TypeError:
            pass
        try:
            return orjson.dumps(entry, default=str, option=_ORJSON_ANY_KEYS).decode()
        except TypeError:  # what orjson refuses (a lone surrogate, an int over 64 bits)
            return json.dumps(entry, default=str)


def _one_line(text: str) -> str:
    """Request fields (uid, name, images) come from the caller: no forged log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """Human-readable lines; what a request supplies is escaped onto the one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _one_line(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        uid = fields.get("uid") if isinstance(fields, dict) else None
        return f"{text} uid={_one_line(str(uid))}" if uid else text


def setup(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither formatter shows the thread or the process: not looking them up saves
    # a sixth of the cost of each admission's line (logging's documented switches).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log repeats our per-request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # At DEBUG the Kubernetes client logs every response body, and the pull
    # secret's create/read/replace responses carry its data: the license ID.
    logging.getLogger(SECRET_BEARING_LOGGER).setLevel(logging.INFO)


SECRET_BEARING_LOGGER = "kubernetes_asyncio.client.rest"
