"""Typed facts (cds.fhir.model) for tests of the clinical core without FHIR JSON, HTTP or a database.

Codes here are test data taken from the project's value sets, not product logic.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from itertools import count
from typing import Any

from cds.clinical.situation import FULL, Situation
from cds.fhir.model import Coding, Concept, ConditionFact, MedicationFact, MedicationKind, SourceRef
from tests.support.builders import RXNORM, SNOMED
from tests.support.constants import NOW

TODAY = NOW.date()
VALUESET = "https://ketamine-cds.example.org/fhir/ValueSet/"
MI = Concept((Coding(SNOMED, "22298006", "Myocardial infarction"),))
STROKE = Concept((Coding(SNOMED, "230690007", "Cerebrovascular accident"),))
AVM = Concept((Coding(SNOMED, "234142008", "Cerebral arteriovenous malformation"),))
KETAMINE = Concept((Coding(RXNORM, "6130", "ketamine"),))
ESKETAMINE = Concept((Coding(RXNORM, "2201625", "esketamine Nasal Spray [Spravato]"),))
CLONAZEPAM = Concept((Coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"),))
SERTRALINE = Concept((Coding(RXNORM, "312940", "sertraline 50 MG Oral Tablet"),))

_ids = count(1)


def fact_id(prefix: str) -> str:
    """A resource id unique in the test run ("c1", "m2", ...)."""
    return f"{prefix}{next(_ids)}"


def condition(concept: Concept, onset: date | None, *, status: str | None = "active") -> ConditionFact:
    return ConditionFact(SourceRef("Condition", fact_id("c")), concept, status, None, onset, None)


def medication(concept: Concept, *, draft: bool = False, per_day: float | None = None) -> MedicationFact:
    """An active order (a draft when `draft`) of `per_day` units a day, once a day; no dosage without it."""
    dosages: tuple[dict[str, Any], ...] = ()
    if per_day is not None:
        dosages = (
            {
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": per_day, "unit": "{tbl}"}}],
            },
        )
    return MedicationFact(
        SourceRef("MedicationRequest", fact_id("m")),
        MedicationKind.REQUEST,
        concept,
        "draft" if draft else "active",
        intent="order",
        is_draft_order=draft,
        is_selected=draft,
        dosages=dosages,
    )


def situation(products: tuple[str, ...] = ("ketamine",), **changes: Any) -> Situation:
    """A full patient-view screen on TODAY, with `changes` to any field."""
    base = Situation(FULL, "patient-view", frozenset(products), TODAY, False, today=TODAY)
    return replace(base, **changes)
