"""Two charts used to judge the cards and the screening page as a clinician would see them.

- typical: a ketamine order planned in 10 days for a patient on sertraline and an as-needed lorazepam,
  with a normal blood pressure.
- complex (the chart the card redesign was judged on): a heart attack two months ago, clonazepam
  2 mg/day, lamotrigine refilled 15 times, risperidone, a raised blood pressure, bipolar disorder, and
  ketamine planned in 10 days.
The test clock is 2026-11-22 (tests/conftest.py NOW).
"""

from __future__ import annotations

from typing import Any

from tests.support.builders import (
    RXNORM,
    SNOMED,
    blood_pressure,
    coding,
    concept,
    condition,
    dosage,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)

PLANNED_START = "2026-12-02"
CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
LAMOTRIGINE = concept(coding(RXNORM, "198427", "lamotrigine 100 MG Oral Tablet"))
RISPERIDONE = concept(coding(RXNORM, "312830", "risperidone 1 MG Oral Tablet"))
SERTRALINE = concept(coding(RXNORM, "312940", "sertraline 50 MG Oral Tablet"))
LORAZEPAM = concept(coding(RXNORM, "197901", "lorazepam 1 MG Oral Tablet"))
MI = concept(coding(SNOMED, "22298006", "Myocardial infarction"))
BIPOLAR = concept(coding(SNOMED, "371596008", "Bipolar I disorder"))
PRESCRIBER = "Practitioner/dr-benzo-prescriber"


def complex_chart(hook: str, *, with_order: bool = True) -> dict[str, Any]:
    clonazepam = med_request(
        CLONAZEPAM, rid="clonazepam-1", authored="2026-10-30", dosages=[dosage(dose=4, frequency=2)]
    )
    clonazepam["requester"] = {"reference": PRESCRIBER}
    refills = [
        med_request(
            LAMOTRIGINE,
            rid=f"lamotrigine-{n}",
            authored=f"{2025 + (n + 7) // 12}-{(n + 7) % 12 + 1:02d}-05",
            status="active" if n == 15 else "completed",
            dosages=[dosage(dose=1, frequency=2)],
        )
        for n in range(16)
    ]
    for refill in refills[:-1]:
        refill["status"] = "active"  # the EHR left every refill active, as charts often do
    return hook_request(
        hook,
        drafts=[ketamine_order(start=PLANNED_START)] if with_order and hook != "patient-view" else None,
        requests=[clonazepam, *refills],
        statements=[med_statement(RISPERIDONE, rid="risperidone-1", asserted="2026-06-01")],
        conditions=[
            condition(MI, onset="2026-09-20", rid="mi-1"),
            condition(BIPOLAR, onset="2015-03-01", rid="bipolar-1"),
        ],
        observations=[
            blood_pressure(152, 96, taken="2026-11-15T09:30:00Z", rid="bp-new"),
            blood_pressure(138, 88, taken="2026-10-01T09:30:00Z", rid="bp-old"),
        ],
    )


def typical_chart(hook: str) -> dict[str, Any]:
    return hook_request(
        hook,
        drafts=[ketamine_order(start=PLANNED_START)] if hook != "patient-view" else None,
        statements=[
            med_statement(SERTRALINE, rid="sertraline-1", asserted="2026-08-01"),
            med_statement(LORAZEPAM, rid="lorazepam-1", dosages=[dosage(dose=1, prn=True)]),
        ],
        observations=[blood_pressure(124, 78, taken="2026-11-18T10:00:00Z", rid="bp-1")],
    )
