"""No repeats across hooks, through the HTTP API: a finding shown at order-select is not shown again at
order-sign to the same user for the same patient and encounter while its evidence (fingerprint) is
unchanged, unless it is critical and that user did not answer its card (feedback tells). Another user (the
pharmacist signing) sees every card; without an encounter nothing is suppressed.

Every scenario runs on each shared-state backend the app can pick (`make_shared_state`): in-process (one
worker), the database (SQLite with several workers, and PostgreSQL) and Redis (``settings.redis_url``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import cds.app
from cds.clinical.knowledge import Knowledge
from cds.storage.redis_state import RedisSeenFindings
from cds.storage.shared_state import (
    DatabaseSeenFindings,
    InProcessSeenFindings,
    make_shared_state,
)
from tests.support.backends import fresh_postgres_schema, redis_prefix, redis_url_or_skip
from tests.support.builders import (
    RXNORM,
    SNOMED,
    coding,
    concept,
    condition,
    dosage,
    hook_request,
    ketamine_order,
    med_statement,
)
from tests.support.cards import cards_by_rule
from tests.support.responses import assert_valid_response

CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
MI = concept(coding(SNOMED, "22298006", "Myocardial infarction"))
STROKE = concept(coding(SNOMED, "230690007", "Cerebrovascular accident"))
BENZO = "benzodiazepine-response"
ORDERING = "ordering-instructions"
RECENT_MI = "recent-myocardial-infarction"
RECENT_STROKE = "recent-stroke"

BACKEND_TYPES = {
    "in-process": InProcessSeenFindings,
    "sqlite": DatabaseSeenFindings,
    "postgresql": DatabaseSeenFindings,
    "redis": RedisSeenFindings,
}

AppFactory = Callable[..., Flask]


def _close(app: Flask) -> None:
    runtime = app.extensions["ketamine_cds"]
    runtime.flush()
    runtime.store.close()
    client = getattr(runtime.seen, "_client", None)
    if client is not None:
        client.close()


def _use_redis_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Shared state stays wired through settings.redis_url as in production; only the key prefix is the
    test's own, so parallel runs cannot see each other's markers and every key is deleted afterwards."""
    monkeypatch.setattr(cds.app, "make_shared_state", functools.partial(make_shared_state, prefix=prefix))


@pytest.fixture(params=list(BACKEND_TYPES))
def new_app(
    request: pytest.FixtureRequest, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AppFactory]:
    """Builds apps whose shared state is the parametrised backend; the apps of one test share it."""
    kind: str = request.param
    apps: list[Flask] = []
    with contextlib.ExitStack() as stack:
        if kind == "in-process":
            settings: dict[str, Any] = {"workers": 1}
        elif kind == "sqlite":
            settings = {"workers": 2}  # make_app's SQLite file, the same for every app of the test
        elif kind == "postgresql":
            settings = {"database_url": stack.enter_context(fresh_postgres_schema())}
        else:
            url = redis_url_or_skip()
            _use_redis_prefix(monkeypatch, stack.enter_context(redis_prefix(url)))
            settings = {"redis_url": url}

        def factory(**overrides: Any) -> Flask:
            app = make_app(**{**settings, **overrides})
            apps.append(app)
            assert isinstance(app.extensions["ketamine_cds"].seen, BACKEND_TYPES[kind])
            return app

        try:
            yield factory
        finally:
            for app in apps:
                _close(app)


@pytest.fixture
def post_cards(knowledge: Knowledge) -> Callable[[Flask, dict[str, Any]], dict[str, dict[str, Any]]]:
    """POST a hook request to its service; the shown cards by rule id."""

    def do(app: Flask, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        service = next(s.id for s in knowledge.services.values() if s.hook == body["hook"])
        response = app.test_client().post(f"/cds-services/{service}", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)[:2000]
        payload = response.get_json()
        assert_valid_response(knowledge, payload)
        return cards_by_rule(payload["cards"])

    return do


@pytest.fixture
def post(post_cards: Any) -> Callable[[Flask, dict[str, Any]], dict[str, str]]:
    """POST a hook request to its service; the shown rules as {rule id: indicator}."""

    def do(app: Flask, body: dict[str, Any]) -> dict[str, str]:
        return {rule: card["indicator"] for rule, card in post_cards(app, body).items()}

    return do


def answer(app: Flask, card: dict[str, Any], outcome: str = "overridden") -> None:
    """The clinician answers `card` (CDS Hooks feedback)."""
    entry: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": outcome,
        "outcomeTimestamp": "2026-11-22T12:01:00Z",
    }
    if outcome == "overridden":
        entry["overrideReason"] = {"reason": card["overrideReasons"][0]}
    else:
        entry["acceptedSuggestions"] = [{"id": card["suggestions"][0]["uuid"]}]
    response = app.test_client().post(
        "/cds-services/ketamine-order-select/feedback", json={"feedback": [entry]}
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def with_user(body: dict[str, Any], user: str) -> dict[str, Any]:
    body["context"]["userId"] = user
    return body


def benzo_request(hook: str, *, dose: float = 2, encounter: str = "enc-1") -> dict[str, Any]:
    """A ketamine order for a patient on clonazepam 0.25 mg x `dose` twice daily (2 -> 20 mg/day DZ-eq)."""
    statement = med_statement(CLONAZEPAM, rid="ms-clonazepam", dosages=[dosage(dose=dose, frequency=2)])
    return hook_request(hook, drafts=[ketamine_order()], statements=[statement], encounter=encounter)


def mi_request(hook: str, conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return hook_request(hook, drafts=[ketamine_order()], conditions=conditions, encounter="enc-1")


# ------------------------------------------------------------------------------------------------


def test_a_finding_shown_at_select_is_not_repeated_at_sign(new_app: AppFactory, post: Any) -> None:
    app = new_app()
    shown = post(app, benzo_request("order-select"))
    assert shown == {BENZO: "warning", ORDERING: "info"}
    assert post(app, benzo_request("order-sign")) == {}


def test_a_changed_dose_fires_again_at_sign(new_app: AppFactory, post: Any) -> None:
    app = new_app()
    assert post(app, benzo_request("order-select"))[BENZO] == "warning"
    # the benzodiazepine dose doubled between select and sign: new evidence, the card comes back;
    # the ordering instructions did not change and stay suppressed
    assert post(app, benzo_request("order-sign", dose=4)) == {BENZO: "warning"}


def test_a_new_condition_fires_again_at_sign(new_app: AppFactory, post: Any, post_cards: Any) -> None:
    """A critical card is repeated at sign until its user answers it, so the first sign shows the
    unanswered infarction card; once overridden, it is suppressed."""
    app = new_app()
    first_mi = condition(MI, onset="2026-08-15", rid="mi-1")
    shown = post_cards(app, mi_request("order-select", [first_mi]))
    assert {rule: card["indicator"] for rule, card in shown.items()} == {
        RECENT_MI: "critical",
        ORDERING: "info",
    }
    assert post(app, mi_request("order-sign", [first_mi])) == {RECENT_MI: "critical"}  # not answered yet
    answer(app, shown[RECENT_MI])
    assert post(app, mi_request("order-sign", [first_mi])) == {}
    # a second infarction recorded before sign changes the evidence of the same rule
    second_mi = condition(MI, onset="2026-10-01", rid="mi-2")
    assert post(app, mi_request("order-sign", [first_mi, second_mi])) == {RECENT_MI: "critical"}
    # a stroke is a new finding altogether; the unchanged infarction card is not repeated with it
    stroke = condition(STROKE, onset="2026-06-10", rid="stroke-1")
    assert post(app, mi_request("order-sign", [first_mi, stroke])) == {RECENT_STROKE: "critical"}


def test_another_encounter_is_not_suppressed(new_app: AppFactory, post: Any) -> None:
    app = new_app()
    post(app, benzo_request("order-select", encounter="enc-1"))
    # at sign the pharmacist's review carries the benzodiazepine; the patient instructions stay off
    assert post(app, benzo_request("order-sign", encounter="enc-2")) == {BENZO: "warning"}
    assert post(app, benzo_request("order-sign", encounter="enc-1")) == {}


def test_a_zero_window_disables_suppression(new_app: AppFactory, post: Any) -> None:
    app = new_app(repeat_suppression_s=0)
    assert post(app, benzo_request("order-select")) == {BENZO: "warning", ORDERING: "info"}
    assert post(app, benzo_request("order-sign")) == {BENZO: "warning"}


def test_order_select_called_twice_shows_the_cards_both_times(new_app: AppFactory, post: Any) -> None:
    """The client replaces the cards of an earlier order-select, so a repeat of select must carry them."""
    app = new_app()
    expected = {BENZO: "warning", ORDERING: "info"}
    assert post(app, benzo_request("order-select")) == expected
    assert post(app, benzo_request("order-select")) == expected
    assert post(app, benzo_request("order-sign")) == {}


def test_two_instances_share_what_was_shown(
    new_app: AppFactory, post: Any, request: pytest.FixtureRequest
) -> None:
    """Select answered by one replica, sign by another (as a load balancer may route them): a shared backend
    suppresses the repeat; in-process state is each instance's own, so the second one repeats the card."""
    shared = request.node.callspec.params["new_app"] != "in-process"
    replica_a, replica_b = new_app(), new_app()
    assert post(replica_a, benzo_request("order-select")) == {BENZO: "warning", ORDERING: "info"}
    at_sign = post(replica_b, benzo_request("order-sign"))
    assert at_sign == ({} if shared else {BENZO: "warning"})
    if shared:
        assert post(replica_b, benzo_request("order-sign", dose=4)) == {BENZO: "warning"}


def test_two_app_instances_sharing_redis_suppress_a_repeat(
    make_app: AppFactory, post: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The issue's acceptance check spelled out: two create_app instances with the same settings.redis_url,
    each with its own SQLite file, so Redis is the only thing they share."""
    url = redis_url_or_skip()
    with redis_prefix(url) as prefix:
        _use_redis_prefix(monkeypatch, prefix)
        replica_a = make_app(redis_url=url, database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}")
        replica_b = make_app(redis_url=url, database_url=f"sqlite:///{tmp_path / 'b.sqlite3'}")
        try:
            for replica in (replica_a, replica_b):
                assert isinstance(replica.extensions["ketamine_cds"].seen, RedisSeenFindings)
            assert post(replica_a, benzo_request("order-select")) == {BENZO: "warning", ORDERING: "info"}
            assert post(replica_b, benzo_request("order-sign")) == {}
            assert post(replica_b, benzo_request("order-sign", dose=4)) == {BENZO: "warning"}
            other_encounter = post(replica_b, benzo_request("order-sign", encounter="enc-2"))
            assert other_encounter == {BENZO: "warning"}
        finally:
            _close(replica_a)
            _close(replica_b)


def test_a_critical_card_the_user_did_not_answer_is_shown_at_sign(
    new_app: AppFactory, post: Any, post_cards: Any
) -> None:
    app = new_app()
    mi = condition(MI, onset="2026-08-15", rid="mi-1")
    post_cards(app, mi_request("order-select", [mi]))
    # ignored at select: the critical card comes back at sign, the informational one does not
    assert post(app, mi_request("order-sign", [mi])) == {RECENT_MI: "critical"}
    assert post(app, mi_request("order-sign", [mi])) == {
        RECENT_MI: "critical"
    }  # asking again changes nothing


def test_an_accepted_critical_card_is_not_repeated_at_sign(
    new_app: AppFactory, post: Any, post_cards: Any
) -> None:
    app = new_app()
    mi = condition(MI, onset="2026-08-15", rid="mi-1")
    shown = post_cards(app, mi_request("order-select", [mi]))
    if not shown[RECENT_MI].get("suggestions"):
        pytest.skip("the infarction card offers no suggestion to accept")
    answer(app, shown[RECENT_MI], "accepted")
    assert post(app, mi_request("order-sign", [mi])) == {}


def test_another_user_at_sign_sees_every_card(new_app: AppFactory, post: Any) -> None:
    """The prescriber saw the cards at order-select; the pharmacist signing minutes later sees them all."""
    app = new_app()
    mi = condition(MI, onset="2026-08-15", rid="mi-1")
    post(app, with_user(benzo_request("order-select"), "Practitioner/prescriber"))
    post(app, with_user(mi_request("order-select", [mi]), "Practitioner/prescriber"))
    pharmacist = "Practitioner/pharmacist"
    # (the patient instructions are for the prescriber: not shown at signing by default)
    assert post(app, with_user(benzo_request("order-sign"), pharmacist)) == {BENZO: "warning"}
    assert post(app, with_user(mi_request("order-sign", [mi]), pharmacist)) == {RECENT_MI: "critical"}
    # the prescriber signing their own order is spared the repeat of what they saw
    assert post(app, with_user(benzo_request("order-sign"), "Practitioner/prescriber")) == {}


def test_without_an_encounter_nothing_is_suppressed(new_app: AppFactory, post: Any) -> None:
    app = new_app()
    statement = med_statement(CLONAZEPAM, rid="ms-clonazepam", dosages=[dosage(dose=2, frequency=2)])
    select = hook_request("order-select", drafts=[ketamine_order()], statements=[statement])
    sign = hook_request("order-sign", drafts=[ketamine_order()], statements=[statement])
    assert "encounterId" not in sign["context"]
    assert post(app, select) == {BENZO: "warning", ORDERING: "info"}
    assert post(app, sign) == {BENZO: "warning"}  # no patient instructions at signing
