"""The outbox's shipping loop in isolation: what it keeps, what it drops, and what stays in its file."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cds.storage.outbox import Outbox
from cds.storage.store import AuditRecord

AT = datetime(2026, 3, 31, 8, 0, tzinfo=UTC)


class _Counts:
    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()

    def count_outbox(self, kind: str, event: str, n: int = 1) -> None:
        self.events[(kind, event)] += n


def _audit(n: int) -> AuditRecord:
    return AuditRecord(f"hi-{n}", "svc", None, None, "hash", 1.0, 200, (), (), AT, f"key-{n}")


def _rows_left(outbox: Outbox) -> list[tuple[int, str]]:
    assert outbox._path is not None
    with sqlite3.connect(outbox._path) as raw:
        return [tuple(row) for row in raw.execute("SELECT id, kind FROM pending ORDER BY id")]


@pytest.fixture
def counts() -> _Counts:
    return _Counts()


Ship = Callable[[str, list[Any]], None]


@pytest.fixture
def open_outbox(tmp_path: Path, counts: _Counts) -> Iterator[Callable[[Ship], Outbox]]:
    """Outboxes in the test's directory that ship with the given function; closed after the test."""
    opened: list[Outbox] = []

    def factory(ship: Ship) -> Outbox:
        opened.append(Outbox(tmp_path, ship, counts))
        return opened[-1]

    yield factory
    for outbox in opened:
        outbox.close()


def _into(shipped: list[str]) -> Ship:
    """A ship function that records the hook instances it is given, and refuses one it already has: a
    row left behind after shipping then makes `flush` report failure instead of shipping it forever."""

    def ship(_kind: str, records: list[Any]) -> None:
        for record in records:
            if record.hook_instance in shipped:
                raise RuntimeError(f"{record.hook_instance} shipped twice")
            shipped.append(record.hook_instance)

    return ship


def test_a_shipped_batch_leaves_the_file_empty_and_later_rows_ship_next(
    open_outbox: Callable[[Ship], Outbox], counts: _Counts
) -> None:
    shipped: list[str] = []
    outbox = open_outbox(_into(shipped))
    outbox.append([_audit(1), _audit(2)])
    assert outbox.flush()
    assert _rows_left(outbox) == []
    outbox.append([_audit(3)])
    assert outbox.flush()
    assert _rows_left(outbox) == []
    assert shipped == ["hi-1", "hi-2", "hi-3"]
    assert counts.events[("audit", "shipped")] == 3


def test_while_the_database_fails_every_row_stays_and_ships_once_it_is_back(
    open_outbox: Callable[[Ship], Outbox], counts: _Counts
) -> None:
    database_up = False
    shipped: list[str] = []

    def ship(_kind: str, records: list[Any]) -> None:
        if not database_up:
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))
        _into(shipped)(_kind, records)

    outbox = open_outbox(ship)
    outbox.append([_audit(1), _audit(2)])
    assert not outbox.flush()
    assert [kind for _, kind in _rows_left(outbox)] == ["audit", "audit"]
    assert counts.events[("audit", "retried")] == 2
    database_up = True
    assert outbox.flush()
    assert _rows_left(outbox) == []
    assert shipped == ["hi-1", "hi-2"]


def test_an_unreadable_row_is_dropped_and_the_rest_of_its_batch_ships(
    open_outbox: Callable[[Ship], Outbox], counts: _Counts
) -> None:
    shipped: list[str] = []
    outbox = open_outbox(_into(shipped))
    outbox.append([_audit(1)])
    assert outbox._path is not None
    with sqlite3.connect(outbox._path) as raw:
        raw.execute("INSERT INTO pending (kind, payload) VALUES ('audit', '{\"not\": \"an audit record\"}')")
    outbox.append([_audit(3)])
    assert outbox.flush()
    assert _rows_left(outbox) == []
    assert shipped == ["hi-1", "hi-3"]
    assert counts.events[("audit", "dropped")] == 1
    assert counts.events[("audit", "shipped")] == 2


def test_a_record_the_database_refuses_is_dropped_alone(
    open_outbox: Callable[[Ship], Outbox], counts: _Counts
) -> None:
    stored: list[str] = []

    def ship(_kind: str, records: list[Any]) -> None:
        if any(r.hook_instance == "hi-2" for r in records):  # the whole batch is refused while it holds hi-2
            raise sa.exc.IntegrityError("INSERT", {}, Exception("violates a constraint"))
        _into(stored)(_kind, records)

    outbox = open_outbox(ship)
    outbox.append([_audit(1), _audit(2), _audit(3)])
    assert outbox.flush()
    assert _rows_left(outbox) == []
    assert stored == ["hi-1", "hi-3"]
    assert counts.events[("audit", "dropped")] == 1
    assert counts.events[("audit", "shipped")] == 2
