"""The store against SQLite (a temporary file) and PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cds.errors import ConfigError
from cds.storage.analytics import ReasonCount, override_report
from cds.storage.store import (
    AuditRecord,
    FeedbackItem,
    IssuedCard,
    Store,
    audit_table,
    feedback_table,
    metadata,
    patient_hash,
)
from tests.support.backends import fresh_postgres_schema

KEY = "test-audit-key"
OVERRIDE_SYSTEM = "https://example.org/CodeSystem/ketamine-override-reasons"
MONDAY = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # a Monday: week 10 of 2025


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        with fresh_postgres_schema() as url:
            yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.open(database_url)
    store.migrate()
    yield store
    store.close()


def card(
    uuid_: str, rule_id: str = "ketamine-benzodiazepine", at: datetime = MONDAY, **kw: str
) -> IssuedCard:
    return IssuedCard(
        uuid=uuid_,
        service_id=kw.get("service_id", "ketamine-order-sign"),
        rule_id=rule_id,
        rule_version=kw.get("rule_version", "1.0.0"),
        hook_instance=kw.get("hook_instance", str(uuid.uuid4())),
        patient_hash=patient_hash(KEY, kw.get("patient", "Patient/p1")),
        encounter_hash=None,
        indicator=kw.get("indicator", "warning"),
        fingerprint=kw.get("fingerprint", "fp-1"),
        issued_at=at,
    )


def accepted(card_uuid: str, at: datetime, suggestions: tuple[str, ...] = ("s-1",)) -> FeedbackItem:
    return FeedbackItem(
        card_uuid, "accepted", None, None, None, None, suggestions, at, at + timedelta(seconds=1)
    )


def overridden(
    card_uuid: str, at: datetime, code: str | None = "patient-informed", display: str | None = None
) -> FeedbackItem:
    return FeedbackItem(
        card_uuid,
        "overridden",
        OVERRIDE_SYSTEM if code else None,
        code,
        display,
        None,
        (),
        at,
        at + timedelta(seconds=1),
    )


# ------------------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_matches_the_model(store: Store) -> None:
    store.migrate()  # a second run is a no-op
    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert diffs == []
    assert version == "0003"  # r0003: screen pages


def test_concurrent_migrations_do_not_collide(database_url: str) -> None:
    stores = [Store.open(database_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(s: Store) -> None:
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []


def test_feedback_round_trip(store: Store) -> None:
    store.record_cards([card("c-1")])
    item = FeedbackItem(
        card_uuid="c-1",
        outcome="overridden",
        override_system=OVERRIDE_SYSTEM,
        override_code="benefit-outweighs-risk",
        override_display="Benefit outweighs risk",
        user_comment="discussed with psychiatry",
        accepted_suggestions=(),
        outcome_at=datetime(2025, 3, 3, 9, 5, 7, 123456, tzinfo=UTC),
        received_at=datetime(2025, 3, 3, 9, 5, 8, tzinfo=UTC),
    )
    assert store.record_feedback("ketamine-order-sign", [item]) == 1
    [stored] = store.feedback_for("c-1")
    assert stored.item == item
    assert stored.service_id == "ketamine-order-sign"
    assert stored.known_card is True
    assert stored.item.outcome_at.tzinfo is not None


def test_exact_repeats_are_absorbed_but_new_outcomes_are_kept(store: Store) -> None:
    store.record_cards([card("c-1")])
    first = overridden("c-1", MONDAY)
    assert store.record_feedback("svc", [first, first]) == 1
    # the client resends the same item later: same content, different arrival time
    resent = FeedbackItem(**{**_fields(first), "received_at": MONDAY + timedelta(hours=1)})
    assert store.record_feedback("svc", [resent]) == 0
    later = accepted("c-1", MONDAY + timedelta(minutes=5), ("s-9",))
    assert store.record_feedback("svc", [later]) == 1
    stored = store.feedback_for("c-1")
    assert [s.item.outcome for s in stored] == ["overridden", "accepted"]
    assert stored[1].item.accepted_suggestions == ("s-9",)


def test_feedback_for_unknown_card_is_stored_and_flagged(store: Store) -> None:
    assert store.record_feedback("svc", [accepted("never-issued", MONDAY)]) == 1
    [stored] = store.feedback_for("never-issued")
    assert stored.known_card is False
    assert override_report(store).unmatched_feedback == 1
    assert override_report(store).rules == ()


def test_feedback_arriving_before_its_card_record_becomes_known(store: Store) -> None:
    """Across replicas the feedback can reach the database before the card's record (still in the other
    replica's outbox): it is attributed to the card once both are in, in the column and when read."""
    assert store.record_feedback("svc", [accepted("c-late", MONDAY)]) == 1
    [before] = store.feedback_for("c-late")
    assert before.known_card is False
    store.record_cards([card("c-late")])
    [after] = store.feedback_for("c-late")
    assert after.known_card is True
    with store.engine.connect() as conn:
        column = conn.scalar(
            sa.select(feedback_table.c.known_card).where(feedback_table.c.card_uuid == "c-late")
        )
    assert column is True
    assert override_report(store).unmatched_feedback == 0
    assert override_report(store).rules[0].total.accepted == 1


def test_audit_records_shipped_twice_are_stored_once(store: Store) -> None:
    record = AuditRecord("h", "svc", None, None, None, 1.0, 200, (), (), MONDAY)
    store.record_audits([record])
    store.record_audits([record])  # the outbox delivers at least once
    with store.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(audit_table)) == 1


def test_record_cards_is_idempotent(store: Store) -> None:
    store.record_cards([card("c-1"), card("c-2")])
    store.record_cards([card("c-1")])
    assert override_report(store).rules[0].total.shown == 2


def test_audit_record_is_stored_without_patient_ids(store: Store) -> None:
    raw_patient = "Patient/very-identifiable-123"
    record = AuditRecord(
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        service_id="ketamine-order-select",
        issuer="https://ehr.example.org",
        jti="jti-1",
        patient_hash=patient_hash(KEY, raw_patient),
        duration_ms=12.5,
        outcome=200,
        rule_ids=("r-1", "r-2"),
        card_uuids=("c-1",),
        at=MONDAY,
    )
    store.record_audit(record)
    store.record_cards([card("c-1", patient=raw_patient)])
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(audit_table)).mappings().one()
        everything = " ".join(
            str(r) for table in metadata.sorted_tables for r in conn.execute(sa.select(table)).all()
        )
    assert row["outcome"] == 200
    assert row["rule_ids"] == ["r-1", "r-2"]
    assert row["card_uuids"] == ["c-1"]
    assert row["at"] == MONDAY
    assert "very-identifiable" not in everything
    assert patient_hash(KEY, raw_patient) in everything


def test_report_numbers_for_a_known_data_set(store: Store) -> None:
    week1, week2 = MONDAY, MONDAY + timedelta(days=7, hours=3)
    benzo, bp = "ketamine-benzodiazepine", "ketamine-blood-pressure"
    store.record_cards(
        [
            # week 1, benzodiazepine rule: 4 cards
            card("b1", benzo, week1),
            card("b2", benzo, week1 + timedelta(hours=1)),
            card("b3", benzo, week1 + timedelta(days=2), rule_version="1.1.0"),
            card("b4", benzo, week1 + timedelta(days=6, hours=14)),  # Sunday: still week 1
            # week 2, benzodiazepine rule: 2 cards
            card("b5", benzo, week2),
            card("b6", benzo, week2 + timedelta(hours=2)),
            # week 2, blood pressure rule: 3 cards
            card("p1", bp, week2),
            card("p2", bp, week2),
            card("p3", bp, week2),
        ]
    )
    store.record_feedback(
        "ketamine-order-sign",
        [
            overridden("b1", week1, "patient-informed", "Patient informed"),
            overridden("b2", week1, "patient-informed"),
            overridden("b3", week1, "benefit-outweighs-risk", "Benefit outweighs risk"),
            # b4: overridden, then accepted later -> counts once, as accepted
            overridden("b4", week1 + timedelta(days=6, hours=15), None),
            accepted("b4", week1 + timedelta(days=6, hours=16)),
            accepted("b5", week2),
            # b6 gets no feedback
            overridden("p1", week2, None),  # no reason given
            accepted("p2", week2),
            # p3 gets no feedback
            accepted("ghost", week2),  # never issued
        ],
    )
    report = override_report(store)
    assert [r.rule_id for r in report.rules] == [benzo, bp]  # sorted by rule id
    assert report.unmatched_feedback == 1
    benzo_stats, bp_stats = report.rules

    total = benzo_stats.total
    assert (total.shown, total.accepted, total.overridden, total.no_feedback) == (6, 2, 3, 1)
    assert total.override_rate == pytest.approx(3 / 5)
    assert benzo_stats.rule_versions == ("1.0.0", "1.1.0")
    assert total.reasons == (
        ReasonCount(OVERRIDE_SYSTEM, "patient-informed", "Patient informed", 2),
        ReasonCount(OVERRIDE_SYSTEM, "benefit-outweighs-risk", "Benefit outweighs risk", 1),
    )
    assert [w.week_start for w in benzo_stats.weeks] == [date(2025, 3, 3), date(2025, 3, 10)]
    w1, w2 = (w.tally for w in benzo_stats.weeks)
    assert (w1.shown, w1.accepted, w1.overridden, w1.override_rate) == (4, 1, 3, pytest.approx(0.75))
    assert (w2.shown, w2.accepted, w2.overridden, w2.no_feedback, w2.override_rate) == (2, 1, 0, 1, 0.0)

    bp_total = bp_stats.total
    assert (bp_total.shown, bp_total.accepted, bp_total.overridden, bp_total.no_feedback) == (3, 1, 1, 1)
    assert bp_total.override_rate == pytest.approx(0.5)
    assert bp_total.reasons == (ReasonCount(None, None, None, 1),)
    assert [w.week_start for w in bp_stats.weeks] == [date(2025, 3, 10)]

    # --since keeps the cards issued from then on (and their feedback)
    recent = override_report(store, since=week2 - timedelta(hours=1))
    assert recent.since == week2 - timedelta(hours=1)
    recent_benzo = next(r for r in recent.rules if r.rule_id == benzo)
    assert (recent_benzo.total.shown, recent_benzo.total.accepted, recent_benzo.total.overridden) == (2, 1, 0)
    assert len(recent_benzo.weeks) == 1
    assert recent.unmatched_feedback == 1


def test_report_when_nothing_was_issued(store: Store) -> None:
    report = override_report(store)
    assert report.rules == ()
    assert report.unmatched_feedback == 0


def test_purge_applies_the_retention_period(store: Store) -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    old, recent = now - timedelta(days=400), now - timedelta(days=10)
    store.record_cards([card("old", at=old), card("new", at=recent)])
    store.record_feedback("svc", [accepted("old", old), accepted("new", recent)])
    for at in (old, recent):
        store.record_audit(AuditRecord("h", "svc", None, None, None, 1.0, 200, (), (), at))
    assert store.claim_marker("seen", "expired", 60, now - timedelta(hours=1))
    assert store.claim_marker("seen", "live", 3600, now)

    assert store.purge(365, now=now) == 4  # one card, one feedback, one audit record, one expired marker
    assert store.feedback_for("old") == ()
    assert len(store.feedback_for("new")) == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_table)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(feedback_table)).scalar_one() == 1
    assert [r.total.shown for r in override_report(store).rules] == [1]
    assert not store.claim_marker("seen", "live", 3600, now)  # untouched
    assert store.purge(365, now=now) == 0


def test_claim_marker_expires(store: Store) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    assert store.claim_marker("jti", "m", 30, t0)
    assert not store.claim_marker("jti", "m", 30, t0 + timedelta(seconds=29))
    assert store.claim_marker("jti", "m", 30, t0 + timedelta(seconds=30))
    assert store.claim_marker("seen", "m", 30, t0)  # scopes are separate


def test_concurrent_feedback_from_several_connections(database_url: str) -> None:
    """Several workers (here: stores with their own pools) writing at once: nothing lost, nothing locked."""
    setup = Store.open(database_url)
    setup.migrate()
    stores = [Store.open(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def post(s: Store, worker: int) -> None:
        try:
            for i in range(25):
                s.record_feedback("svc", [accepted(f"w{worker}-{i}", MONDAY)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with setup.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(feedback_table)).scalar_one()
    for s in (*stores, setup):
        s.close()
    assert errors == []
    assert count == 100


def test_sqlite_is_durable_by_configuration(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
    store.close()


def test_postgres_urls_use_psycopg_3() -> None:
    store = Store.open("postgresql://user:secret@db.example.org:5432/cds")
    assert store.engine.url.drivername == "postgresql+psycopg"
    assert "secret" not in store.redacted_url
    store.close()
    store = Store.open("postgres://db.example.org/cds")
    assert store.engine.url.drivername == "postgresql+psycopg"
    store.close()


@pytest.mark.parametrize("url", ["not a url", "mysql://db.example.org/cds", "oracle://x/y"])
def test_unsupported_database_urls_stop_start_up(url: str) -> None:
    with pytest.raises(ConfigError):
        Store.open(url)


def test_unreachable_database_is_a_config_error() -> None:
    store = Store.open("postgresql://postgres:pw@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(ConfigError) as excinfo:
        store.migrate()
    store.close()
    assert "pw" not in str(excinfo.value)


def test_patient_hash_is_keyed() -> None:
    digest = patient_hash("key-a", "Patient/123")
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert digest == patient_hash("key-a", "Patient/123")
    assert digest != patient_hash("key-b", "Patient/123")
    assert digest != patient_hash("key-a", "Patient/124")


def _fields(item: FeedbackItem) -> dict[str, object]:
    return {name: getattr(item, name) for name in FeedbackItem.__dataclass_fields__}
