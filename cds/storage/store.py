"""Feedback, issued cards and audit records: what the service keeps (cds.storage.analytics reads it back).

One SQLAlchemy 2 Core schema serves both embedded and shared deployments:

* SQLite (the default, ``sqlite:///ketamine-cds.sqlite3``): WAL journal and ``synchronous=FULL``, so a
  commit that returned has reached the disk and survives a SIGKILL or power loss; write transactions start
  with ``BEGIN IMMEDIATE`` so that several gunicorn workers queue for the write lock (``busy_timeout``)
  instead of failing on a read-to-write upgrade.
* PostgreSQL by URL: ``postgresql://`` and ``postgres://`` are rewritten to the psycopg 3 driver
  (``postgresql+psycopg://``). Several replicas can share one database.

Tables (all times UTC):

    issued_card     one row per card we returned: uuid, service, rule id and version, hookInstance,
                    keyed patient and encounter hashes, indicator, evidence fingerprint, time
    card_feedback   one row per distinct feedback item; exact repeats are absorbed by ``dedupe_key``;
                    ``known_card`` is false when the card uuid was not one we had issued
    audit_record    one row per service call: hookInstance, service, issuer, jti, patient hash,
                    duration, HTTP status, rule ids, card uuids
    shared_marker   short-lived markers shared by workers and replicas when no Redis is configured
                    (cards already shown, JWT ids already seen); see ``cds.storage.shared_state``
    service_secret  secrets generated once for the whole deployment (the pseudonym key when
                    ``KETAMINE_CDS_AUDIT_HASH_KEY`` is not set)

Issued cards and audit records arrive through the outbox (``cds.storage.outbox``), which may deliver a
record more than once: both are written with ON CONFLICT DO NOTHING on a key minted with the record.

Privacy: patients and encounters are stored only as HMAC-SHA256 with the site's audit key
(:func:`patient_hash`). Tokens, resource bodies and names are never passed to this module.

The schema is created and upgraded by Alembic (:meth:`Store.migrate`); the migration scripts ship inside the
package (``cds/storage/migrations``) and are configured in code, so no ``alembic.ini`` is needed at run time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine, make_url

from cds import jsontext
from cds.errors import ConfigError

__all__ = [
    "AuditRecord",
    "FeedbackItem",
    "IssuedCard",
    "ScreenPage",
    "Store",
    "StoredFeedback",
    "audit_table",
    "feedback_table",
    "issued_card_table",
    "metadata",
    "patient_hash",
    "service_secret_table",
    "shared_marker_table",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x6B_63_64_73  # "kcds": serialises concurrent `migrate()` calls on PostgreSQL
_SQLITE_BUSY_TIMEOUT_MS = 10_000
_AUDIT_KEY_NAME = "audit_hash_key"  # the row of service_secret that holds the generated key


def patient_hash(key: str, patient_ref: str) -> str:
    """The only form in which a patient (or encounter) reference is ever stored: HMAC-SHA256, hex.

    `key` is ``Settings.audit_hash_key``; without it the hash cannot be recomputed from a known id, so a
    leaked database does not reveal who was screened. The same key must be shared by all replicas.
    """
    return hmac.new(key.encode("utf-8"), patient_ref.encode("utf-8"), hashlib.sha256).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# Records passed in by the web layer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedCard:
    uuid: str
    service_id: str
    rule_id: str
    rule_version: str
    hook_instance: str
    patient_hash: str
    encounter_hash: str | None
    indicator: str
    fingerprint: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One entry of a CDS Hooks feedback body (``outcome`` is ``accepted`` or ``overridden``)."""

    card_uuid: str
    outcome: str
    override_system: str | None
    override_code: str | None
    override_display: str | None
    user_comment: str | None
    accepted_suggestions: tuple[str, ...]
    outcome_at: datetime
    received_at: datetime

    def dedupe_key(self, service_id: str) -> str:
        """Identical for exact repeats of the same item (the time we received it does not count)."""
        canonical = json.dumps(
            [
                service_id,
                self.card_uuid,
                self.outcome,
                self.override_system,
                self.override_code,
                self.override_display,
                self.user_comment,
                list(self.accepted_suggestions),
                as_utc(self.outcome_at).isoformat(),
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    """A feedback item read back, with the service it was posted to and whether we knew the card."""

    service_id: str
    item: FeedbackItem
    known_card: bool


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One service call. ``outcome`` is the HTTP status returned."""

    hook_instance: str
    service_id: str
    issuer: str | None
    jti: str | None
    patient_hash: str | None
    duration_ms: float
    outcome: int
    rule_ids: tuple[str, ...]
    card_uuids: tuple[str, ...]
    at: datetime
    record_key: str = field(default_factory=lambda: uuid.uuid4().hex)  # stored once however often shipped


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps naive UTC text, PostgreSQL timestamptz).

    Naive datetimes handed in are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, _dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrement needs INTEGER

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

issued_card_table = sa.Table(
    "issued_card",
    metadata,
    sa.Column("uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("rule_id", sa.String(128), nullable=False, index=True),
    sa.Column("rule_version", sa.String(64), nullable=False),
    sa.Column("hook_instance", sa.String(128), nullable=False),
    sa.Column("patient_hash", sa.String(64), nullable=False, index=True),
    sa.Column("encounter_hash", sa.String(64), nullable=True),
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("issued_at", UtcDateTime(), nullable=False, index=True),
)

feedback_table = sa.Table(
    "card_feedback",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(64), nullable=False, unique=True),
    sa.Column("card_uuid", sa.Text(), nullable=False, index=True),
    sa.Column("service_id", sa.Text(), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("override_system", sa.Text(), nullable=True),
    sa.Column("override_code", sa.Text(), nullable=True),
    sa.Column("override_display", sa.Text(), nullable=True),
    sa.Column("user_comment", sa.Text(), nullable=True),
    sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
    sa.Column("outcome_at", UtcDateTime(), nullable=False),
    sa.Column("received_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("known_card", sa.Boolean(), nullable=False),
)

audit_table = sa.Table(
    "audit_record",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False, index=True),
    sa.Column("hook_instance", sa.Text(), nullable=False),
    sa.Column("service_id", sa.Text(), nullable=False),
    sa.Column("issuer", sa.Text(), nullable=True),
    sa.Column("jti", sa.Text(), nullable=True),
    sa.Column("patient_hash", sa.String(64), nullable=True, index=True),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.Column("outcome", sa.Integer(), nullable=False),
    sa.Column("rule_ids", sa.JSON(), nullable=False),
    sa.Column("card_uuids", sa.JSON(), nullable=False),
    sa.Column("record_key", sa.String(64), nullable=True, unique=True),
)

shared_marker_table = sa.Table(
    "shared_marker",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("marker", sa.String(64), primary_key=True),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("value", sa.String(64), nullable=True),
)

service_secret_table = sa.Table(
    "service_secret",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


screen_page_table = sa.Table(
    "screen_page",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
    sa.Column("payload", sa.JSON(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class ScreenPage:
    """The whole screen behind one response's cards, kept until its link expires."""

    id: str
    created_at: datetime
    expires_at: datetime
    payload: Mapping[str, Any]


# JSON columns (screening pages, audit lists) written and read with msgspec: cds/jsontext.py.
_JSON_CODEC: dict[str, Any] = {"json_serializer": jsontext.dumps, "json_deserializer": jsontext.loads}


def _normalise_url(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"KETAMINE_CDS_DATABASE_URL is not a database URL: {exc}") from exc
    if url.drivername in {"postgresql", "postgres"}:
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(
            "KETAMINE_CDS_DATABASE_URL must be a sqlite:/// or postgresql:// URL, "
            f"got {url.render_as_string(hide_password=True)!r}"
        )
    return url


class Store:
    """Persistence for feedback, issued cards and audit records. Thread-safe; one per process.

    Open it in each worker process (after gunicorn forks), not in the master: pooled connections must not
    be shared across a fork. Run `migrate` once before the workers start, or let each call it: concurrent
    upgrades wait for each other.
    """

    def __init__(self, engine: Engine, marker_engine: Engine | None = None) -> None:
        self.engine = engine
        # Shared markers, issued-card and audit records need atomicity, not power-loss durability: a lost
        # marker only shows a card once more, and these records are written off the request path. On
        # SQLite they use a connection with synchronous=NORMAL, which in WAL mode commits without an
        # fsync and still survives a killed process; feedback, which the caller relies on, keeps FULL.
        # (An fsync per audit row held SQLite's single write lock and made the request path wait.)
        self._marker_engine = marker_engine or engine
        self._is_sqlite = engine.dialect.name == "sqlite"

    # -- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        database_url: str,
        *,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 5.0,
        pool_timeout_s: float = 2.0,
    ) -> Store:
        """Create the engine for `database_url` (no connection is made until first use or `migrate`).

        On PostgreSQL every connection attempt, statement and wait for a pooled connection is bounded, so
        a database that accepts connections but never answers costs a call seconds, not forever.
        """
        url = _normalise_url(database_url)
        try:
            marker_engine = None
            if url.get_backend_name() == "sqlite":
                engine = sa.create_engine(url, **_JSON_CODEC)
                _configure_sqlite(engine, synchronous="FULL")
                marker_engine = sa.create_engine(url, **_JSON_CODEC)
                _configure_sqlite(marker_engine, synchronous="NORMAL")
            else:
                engine = sa.create_engine(
                    url,
                    **_JSON_CODEC,
                    pool_pre_ping=True,
                    pool_timeout=pool_timeout_s,
                    connect_args=_postgres_limits(url, connect_timeout_s, statement_timeout_s),
                )
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(
                f"cannot use database {url.render_as_string(hide_password=True)!r}: {exc}"
            ) from exc
        return cls(engine, marker_engine)

    @property
    def redacted_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self._is_sqlite

    def migrate(self) -> str:
        """Bring the schema to the newest Alembic revision and say what was done. Safe to call from several
        processes at once: PostgreSQL takes an advisory lock, SQLite the write lock, for the upgrade."""
        # Imported here: serving workers never migrate (the master did), and Alembic weighs ~11 MB.
        from alembic import command  # noqa: PLC0415
        from alembic.config import Config  # noqa: PLC0415
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self._write() as conn:
                if not self._is_sqlite:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                before = MigrationContext.configure(conn).get_current_revision()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                after = MigrationContext.configure(conn).get_current_revision()
        except sa.exc.SQLAlchemyError as exc:
            raise ConfigError(f"cannot migrate database {self.redacted_url!r}: {_one_line(exc)}") from exc
        where = f"database {self.redacted_url}"
        if before == after:
            return f"{where}: schema already at revision {after}, nothing to do"
        return f"{where}: schema upgraded from {before or 'empty'} to revision {after}"

    def ping(self) -> None:
        """One round trip; raises SQLAlchemyError when the database cannot answer."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def audit_key(self) -> str:
        """The deployment's pseudonym key, generated and stored on first use: the same for every process
        and replica that shares this database, and across restarts."""
        candidate = secrets.token_hex(32)
        statement = self._insert(service_secret_table).on_conflict_do_nothing(index_elements=["name"])
        with self._write() as conn:
            conn.execute(statement, {"name": _AUDIT_KEY_NAME, "value": candidate, "created_at": utc_now()})
            stored = conn.scalar(
                sa.select(service_secret_table.c.value).where(service_secret_table.c.name == _AUDIT_KEY_NAME)
            )
        return str(stored)

    def close(self) -> None:
        self.engine.dispose()
        if self._marker_engine is not self.engine:
            self._marker_engine.dispose()

    # -- writing ----------------------------------------------------------------------------------

    def record_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Store issued cards. Re-recording the same uuid is a no-op.

        Feedback can reach the database before the card it answers (another replica's outbox was slower):
        such feedback is marked known here, once both records are in.
        """
        if not cards:
            return
        rows = [
            {
                "uuid": c.uuid,
                "service_id": c.service_id,
                "rule_id": c.rule_id,
                "rule_version": c.rule_version,
                "hook_instance": c.hook_instance,
                "patient_hash": c.patient_hash,
                "encounter_hash": c.encounter_hash,
                "indicator": c.indicator,
                "fingerprint": c.fingerprint,
                "issued_at": c.issued_at,
            }
            for c in cards
        ]
        with self._write(self._marker_engine) as conn:
            conn.execute(
                self._insert(issued_card_table).on_conflict_do_nothing(index_elements=["uuid"]), rows
            )
            conn.execute(
                feedback_table.update()
                .where(feedback_table.c.card_uuid.in_([c.uuid for c in cards]), ~feedback_table.c.known_card)
                .values(known_card=True)
            )

    def record_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> int:
        """Store feedback items and commit before returning. Returns how many were new.

        An exact repeat of an item already stored is absorbed (CDS clients may resend). Feedback for a card
        uuid we never issued is stored with ``known_card`` false, not rejected.
        """
        if not items:
            return 0
        uuids = sorted({item.card_uuid for item in items})
        stored = 0
        with self._write() as conn:
            known = set(
                conn.scalars(
                    sa.select(issued_card_table.c.uuid).where(issued_card_table.c.uuid.in_(uuids))
                ).all()
            )
            statement = self._insert(feedback_table).on_conflict_do_nothing(index_elements=["dedupe_key"])
            for item in items:
                result = conn.execute(
                    statement,
                    {
                        "dedupe_key": item.dedupe_key(service_id),
                        "card_uuid": item.card_uuid,
                        "service_id": service_id,
                        "outcome": item.outcome,
                        "override_system": item.override_system,
                        "override_code": item.override_code,
                        "override_display": item.override_display,
                        "user_comment": item.user_comment,
                        "accepted_suggestions": list(item.accepted_suggestions),
                        "outcome_at": item.outcome_at,
                        "received_at": item.received_at,
                        "known_card": item.card_uuid in known,
                    },
                )
                stored += max(result.rowcount, 0)
        return stored

    def record_audit(self, record: AuditRecord) -> None:
        self.record_audits([record])

    def record_audits(self, records: Sequence[AuditRecord]) -> None:
        """Several audit records in one transaction (the background recorder writes in batches)."""
        if not records:
            return
        with self._write(self._marker_engine) as conn:
            conn.execute(
                self._insert(audit_table).on_conflict_do_nothing(index_elements=["record_key"]),
                [
                    {
                        "at": record.at,
                        "hook_instance": record.hook_instance,
                        "service_id": record.service_id,
                        "issuer": record.issuer,
                        "jti": record.jti,
                        "patient_hash": record.patient_hash,
                        "duration_ms": record.duration_ms,
                        "outcome": record.outcome,
                        "rule_ids": list(record.rule_ids),
                        "card_uuids": list(record.card_uuids),
                        "record_key": record.record_key,
                    }
                    for record in records
                ],
            )

    def claim_markers(
        self, scope: str, markers: Sequence[str], ttl_s: float, now: datetime | None = None
    ) -> list[bool]:
        """`claim_marker` for several markers in one write transaction (one lock, one commit)."""
        now = now or utc_now()
        with self._write(self._marker_engine) as conn:
            return [conn.execute(self._marker_upsert(scope, [m], ttl_s, now)).rowcount == 1 for m in markers]

    def record_markers(
        self,
        scope: str,
        markers: Sequence[str],
        ttl_s: float,
        now: datetime | None = None,
        values: Sequence[str | None] | None = None,
    ) -> None:
        """Set several markers with one multi-row statement, each (re)starting its window and carrying its
        value (the latest showing wins); no per-row answer."""
        if not markers:
            return
        now = now or utc_now()
        latest = dict(zip(markers, values or [None] * len(markers), strict=True))
        expires_at = now + timedelta(seconds=ttl_s)
        rows = [
            {"scope": scope, "marker": marker, "expires_at": expires_at, "value": value}
            for marker, value in latest.items()
        ]
        statement = self._insert(shared_marker_table).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["scope", "marker"],
            set_={"expires_at": statement.excluded.expires_at, "value": statement.excluded.value},
        )
        with self._write(self._marker_engine) as conn:
            conn.execute(statement)

    def _marker_upsert(self, scope: str, markers: Sequence[str], ttl_s: float, now: datetime) -> Any:
        """Insert the markers; a marker already present is only taken over once it has expired."""
        expires_at = now + timedelta(seconds=ttl_s)
        rows = [{"scope": scope, "marker": marker, "expires_at": expires_at} for marker in markers]
        statement = self._insert(shared_marker_table).values(rows)
        return statement.on_conflict_do_update(
            index_elements=["scope", "marker"],
            set_={"expires_at": statement.excluded.expires_at},
            where=shared_marker_table.c.expires_at <= now,
        )

    def claim_marker(self, scope: str, marker: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Atomically set (scope, marker) unless it is set and not yet expired. True when we set it.

        One statement (INSERT .. ON CONFLICT DO UPDATE .. WHERE expired), so two workers or replicas racing
        for the same marker cannot both win.
        """
        return self.claim_markers(scope, [marker], ttl_s, now)[0]

    def marker_active(self, scope: str, marker: str, now: datetime | None = None) -> bool:
        """True when (scope, marker) is set and not yet expired (a read: nothing is recorded)."""
        return self.marker_values(scope, [marker], now)[0] is not None

    def marker_values(
        self, scope: str, markers: Sequence[str], now: datetime | None = None
    ) -> list[str | None]:
        """Each marker's value while unexpired ("" when it carries none), None when it is not set: one
        query for all of them."""
        if not markers:
            return []
        now = now or utc_now()
        query = sa.select(shared_marker_table.c.marker, shared_marker_table.c.value).where(
            shared_marker_table.c.scope == scope,
            shared_marker_table.c.marker.in_(set(markers)),
            shared_marker_table.c.expires_at > now,
        )
        with self.engine.connect() as conn:
            found = {row.marker: row.value or "" for row in conn.execute(query)}
        return [found.get(marker) for marker in markers]

    def answered_cards(self, card_uuids: Sequence[str]) -> set[str]:
        """The cards among `card_uuids` that received feedback (accepted or overridden)."""
        if not card_uuids:
            return set()
        query = sa.select(feedback_table.c.card_uuid).where(feedback_table.c.card_uuid.in_(card_uuids))
        with self.engine.connect() as conn:
            return set(conn.scalars(query.distinct()))

    def purge(self, older_than_days: int, now: datetime | None = None) -> int:
        """Delete audit records, issued cards, feedback and screen pages older than the retention period,
        and expired shared markers and screen pages. Returns the number of rows deleted."""
        if older_than_days < 0:
            raise ValueError("older_than_days must not be negative")
        now = now or utc_now()
        cutoff = now - timedelta(days=older_than_days)
        deleted = 0
        with self._write() as conn:
            for statement in (
                audit_table.delete().where(audit_table.c.at < cutoff),
                feedback_table.delete().where(feedback_table.c.received_at < cutoff),
                issued_card_table.delete().where(issued_card_table.c.issued_at < cutoff),
                shared_marker_table.delete().where(shared_marker_table.c.expires_at <= now),
                screen_page_table.delete().where(
                    sa.or_(screen_page_table.c.expires_at <= now, screen_page_table.c.created_at < cutoff)
                ),
            ):
                deleted += max(conn.execute(statement).rowcount, 0)
        return deleted

    def record_screen_pages(self, pages: Sequence[ScreenPage]) -> None:
        """Store screening pages; re-recording the same id is a no-op."""
        if not pages:
            return
        rows = [
            {"id": p.id, "created_at": p.created_at, "expires_at": p.expires_at, "payload": dict(p.payload)}
            for p in pages
        ]
        with self._write() as conn:
            conn.execute(self._insert(screen_page_table).on_conflict_do_nothing(index_elements=["id"]), rows)

    def screen_page(self, page_id: str, now: datetime | None = None) -> ScreenPage | None:
        """The page with this id while it has not expired, else None (expired and unknown look alike)."""
        now = now or utc_now()
        query = sa.select(screen_page_table).where(
            screen_page_table.c.id == page_id, screen_page_table.c.expires_at > now
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return ScreenPage(row["id"], row["created_at"], row["expires_at"], row["payload"])

    # -- reading ----------------------------------------------------------------------------------

    def feedback_for(self, card_uuid: str) -> tuple[StoredFeedback, ...]:
        """Every stored feedback item for one card, oldest outcome first. Whether we issued the card is read
        now, not when the feedback arrived (its issued-card record may have been in an outbox then)."""
        issued = sa.exists().where(issued_card_table.c.uuid == feedback_table.c.card_uuid)
        query = (
            sa.select(feedback_table, issued.label("issued"))
            .where(feedback_table.c.card_uuid == card_uuid)
            .order_by(feedback_table.c.outcome_at, feedback_table.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return tuple(
            StoredFeedback(
                service_id=row["service_id"],
                known_card=bool(row["known_card"] or row["issued"]),
                item=FeedbackItem(
                    card_uuid=row["card_uuid"],
                    outcome=row["outcome"],
                    override_system=row["override_system"],
                    override_code=row["override_code"],
                    override_display=row["override_display"],
                    user_comment=row["user_comment"],
                    accepted_suggestions=tuple(row["accepted_suggestions"]),
                    outcome_at=row["outcome_at"],
                    received_at=row["received_at"],
                ),
            )
            for row in rows
        )

    # -- internals --------------------------------------------------------------------------------

    def _insert(self, table: sa.Table) -> Any:
        """A dialect INSERT with ON CONFLICT support (both dialects spell it the same way), whose result
        keeps its rowcount (SQLAlchemy guarantees it only for UPDATE and DELETE otherwise)."""
        insert = sqlite_dialect.insert(table) if self._is_sqlite else pg_dialect.insert(table)
        return insert.execution_options(preserve_rowcount=True)

    @contextmanager
    def _write(self, engine: Engine | None = None) -> Iterator[Connection]:
        """A connection in a write transaction, committed on exit (durable on return for the main engine)."""
        with (engine or self.engine).connect() as conn:
            if self._is_sqlite:
                conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn


def _one_line(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own words, first line only (SQLAlchemy appends the statement and a help link)."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def _postgres_limits(url: URL, connect_timeout_s: float, statement_timeout_s: float) -> dict[str, Any]:
    """libpq options bounding a connection attempt, a statement, and a peer that stopped acknowledging."""
    options = str(url.query.get("options", ""))  # keep what the URL sets (a search_path, say)
    statement_ms = max(int(statement_timeout_s * 1000), 1)
    return {
        "connect_timeout": max(round(connect_timeout_s), 1),  # libpq counts whole seconds (min 2)
        "options": f"{options} -c statement_timeout={statement_ms}".strip(),
        "tcp_user_timeout": statement_ms,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
    }


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (a persistent setting, so only the very first connection changes it).

    SQLite answers "database is locked" at once, without waiting for busy_timeout, when another connection
    holds a lock during the switch (several workers opening a fresh file), so wait here instead.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _configure_sqlite(engine: Engine, *, synchronous: str) -> None:
    """WAL + the given synchronous level, and explicit BEGIN so write transactions take the lock up front."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
