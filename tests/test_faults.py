"""Faults answered as faults, in-process: PostgreSQL behind a proxy that refuses or hangs, a private
redis-server that is killed. Nothing here touches the machine's shared services beyond a throwaway schema.

    dependency down          answer                                   never
    database (health)        /readyz and /healthz 503 naming it       200 "ok"
    database (feedback)      200, kept in the outbox, shipped later   500
    database (replay cache)  503 + Retry-After + OperationOutcome     401
    Redis (replay cache)     the database takes over: 200             401
    Redis and database       503 + Retry-After                        401
    database (cards)         cards answered, records shipped after    a lost record
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from cds.storage.outbox import OutboxFull
from cds.storage.store import Store, audit_table, feedback_table, issued_card_table
from tests.support.builders import (
    RXNORM,
    coding,
    concept,
    dosage,
    hook_request,
    ketamine_order,
    med_statement,
)
from tests.support.faults import FaultyProxy, private_redis, proxied_postgres
from tests.test_api_auth import CALL, Issuer, bearer, issuer, make_prod_app, patient_request, url  # noqa: F401

CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
WAIT_S = 0.5  # storage_wait_s: how long a call waits on storage before answering without it
SELECT = "/cds-services/ketamine-order-select"
# A call not answered by then is taken as hung, and the test fails instead of hanging the run. It is far
# above any answer's time on a loaded machine: it catches a hang, and says nothing about speed.
HANG_GUARD_S = 60
T = TypeVar("T")


def without_hanging(call: Callable[[], T], what: str) -> T:
    """`call()`'s result (or its exception), run on a helper thread; fails the test if it hangs."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=HANG_GUARD_S)
    except FutureTimeout:
        pytest.fail(f"{what} hung: no answer after {HANG_GUARD_S} s")
    finally:
        pool.shutdown(wait=False)  # a hung call is left behind on its thread; the test has failed


@pytest.fixture
def proxied_database() -> Iterator[tuple[str, FaultyProxy]]:
    """A fresh PostgreSQL schema reached through a proxy the test can break."""
    with proxied_postgres() as database:
        yield database


def _settings(database_url: str, **more: Any) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "storage_wait_s": WAIT_S,
        "db_connect_timeout_s": 1,
        "db_statement_timeout_s": 1,
        "outbox_interval_s": 0.05,
        "outbox_max_backoff_s": 0.2,
        **more,
    }


def _benzo_call() -> dict[str, Any]:
    statement = med_statement(CLONAZEPAM, dosages=[dosage(dose=2, frequency=2)])
    return hook_request("order-select", drafts=[ketamine_order()], statements=[statement], encounter="enc-f")


def _metric(app: Flask, name: str, **labels: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _count(database_url: str, table: sa.Table, *where: Any) -> int:
    store = Store.open(database_url)
    try:
        with store.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ health


def test_liveness_and_readiness_when_all_is_well(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    assert client.get("/livez").get_json() == {"status": "alive"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert client.get("/healthz").get_json()["status"] == "ok"


def test_readiness_names_the_database_while_it_refuses_or_hangs(
    make_app: Callable[..., Flask], proxied_database: tuple[str, FaultyProxy]
) -> None:
    database_url, proxy = proxied_database
    client = make_app(**_settings(database_url)).test_client()
    assert client.get("/readyz").status_code == 200
    for fault in (proxy.refuse, proxy.hang):
        fault()
        response = without_hanging(lambda: client.get("/readyz"), "the readiness probe")
        assert response.status_code == 503
        assert list(response.get_json()["failing"]) == ["database"]
        assert client.get("/healthz").status_code == 503
        assert client.get("/livez").status_code == 200  # alive: do not restart it for a database outage
        proxy.heal()
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.1)


# ------------------------------------------------------------------------------------------ feedback


def test_feedback_during_an_outage_is_kept_and_shipped(
    make_app: Callable[..., Flask], proxied_database: tuple[str, FaultyProxy]
) -> None:
    database_url, proxy = proxied_database
    app = make_app(**_settings(database_url))
    client = app.test_client()
    cards = client.post(SELECT, json=_benzo_call()).get_json()["cards"]
    card = next(c for c in cards if c.get("overrideReasons"))
    acknowledged = []
    for n, fault in enumerate((proxy.refuse, proxy.hang)):
        fault()
        entry = {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": card["overrideReasons"][0], "userComment": f"outage-{n}"},
            "outcomeTimestamp": f"2026-11-22T12:0{n}:00Z",
        }
        response = without_hanging(
            partial(client.post, f"{SELECT}/feedback", json={"feedback": [entry]}), "feedback in an outage"
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        acknowledged.append(f"outage-{n}")
        proxy.heal()
    assert app.extensions["ketamine_cds"].flush()
    stored = _count(database_url, feedback_table, feedback_table.c.user_comment.in_(acknowledged))
    assert stored == len(acknowledged)
    assert _metric(app, "ketamine_cds_outbox_records_total", kind="feedback", event="dropped") == 0


# ------------------------------------------------------------------------------------------ outbox


def test_no_issued_card_or_audit_record_is_lost_in_an_outage(
    make_app: Callable[..., Flask], proxied_database: tuple[str, FaultyProxy]
) -> None:
    database_url, proxy = proxied_database
    app = make_app(**_settings(database_url))
    client = app.test_client()
    runtime = app.extensions["ketamine_cds"]
    returned: list[str] = []
    calls = 0
    for phase in ("before", "refused", "hung", "after"):
        if phase == "refused":
            proxy.refuse()
        elif phase == "hung":
            proxy.hang()
        elif phase == "after":
            proxy.heal()
        for _ in range(5):
            response = client.post(SELECT, json=_benzo_call())
            assert response.status_code == 200, (phase, response.get_data(as_text=True)[:300])
            returned += [c["uuid"] for c in response.get_json()["cards"]]
            calls += 1
        if phase in ("refused", "hung"):
            # The shipper sleeps between cycles and a phase lasts only a few calls, so it may sleep through
            # the whole outage; shipping now in this thread makes the outbox meet the fault every run.
            shipped_all = without_hanging(runtime.flush, f"shipping while the database is {phase}")
            assert not shipped_all, f"the outbox reported everything shipped while the database was {phase}"
    deadline = time.monotonic() + 10
    while not runtime.flush():
        assert time.monotonic() < deadline, "the outbox did not drain after the outage"
        time.sleep(0.1)
    assert _count(database_url, issued_card_table, issued_card_table.c.uuid.in_(returned)) == len(returned)
    assert _count(database_url, audit_table) == calls
    assert _metric(app, "ketamine_cds_outbox_records_total", event="retried") > 0
    assert _metric(app, "ketamine_cds_outbox_records_total", event="dropped") == 0
    shipped = _metric(app, "ketamine_cds_outbox_records_total", kind="card", event="shipped")
    # at least once: a commit whose answer was lost in the hang is shipped again (and stored once, above)
    assert shipped >= len(returned)


# ------------------------------------------------------------------------------------------ replay cache


def _outcome_503(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)[:300]
    assert int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"


def test_replay_cache_on_a_dead_database_is_503_not_401(
    make_prod_app: Callable[..., Flask],  # noqa: F811
    issuer: Issuer,  # noqa: F811
    proxied_database: tuple[str, FaultyProxy],
) -> None:
    database_url, proxy = proxied_database
    app = make_prod_app(**_settings(database_url))
    client = app.test_client()
    assert (
        client.post(CALL, json=patient_request(), headers=bearer(issuer.token(url(CALL)))).status_code == 200
    )
    proxy.refuse()
    _outcome_503(client.post(CALL, json=patient_request(), headers=bearer(issuer.token(url(CALL)))))
    assert _metric(app, "ketamine_cds_replay_cache_errors_total", backend="database") >= 1
    proxy.heal()
    time.sleep(WAIT_S)  # the breaker closes
    assert (
        client.post(CALL, json=patient_request(), headers=bearer(issuer.token(url(CALL)))).status_code == 200
    )


def test_redis_down_falls_back_to_the_database_then_503(
    make_prod_app: Callable[..., Flask],  # noqa: F811
    issuer: Issuer,  # noqa: F811
    proxied_database: tuple[str, FaultyProxy],
    tmp_path: Path,
) -> None:
    database_url, proxy = proxied_database
    with private_redis(tmp_path) as redis_server:
        app = make_prod_app(**_settings(database_url, redis_url=redis_server.url, redis_timeout_s=0.5))
        client = app.test_client()

        def call() -> Any:
            return client.post(CALL, json=patient_request(), headers=bearer(issuer.token(url(CALL))))

        assert call().status_code == 200
        redis_server.kill()
        assert call().status_code == 200  # the database checked the token instead
        assert _metric(app, "ketamine_cds_replay_cache_errors_total", backend="redis") >= 1
        assert app.test_client().get("/readyz").get_json()["failing"] == {
            "redis": "unreachable (ConnectionError)"
        }
        proxy.refuse()
        _outcome_503(call())
        proxy.heal()
        redis_server.start()
        time.sleep(WAIT_S)
        assert call().status_code == 200
        assert app.test_client().get("/readyz").status_code == 200


# ------------------------------------------------------------------------------------------ labels


def test_unknown_service_ids_are_labelled_unknown_everywhere(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    app = make_app()
    client = app.test_client()
    probe = "Patient-8812-not-a-service"
    with caplog.at_level("DEBUG"):
        for n in range(3):
            response = client.post(f"/cds-services/{probe}{n}", json=_benzo_call())
            assert response.status_code == 404
            assert probe not in response.get_data(as_text=True)
            feedback = client.post(f"/cds-services/{probe}{n}/feedback", json={"feedback": []})
            assert feedback.status_code == 404
    metrics = client.get("/metrics").get_data(as_text=True)
    assert probe not in metrics
    assert 'service="unknown"' in metrics
    assert all(probe not in record.getMessage() + str(record.__dict__) for record in caplog.records)
    runtime = app.extensions["ketamine_cds"]
    assert runtime.flush()
    with runtime.store.engine.connect() as conn:
        services = set(conn.scalars(sa.select(audit_table.c.service_id)))
    assert services == {"unknown"}


def test_analytics_access_is_audited(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    with caplog.at_level("INFO", logger="cds.audit"):
        assert app.test_client().get("/analytics/overrides").status_code == 200
    assert [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "analytics"]
    runtime = app.extensions["ketamine_cds"]
    assert runtime.flush()
    with runtime.store.engine.connect() as conn:
        assert list(conn.scalars(sa.select(audit_table.c.service_id))) == ["analytics"]


def test_feedback_that_cannot_be_kept_anywhere_is_503_not_500(
    make_app: Callable[..., Flask],
    proxied_database: tuple[str, FaultyProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Database down and the local disk refusing the outbox (full): the caller is told to retry."""
    database_url, proxy = proxied_database
    app = make_app(**_settings(database_url))
    runtime = app.extensions["ketamine_cds"]

    def disk_full(*_args: Any, **_kwargs: Any) -> None:
        raise OutboxFull("OperationalError")

    proxy.refuse()
    monkeypatch.setattr(runtime.outbox, "append", disk_full)
    entry = {
        "card": "00000000-0000-0000-0000-00000000abcd",
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-22T12:00:00Z",
    }
    _outcome_503(app.test_client().post(f"{SELECT}/feedback", json={"feedback": [entry]}))
    proxy.heal()
