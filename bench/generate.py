"""Deterministic order-select requests for synthetic patients of any size, shaped like the Synthea patients.

The background of each record is sampled (with a seeded `random.Random`) from the MedicationRequests,
Conditions, MedicationStatements and AllergyIntolerances of the nine Synthea patients in
`tests/data/fhir-test-data/`, in the proportions those files have (about 65 % Conditions, 28 %
MedicationRequests, 7 % MedicationStatements, a few allergies). Sampled resources get new ids, point at the
new Patient, and lose their references to Encounters, Conditions and MedicationRequests that are not part
of the record (so the record loads into a FHIR server on its own).

Background resources that any of the service's value sets recognises are left out of the pool, so every
patient carries exactly the same few *relevant hits*, added on purpose:

* an active clonazepam MedicationStatement with a regular dose (benzodiazepine-response rule),
* an active lamotrigine MedicationRequest (lamotrigine-response rule),
* a myocardial infarction from 2014 (old: read by the MI rule, outside its windows),
* a few blood-pressure panels, the latest one raised (elevated-blood-pressure rule).

The selected order is a ketamine draft MedicationRequest, so every request asks for a full screen.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.fhir.facts import concept

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data" / "fhir-test-data"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ANCHOR = date(2026, 11, 1)  # "today" of the generated records; fixed so that a seed gives the same bytes
PLANNED_START = ANCHOR + timedelta(days=21)
EHR_BASE = "https://ehr.example.org/fhir"  # fullUrl of prefetched entries (never contacted)
USER = "Practitioner/bench-prescriber"
DRAFT_ID = "draft-ketamine"  # only in context.draftOrders, never stored
BACKGROUND_TYPES = ("Condition", "MedicationRequest", "MedicationStatement", "AllergyIntolerance")
KEY_OF_TYPE = {
    "MedicationStatement": "medicationStatements",
    "MedicationRequest": "medicationRequests",
    "Condition": "conditions",
    "AllergyIntolerance": "allergies",
    "Observation": "bloodPressure",
}
# References to resources outside the generated record: dropped so each record stands alone.
_DROP = (
    "encounter",
    "reasonReference",
    "derivedFrom",
    "informationSource",
    "requester",
    "recorder",
    "asserter",
)


@dataclass(frozen=True)
class Pool:
    by_type: dict[str, list[dict[str, Any]]]  # irrelevant background resources per type
    weights: dict[str, float]  # share of each type in the Synthea files
    excluded: int  # resources left out because a value set recognises them


@cache
def knowledge() -> Knowledge:
    """The service's knowledge (rules, value sets), read once per run."""
    return load_knowledge()


@cache
def background_pool() -> Pool:
    """Background templates from the Synthea files, minus anything the service's value sets recognise."""
    terminology = knowledge().terminology
    urls = terminology.urls()
    by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in BACKGROUND_TYPES}
    counts = dict.fromkeys(BACKGROUND_TYPES, 0)
    excluded = 0
    for path in sorted(DATA_DIR.glob("*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            resource = entry["resource"]
            rtype = resource["resourceType"]
            if rtype not in by_type:
                continue
            counts[rtype] += 1
            code = resource.get("medicationCodeableConcept") or resource.get("code")
            if any(terminology.match(url, concept(code)) is not None for url in urls):
                excluded += 1
                continue
            by_type[rtype].append(resource)
    total = sum(counts.values())
    return Pool(by_type, {t: counts[t] / total for t in BACKGROUND_TYPES}, excluded)


def _clean(template: dict[str, Any], rid: str, patient_ref: str) -> dict[str, Any]:
    resource = copy.deepcopy(template)
    resource["id"] = rid
    for name in _DROP:
        resource.pop(name, None)
    if resource["resourceType"] == "AllergyIntolerance":
        resource["patient"] = {"reference": patient_ref}
    else:
        resource["subject"] = {"reference": patient_ref}
    return resource


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _daily(times: int) -> dict[str, Any]:
    return {
        "sequence": 1,
        "timing": {"repeat": {"frequency": times, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": 1}}],
    }


def _hits(patient_ref: str, size: int) -> list[dict[str, Any]]:
    """Ids carry the size: all records share one FHIR server, where an id names one resource."""
    subject = {"reference": patient_ref}
    return [
        {
            "resourceType": "MedicationStatement",
            "id": f"hit-clonazepam-{size}",
            "status": "active",
            "medicationCodeableConcept": _concept(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"),
            "subject": subject,
            "effectivePeriod": {"start": (ANCHOR - timedelta(days=400)).isoformat()},
            "dateAsserted": (ANCHOR - timedelta(days=30)).isoformat(),
            "dosage": [_daily(2)],
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"hit-lamotrigine-{size}",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": _concept(RXNORM, "198427", "lamotrigine 100 MG Oral Tablet"),
            "subject": subject,
            "authoredOn": (ANCHOR - timedelta(days=200)).isoformat(),
            "dosageInstruction": [_daily(2)],
        },
        {
            "resourceType": "Condition",
            "id": f"hit-old-mi-{size}",
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "confirmed",
                    }
                ]
            },
            "code": _concept(SNOMED, "22298006", "Myocardial infarction (disorder)"),
            "subject": subject,
            "onsetDateTime": "2014-06-02",
            "abatementDateTime": "2014-07-15",
        },
    ]


def _blood_pressure(rid: str, patient_ref: str, taken: date, systolic: int, diastolic: int) -> dict[str, Any]:
    def component(code: str, display: str, value: int) -> dict[str, Any]:
        return {
            "code": _concept(LOINC, code, display),
            "valueQuantity": {
                "value": value,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": _concept(LOINC, "85354-9", "Blood pressure panel with all children optional"),
        "subject": {"reference": patient_ref},
        "effectiveDateTime": f"{taken.isoformat()}T09:30:00Z",
        "component": [
            component("8480-6", "Systolic blood pressure", systolic),
            component("8462-4", "Diastolic blood pressure", diastolic),
        ],
    }


@dataclass(frozen=True)
class PatientRecord:
    """One synthetic patient: its resources per prefetch key and the requests that screen it."""

    size: int  # resources in the prefetch, the Patient included
    patient: dict[str, Any]
    resources: dict[str, list[dict[str, Any]]]  # prefetch search key -> resources
    draft: dict[str, Any]
    hook_instance: str

    @property
    def patient_id(self) -> str:
        return str(self.patient["id"])

    def counts(self) -> dict[str, int]:
        out = {"Patient": 1}
        for resources in self.resources.values():
            for resource in resources:
                out[resource["resourceType"]] = out.get(resource["resourceType"], 0) + 1
        return out

    def _context(self) -> dict[str, Any]:
        return {
            "userId": USER,
            "patientId": self.patient_id,
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": self.draft}],
            },
            "selections": [f"MedicationRequest/{DRAFT_ID}"],
        }

    def prefetch_request(self) -> dict[str, Any]:
        """order-select with every prefetch key satisfied (searchset Bundles as an EHR would send them)."""

        def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(resources),
                "entry": [
                    {
                        "fullUrl": f"{EHR_BASE}/{r['resourceType']}/{r['id']}",
                        "resource": r,
                        "search": {"mode": "match"},
                    }
                    for r in resources
                ],
            }

        return {
            "hook": "order-select",
            "hookInstance": self.hook_instance,
            "context": self._context(),
            "prefetch": {
                "patient": self.patient,
                **{key: searchset(resources) for key, resources in self.resources.items()},
            },
        }

    def fhir_request(self, base_url: str, token: str) -> dict[str, Any]:
        """order-select with no prefetch at all: the service fetches everything from `base_url`."""
        return {
            "hook": "order-select",
            "hookInstance": self.hook_instance,
            "fhirServer": base_url,
            "fhirAuthorization": {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "ketamine-cds",
            },
            "context": self._context(),
        }

    def transaction_bundles(self, chunk: int = 500) -> Iterator[dict[str, Any]]:
        """The record as transaction Bundles of PUT entries (Patient first), at most `chunk` entries each."""
        everything = [self.patient] + [r for resources in self.resources.values() for r in resources]
        for start in range(0, len(everything), chunk):
            yield {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, _reference(r))}",
                        "resource": r,
                        "request": {"method": "PUT", "url": _reference(r)},
                    }
                    for r in everything[start : start + chunk]
                ],
            }


def _reference(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def make_patient(size: int, seed: int) -> PatientRecord:
    """A patient of `size` resources (Patient included), the same for the same (size, seed)."""
    rng = random.Random(f"{seed}:{size}")
    pool = background_pool()
    pid = f"bench-{size}-s{seed}"
    ref = f"Patient/{pid}"
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Benchmark", "given": ["Synthetic", str(size)]}],
        "gender": "female",
        "birthDate": "1971-03-14",
    }
    hits = _hits(ref, size)
    n_bp = min(10, max(2, size // 100))  # the template asks for the latest 10: all fit in one page
    n_allergy = max(1, round(size * pool.weights["AllergyIntolerance"]))
    n_background = size - 1 - len(hits) - n_bp - n_allergy
    if n_background < 10:
        raise ValueError(f"size {size} is too small: at least {1 + len(hits) + n_bp + n_allergy + 10}")
    shares = {t: pool.weights[t] for t in ("Condition", "MedicationRequest", "MedicationStatement")}
    scale = sum(shares.values())
    n_type = {t: int(n_background * w / scale) for t, w in shares.items()}
    n_type["Condition"] += n_background - sum(n_type.values())
    n_type["AllergyIntolerance"] = n_allergy

    resources: dict[str, list[dict[str, Any]]] = {key: [] for key in KEY_OF_TYPE.values()}
    for hit in hits:
        resources[KEY_OF_TYPE[hit["resourceType"]]].append(hit)
    prefixes = {
        "Condition": "cond",
        "MedicationRequest": "mr",
        "MedicationStatement": "ms",
        "AllergyIntolerance": "al",
    }
    for rtype, count in n_type.items():
        templates = pool.by_type[rtype]
        for index in range(count):
            rid = f"{prefixes[rtype]}-{size}-{index:05d}"
            resources[KEY_OF_TYPE[rtype]].append(_clean(rng.choice(templates), rid, ref))
    for key in ("medicationStatements", "medicationRequests", "conditions"):
        rng.shuffle(resources[key])  # hits somewhere in the middle, not first
    readings = []
    for index in range(n_bp):
        days_ago = 14 + 30 * (n_bp - 1 - index) + rng.randrange(0, 10)
        latest = index == n_bp - 1
        systolic, diastolic = (162, 98) if latest else (rng.randrange(112, 134), rng.randrange(70, 84))
        readings.append(
            _blood_pressure(
                f"bp-{size}-{index:03d}", ref, ANCHOR - timedelta(days=days_ago), systolic, diastolic
            )
        )
    resources["bloodPressure"] = readings[::-1]  # newest first, as _sort=-date returns them

    draft = {
        "resourceType": "MedicationRequest",
        "id": DRAFT_ID,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": _concept(RXNORM, "6130", "ketamine 50 MG/ML Injectable Solution"),
        "subject": {"reference": ref},
        "authoredOn": ANCHOR.isoformat(),
        "dosageInstruction": [
            {
                "text": "0.5 mg/kg IV over 40 minutes",
                "timing": {"event": [PLANNED_START.isoformat()]},
                "route": _concept(SNOMED, "47625008", "Intravenous route"),
            }
        ],
    }
    hook_instance = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    record = PatientRecord(size, patient, resources, draft, hook_instance)
    assert sum(record.counts().values()) == size
    return record
