"""Structured JSON logs. Callers pass only safe fields: ids we mint, rule ids, counts, hashes.

Nothing here inspects messages for secrets; the rule is that no caller ever logs a token, a JWT, a
resource body, a patient id or a name in the first place (a test captures the whole suite's logs to
check it).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

SAFE_EXTRA = "fields"
# Attributes every LogRecord has; anything else on a record came from a caller's `extra=` and is a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for our own loggers and gunicorn's (``cds.web.serving`` wires it in).

    Fields passed with ``extra=`` (an auth failure's reason, iss, kid, jti, say) become top-level keys, as
    do those of ``extra={SAFE_EXTRA: {...}}``. An exception is reported by type only: its message and
    traceback could carry request data.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != SAFE_EXTRA and not key.startswith("_"):
                payload.setdefault(key, value)
        fields = getattr(record, SAFE_EXTRA, None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = record.exc_info[0].__name__
        return json.dumps(payload, default=str, separators=(",", ":"))


class OthersOnly(logging.Filter):
    """For a handler on the root logger: records of libraries (SQLAlchemy's pool, Python warnings), not
    ours, which the ``cds`` logger's own handler already wrote."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "cds" or record.name.startswith("cds."))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str) -> None:
    root = logging.getLogger("cds")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = True
