"""Selective decoding of request bodies (cds.fhir.decoding): what is kept, what is dropped, and that the
screen cannot tell the difference."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
from cds.errors import FhirError
from cds.fhir.client import _json_object
from cds.fhir.decoding import NOT_SCREENED, SCREENED_ELEMENTS, HookBody, decode_body, decode_json
from tests.support.builders import RXNORM, SNOMED, coding, concept, condition, hook_request
from tests.support.charts import complex_chart, typical_chart

PACKAGE = Path(__file__).resolve().parent.parent / "cds"
DATA = Path(__file__).resolve().parent / "data" / "fhir-test-data"
CHART_TYPES = (
    "MedicationStatement",
    "MedicationRequest",
    "Condition",
    "AllergyIntolerance",
    "Observation",
    "Patient",
    "Medication",
)


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_every_element_the_code_names_is_decoded_or_excluded_with_a_reason() -> None:
    """A new reader of a chart element cannot silently see nothing: name it here or in NOT_SCREENED."""
    elements: set[str] = set()
    for name in CHART_TYPES:
        model = getattr(importlib.import_module(f"fhir.resources.R4B.{name.lower()}"), name)
        elements.update(field.alias or key for key, field in model.model_fields.items())
    source = "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))
    named = {e for e in elements if re.search(rf"[\"']{re.escape(e)}[\"']", source)}
    unaccounted = named - SCREENED_ELEMENTS - set(NOT_SCREENED)
    assert not unaccounted, f"chart elements read by cds/ but dropped when decoding: {sorted(unaccounted)}"
    assert not SCREENED_ELEMENTS & set(NOT_SCREENED)


def test_prefetched_records_keep_screened_elements_and_their_exact_bytes() -> None:
    mi = condition(concept(coding(SNOMED, "22298006", "Myocardial infarction")), onset="2026-09-20", rid="mi")
    mi["meta"] = {"versionId": "7", "lastUpdated": "2026-09-21T10:00:00Z"}
    mi["text"] = {"status": "generated", "div": "<div>Myocardial infarction</div>"}
    body = hook_request("patient-view", conditions=[mi])
    body["prefetch"]["patient"]["name"] = [{"family": "Example", "given": ["Pat"]}]

    decoded = decode_body(_encode(body))

    assert isinstance(decoded, HookBody)
    record = decoded["prefetch"]["conditions"]["entry"][0]["resource"]
    assert "meta" not in record
    assert "text" not in record
    assert record["code"] == mi["code"]
    assert record["onsetDateTime"] == "2026-09-20"
    assert record["clinicalStatus"] == mi["clinicalStatus"]
    patient = decoded["prefetch"]["patient"]
    assert "name" not in patient
    assert patient["birthDate"] == "1980-04-02"
    assert decode_json(decoded.sources[id(record)]) == mi  # every element, as sent
    assert decode_json(decoded.sources[id(patient)]) == body["prefetch"]["patient"]
    assert decoded["context"] == body["context"]  # context and draft orders are never pruned


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "a string",
        {"resourceType": "Bundle", "entry": "not a list"},
        {"resourceType": "Bundle", "entry": [1, 2]},
        {"resourceType": "Bundle", "entry": [{"resource": "not an object"}]},
        {"resourceType": "Bundle", "entry": [{"resource": None}, {"search": {"mode": "outcome"}}]},
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]},
    ],
    ids=repr,
)
def test_malformed_prefetch_values_are_decoded_as_sent(value: Any) -> None:
    """Pruning applies to well-formed records only: anything else reaches the screen as it came, so it is
    judged (re-fetched, or refused) exactly as before, never silently emptied."""
    body = hook_request("patient-view")
    body["prefetch"]["conditions"] = value
    decoded = decode_body(_encode(body))
    expected = value
    if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
        expected = {"resourceType": "OperationOutcome"}  # a single resource: its screened elements only
    assert decoded["prefetch"]["conditions"] == expected


def test_bodies_that_are_not_objects_and_prefetch_that_is_not_an_object_are_returned_whole() -> None:
    assert decode_body(b"[1, 2]") == [1, 2]
    assert decode_body(b'  "text"') == "text"
    assert decode_body(b'{"hook": "x", "prefetch": [1]}') == {"hook": "x", "prefetch": [1]}


def _ketamine_draft() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "draft-ketamine",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept(coding(RXNORM, "1790508", "ketamine"), text="ketamine infusion"),
        "subject": {"reference": "Patient/p"},
    }


def _synthea_chart() -> dict[str, Any]:
    """A real-shaped chart: one Synthea patient's records (meta, narrative, identifiers and all)."""
    path = next(iter(sorted(DATA.glob("*.trimmed.json"))))
    resources = [e["resource"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    by_type = {t: [r for r in resources if r["resourceType"] == t] for t in CHART_TYPES}
    draft = _ketamine_draft()
    body = hook_request(
        "order-sign",
        statements=by_type["MedicationStatement"],
        requests=by_type["MedicationRequest"],
        conditions=[
            *by_type["Condition"],
            condition(concept(coding(SNOMED, "22298006", "Myocardial infarction")), onset="2026-10-01"),
        ],
        allergies=by_type["AllergyIntolerance"],
        observations=by_type["Observation"],
        drafts=[draft],
    )
    body["prefetch"]["patient"] = by_type["Patient"][0]
    body["context"]["patientId"] = by_type["Patient"][0]["id"]
    return body


@pytest.mark.parametrize(
    "make_body",
    [
        lambda: complex_chart("order-select"),
        lambda: complex_chart("order-sign"),
        lambda: typical_chart("order-select"),
        _synthea_chart,
    ],
    ids=["complex order-select", "complex order-sign", "typical", "synthea"],
)
def test_the_screen_gives_the_same_cards_from_pruned_records(
    make_body: Callable[[], dict[str, Any]], knowledge: Knowledge, screener: Screener
) -> None:
    body = make_body()
    service = next(s for s in knowledge.services.values() if s.hook == body["hook"])
    whole = screener.screen(service, json.loads(_encode(body)))
    pruned = screener.screen(service, decode_body(_encode(body)))
    assert whole.cards, "the chart must give cards, or the comparison proves nothing"

    def without_ids(cards: list[dict[str, Any]]) -> str:
        return re.sub(r'"uuid": "[^"]+"', '"uuid": "-"', json.dumps(cards, sort_keys=True))

    assert without_ids(pruned.cards) == without_ids(whole.cards)
    assert [f.hits for f in pruned.findings] == [f.hits for f in whole.findings]


def test_what_msgspec_refuses_is_read_by_the_standard_parser_whole() -> None:
    """Bare NaN tokens (a sloppy sender's dose value) do not cost the whole screen."""
    body = b'{"hook": "patient-view", "prefetch": {"conditions": {"resourceType": "Bundle", "meta": 1,'
    body += b' "entry": [{"resource": {"resourceType": "Condition", "id": "c", "onsetAge": NaN}}]}}}'
    decoded = decode_body(body)
    assert not isinstance(decoded, HookBody)  # decoded whole, nothing pruned
    resource = decoded["prefetch"]["conditions"]["entry"][0]["resource"]
    assert resource["onsetAge"] != resource["onsetAge"]  # NaN
    assert decoded["prefetch"]["conditions"]["meta"] == 1
    with pytest.raises(json.JSONDecodeError):
        decode_body(b'{"hook": ')
    with pytest.raises(RecursionError):
        decode_body(b"[" * 100_000 + b"]" * 100_000)


def test_a_fhir_page_nested_past_the_parser_is_a_fetch_error_not_a_crash() -> None:
    with pytest.raises(FhirError, match="not JSON"):
        _json_object(b"[" * 100_000 + b"]" * 100_000, "search")
    assert _json_object(b'{"resourceType": "Bundle", "total": NaN}', "search")["resourceType"] == "Bundle"


def test_a_cited_record_is_judged_against_the_model_as_sent_not_as_pruned(
    knowledge: Knowledge, screener: Screener
) -> None:
    """The decoder drops `meta`, but a malformed `meta` still makes the record nonconformant."""
    mi = condition(concept(coding(SNOMED, "22298006", "Myocardial infarction")), onset="2026-10-01", rid="mi")
    mi["meta"] = "not an object"
    body = hook_request("order-select", conditions=[mi], drafts=[_ketamine_draft()])
    service = next(s for s in knowledge.services.values() if s.hook == "order-select")
    result = screener.screen(service, decode_body(_encode(body)))
    notes = [note for f in result.findings for hit in f.hits if hit.source.id == "mi" for note in hit.notes]
    assert "nonconformant:meta" in notes
