"""R4 conformance notes: a deviating record is flagged on the card, and the finding still stands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cds.fhir.conformance import conformance_problem
from tests.support.builders import (
    SNOMED,
    coding,
    concept,
    condition,
    hook_request,
    ketamine_order,
    med_statement,
)


def test_conforming_resources_pass() -> None:
    assert conformance_problem(ketamine_order()) is None
    assert conformance_problem(condition(concept(coding(SNOMED, "22298006")), onset="2026-01-01")) is None


def test_known_client_quirk_is_tolerated() -> None:
    order = ketamine_order()
    order["category"] = {"coding": [{"code": "outpatient"}]}
    assert conformance_problem(order) is None


def test_deviations_are_located() -> None:
    statement = med_statement(concept(text="clonazepam 1 mg"))
    statement["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"] = "two"
    assert conformance_problem(statement) == "dosage.0.doseAndRate.0.doseQuantity.value"
    assert (
        conformance_problem({"resourceType": "Condition", "subject": {}, "onsetDateTime": "soon"}) is not None
    )
    assert conformance_problem({"resourceType": "Patient"}) is None  # not a type the rules read


def test_card_notes_the_deviation_but_keeps_the_finding(call: Callable[..., Any]) -> None:
    mi = condition(
        concept(coding(SNOMED, "22298006", "Myocardial infarction")), onset="2026-09-01", rid="mi-odd"
    )
    mi["severity"] = "very bad"  # a CodeableConcept in R4, sent as a string
    body = hook_request("order-select", drafts=[ketamine_order()], conditions=[mi])
    card = next(
        c for c in call(body)["cards"] if c["source"]["topic"]["code"] == "recent-myocardial-infarction"
    )
    assert card["indicator"] == "critical"
    assert "does not conform to FHIR R4 at `severity`" in card["detail"]
