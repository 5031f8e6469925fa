"""Persistence end to end through the HTTP API: select -> override feedback -> sign lands in the store and
in the committee report (PostgreSQL and the SQLite default), metrics and the analytics endpoint see the
calls, and audit records keep the patient only as a keyed hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cds.cli import main
from cds.storage.store import audit_table, issued_card_table, patient_hash
from tests.conftest import TEST_HASH_KEY
from tests.support.backends import fresh_postgres_schema
from tests.support.builders import (
    PATIENT,
    RXNORM,
    coding,
    concept,
    dosage,
    hook_request,
    ketamine_order,
    med_statement,
)

CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
BENZO = "benzodiazepine-response"
ENCOUNTER = "encounter-4c1d-persistence"
HASH_KEY = TEST_HASH_KEY  # make_app's audit_hash_key
COMMENT = "discussed a timed hold with the prescriber"

AppFactory = Callable[..., Flask]


def benzo_request(hook: str) -> dict[str, Any]:
    statement = med_statement(CLONAZEPAM, rid="ms-clonazepam", dosages=[dosage(dose=2, frequency=2)])
    return hook_request(hook, drafts=[ketamine_order()], statements=[statement], encounter=ENCOUNTER)


def post_json(client: FlaskClient, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return response.get_json(silent=True)


def select_override_sign(app: Flask) -> dict[str, Any]:
    """The flow a clinician produces: a card at order-select, overridden with a reason, then order-sign.

    Returns the overridden card and the reason given. Records are flushed to the store on return.
    """
    client = app.test_client()
    cards = post_json(client, "/cds-services/ketamine-order-select", benzo_request("order-select"))["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == BENZO)
    reason = card["overrideReasons"][0]
    # issued cards are written in the background; a clinician takes longer to answer than that takes
    app.extensions["ketamine_cds"].flush()
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason, "userComment": COMMENT},
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }
    assert post_json(client, "/cds-services/ketamine-order-select/feedback", feedback) is None
    signed = post_json(client, "/cds-services/ketamine-order-sign", benzo_request("order-sign"))["cards"]
    assert all(c["source"]["topic"]["code"] != BENZO for c in signed), "the overridden card is not repeated"
    app.extensions["ketamine_cds"].flush()
    return {"card": card, "reason": reason}


@pytest.fixture
def open_apps() -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for app in apps:
        runtime = app.extensions["ketamine_cds"]
        runtime.flush()
        runtime.store.close()


def benzo_row(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["rules"] if r["ruleId"] == BENZO)


def assert_override_reported(row: dict[str, Any], reason: dict[str, Any]) -> None:
    assert (row["shown"], row["accepted"], row["overridden"]) == (1, 0, 1)
    assert row["overrideRate"] == 1.0
    assert row["overrideReasons"] == [{"count": 1, **reason}]


# ------------------------------------------------------------------------------------------------


def test_select_override_sign_lands_in_postgresql_and_the_report(
    make_app: AppFactory,
    open_apps: list[Flask],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with fresh_postgres_schema() as url:
        app = make_app(database_url=url)
        open_apps.append(app)
        store = app.extensions["ketamine_cds"].store
        assert store.engine.dialect.name == "postgresql"
        flow = select_override_sign(app)

        (stored,) = store.feedback_for(flow["card"]["uuid"])
        assert stored.known_card
        assert stored.service_id == "ketamine-order-select"
        assert stored.item.outcome == "overridden"
        assert stored.item.override_code == flow["reason"]["code"]
        assert stored.item.user_comment == COMMENT

        # the committee's command, against the same database
        monkeypatch.setenv("KETAMINE_CDS_DATABASE_URL", url)
        out = tmp_path / "report.json"
        assert main(["report", "--format", "json", "--output", str(out)]) == 0
        report = json.loads(out.read_text(encoding="utf-8"))
        assert_override_reported(benzo_row(report), flow["reason"])
        assert report["unmatchedFeedback"] == 0

        store.close()  # before the schema is dropped


def test_select_override_sign_on_the_sqlite_default_and_the_html_report(
    make_app: AppFactory,
    open_apps: list[Flask],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    app = make_app()  # make_app's default: a SQLite file
    open_apps.append(app)
    assert app.extensions["ketamine_cds"].store.is_sqlite
    flow = select_override_sign(app)

    monkeypatch.setenv("KETAMINE_CDS_DATABASE_URL", str(app.extensions["ketamine_cds"].store.engine.url))
    json_out, html_out = tmp_path / "report.json", tmp_path / "report.html"
    assert main(["report", "--format", "json", "--output", str(json_out)]) == 0
    assert_override_reported(benzo_row(json.loads(json_out.read_text(encoding="utf-8"))), flow["reason"])
    assert main(["report", "--format", "html", "--output", str(html_out)]) == 0
    html = html_out.read_text(encoding="utf-8")
    assert "<svg" in html
    assert BENZO in html
    assert flow["reason"]["code"] in html or flow["reason"]["display"] in html


def test_metrics_and_analytics_endpoints_see_the_calls(make_app: AppFactory, open_apps: list[Flask]) -> None:
    app = make_app()
    open_apps.append(app)
    flow = select_override_sign(app)
    client = app.test_client()

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }
    sign = (("service", "ketamine-order-sign"), ("status", "200"))
    assert samples[("ketamine_cds_requests_total", sign)] == 1
    assert samples[("ketamine_cds_request_duration_seconds_count", sign)] == 1
    select = (("service", "ketamine-order-select"), ("status", "200"))
    assert samples[("ketamine_cds_requests_total", select)] >= 1  # (its feedback post is counted there too)
    assert samples[("ketamine_cds_request_duration_seconds_count", select)] >= 1
    # one benzodiazepine card was returned (at select); the repeat suppressed at sign is not counted
    assert samples[("ketamine_cds_cards_issued_total", (("indicator", "warning"), ("rule_id", BENZO)))] == 1

    response = client.get("/analytics/overrides")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert_override_reported(benzo_row(response.get_json()), flow["reason"])
    assert client.get("/analytics/overrides?since=2000-01-01").status_code == 200
    assert client.get("/analytics/overrides?since=not-a-date").status_code == 400


def test_audit_records_keep_the_patient_only_as_a_hash(make_app: AppFactory, open_apps: list[Flask]) -> None:
    app = make_app()
    open_apps.append(app)
    flow = select_override_sign(app)  # three calls: select, feedback, sign (flushed)
    store = app.extensions["ketamine_cds"].store
    hashed = patient_hash(HASH_KEY, f"Patient/{PATIENT}")

    with store.engine.connect() as conn:
        audits = conn.execute(sa.select(audit_table).order_by(audit_table.c.id)).mappings().all()
        cards = conn.execute(sa.select(issued_card_table)).mappings().all()

    assert [(a["service_id"], a["outcome"]) for a in audits] == [
        ("ketamine-order-select", 200),
        ("ketamine-order-select", 200),
        ("ketamine-order-sign", 200),
    ]
    assert audits[0]["patient_hash"] == hashed
    assert audits[2]["patient_hash"] == hashed
    assert audits[1]["patient_hash"] is None  # feedback names no patient
    assert flow["card"]["uuid"] in audits[0]["card_uuids"]
    assert BENZO in audits[0]["rule_ids"]

    assert cards, "the cards shown at order-select are recorded"
    assert {c["patient_hash"] for c in cards} == {hashed}
    assert {c["encounter_hash"] for c in cards} == {patient_hash(HASH_KEY, ENCOUNTER)}

    for row in [*audits, *cards]:
        for column, value in row.items():
            text = json.dumps(value, default=str)
            assert PATIENT not in text, f"raw patient id in {column}"
            assert ENCOUNTER not in text, f"raw encounter id in {column}"
