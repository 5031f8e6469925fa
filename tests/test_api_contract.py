"""CDS Hooks 2.0 conformance of the HTTP edge (requirements in docs/cds-hooks-conformance.md)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds.config import TrustedIssuer
from cds.fhir.prefetch import template_tokens
from cds.storage.analytics import override_report
from tests.support.builders import (
    RXNORM,
    allergy,
    coding,
    concept,
    condition,
    dosage,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)
from tests.support.cards import findings_shown

HOOK_TOKENS = {
    "patient-view": {"context.userId", "context.patientId", "context.encounterId"},
    "order-select": {"context.userId", "context.patientId", "context.encounterId"},
    "order-sign": {"context.userId", "context.patientId", "context.encounterId"},
}
USER_TOKENS = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
# Production mode with an issuer whose keys are a file (a public key only, read at start-up; preflights
# need no token, so no call here is ever verified against it).
PINNED_JWKS = Path(__file__).resolve().parent / "data" / "pinned-jwks.json"
PRODUCTION = {
    "dev_mode": False,
    "public_base_url": "https://cds.example.org",
    "trusted_issuers": (TrustedIssuer(iss="https://ehr.example.org", jwks_file=str(PINNED_JWKS)),),
}
CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
KETAMINE_ALLERGY = allergy(concept(text="ketamine"))


def rules_of(payload: dict[str, Any]) -> dict[str, str]:
    return findings_shown(payload["cards"])


def in_course(**kwargs: Any) -> dict[str, Any]:
    """A patient-view of a patient in a ketamine course (patient-view is silent outside one by default)."""
    course = med_statement(concept(coding(RXNORM, "6130", "ketamine")), rid="ketamine-course")
    return hook_request("patient-view", statements=[course, *kwargs.pop("statements", [])], **kwargs)


# ------------------------------------------------------------------------------------------- discovery


def test_discovery_lists_three_services_with_valid_prefetch_tokens(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "order-select", "order-sign"}
    for service in services:
        assert service["id"]
        assert service["description"]
        assert service["title"]
        assert set(service["prefetch"]) >= {
            "medicationStatements",
            "medicationRequests",
            "conditions",
            "allergies",
            "bloodPressure",
        }
        for template in service["prefetch"].values():
            assert template_tokens(template) <= HOOK_TOKENS[service["hook"]] | USER_TOKENS
            assert not re.search(r"\d{4}-\d{2}-\d{2}", template), "no hard-coded dates in prefetch"


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("body", "content_type", "status", "path"),
    [
        (b"{not json", "application/json", 400, None),
        (b"[]", "application/json", 400, "$"),
        (json.dumps({"hook": "order-select"}).encode(), "application/json", 400, "$"),
        (
            json.dumps({"hookInstance": "x", "hook": "patient-view", "context": {"patientId": "p"}}).encode(),
            "application/json",
            400,
            "$.context",
        ),
        (b"hook=patient-view", "application/x-www-form-urlencoded", 415, None),
    ],
)
def test_bad_requests_get_4xx_with_operation_outcome(
    client: FlaskClient, body: bytes, content_type: str, status: int, path: str | None
) -> None:
    response = client.post("/cds-services/ketamine-patient-view", data=body, content_type=content_type)
    assert response.status_code == status
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"]
    if path:
        assert any(path in i.get("expression", [""])[0] for i in outcome["issue"])
    assert "Traceback" not in response.get_data(as_text=True)


def test_hook_that_does_not_match_the_service_is_400(client: FlaskClient) -> None:
    body = hook_request("patient-view")
    response = client.post("/cds-services/ketamine-order-sign", json=body)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["$.hook"]


def test_unknown_service_is_404_with_outcome(client: FlaskClient) -> None:
    response = client.post("/cds-services/nope", json=hook_request("patient-view"))
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_body_over_the_limit_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_body_bytes=2048).test_client()
    body = hook_request("patient-view", statements=[med_statement(CLONAZEPAM) for _ in range(40)])
    response = client.post("/cds-services/ketamine-patient-view", json=body)
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def _chunked(client: FlaskClient, body: bytes) -> Any:
    """A POST with no Content-Length (Transfer-Encoding: chunked), as gunicorn hands it to the app."""
    return client.post(
        "/cds-services/ketamine-patient-view",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_chunked_body_over_the_limit_is_413_not_truncated_json(make_app: Callable[..., Flask]) -> None:
    client = make_app(max_body_bytes=2048).test_client()
    body = json.dumps(hook_request("patient-view", statements=[med_statement(CLONAZEPAM) for _ in range(40)]))
    response = _chunked(client, body.encode())
    assert response.status_code == 413
    assert response.get_json()["issue"][0]["diagnostics"] == "the request body is over 2048 bytes"


def test_a_chunked_body_within_the_limit_is_screened(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = _chunked(client, json.dumps(hook_request("patient-view")).encode())
    assert response.status_code == 200
    assert "cards" in response.get_json()


def test_a_body_that_is_not_utf8_says_so(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/ketamine-patient-view",
        data=b'{"hook": "\xff"}',  # a lone 0xFF byte: never valid UTF-8
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert (
        response.get_json()["issue"][0]["diagnostics"]
        == "the request body is not valid JSON: it is not UTF-8 text"
    )


def test_deep_nesting_is_400_not_a_crash(client: FlaskClient) -> None:
    deep: Any = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    body = hook_request("patient-view")
    body["extension"] = deep
    response = client.post("/cds-services/ketamine-patient-view", json=body)
    assert response.status_code == 400


def test_schema_errors_do_not_echo_the_callers_values(client: FlaskClient) -> None:
    body = hook_request("patient-view")
    body["context"]["userId"] = "Nurse/SECRET-VALUE-123"
    response = client.post("/cds-services/ketamine-patient-view", json=body)
    assert response.status_code == 400
    assert "SECRET-VALUE-123" not in response.get_data(as_text=True)


# ------------------------------------------------------------------------------------- hook semantics


def test_order_select_unrelated_medicine_gets_no_cards_and_needs_no_data(call: Callable[..., Any]) -> None:
    body = hook_request(
        "order-select", drafts=[med_request(concept(coding(RXNORM, "308182", "amoxicillin")), status="draft")]
    )
    del body["prefetch"]
    assert call(body)["cards"] == []


def test_order_select_draft_without_medication_yet_gets_no_cards(call: Callable[..., Any]) -> None:
    assert call(hook_request("order-select", drafts=[med_request(None, status="draft")]))["cards"] == []


def test_benzodiazepine_selected_next_to_a_ketamine_draft_is_an_interaction(call: Callable[..., Any]) -> None:
    benzo = med_request(CLONAZEPAM, status="draft", rid="draft-benzo", dosages=[dosage(dose=2, frequency=2)])
    body = hook_request(
        "order-select",
        drafts=[ketamine_order(), benzo],
        selections=["MedicationRequest/draft-benzo"],
        allergies=[KETAMINE_ALLERGY],
    )
    shown = rules_of(call(body))
    assert shown == {"benzodiazepine-response": "warning"}, (
        "only the interaction; the full screen is not repeated"
    )


def test_benzodiazepine_ordered_during_a_ketamine_course_is_reviewed(call: Callable[..., Any]) -> None:
    course = med_statement(concept(coding(RXNORM, "6130", "ketamine")), dosages=[dosage(frequency=None)])
    benzo = med_request(CLONAZEPAM, status="draft", rid="draft-benzo", dosages=[dosage(dose=2, frequency=2)])
    body = hook_request("order-sign", drafts=[benzo], statements=[course])
    assert rules_of(call(body)) == {"benzodiazepine-response": "warning"}


def test_benzodiazepine_ordered_outside_any_ketamine_course_is_silent(call: Callable[..., Any]) -> None:
    benzo = med_request(CLONAZEPAM, status="draft", rid="draft-benzo", dosages=[dosage(dose=2, frequency=2)])
    assert call(hook_request("order-sign", drafts=[benzo]))["cards"] == []


def test_order_sign_screens_every_draft(call: Callable[..., Any]) -> None:
    other = med_request(concept(coding(RXNORM, "308182", "amoxicillin")), status="draft")
    body = hook_request("order-sign", drafts=[other, ketamine_order()], allergies=[KETAMINE_ALLERGY])
    payload = call(body)
    assert rules_of(payload)["ketamine-hypersensitivity"] == "critical"
    card = next(c for c in payload["cards"] if c["indicator"] == "critical")
    action = card["suggestions"][0]["actions"][0]
    assert sorted(action) == ["description", "resourceId", "type"]
    assert (action["type"], action["resourceId"]) == ("delete", "MedicationRequest/draft-ketamine")
    assert "ketamine" in action["description"].lower()  # says which order it removes
    assert card["selectionBehavior"] == "at-most-one"


def test_patient_view_never_offers_to_delete_orders(call: Callable[..., Any]) -> None:
    payload = call(in_course(allergies=[KETAMINE_ALLERGY]))
    assert rules_of(payload)["ketamine-hypersensitivity"] == "critical"
    assert all("suggestions" not in card for card in payload["cards"])


def test_windows_run_from_the_planned_start_on_the_order(call: Callable[..., Any]) -> None:
    body = hook_request(
        "order-select",
        drafts=[ketamine_order(start="2027-01-10")],
        conditions=[
            condition(
                concept(coding("http://snomed.info/sct", "22298006", "Myocardial infarction")),
                onset="2026-08-15",
            )
        ],
    )
    payload = call(body)
    assert rules_of(payload)["recent-myocardial-infarction"] == "critical"
    card = next(c for c in payload["cards"] if c["source"]["topic"]["code"] == "recent-myocardial-infarction")
    assert "counted to the planned start, 10 Jan 2027" in card["detail"]
    # the date the window ends, on the card and as a suggestion that moves the draft order's start
    assert "eligible from 16 Feb 2027" in card["summary"]  # next year: with its year
    move = next(s for s in card["suggestions"] if s["label"] == "Move the planned start to 16 Feb 2027")
    moved = move["actions"][0]["resource"]
    assert move["actions"][0]["type"] == "update"
    assert moved["id"] == "draft-ketamine"
    assert moved["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]["start"] == "2027-02-16"
    assert moved["dosageInstruction"][0]["timing"]["event"] == ["2027-02-16"]
    # Planned far enough out, the same infarction is outside the 6-month window.
    later = hook_request(
        "order-select",
        drafts=[ketamine_order(start="2027-04-01")],
        conditions=[
            condition(
                concept(coding("http://snomed.info/sct", "22298006", "Myocardial infarction")),
                onset="2026-08-15",
            )
        ],
    )
    assert rules_of(call(later))["recent-myocardial-infarction"] == "warning"


def test_sandbox_quirks_are_tolerated(call: Callable[..., Any]) -> None:
    order = ketamine_order()
    order["category"] = {"coding": [{"code": "outpatient"}]}  # an object, not an array
    body = hook_request("order-select", drafts=[order], allergies=[KETAMINE_ALLERGY])
    body["context"]["draftOrders"].pop("type", None)  # the sandbox sends draftOrders without a type
    body["extension"] = {"org.example.unknown": {"x": 1}}
    body["context"]["somethingNew"] = True
    assert rules_of(call(body))["ketamine-hypersensitivity"] == "critical"


# --------------------------------------------------------------------------------- prefetch and 412


@pytest.mark.parametrize("shape", ["absent", "null", "operation-outcome", "wrong-type"])
def test_missing_prefetch_without_a_fhir_server_is_412(call: Callable[..., Any], shape: str) -> None:
    body = hook_request("patient-view", allergies=[KETAMINE_ALLERGY])
    if shape == "absent":
        del body["prefetch"]["conditions"]
    elif shape == "null":
        body["prefetch"]["conditions"] = None
    elif shape == "operation-outcome":
        body["prefetch"]["conditions"] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception"}],
        }
    else:
        body["prefetch"]["conditions"] = ["not", "a", "bundle"]
    outcome = call(body, expect=412)
    assert any("prefetch.conditions" in (i.get("expression") or [""])[0] for i in outcome["issue"])


def test_empty_bundles_are_valid_no_data(call: Callable[..., Any]) -> None:
    assert call(hook_request("patient-view"))["cards"] == []


def test_unreachable_fhir_server_for_missing_prefetch_is_412(client: FlaskClient) -> None:
    body = hook_request("patient-view")
    del body["prefetch"]["conditions"]
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    response = client.post("/cds-services/ketamine-patient-view", json=body)
    assert response.status_code == 412  # nothing listens there: the data cannot be had
    assert response.get_json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------------------------------ feedback


def test_feedback_is_stored_and_answered_200(app: Flask, client: FlaskClient) -> None:
    payload = client.post(
        "/cds-services/ketamine-patient-view", json=in_course(allergies=[KETAMINE_ALLERGY])
    ).get_json()
    card = payload["cards"][0]["uuid"]
    feedback = {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "record-out-of-date",
                        "system": "https://ketamine-cds.example.org/fhir/CodeSystem/ketamine-override-reason",
                    }
                },
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }
    response = client.post("/cds-services/ketamine-patient-view/feedback", json=feedback)
    assert response.status_code == 200
    runtime = app.extensions["ketamine_cds"]
    runtime.flush()
    report = override_report(runtime.store)
    row = next(r for r in report.rules if r.rule_id == "ketamine-hypersensitivity")
    assert row.total.overridden == 1


def test_impossible_feedback_timestamp_is_400_not_500(client: FlaskClient) -> None:
    item = {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-13-45T25:00:00Z"}
    response = client.post("/cds-services/ketamine-patient-view/feedback", json={"feedback": [item]})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["$.feedback[0].outcomeTimestamp"]


def test_override_reason_without_display_is_accepted(client: FlaskClient) -> None:
    item = {
        "card": "c",
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "overrideReason": {
            "reason": {
                "code": "risk-benefit-ratio",
                "system": "http://cds-hooks.hl7.org/CodeSystem/non-adherence-reason",
            }
        },
    }
    assert (
        client.post("/cds-services/ketamine-patient-view/feedback", json={"feedback": [item]}).status_code
        == 200
    )


def test_invalid_feedback_is_400(client: FlaskClient) -> None:
    response = client.post("/cds-services/ketamine-patient-view/feedback", json={"feedback": [{"card": "x"}]})
    assert response.status_code == 400
    assert response.get_json()["resourceType"] == "OperationOutcome"


# ----------------------------------------------------------------------------------- CORS and health


def test_cors_preflight_on_every_route(make_app: Callable[..., Flask]) -> None:
    """Production mode: only the configured origins (dev mode allows any origin)."""
    client = make_app(cors_origins=("https://sandbox.cds-hooks.org",), **PRODUCTION).test_client()
    for path in (
        "/cds-services",
        "/cds-services/ketamine-order-select",
        "/cds-services/ketamine-order-select/feedback",
    ):
        response = client.options(
            path,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    other = client.options("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_health_says_when_authentication_is_off(client: FlaskClient) -> None:
    health = client.get("/healthz").get_json()
    assert health["status"] == "ok"
    assert "authentication OFF" in health["mode"]


def test_chart_text_with_a_lone_surrogate_is_screened_and_answered(app: Flask) -> None:
    """A lone surrogate (no character; UTF-8 cannot carry it) in a chart's text used to be a 500: it is read
    as the replacement character, the allergy is found, and the call's records are stored."""
    ketamine_allergy = allergy(concept(text="ketamine \ud800"))
    body = json.dumps(  # ensure_ascii: the surrogate is sent as the escape "\\ud800"
        hook_request("order-select", drafts=[ketamine_order()], allergies=[ketamine_allergy])
    )
    response = app.test_client().post(
        "/cds-services/ketamine-order-select", data=body, content_type="application/json"
    )
    assert response.status_code == 200
    assert "ketamine \ufffd" in response.get_data(as_text=True)  # the chart's own words
    assert findings_shown(response.get_json()["cards"])
    assert app.extensions["ketamine_cds"].flush()
