"""The nine Synthea test patients (tests/data/fhir-test-data) as CDS Hooks requests, and their identifiers.

    synthea_patients()            every test patient: id, names, and their resources by prefetch key
    synthea_request(p, hook)      a complete request for that patient (prefetch filled from their files)
    identifying_strings()         every patient id and name of the test data, for the log-hygiene check

The requests carry the real Patient resource (names, identifiers, address) so that anything that logs
request data would put test-patient identity into the captured logs.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.builders import PATIENT, USER, ketamine_order

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "fhir-test-data"

_PREFETCH_TYPES = {
    "medicationStatements": "MedicationStatement",
    "medicationRequests": "MedicationRequest",
    "conditions": "Condition",
    "allergies": "AllergyIntolerance",
}


@dataclass(frozen=True)
class SyntheaPatient:
    stem: str
    id: str
    names: tuple[str, ...]  # every given and family name, and each full "given family"
    patient: dict[str, Any]
    resources: dict[str, tuple[dict[str, Any], ...]]  # prefetch key -> resources of that type


def _names(patient: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    for name in patient.get("name", []):
        given = [g for g in name.get("given", []) if isinstance(g, str)]
        family = name.get("family") if isinstance(name.get("family"), str) else None
        found.extend(given)
        if family:
            found.append(family)
            found.extend(f"{g} {family}" for g in given)
    return tuple(dict.fromkeys(found))


@functools.cache
def synthea_patients() -> tuple[SyntheaPatient, ...]:
    out = []
    for trimmed in sorted(DATA_DIR.glob("*.trimmed.json")):
        stem = trimmed.name.removesuffix(".trimmed.json")
        entries = json.loads(trimmed.read_text(encoding="utf-8"))["entry"]
        statements = DATA_DIR / f"{stem}.medicationstatements.json"
        if statements.exists():
            entries = entries + json.loads(statements.read_text(encoding="utf-8"))["entry"]
        resources = [entry["resource"] for entry in entries]
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        by_key = {
            key: tuple(r for r in resources if r["resourceType"] == rtype)
            for key, rtype in _PREFETCH_TYPES.items()
        }
        out.append(SyntheaPatient(stem, patient["id"], _names(patient), patient, by_key))
    return tuple(out)


def _bundle(resources: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def synthea_request(patient: SyntheaPatient, hook: str = "patient-view") -> dict[str, Any]:
    """A request for `patient` with every prefetch key satisfied from their own records.

    order-select and order-sign carry a ketamine draft order (so the whole chart is screened).
    """
    context: dict[str, Any] = {"userId": USER, "patientId": patient.id}
    if hook in {"order-select", "order-sign"}:
        order = ketamine_order()
        order["subject"] = {"reference": f"Patient/{patient.id}", "display": patient.names[-1]}
        context["draftOrders"] = _bundle([order])
        if hook == "order-select":
            context["selections"] = [f"MedicationRequest/{order['id']}"]
    prefetch: dict[str, Any] = {"patient": patient.patient}
    prefetch.update({key: _bundle(resources) for key, resources in patient.resources.items()})
    prefetch["bloodPressure"] = _bundle([])
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}


def identifying_strings() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(patient ids, patient names) of all test data: the Synthea patients and the scenario patient."""
    patients = synthea_patients()
    ids = (*(p.id for p in patients), PATIENT)
    names = tuple(dict.fromkeys(name for p in patients for name in p.names))
    return ids, names
