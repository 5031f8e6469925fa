"""Every log line is one JSON object whose fields a log pipeline can filter on, without parsing text."""

from __future__ import annotations

import json
import logging
import sys

from cds.web.logs import SAFE_EXTRA, JsonFormatter, OthersOnly


def _format(record: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def _record(name: str, message: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_an_auth_failure_carries_its_reason_iss_kid_and_jti_as_fields() -> None:
    record = _record(
        "cds.web.auth",
        "client JWT rejected",
        reason="replayed_jti",
        iss="https://ehr.example.org",
        kid="k1",
        jti="j-1",
    )
    line = _format(record)
    assert {k: line[k] for k in ("reason", "iss", "kid", "jti")} == {
        "reason": "replayed_jti",
        "iss": "https://ehr.example.org",
        "kid": "k1",
        "jti": "j-1",
    }
    assert line["level"] == "WARNING"
    assert line["logger"] == "cds.web.auth"


def test_safe_fields_are_merged_and_exceptions_named_by_type_only() -> None:
    try:
        raise ValueError("Patient/123 could be in here")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("cds.audit", logging.ERROR, __file__, 1, "call", (), exc_info)
    record.__dict__[SAFE_EXTRA] = {"event": "service-call", "status": 500}
    line = _format(record)
    assert line["event"] == "service-call"
    assert line["status"] == 500
    assert line["exception"] == "ValueError"
    assert "Patient/123" not in json.dumps(line)


def test_the_root_handler_takes_only_other_libraries_records() -> None:
    keep = OthersOnly()
    assert keep.filter(_record("sqlalchemy.pool.impl.QueuePool", "reset failed"))
    assert keep.filter(_record("py.warnings", "a warning"))
    assert not keep.filter(_record("cds", "ours"))
    assert not keep.filter(_record("cds.web.api", "ours"))
