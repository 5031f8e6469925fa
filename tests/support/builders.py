"""Compact builders for FHIR R4 resources and CDS Hooks requests used by scenario tests.

Codes here are test data (taken from the project's value sets and the Synthea fixtures), not product
logic.
"""

from __future__ import annotations

import itertools
from typing import Any

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
PATIENT = "scenario-patient-7f3a"
USER = "Practitioner/scenario-prescriber"

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = list(codings)
    if text:
        out["text"] = text
    return out


KETAMINE = concept(coding(RXNORM, "6130", "ketamine"), text="ketamine 50 MG/ML Injectable Solution")
ESKETAMINE = concept(coding(RXNORM, "2201625", "esketamine Nasal Spray [Spravato]"))


def dosage(
    dose: float | None = 1,
    unit: str | None = None,
    frequency: int | None = 1,
    period: float = 1,
    period_unit: str = "d",
    prn: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if frequency is not None:
        out["timing"] = {"repeat": {"frequency": frequency, "period": period, "periodUnit": period_unit}}
    if dose is not None:
        quantity: dict[str, Any] = {"value": dose}
        if unit:
            quantity.update(unit=unit, system="http://unitsofmeasure.org", code=unit)
        out["doseAndRate"] = [{"doseQuantity": quantity}]
    if prn:
        out["asNeededBoolean"] = True
    return out


def med_statement(
    medication: dict[str, Any],
    *,
    dosages: list[dict[str, Any]] | None = None,
    status: str = "active",
    asserted: str = "2026-09-01",
    rid: str | None = None,
    derived_from: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": rid or _id("ms"),
        "status": status,
        "medicationCodeableConcept": medication,
        "subject": {"reference": f"Patient/{PATIENT}"},
        "dateAsserted": asserted,
        "dosage": dosages if dosages is not None else [dosage()],
    }
    if derived_from:
        out["derivedFrom"] = [{"reference": derived_from}]
    return out


def med_request(
    medication: dict[str, Any] | None,
    *,
    dosages: list[dict[str, Any]] | None = None,
    status: str = "active",
    intent: str = "order",
    authored: str = "2026-09-01",
    rid: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid or _id("mr"),
        "status": status,
        "intent": intent,
        "subject": {"reference": f"Patient/{PATIENT}"},
        "authoredOn": authored,
        "dosageInstruction": dosages if dosages is not None else [dosage()],
    }
    if medication is not None:
        out["medicationCodeableConcept"] = medication
    return out


def ketamine_order(
    *, esketamine: bool = False, rid: str = "draft-ketamine", start: str | None = None
) -> dict[str, Any]:
    order = med_request(
        ESKETAMINE if esketamine else KETAMINE, status="draft", rid=rid, dosages=[dosage(frequency=None)]
    )
    if start:
        order["dosageInstruction"][0]["timing"] = {"event": [start]}
    return order


def condition(
    code: dict[str, Any],
    *,
    onset: str | None = None,
    recorded: str | None = None,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    rid: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": rid or _id("cond"),
        "subject": {"reference": f"Patient/{PATIENT}"},
        "code": code,
    }
    if clinical:
        out["clinicalStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical)
        )
    if verification:
        out["verificationStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)
        )
    if onset:
        out["onsetDateTime"] = onset
    if recorded:
        out["recordedDate"] = recorded
    return out


def allergy(
    code: dict[str, Any],
    *,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    rid: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "id": rid or _id("allergy"),
        "patient": {"reference": f"Patient/{PATIENT}"},
        "code": code,
    }
    if clinical:
        out["clinicalStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", clinical)
        )
    if verification:
        out["verificationStatus"] = concept(
            coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", verification)
        )
    return out


def blood_pressure(
    systolic: float, diastolic: float, *, taken: str = "2026-11-01T09:00:00Z", rid: str | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid or _id("bp"),
        "status": "final",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "code": concept(coding(LOINC, "85354-9", "Blood pressure panel")),
        "effectiveDateTime": taken,
        "component": [
            {
                "code": concept(coding(LOINC, "8480-6")),
                "valueQuantity": {"value": systolic, "unit": "mmHg", "code": "mm[Hg]"},
            },
            {
                "code": concept(coding(LOINC, "8462-4")),
                "valueQuantity": {"value": diastolic, "unit": "mmHg", "code": "mm[Hg]"},
            },
        ],
    }


def bundle(resources: list[dict[str, Any]], *, with_type: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    if with_type:
        out["type"] = "searchset"
    return out


def hook_request(
    hook: str,
    *,
    statements: list[dict[str, Any]] | None = None,
    requests: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    allergies: list[dict[str, Any]] | None = None,
    observations: list[dict[str, Any]] | None = None,
    drafts: list[dict[str, Any]] | None = None,
    selections: list[str] | None = None,
    encounter: str | None = None,
) -> dict[str, Any]:
    """A request with every prefetch key satisfied (empty bundles where nothing is given)."""
    context: dict[str, Any] = {"userId": USER, "patientId": PATIENT}
    if encounter:
        context["encounterId"] = encounter
    if hook in {"order-select", "order-sign"}:
        drafts = drafts or []
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}
        if hook == "order-select":
            context["selections"] = (
                selections
                or [f"MedicationRequest/{d['id']}" for d in drafts[:1]]
                or ["MedicationRequest/none"]
            )
    return {
        "hook": hook,
        "hookInstance": _id("hook-instance"),
        "context": context,
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT, "birthDate": "1980-04-02"},
            "medicationStatements": bundle(statements or []),
            "medicationRequests": bundle(requests or []),
            "conditions": bundle(conditions or []),
            "allergies": bundle(allergies or []),
            "bloodPressure": bundle(observations or []),
        },
    }
