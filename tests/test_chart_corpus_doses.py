"""Chart corpus, doses: charts shaped as EHRs send them, each with its figure worked out by hand.

Every case is a full CDS Hooks request through the HTTP API (clock pinned to 2026-11-22, the ketamine
order planned for today unless the case says otherwise). Cases come in firing and non-firing pairs, as
the CDC opioid CDS test sets do. The expected mg/day figures in the comments and assertions were worked
out by hand from the equivalence table (Ashton: mg equal to 10 mg diazepam - alprazolam 0.5, clonazepam
0.5, lorazepam 1, oxazepam 20, temazepam 20, nitrazepam 10, estazolam 1.5, bromazepam 5.5, clobazam 20,
diazepam 10), never taken from the code under test.

Classes: one therapy recorded twice (statement and order, generic and brand, coded and free text); the
phase of a taper in force on the reference date; an elapsed effective period; strength from the value
set's product name; brand names with their strength in free text; dose-form units as UCUM annotations or
orderable-drug-form codes; as-needed doses beside regular ones; timing by event; a benzodiazepine used as
an antiepileptic; and card wording under the clinic FAQ preset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds.clinical.knowledge import Knowledge
from tests.conftest import assert_valid_response
from tests.support.builders import (
    ICD10,
    RXNORM,
    SNOMED,
    coding,
    concept,
    condition,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)
from tests.support.cards import findings_on_page

BENZO = "benzodiazepine-response"
LAMOTRIGINE = "lamotrigine-response"
DZE = "mg/day diazepam-eq"
UCUM = "http://unitsofmeasure.org"
DRUG_FORM = "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm"
HOLD_ADVICE = "If the prescriber agrees to a hold"  # the hold plan in the above-threshold band
LONG_ACTING = "h hold does not clear"  # a long half-life: the hold protocol is not offered
FAQ = "preset: clinic_faq\n"


def rx(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(coding(RXNORM, code, display))


def text(name: str) -> dict[str, Any]:
    return concept(text=name)


def give(
    amount: float | None = 1,
    *,
    unit: str | None = None,
    unit_system: str = UCUM,
    per_day: int | None = 1,
    code: str | None = None,
    when: list[str] | None = None,
    events: list[str] | None = None,
    bounds: tuple[str | None, str | None] | None = None,
    duration_days: int | None = None,
    sequence: int | None = None,
    prn: bool = False,
    max_per_day: float | None = None,
) -> dict[str, Any]:
    """One Dosage. `bounds` is a boundsPeriod (start, end); `code` a timing abbreviation (BID)."""
    out: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    repeat: dict[str, Any] = {}
    if per_day is not None and code is None and when is None and events is None:
        repeat.update(frequency=per_day, period=1, periodUnit="d")
    if when is not None:
        repeat["when"] = when
    if bounds is not None:
        start, end = bounds
        repeat["boundsPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    if duration_days is not None:
        repeat["boundsDuration"] = {"value": duration_days, "unit": "days", "system": UCUM, "code": "d"}
    if repeat:
        timing["repeat"] = repeat
    if code is not None:
        timing["code"] = concept(coding("http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", code))
    if events is not None:
        timing["event"] = events
    if timing:
        out["timing"] = timing
    if amount is not None:
        quantity: dict[str, Any] = {"value": amount}
        if unit:
            quantity.update(unit=unit, system=unit_system, code=unit)
        out["doseAndRate"] = [{"doseQuantity": quantity}]
    if sequence is not None:
        out["sequence"] = sequence
    if prn:
        out["asNeededBoolean"] = True
    if max_per_day is not None:
        out["maxDosePerPeriod"] = {
            "numerator": {"value": max_per_day},
            "denominator": {"value": 1, "unit": "day", "system": UCUM, "code": "d"},
        }
    return out


def statement(medication: dict[str, Any], *dosages: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A MedicationStatement; without dosages, one unit once a day."""
    return med_statement(medication, dosages=list(dosages) or [give()], **kwargs)


def order(medication: dict[str, Any], *dosages: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A MedicationRequest; without dosages, one unit once a day."""
    return med_request(medication, dosages=list(dosages) or [give()], **kwargs)


def ended(resource: dict[str, Any], start: str, end: str) -> dict[str, Any]:
    return {**resource, "effectivePeriod": {"start": start, "end": end}}


def chart(
    *,
    statements: list[dict[str, Any]] | None = None,
    requests: list[dict[str, Any]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    start: str | None = None,
) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        return hook_request(
            "order-select",
            drafts=[ketamine_order(start=start)],
            statements=statements,
            requests=requests,
            conditions=conditions,
        )

    return build


CLONAZEPAM_05 = rx("197527", "clonazepam 0.5 MG Oral Tablet")
CLONAZEPAM_05_KLONOPIN = rx("206157", "clonazepam 0.5 MG Oral Tablet [Klonopin]")
CLONAZEPAM_1 = rx("197528", "clonazepam 1 MG Oral Tablet")
CLONAZEPAM_2 = rx("197529", "clonazepam 2 MG Oral Tablet")
CLONAZEPAM_025 = rx("204892", "clonazePAM 0.25 MG Oral Tablet")
CLONAZEPAM_INGREDIENT = rx("2598", "clonazepam")
LORAZEPAM_05 = rx("197900", "lorazepam 0.5 MG Oral Tablet")
LORAZEPAM_1 = rx("197901", "lorazepam 1 MG Oral Tablet")
ALPRAZOLAM_025 = rx("308047", "alprazolam 0.25 MG Oral Tablet")
ALPRAZOLAM_025_XANAX = rx("141927", "alprazolam 0.25 MG Oral Tablet [Xanax]")
ALPRAZOLAM_1 = rx("197321", "alprazolam 1 MG Oral Tablet")
OXAZEPAM_10 = rx("198057", "oxazepam 10 MG Oral Capsule")
OXAZEPAM_30 = rx("198059", "oxazepam 30 MG Oral Capsule")
CLOBAZAM_10 = rx("199450", "clobazam 10 MG Oral Tablet")
VALTOCO = rx("2272629", "diazepam 50 MG/ML Nasal Spray [Valtoco]")
LAMOTRIGINE_25 = rx("282401", "lamotrigine 25 MG Oral Tablet")
LAMOTRIGINE_100 = rx("198427", "lamotrigine 100 MG Oral Tablet")
EPILEPSY = concept(coding(SNOMED, "84757009", "Epilepsy"))
SEIZURE_DISORDER = concept(coding(SNOMED, "128613002", "Seizure disorder"))
EPILEPSY_ICD = concept(coding(ICD10, "G40.909", "Epilepsy, unspecified, not intractable"))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], dict[str, Any]]
    indicator: str | None  # None: the rule stays silent
    rule: str = BENZO
    summary_has: tuple[str, ...] = ()
    detail_has: tuple[str, ...] = ()
    lacks: tuple[str, ...] = ()  # in neither summary nor detail
    policy: str | None = None  # site policy YAML, when not the shipped defaults


CASES = [
    # ------------------------------------------------------------ one therapy, however recorded
    Case(
        # 0.5 mg x 2/day = 1 mg/day = 20 DZE, once: the brand order is the same therapy
        "statement (generic, frequency 2) and order (brand, BID code) of clonazepam 0.5 mg: 20, not 40",
        chart(
            statements=[statement(CLONAZEPAM_05, give(1, per_day=2))],
            requests=[order(CLONAZEPAM_05_KLONOPIN, give(1, code="BID"))],
        ),
        "warning",
        summary_has=(f"20 {DZE}",),
        detail_has=("recorded twice, as a statement and as an order: counted once",),
        lacks=(f"40 {DZE}",),
    ),
    Case(
        # alprazolam 0.25 mg/day = 5 DZE, once: 5 is not over 8 (counted twice it would be 10, a warning)
        "alprazolam 0.25 mg daily as a statement and as a Xanax order (QD): 5, information",
        chart(
            statements=[statement(ALPRAZOLAM_025, give(1, per_day=1))],
            requests=[order(ALPRAZOLAM_025_XANAX, give(1, code="QD"))],
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        detail_has=("counted once",),
    ),
    Case(
        # lorazepam 0.5 mg = 5 DZE + alprazolam 0.25 mg = 5 DZE: two ingredients, two therapies = 10
        "lorazepam 0.5 mg and alprazolam 0.25 mg daily are two therapies: 10",
        chart(statements=[statement(LORAZEPAM_05), statement(ALPRAZOLAM_025)]),
        "warning",
        summary_has=(f"10 {DZE}",),
        lacks=("counted once",),
    ),
    Case(
        # ingredient code with a mg dose (0.5 mg x 2 = 1 mg) and the brand in free text (1 tablet of 0.5 mg
        # x BID = 1 mg): one therapy, 20 DZE
        "ingredient-coded statement in mg and free-text Klonopin order: 20, counted once",
        chart(
            statements=[statement(CLONAZEPAM_INGREDIENT, give(0.5, unit="mg", per_day=2))],
            requests=[order(text("Klonopin 0.5 mg tablet"), give(1, code="BID"))],
        ),
        "warning",
        summary_has=(f"20 {DZE}",),
        detail_has=("counted once",),
    ),
    Case(
        # statement 0.5 mg x 2 = 1 mg (20 DZE); order 1 mg x 2 = 2 mg (40 DZE): the higher side counts
        "statement and order disagree on the dose: the highest (40) is counted and the card says so",
        chart(
            statements=[statement(CLONAZEPAM_05, give(1, per_day=2))],
            requests=[order(CLONAZEPAM_1, give(1, per_day=2))],
        ),
        "warning",
        summary_has=(f"40 {DZE}",),
        detail_has=("the highest is counted",),
        lacks=(f"60 {DZE}",),
    ),
    Case(
        # 1 mg + 0.5 mg tablets of one ingredient, two orders: taken together = 1.5 mg = 30 DZE
        "two clonazepam orders of different strengths are taken together: 1 + 0.5 mg = 30",
        chart(requests=[order(CLONAZEPAM_1, give(1)), order(CLONAZEPAM_05, give(1))]),
        "warning",
        summary_has=(f"30 {DZE}",),
        detail_has=("both counted",),
    ),
    # --------------------------------------------------------------- the phase in force (tapers)
    Case(
        # October 0.5 mg/day, from 1 November 0.25 mg/day (half a 0.5 mg tablet): 0.25 mg = 5 DZE
        "taper with sequences and dates: the November phase (5), neither the highest (10) nor the sum (15)",
        chart(
            requests=[
                order(
                    CLONAZEPAM_05,
                    give(1, bounds=("2026-10-01", "2026-10-31"), sequence=1),
                    give(0.5, bounds=("2026-11-01", None), sequence=2),
                )
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        detail_has=("in force on 2026-11-22",),
    ),
    Case(
        "the same taper without sequence numbers: dates decide, nothing is summed",
        chart(
            statements=[
                statement(
                    CLONAZEPAM_05,
                    give(1, bounds=("2026-10-01", "2026-10-31")),
                    give(0.5, bounds=("2026-11-01", None)),
                )
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        lacks=(f"15 {DZE}",),
    ),
    Case(
        # on 22 November the November phase holds: 1 tablet of 0.5 mg = 0.5 mg/day = 10 DZE
        "three-phase taper screened today: the November phase, 10, a warning",
        chart(
            requests=[
                order(
                    CLONAZEPAM_05,
                    give(2, bounds=("2026-10-01", "2026-10-31"), sequence=1),
                    give(1, bounds=("2026-11-01", "2026-11-30"), sequence=2),
                    give(0.5, bounds=("2026-12-01", None), sequence=3),
                )
            ]
        ),
        "warning",
        summary_has=(f"10 {DZE}",),
    ),
    Case(
        # the session is planned for 5 December: the December phase, half a 0.5 mg tablet = 5 DZE
        "the same taper read on the planned session date (5 December): 5, information",
        chart(
            start="2026-12-05",
            requests=[
                order(
                    CLONAZEPAM_05,
                    give(2, bounds=("2026-10-01", "2026-10-31"), sequence=1),
                    give(1, bounds=("2026-11-01", "2026-11-30"), sequence=2),
                    give(0.5, bounds=("2026-12-01", None), sequence=3),
                )
            ],
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        detail_has=("in force on 2026-12-05",),
    ),
    Case(
        # written 1 November: 2 tablets (1 mg) for 14 days (1-14 Nov), then 1 tablet (0.5 mg) for 14 days
        # (15-28 Nov): on 22 November 0.5 mg = 10 DZE
        "taper by durations chained from the order date: the second fortnight, 10",
        chart(
            requests=[
                order(
                    CLONAZEPAM_05,
                    give(2, duration_days=14, sequence=1),
                    give(1, duration_days=14, sequence=2),
                    authored="2026-11-01",
                )
            ]
        ),
        "warning",
        summary_has=(f"10 {DZE}",),
        lacks=(f"20 {DZE}",),
    ),
    Case(
        # written 20 October: 1 mg (20 Oct-2 Nov), 0.5 mg (3-16 Nov), 0.25 mg (17-30 Nov): 0.25 mg = 5 DZE
        "a longer taper by durations: the third fortnight, 5, information",
        chart(
            requests=[
                order(
                    CLONAZEPAM_05,
                    give(2, duration_days=14, sequence=1),
                    give(1, duration_days=14, sequence=2),
                    give(0.5, duration_days=14, sequence=3),
                    authored="2026-10-20",
                )
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
    ),
    Case(
        "an active order whose only phase ended in October is not current: no card",
        chart(requests=[order(CLONAZEPAM_1, give(1, per_day=2, bounds=("2026-09-01", "2026-10-31")))]),
        None,
    ),
    Case(
        # lorazepam 1 mg x 2/day from 15 December = 2 mg = 20 DZE: planned use counts
        "an order that starts after the reference date counts as planned use: 20",
        chart(requests=[order(LORAZEPAM_1, give(1, per_day=2, bounds=("2026-12-15", None)))]),
        "warning",
        summary_has=(f"20 {DZE}",),
        detail_has=("not started on 2026-11-22",),
    ),
    # -------------------------------------------------------------- an elapsed effective period
    Case(
        "an active statement whose effective period ended in June is not current: no card",
        chart(
            statements=[
                ended(statement(CLONAZEPAM_1, give(1, per_day=2)), "2026-01-01", "2026-06-30"),
            ]
        ),
        None,
    ),
    Case(
        # 1 mg x 2 = 2 mg = 40 DZE; the period runs into next year
        "the same statement with its period ending next year is current: 40",
        chart(
            statements=[
                ended(statement(CLONAZEPAM_1, give(1, per_day=2)), "2026-01-01", "2027-01-31"),
            ]
        ),
        "warning",
        summary_has=(f"40 {DZE}",),
    ),
    Case(
        # alprazolam 0.25 mg = 5 DZE is counted; the ended clonazepam is listed, not counted
        "an ended statement beside a current one is listed and not counted: 5",
        chart(
            statements=[
                statement(ALPRAZOLAM_025),
                ended(statement(CLONAZEPAM_1, give(1, per_day=2)), "2026-01-01", "2026-06-30"),
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        detail_has=("ended on 2026-06-30",),
    ),
    # --------------------------------------------------------- strength from the product's name
    Case(
        # RxNorm 197528 is "clonazepam 1 MG Oral Tablet" in the value set: 1 tablet x 2 = 2 mg = 40 DZE
        "a clonazepam product code without display: strength from the value set's name, 40",
        chart(requests=[order(rx("197528"), give(1, per_day=2))]),
        "warning",
        summary_has=(f"40 {DZE}",),
        detail_has=("strength read from the product name of its code",),
    ),
    Case(
        # RxNorm 197900 is "lorazepam 0.5 MG Oral Tablet": 0.5 mg = 5 DZE
        "a lorazepam product code without display, once a day: 5, information",
        chart(requests=[order(rx("197900"), give(1))]),
        "info",
        summary_has=(f"5 {DZE}",),
    ),
    # ------------------------------------------------------ brand names with strength in text
    Case(
        "free text 'Klonopin 0.5 mg tablet', one twice a day: 1 mg = 20",
        chart(statements=[statement(text("Klonopin 0.5 mg tablet"), give(1, per_day=2))]),
        "warning",
        summary_has=(f"20 {DZE}",),
    ),
    Case(
        "free text 'Ativan 1 mg', one three times a day: 3 mg = 30",
        chart(statements=[statement(text("Ativan 1 mg"), give(1, code="TID"))]),
        "warning",
        summary_has=(f"30 {DZE}",),
    ),
    Case(
        "free text 'Rivotril 2 mg' (clonazepam), one at bedtime: 2 mg = 40",
        chart(statements=[statement(text("Rivotril 2 mg"), give(1, when=["HS"]))]),
        "warning",
        summary_has=(f"40 {DZE}",),
    ),
    Case(
        "free text 'Serax 15 mg' (oxazepam), one a day: 15 x 10 / 20 = 7.5, information",
        chart(statements=[statement(text("Serax 15 mg capsule"), give(1))]),
        "info",
        summary_has=(f"7.5 {DZE}",),
    ),
    Case(
        "free text 'Restoril 30 mg' (temazepam) at night: 30 x 10 / 20 = 15",
        chart(statements=[statement(text("Restoril 30 mg"), give(1, when=["HS"]))]),
        "warning",
        summary_has=(f"15 {DZE}",),
    ),
    Case(
        "free text 'Mogadon 5 mg' (nitrazepam) at night: 5 x 10 / 10 = 5, information",
        chart(statements=[statement(text("Mogadon 5 mg"), give(1, when=["HS"]))]),
        "info",
        summary_has=(f"5 {DZE}",),
    ),
    Case(
        "free text 'ProSom 2 mg' (estazolam): 2 x 10 / 1.5 = 13.33",
        chart(statements=[statement(text("ProSom 2 mg"), give(1))]),
        "warning",
        summary_has=(f"13.33 {DZE}",),
    ),
    Case(
        "free text 'Lexotan 3 mg' (bromazepam): 3 x 10 / 5.5 = 5.45, information",
        chart(statements=[statement(text("Lexotan 3 mg"), give(1))]),
        "info",
        summary_has=(f"5.45 {DZE}",),
    ),
    Case(
        "free text 'Seroquel 100 mg' is not a benzodiazepine: no benzodiazepine card",
        chart(statements=[statement(text("Seroquel 100 mg"), give(1, when=["HS"]))]),
        None,
    ),
    # ---------------------------------------------------------------------- dose-form units
    Case(
        # "1 alprazolam 1 mg three times a day" written with the UCUM annotation {pill}: 3 mg = 60 DZE
        "alprazolam 1 mg, 1 {pill} three times a day: 60",
        chart(requests=[order(ALPRAZOLAM_1, give(1, unit="{pill}", per_day=3))]),
        "warning",
        summary_has=(f"60 {DZE}",),
        lacks=("not convertible",),
    ),
    Case(
        "lorazepam 0.5 mg, 1 {tbl} once a day: 5, information",
        chart(requests=[order(LORAZEPAM_05, give(1, unit="{tbl}"))]),
        "info",
        summary_has=(f"5 {DZE}",),
    ),
    Case(
        "clonazepam 0.5 mg, 1 TAB (orderable drug form) twice a day: 20",
        chart(requests=[order(CLONAZEPAM_05, give(1, unit="TAB", unit_system=DRUG_FORM, per_day=2))]),
        "warning",
        summary_has=(f"20 {DZE}",),
    ),
    Case(
        # oxazepam 10 mg x 3 = 30 mg = 30 x 10 / 20 = 15 DZE
        "oxazepam 10 mg capsules, 1 {capsule} three times a day: 15",
        chart(requests=[order(OXAZEPAM_10, give(1, unit="{capsule}", per_day=3))]),
        "warning",
        summary_has=(f"15 {DZE}",),
    ),
    Case(
        "millilitres of a tablet cannot be converted: said, not guessed (information)",
        chart(requests=[order(CLONAZEPAM_05, give(5, unit="mL", per_day=2))]),
        "info",
        detail_has=("dose unit not convertible",),
    ),
    # ---------------------------------------------------------------- as needed beside regular
    Case(
        # regular 0.25 mg x 2 = 0.5 mg = 10 DZE; lorazepam as needed (up to 3 mg) is not added
        "regular clonazepam 10 with lorazepam as needed up to 3 a day: 10, the as-needed dose not added",
        chart(
            requests=[
                order(CLONAZEPAM_025, give(1, per_day=2)),
                order(LORAZEPAM_1, give(1, per_day=None, prn=True, max_per_day=3)),
            ]
        ),
        "warning",
        summary_has=(f"10 {DZE}",),
        detail_has=("as needed (not counted in the regular daily total)",),
    ),
    Case(
        # regular 0.5 mg = 5 DZE; as needed up to 6 mg would make it 65 if it were added
        "regular lorazepam 5 with lorazepam as needed up to 6 a day: 5, information",
        chart(
            requests=[
                order(LORAZEPAM_05, give(1)),
                order(LORAZEPAM_1, give(1, per_day=None, prn=True, max_per_day=6)),
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
        lacks=(f"65 {DZE}",),
    ),
    Case(
        "lorazepam as needed only, at most 4 a day: the as-needed band",
        chart(requests=[order(LORAZEPAM_1, give(1, per_day=None, prn=True, max_per_day=4))]),
        "info",
        summary_has=("as needed",),
    ),
    Case(
        "regular alprazolam 0.25 mg with an as-needed dose without a maximum: 5, information",
        chart(
            statements=[
                statement(ALPRAZOLAM_025, give(1)),
                statement(ALPRAZOLAM_025, give(1, per_day=None, prn=True)),
            ]
        ),
        "info",
        summary_has=(f"5 {DZE}",),
    ),
    Case(
        # 08:00 and 20:00 on one day: 2 a day x 1 mg lorazepam = 2 mg = 20 DZE
        "timing by events only (two times on one day): 20",
        chart(
            requests=[order(LORAZEPAM_1, give(1, events=["2026-11-22T08:00:00Z", "2026-11-22T20:00:00Z"]))]
        ),
        "warning",
        summary_has=(f"20 {DZE}",),
    ),
    # ------------------------------------------------------ a benzodiazepine as an antiepileptic
    Case(
        # clobazam 10 mg x 2 = 20 mg = 20 x 10 / 20 = 10 DZE: over 8, but no hold advice
        "clobazam 10 mg twice a day, no diagnosis coded: an antiepileptic, no hold advice",
        chart(requests=[order(CLOBAZAM_10, give(1, per_day=2))]),
        "warning",
        summary_has=(f"10 {DZE}", "Antiepileptic", "neurologist"),
        detail_has=("clobazam", "Do not skip, hold or lower"),
        lacks=(HOLD_ADVICE,),
    ),
    Case(
        "free text 'Frisium 10 mg' (clobazam) twice a day: an antiepileptic, 10",
        chart(statements=[statement(text("Frisium 10 mg"), give(1, per_day=2))]),
        "warning",
        summary_has=(f"10 {DZE}", "Antiepileptic"),
        lacks=(HOLD_ADVICE,),
    ),
    Case(
        # 1 mg x 2 = 2 mg = 40 DZE with epilepsy on record
        "clonazepam 1 mg twice a day with epilepsy on record: 40, plan with the neurologist",
        chart(
            requests=[order(CLONAZEPAM_1, give(1, per_day=2))],
            conditions=[condition(EPILEPSY, onset="2015-03-01")],
        ),
        "warning",
        summary_has=(f"40 {DZE}", "neurologist"),
        detail_has=("Epilepsy",),
        lacks=(HOLD_ADVICE,),
    ),
    Case(
        # clonazepam's half-life reaches 50 h: the clinic's 24-48 h hold does not clear it (review finding)
        "the same clonazepam without a seizure disorder: 40, and a short hold does not clear it",
        chart(requests=[order(CLONAZEPAM_1, give(1, per_day=2))]),
        "warning",
        summary_has=(f"40 {DZE}",),
        detail_has=(LONG_ACTING,),
        lacks=("neurologist", HOLD_ADVICE),
    ),
    Case(
        "alprazolam 1 mg twice daily (40): short-acting, so the clinic hold protocol is offered",
        chart(requests=[order(ALPRAZOLAM_1, give(1, per_day=2))]),
        "warning",
        summary_has=(f"40 {DZE}",),
        detail_has=(HOLD_ADVICE,),
        lacks=("neurologist", LONG_ACTING),
    ),
    Case(
        "the same clonazepam with epilepsy refuted: the advice for a regular benzodiazepine applies",
        chart(
            requests=[order(CLONAZEPAM_1, give(1, per_day=2))],
            conditions=[condition(EPILEPSY, onset="2015-03-01", verification="refuted")],
        ),
        "warning",
        detail_has=(LONG_ACTING,),
        lacks=("neurologist",),
    ),
    Case(
        # lorazepam 0.5 mg = 5 DZE, under 8: information, still no hold advice
        "lorazepam 0.5 mg daily with an ICD-10 epilepsy code: antiepileptic information",
        chart(
            requests=[order(LORAZEPAM_05, give(1))],
            conditions=[condition(EPILEPSY_ICD, recorded="2020-05-01")],
        ),
        "info",
        summary_has=("used as an antiepileptic",),
        detail_has=(f"5 {DZE}",),
        lacks=(HOLD_ADVICE, "unlikely to suffer"),
    ),
    Case(
        "diazepam rescue spray only, with a seizure disorder: no advice to avoid doses",
        chart(
            requests=[order(VALTOCO, give(1, unit="{spray}", per_day=None, prn=True))],
            conditions=[condition(SEIZURE_DISORDER, onset="2019-01-01")],
        ),
        "info",
        summary_has=("used as an antiepileptic",),
        detail_has=("rescue",),
        lacks=("avoid a dose",),
    ),
    # ------------------------------------------------------------ wording under the clinic FAQ
    Case(
        # clonazepam 2 mg x 2 = 4 mg/day of the drug (under the FAQ's 100) = 80 DZE (over the study's 8)
        "clinic FAQ: clonazepam 4 mg/day (80 DZE) is not called harmless",
        chart(requests=[order(CLONAZEPAM_2, give(1, per_day=2))]),
        "info",
        summary_has=("4 mg/day", f"80 {DZE}", "may be weaker"),
        lacks=("unlikely to suffer", "no change is needed"),
        policy=FAQ,
    ),
    Case(
        # alprazolam 0.25 mg of the drug = 5 DZE: under both the FAQ's 100 and the study's 8
        "clinic FAQ: alprazolam 0.25 mg/day (5 DZE) may be called unlikely to matter",
        chart(statements=[statement(ALPRAZOLAM_025)]),
        "info",
        summary_has=("0.25 mg/day", "unlikely to suffer"),
        detail_has=("5 mg/day",),
        policy=FAQ,
    ),
    Case(
        # oxazepam 30 mg x 4 = 120 mg/day of the drug, over the FAQ's 100
        "clinic FAQ: oxazepam 120 mg/day is over the FAQ threshold: warning",
        chart(requests=[order(OXAZEPAM_30, give(1, per_day=4))]),
        "warning",
        summary_has=("120 mg/day (over 100 mg/day)",),
        policy=FAQ,
    ),
    Case(
        "clinic FAQ: clonazepam 4 mg/day with epilepsy: antiepileptic, no hold advice, not harmless",
        chart(
            requests=[order(CLONAZEPAM_2, give(1, per_day=2))],
            conditions=[condition(EPILEPSY, onset="2015-03-01")],
        ),
        "info",
        summary_has=("used as an antiepileptic",),
        lacks=(HOLD_ADVICE, "unlikely to suffer", "no change is needed"),
        policy=FAQ,
    ),
    Case(
        "a site threshold of 50 for lamotrigine is not attributed to the clinic that said 100",
        chart(requests=[order(LAMOTRIGINE_100, give(1))]),
        "info",
        rule=LAMOTRIGINE,
        summary_has=("100 mg/day (over 50 mg/day)",),
        detail_has=("site threshold of 50 mg/day", "above 100 mg/day"),
        lacks=("weaker response above 50",),
        policy="parameters:\n  lamotrigine-response:\n    threshold: 50\n",
    ),
    # ---------------------------------------------------------------- lamotrigine titration
    Case(
        # 25 mg/day in October, 100 mg x 2 = 200 mg/day from 1 November: 200 on 22 November
        "lamotrigine titration: the phase in force on 22 November is 200 mg/day",
        chart(
            requests=[
                order(LAMOTRIGINE_25, give(1, bounds=("2026-10-01", "2026-10-31"), sequence=1)),
                order(LAMOTRIGINE_100, give(1, per_day=2, bounds=("2026-11-01", None), sequence=1)),
            ]
        ),
        "info",
        rule=LAMOTRIGINE,
        summary_has=("200 mg/day",),
    ),
    Case(
        # 2 x 25 mg = 50 mg/day in November; 200 mg/day only from 1 December: 50 is not over 100
        "lamotrigine titration whose 200 mg phase starts in December: no card today",
        chart(
            requests=[
                order(
                    LAMOTRIGINE_25,
                    give(2, bounds=("2026-11-01", "2026-11-30"), sequence=1),
                    give(8, bounds=("2026-12-01", None), sequence=2),
                )
            ]
        ),
        None,
        rule=LAMOTRIGINE,
    ),
]


def screen(
    case: Case, make_app: Callable[..., Flask], tmp_path: Path, knowledge: Knowledge
) -> list[dict[str, Any]]:
    overrides: dict[str, Any] = {}
    if case.policy is not None:
        path = tmp_path / "policy.yaml"
        path.write_text(case.policy, encoding="utf-8")
        overrides["policy_file"] = str(path)
    app = make_app(**overrides)
    client = app.test_client()
    response = client.post("/cds-services/ketamine-order-select", json=case.build())
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    payload = response.get_json()
    assert_valid_response(knowledge, payload)
    cards: list[dict[str, Any]] = payload["cards"]
    # Each finding as its screening page shows it (an info finding shares the "Also noted" card; the
    # records, the arithmetic and the notes behind a total are on the page).
    views = findings_on_page(client, cards)
    return [{"source": {"topic": {"code": rule}}, **view} for rule, view in views.items()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dose_case(case: Case, make_app: Callable[..., Flask], tmp_path: Path, knowledge: Knowledge) -> None:
    cards = [
        c for c in screen(case, make_app, tmp_path, knowledge) if c["source"]["topic"]["code"] == case.rule
    ]
    if case.indicator is None:
        assert not cards, cards[0]["summary"] if cards else ""
        return
    assert len(cards) == 1
    card = cards[0]
    summary, detail = card["summary"], card["detail"]
    assert card["indicator"] == case.indicator, summary
    assert len(summary) < 140
    for wanted in case.summary_has:
        assert wanted in summary, (wanted, summary)
    for wanted in case.detail_has:
        assert wanted in detail, (wanted, detail)
    for unwanted in case.lacks:
        assert unwanted not in summary, unwanted
        assert unwanted not in detail, unwanted


def test_the_corpus_holds_firing_and_silent_cases_for_both_dose_rules() -> None:
    assert len(CASES) >= 30
    for rule in (BENZO, LAMOTRIGINE):
        assert any(c.rule == rule and c.indicator for c in CASES)
        assert any(c.rule == rule and c.indicator is None for c in CASES)
