"""The repository's own tools reproduce the data committed beside the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.trim_and_derive import DEFAULT_OUT, KEPT_TYPES, check, derive, dumps


def test_committed_test_patients_are_what_the_derivation_script_makes() -> None:
    assert check(DEFAULT_OUT) == []


def test_the_check_notices_a_changed_file(tmp_path: Path) -> None:
    for path in DEFAULT_OUT.glob("Jonathon_Sauer_*.json"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    statements = next(tmp_path.glob("*.medicationstatements.json"))
    statements.write_text(statements.read_text(encoding="utf-8").replace('"active"', '"completed"', 1))
    assert check(tmp_path) == [statements.name]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def test_trimming_drops_unread_types_and_the_references_to_them() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry({"resourceType": "Patient", "id": "p1"}),
            _entry({"resourceType": "Claim", "id": "c1"}),
            _entry(
                {
                    "resourceType": "MedicationRequest",
                    "id": "mr1",
                    "status": "active",
                    "authoredOn": "2025-01-01",
                    "subject": {"reference": "urn:uuid:p1"},
                    "insurance": [{"reference": "urn:uuid:c1"}],
                    "medicationCodeableConcept": {"coding": [{"code": "197591"}]},
                }
            ),
        ],
    }
    derived = derive("Test_Patient_x", bundle)
    kinds = [entry["resource"]["resourceType"] for entry in derived.trimmed["entry"]]
    assert kinds == ["Patient", "MedicationRequest"]
    assert set(kinds) <= KEPT_TYPES
    request = derived.trimmed["entry"][1]
    assert request["request"] == {"method": "PUT", "url": "MedicationRequest/mr1"}
    assert request["resource"]["subject"] == {"reference": "Patient/p1"}
    assert request["resource"]["insurance"] == []
    assert derived.dropped_references == {"Claim": 1}
    (statement,) = (entry["resource"] for entry in derived.statements["entry"])
    assert statement["status"] == "active"
    assert statement["derivedFrom"] == [{"reference": "MedicationRequest/mr1"}]
    assert "end" not in statement["effectivePeriod"]
    # the source bundle is left untouched
    assert bundle["entry"][2]["resource"]["subject"] == {"reference": "urn:uuid:p1"}
    assert dumps(derived.trimmed).isascii()
