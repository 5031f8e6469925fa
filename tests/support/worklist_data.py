"""Patients, appointments and orders for the worklist tests and benchmark, as FHIR transaction bundles.

Codes are test data taken from the project's value sets (RxNorm 6130 ketamine, 2201625 Spravato,
197527 clonazepam 0.5 mg tablet, SNOMED 22298006 myocardial infarction and 84757009 epilepsy), not
product logic.
"""

from __future__ import annotations

from typing import Any

import requests

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
SITE_SERVICE = "https://clinic.example.org/fhir/CodeSystem/service-type"


def put(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [put(r) for r in resources]}


def patient(pid: str, given: str, family: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"use": "official", "given": [given], "family": family}],
        "birthDate": "1980-05-05",
    }


def appointment(aid: str, pid: str, start: str, *, status: str = "booked", **fields: Any) -> dict[str, Any]:
    end = start[:11] + "23:00:00" + start[19:]
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start,
        "end": end,
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        **fields,
    }


def medication_request(
    mid: str, pid: str, code: str, display: str, *, status: str = "active", **dosage: Any
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-11-01",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "dosageInstruction": [dosage] if dosage else [],
    }


def ketamine_order(mid: str, pid: str, **timing: Any) -> dict[str, Any]:
    return medication_request(mid, pid, "6130", "ketamine", timing=timing)


def clonazepam(mid: str, pid: str) -> dict[str, Any]:
    return medication_request(
        mid,
        pid,
        "197527",
        "clonazepam 0.5 MG Oral Tablet",
        timing={"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
        doseAndRate=[{"doseQuantity": {"value": 1, "unit": "tablet"}}],
    )


def myocardial_infarction(cid: str, pid: str, onset: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": SNOMED, "code": "22298006", "display": "Myocardial infarction"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": onset,
    }


def epilepsy(cid: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": SNOMED, "code": "84757009", "display": "Epilepsy"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "onsetDateTime": "2001-03-01",
    }


def unreadable_condition(cid: str, pid: str) -> dict[str, Any]:
    """A condition with neither a code nor text: the screen cannot tell what it is."""
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": [{"system": SNOMED}]},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": "2026-06-01",
    }


def load(base_url: str, token: str, resources: list[dict[str, Any]]) -> None:
    response = requests.post(
        base_url,
        json=transaction(resources),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=120,
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"loading worklist fixtures failed: HTTP {response.status_code}: {response.text[:1500]}"
        )
    bad = [
        e.get("response", {}).get("status")
        for e in response.json().get("entry", [])
        if not str(e.get("response", {}).get("status", "")).startswith("20")
    ]
    if bad:
        raise RuntimeError(f"loading worklist fixtures: {len(bad)} entries not stored: {bad[:3]}")
