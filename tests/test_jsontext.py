"""Stored JSON (outbox rows, database JSON columns) is written with msgspec and still read when an earlier
version wrote it with the standard library."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cds import jsontext
from cds.storage.outbox import Outbox
from cds.storage.store import AuditRecord, ScreenPage

AT = datetime(2026, 2, 28, 23, 59, 30, 125000, tzinfo=UTC)


class _Counts:
    def count_outbox(self, kind: str, event: str, n: int = 1) -> None:
        pass


def test_datetimes_are_written_as_rfc3339_text_that_reads_back() -> None:
    text = jsontext.dumps({"at": AT, "ids": ("a", "b"), "n": 2.5, "none": None})
    written = {"at": "2026-02-28T23:59:30.125000Z", "ids": ["a", "b"], "n": 2.5, "none": None}
    assert json.loads(text) == written
    assert datetime.fromisoformat(json.loads(text)["at"]) == AT


def test_a_lone_surrogate_from_a_chart_is_written_as_an_escape() -> None:
    written = jsontext.encode({"text": "clonazepam \ud800", "at": AT})
    assert written == b'{"text":"clonazepam \\ud800","at":"2026-02-28T23:59:30.125000+00:00"}'
    assert jsontext.loads(written) == {"text": "clonazepam \ud800", "at": "2026-02-28T23:59:30.125000+00:00"}


def test_text_the_standard_library_wrote_is_still_read() -> None:
    assert jsontext.loads('{"x": NaN, "y": "caf\\u00e9"}')["y"] == "café"
    assert jsontext.loads(b'[1, "\\ud800"]') == [1, "\ud800"]


def test_outbox_rows_of_either_format_ship_as_the_records_they_were(tmp_path: Path) -> None:
    shipped: list[tuple[str, list[Any]]] = []
    outbox = Outbox(tmp_path / "outbox", lambda kind, records: shipped.append((kind, records)), _Counts())
    audit = AuditRecord("hi-1", "svc", None, None, "hash", 12.5, 200, ("r1",), ("u1",), AT, "key-1")
    page = ScreenPage("page-1", AT, AT + timedelta(days=7), {"checks": [{"rule": "r1", "status": "clear"}]})
    try:
        outbox.append([audit])
        assert outbox._path is not None
        earlier_version = json.dumps(  # how the standard library wrote rows before
            {
                "id": page.id,
                "created_at": page.created_at.isoformat(),
                "expires_at": page.expires_at.isoformat(),
                "payload": dict(page.payload),
            }
        )
        with sqlite3.connect(outbox._path) as raw:
            raw.execute("INSERT INTO pending (kind, payload) VALUES (?, ?)", ("page", earlier_version))
        assert outbox.flush()
    finally:
        outbox.close()
    assert sorted(shipped, key=lambda s: s[0]) == [("audit", [audit]), ("page", [page])]
