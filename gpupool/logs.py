"""Structured logs: one JSON object a line, so that operators can filter by field.

Call sites pass fields through ``extra={"fields": {...}}`` (see :func:`fields`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` argument that attaches ``values`` to a log record."""
    return {"fields": values}


def configure(level: str = "info") -> None:
    """Send gpupool's logs, as JSON lines, to standard error at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("gpupool")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
