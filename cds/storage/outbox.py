"""The durable outbox: issued-card and audit records, screening pages (and feedback while the database is
down) are written to a local SQLite file first, then shipped to the database with retry and back-off.

Why: a batch that failed to reach the database used to be dropped, so a short PostgreSQL outage lost
hundreds of issued-card records and the override report under-counted. Now a record is committed to a
local WAL file before the response leaves (a killed process keeps it), the shipper thread checkpoints that
file in batches (an fsync per batch, not per record), and a record leaves the file only once the database
has committed it.

Layout: one file per process under ``<outbox_dir>/<database id>/``, each guarded by an exclusive
``flock`` on a companion ``.lock`` file held for the life of the process. A file whose lock is free
belongs to a process that died (SIGKILL, OOM, a crashed worker): any process of the same deployment adopts
it, ships its records and deletes it. The database id keeps two deployments sharing a directory apart.

Shipping is at-least-once (a crash between the database commit and the local delete ships a record again);
the store makes it exactly-once with keys minted with each record (card uuid, audit record key, feedback
dedupe key).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from cds import jsontext
from cds.storage.store import AuditRecord, FeedbackItem, IssuedCard, ScreenPage

__all__ = ["Outbox", "OutboxFull", "OutboxMetrics", "PendingFeedback", "database_id"]

log = logging.getLogger(__name__)

_BATCH = 500
_ADOPT_EVERY_S = 5.0
_IDLE_WAKE_S = 1.0  # an idle shipper still looks for orphaned files now and then
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pending ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL)"
)
# Errors that retrying cannot fix: the record itself is unacceptable to the database.
_PERMANENT = (sa.exc.IntegrityError, sa.exc.DataError)


class OutboxFull(Exception):
    """The local outbox could not take a record (disk full, directory not writable)."""


class OutboxMetrics(Protocol):
    def count_outbox(self, kind: str, event: str, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class PendingFeedback:
    """Feedback the database could not take when it arrived, with the service it was posted to."""

    service_id: str
    item: FeedbackItem


Record = IssuedCard | AuditRecord | PendingFeedback | ScreenPage
Ship = Callable[[str, list[Any]], None]  # kind, records of that kind -> stored (raises on failure)


def database_id(redacted_url: str) -> str:
    """A short, stable name for a database, so outboxes of different deployments never mix."""
    return hashlib.sha256(redacted_url.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ encoding


def _encode(record: Record) -> tuple[str, str]:
    if isinstance(record, IssuedCard):
        fields: dict[str, Any] = {name: getattr(record, name) for name in IssuedCard.__dataclass_fields__}
        return "card", jsontext.dumps(fields)
    if isinstance(record, AuditRecord):
        fields = {name: getattr(record, name) for name in AuditRecord.__dataclass_fields__}
        return "audit", jsontext.dumps(fields)
    if isinstance(record, ScreenPage):
        fields = {name: getattr(record, name) for name in ScreenPage.__dataclass_fields__}
        return "page", jsontext.dumps(fields)
    item = {name: getattr(record.item, name) for name in FeedbackItem.__dataclass_fields__}
    return "feedback", jsontext.dumps({"service_id": record.service_id, "item": item})


def _decode(kind: str, payload: str) -> Record:
    data = jsontext.loads(payload)
    if kind == "card":
        return IssuedCard(**{**data, "issued_at": datetime.fromisoformat(data["issued_at"])})
    if kind == "audit":
        data.update(
            at=datetime.fromisoformat(data["at"]),
            rule_ids=tuple(data["rule_ids"]),
            card_uuids=tuple(data["card_uuids"]),
        )
        return AuditRecord(**data)
    if kind == "page":
        data.update(
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
        )
        return ScreenPage(**data)
    item = data["item"]
    item.update(
        accepted_suggestions=tuple(item["accepted_suggestions"]),
        outcome_at=datetime.fromisoformat(item["outcome_at"]),
        received_at=datetime.fromisoformat(item["received_at"]),
    )
    return PendingFeedback(data["service_id"], FeedbackItem(**item))


# ------------------------------------------------------------------------------------------ one file


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode = WAL")
    # A commit reaches the OS at once (a killed process keeps it); the shipper's checkpoint syncs the
    # disk in batches. `append(..., sync=True)` commits with a sync of its own.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(_SCHEMA)
    return conn


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


class _Locked:
    """An exclusive flock on `<file>.lock`, released when the holder closes it or dies."""

    def __init__(self, lock_path: Path, fd: int) -> None:
        self.lock_path = lock_path
        self.fd = fd

    @classmethod
    def create(cls, directory: Path, stem: str) -> _Locked:
        """A new lock, taken before its name becomes visible, so no one can adopt a live file."""
        temporary = directory / f"{stem}.lock.new"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        final = directory / f"{stem}.lock"
        temporary.rename(final)
        return cls(final, fd)

    @classmethod
    def try_take(cls, lock_path: Path) -> _Locked | None:
        try:
            fd = os.open(lock_path, os.O_WRONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not lock_path.exists():  # removed by an adopter that finished just before us
            os.close(fd)
            return None
        return cls(lock_path, fd)

    def release(self, *, delete: bool) -> None:
        if delete:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        os.close(self.fd)


# ------------------------------------------------------------------------------------------ the outbox


class Outbox:
    """This process's outbox file plus the thread that ships it (and adopts files of dead processes).

    Opened lazily on first use in each process, so it survives gunicorn's fork: the master never holds one.
    """

    def __init__(
        self,
        directory: Path,
        ship: Ship,
        metrics: OutboxMetrics,
        *,
        interval_s: float = 0.2,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.directory = directory
        self._ship = ship
        self._metrics = metrics
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._pid: int | None = None
        self._open_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer connection, shared by the request threads
        self._ship_lock = threading.Lock()  # the shipper thread and `flush` take turns
        self._wake = threading.Event()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # the shipper's, on this process's own file
        self._path: Path | None = None
        self._lock: _Locked | None = None
        self._unsynced = False
        self._dirty = False  # records may be waiting in this process's file
        self._failures = 0
        self._next_adopt = 0.0
        self._generation = 0
        self.healthy = True  # False while the last shipping attempt failed

    # -- writing ----------------------------------------------------------------------------------

    def append(self, records: Sequence[Record], *, sync: bool = False) -> None:
        """Commit `records` to the local file. With `sync`, also to the disk before returning (feedback,
        which the caller is told is safe). Raises OutboxFull when the file cannot take them."""
        if not records:
            return
        rows = [_encode(record) for record in records]
        try:
            writer = self._ensure_open()
            with self._write_lock:
                if sync:
                    writer.execute("PRAGMA synchronous = FULL")
                try:
                    writer.execute("BEGIN IMMEDIATE")
                    writer.executemany("INSERT INTO pending (kind, payload) VALUES (?, ?)", rows)
                    writer.execute("COMMIT")
                finally:
                    if writer.in_transaction:
                        writer.execute("ROLLBACK")
                    if sync:
                        writer.execute("PRAGMA synchronous = NORMAL")
                self._unsynced = True
                self._dirty = True
        except (sqlite3.Error, OSError) as exc:
            for kind, _ in rows:
                self._metrics.count_outbox(kind, "dropped")
            log.error("outbox: cannot write locally (%s): records dropped", type(exc).__name__)
            raise OutboxFull(type(exc).__name__) from exc
        for kind, _ in rows:
            self._metrics.count_outbox(kind, "queued")
        self._wake.set()

    def pending(self) -> int:
        """Records in this process's file not yet shipped."""
        if self._pid != os.getpid() or self._writer is None:
            return 0
        with self._write_lock:
            return int(self._writer.execute("SELECT count(*) FROM pending").fetchone()[0])

    # -- shipping ---------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Ship everything queued now, in the caller's thread. True when nothing is left."""
        if self._pid != os.getpid() or self._path is None:
            return True
        with self._ship_lock:
            while True:
                shipped = self._ship_file(self._path)
                if shipped is None:
                    self._dirty = True
                    return False
                if shipped == 0:
                    return True

    def replay_orphans(self) -> int:
        """Ship and delete the files of processes that died. Returns how many records were shipped."""
        shipped = 0
        for lock_path in sorted(self.directory.glob("*.lock")):
            if self._lock is not None and lock_path == self._lock.lock_path:
                continue
            taken = _Locked.try_take(lock_path)
            if taken is None:
                continue
            data = lock_path.with_suffix(".sqlite3")
            done = True
            if data.exists():
                while True:
                    count = self._ship_file(data)
                    if count is None:
                        done = False
                        break
                    shipped += count
                    if count == 0:
                        break
            if done:
                _remove(data)
            taken.release(delete=done)
        if shipped:
            log.info("outbox: replayed %d records left by a stopped process", shipped)
        return shipped

    def _ship_file(self, path: Path) -> int | None:
        """Ship one batch from `path`. The number shipped (0: empty), or None when the database failed."""
        own = path == self._path
        if own and self._reader is None:
            self._reader = _connect(path)  # kept open: this process ships its own file every cycle
        conn = self._reader if own and self._reader is not None else _connect(path)
        try:
            rows = conn.execute(
                "SELECT id, kind, payload FROM pending ORDER BY id LIMIT ?", (_BATCH,)
            ).fetchall()
            if not rows:
                return 0
            if not self._ship_rows(rows):
                return None
            # the batch is the oldest rows and ids only grow (AUTOINCREMENT): one range delete, not one
            # statement per row (which was a third of the shipper's time)
            conn.execute("DELETE FROM pending WHERE id <= ?", (rows[-1][0],))
            return len(rows)
        finally:
            if not own:
                conn.close()

    def _ship_rows(self, rows: list[tuple[int, str, str]]) -> bool:
        """Ship rows grouped by kind. True when every row may be deleted (stored, or dropped as
        unacceptable); False when the database failed and all of them must stay."""
        by_kind: dict[str, list[Record]] = {}
        for _row_id, kind, payload in rows:
            try:
                by_kind.setdefault(kind, []).append(_decode(kind, payload))
            except (ValueError, TypeError, KeyError) as exc:
                self._metrics.count_outbox(kind, "dropped")
                log.error("outbox: unreadable %s record dropped (%s)", kind, type(exc).__name__)
        for kind, records in by_kind.items():
            try:
                self._ship(kind, records)
            except _PERMANENT:
                self._ship_one_by_one(kind, records)
            except Exception as exc:  # the database is down or hung: keep everything, retry later
                self._metrics.count_outbox(kind, "retried", len(records))
                self._note_failure(exc)
                return False
            else:
                self._metrics.count_outbox(kind, "shipped", len(records))
        self._note_success()
        return True

    def _ship_one_by_one(self, kind: str, records: list[Record]) -> None:
        """A batch the database refused as a whole: find the record it cannot accept and drop only that."""
        for record in records:
            try:
                self._ship(kind, [record])
            except _PERMANENT as exc:
                self._metrics.count_outbox(kind, "dropped")
                log.error("outbox: %s record refused by the database (%s): dropped", kind, type(exc).__name__)
            else:
                self._metrics.count_outbox(kind, "shipped")

    def _note_failure(self, exc: Exception) -> None:
        self._failures += 1
        if self.healthy or self._failures % 20 == 0:
            log.warning("outbox: database unavailable (%s); records kept locally", type(exc).__name__)
        self.healthy = False

    def _note_success(self) -> None:
        if not self.healthy:
            log.info("outbox: database reachable again; shipping")
        self.healthy = True
        self._failures = 0

    # -- the process's file and thread -------------------------------------------------------------

    def _ensure_open(self) -> sqlite3.Connection:
        if self._pid == os.getpid() and self._writer is not None:
            return self._writer
        with self._open_lock:
            if self._pid != os.getpid() or self._writer is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                stem = f"outbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self._lock = _Locked.create(self.directory, stem)
                self._path = self.directory / f"{stem}.sqlite3"
                self._writer = _connect(self._path)
                self._reader = None  # a parent's (before a fork) is not ours to use
                self._pid = os.getpid()
                self._generation += 1
                shipper = threading.Thread(target=self._run, args=(self._generation,), daemon=True)
                shipper.name = "cds-outbox"
                shipper.start()
                atexit.register(self.close)
            return self._writer

    def _run(self, generation: int) -> None:
        while self._generation == generation:  # until `close`, or a fork (the child has no such thread)
            if self._failures:  # back off; new records wait in the file meanwhile
                time.sleep(min(self._interval_s * 2 ** min(self._failures, 16), self._max_backoff_s))
            else:
                self._wake.wait(_IDLE_WAKE_S)
                self._wake.clear()
                if self._dirty:
                    time.sleep(self._interval_s)  # let a batch gather: one sync and one commit for it
            with contextlib.suppress(Exception):  # the shipper must outlive anything a cycle meets
                self._cycle()

    def _cycle(self) -> None:
        with self._ship_lock:
            if self._path is not None and self._dirty:
                self._sync()
                self._dirty = False
                if self._ship_file(self._path) != 0:
                    self._dirty = True  # more than a batch, or the database failed: come back
            if time.monotonic() >= self._next_adopt and self.healthy:
                self._next_adopt = time.monotonic() + _ADOPT_EVERY_S
                self.replay_orphans()

    def _sync(self) -> None:
        """The batched fsync: a checkpoint writes the WAL's new records to the file and syncs both."""
        if not self._unsynced or self._writer is None:
            return
        with self._write_lock:
            self._unsynced = False
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Ship what can be shipped, then release this process's file (what is left is adopted later)."""
        if self._pid != os.getpid() or self._writer is None or self._path is None:
            return
        with contextlib.suppress(Exception):
            self.flush()
        with self._write_lock:
            empty = self._writer.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
            self._writer.close()
            self._writer = None
        self._pid = None
        self._generation += 1  # the shipper thread stops at its next wake-up
        with self._ship_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if empty:
                _remove(self._path)
            self._path = None
            if self._lock is not None:
                self._lock.release(delete=empty)
                self._lock = None
        self._wake.set()
