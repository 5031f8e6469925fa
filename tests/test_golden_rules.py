"""Golden scenarios: every rule fires where its evidence says and stays silent where it does not.

Each scenario is a full CDS Hooks request run through the screening function (cds.clinical.screening),
with the clock pinned to 2026-11-22 and no web server or database: the request is checked against the
CDS Hooks request schema and the cards against the response schema, as over HTTP. It asserts which rules
produce a card at which indicator, and which rules must stay silent. A corpus test checks that every
rule in rules/ has at least one firing and one silent scenario here. HTTP behaviour (status codes,
suppression, recording) is tested in tests/test_api_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.builders import (
    ICD10,
    RXNORM,
    SNOMED,
    allergy,
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
from tests.support.cards import INTERNAL_VOCABULARY, findings_carried, findings_shown


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[], dict[str, Any]]
    fires: dict[str, str] = field(default_factory=dict)  # rule id -> indicator
    silent: frozenset[str] = frozenset()


def select(**kwargs: Any) -> dict[str, Any]:
    """order-select with a selected ketamine draft order (full screen of ketamine infusion)."""
    return hook_request("order-select", drafts=[ketamine_order()], **kwargs)


def select_es(**kwargs: Any) -> dict[str, Any]:
    return hook_request("order-select", drafts=[ketamine_order(esketamine=True)], **kwargs)


def snomed(code: str, display: str) -> dict[str, Any]:
    return concept(coding(SNOMED, code, display))


def icd(code: str, display: str) -> dict[str, Any]:
    return concept(coding(ICD10, code, display))


def rx(code: str, display: str) -> dict[str, Any]:
    return concept(coding(RXNORM, code, display))


def phase(*, dose: float, frequency: int, start: str, end: str | None, sequence: int) -> dict[str, Any]:
    """One step of a taper: a dosage with its boundsPeriod and sequence."""
    out = dosage(dose=dose, frequency=frequency)
    bounds = {"start": start, **({"end": end} if end else {})}
    out["timing"]["repeat"]["boundsPeriod"] = bounds
    out["sequence"] = sequence
    return out


MI = snomed("22298006", "Myocardial infarction")
STROKE = snomed("230690007", "Cerebrovascular accident")
CLONAZEPAM_025 = rx("204892", "clonazePAM 0.25 MG Oral Tablet")
ALPRAZOLAM_025 = rx("308047", "alprazolam 0.25 MG Oral Tablet")
LAMOTRIGINE_100 = rx("198427", "lamotrigine 100 MG Oral Tablet")
RISPERIDONE_1 = rx("312830", "risperidone 1 MG Oral Tablet")
PHENELZINE = rx("312347", "phenelzine 15 MG Oral Tablet")
SERTRALINE = rx("312940", "sertraline 50 MG Oral Tablet")
LITHIUM = rx("197890", "lithium carbonate 300 MG Oral Tablet")
CLOBAZAM_10 = rx("199450", "clobazam 10 MG Oral Tablet")

SCENARIOS = [
    # ketamine-hypersensitivity
    Scenario(
        "hypersensitivity: coded ketamine allergy",
        lambda: select(allergies=[allergy(concept(coding(RXNORM, "6130", "ketamine")))]),
        fires={"ketamine-hypersensitivity": "critical"},
    ),
    Scenario(
        "hypersensitivity: free-text Spravato allergy before an IV order (cross-reactivity)",
        lambda: select(allergies=[allergy(concept(text="Spravato - hives"))]),
        fires={"ketamine-hypersensitivity": "critical"},
    ),
    Scenario(
        "hypersensitivity: anaesthetic allergy status without agent asks to confirm",
        lambda: select(conditions=[condition(icd("Z88.4", "Allergy status to anesthetic agent"))]),
        fires={"ketamine-hypersensitivity": "warning"},
    ),
    Scenario(
        "hypersensitivity: refuted or inactive allergy and other allergies stay silent",
        lambda: select(
            allergies=[
                allergy(concept(text="ketamine"), verification="refuted"),
                allergy(concept(text="ketamine"), clinical="inactive"),
                allergy(concept(coding(RXNORM, "7984", "Penicillin V"))),
            ]
        ),
        silent=frozenset({"ketamine-hypersensitivity"}),
    ),
    Scenario(
        "hypersensitivity: an intolerance with only mild nausea is a warning (mild-intolerance band)",
        lambda: select(
            allergies=[
                {
                    **allergy(concept(coding(RXNORM, "6130", "ketamine"))),
                    "type": "intolerance",
                    "criticality": "low",
                    "reaction": [{"manifestation": [snomed("422587007", "Nausea")], "severity": "mild"}],
                }
            ]
        ),
        fires={"ketamine-hypersensitivity": "warning"},
    ),
    Scenario(
        "hypersensitivity: an intolerance with wheezing is not mild (critical, never the warning)",
        lambda: select(
            allergies=[
                {
                    **allergy(concept(coding(RXNORM, "6130", "ketamine"))),
                    "type": "intolerance",
                    "criticality": "low",
                    "reaction": [{"manifestation": [concept(text="wheezing")], "severity": "mild"}],
                }
            ]
        ),
        fires={"ketamine-hypersensitivity": "critical"},
    ),
    # esketamine-cns-depressants
    Scenario(
        "CNS depressants: morphine with esketamine is a warning (opioid-or-barbiturate band)",
        lambda: select_es(statements=[med_statement(rx("7052", "morphine"))]),
        fires={"esketamine-cns-depressants": "warning"},
    ),
    Scenario(
        "CNS depressants: zolpidem with esketamine is information (other-sedating-medicine band)",
        lambda: select_es(statements=[med_statement(concept(text="zolpidem 10 mg at night"))]),
        fires={"esketamine-cns-depressants": "info"},
    ),
    Scenario(
        "CNS depressants: paracetamol with esketamine stays silent",
        lambda: hook_request(
            "order-select",
            drafts=[ketamine_order(esketamine=True)],
            statements=[med_statement(concept(text="paracetamol 1 g four times daily"))],
        ),
        silent=frozenset({"esketamine-cns-depressants"}),
    ),
    Scenario(
        "CNS depressants: morphine with a ketamine infusion stays silent (esketamine only)",
        lambda: select(statements=[med_statement(rx("7052", "morphine"))]),
        silent=frozenset({"esketamine-cns-depressants"}),
    ),
    # recent-myocardial-infarction
    Scenario(
        "MI: 3 months before is critical",
        lambda: select(conditions=[condition(MI, onset="2026-08-15")]),
        fires={"recent-myocardial-infarction": "critical"},
    ),
    Scenario(
        "MI: resolved but within 6 months still counts",
        lambda: select(conditions=[condition(MI, onset="2026-07-01", clinical="resolved")]),
        fires={"recent-myocardial-infarction": "critical"},
    ),
    Scenario(
        "MI: 9 months before needs review",
        lambda: select(conditions=[condition(MI, onset="2026-02-10")]),
        fires={"recent-myocardial-infarction": "warning"},
    ),
    Scenario(
        "MI: no onset, recorded date 2 months ago falls back and counts",
        lambda: select(conditions=[condition(icd("I21.4", "NSTEMI"), recorded="2026-09-20")]),
        fires={"recent-myocardial-infarction": "critical"},
    ),
    Scenario(
        "MI: old MI code with no date asks for the date",
        lambda: select(conditions=[condition(icd("I25.2", "Old myocardial infarction"))]),
        fires={"recent-myocardial-infarction": "warning"},
    ),
    Scenario(
        "MI: 3 years ago, or refuted, stays silent",
        lambda: select(
            conditions=[
                condition(MI, onset="2023-05-01"),
                condition(MI, onset="2026-10-01", verification="refuted"),
            ]
        ),
        silent=frozenset({"recent-myocardial-infarction"}),
    ),
    # recent-stroke
    Scenario(
        "stroke: 5 months ago is critical",
        lambda: select(conditions=[condition(STROKE, onset="2026-06-10")]),
        fires={"recent-stroke": "critical"},
    ),
    Scenario(
        "stroke: 3 years ago needs review",
        lambda: select(conditions=[condition(STROKE, onset="2023-06-10")]),
        fires={"recent-stroke": "warning"},
    ),
    Scenario(
        "stroke: old intracerebral haemorrhage is critical for esketamine",
        lambda: select_es(
            conditions=[condition(icd("I61.9", "Nontraumatic intracerebral hemorrhage"), onset="2015-01-01")]
        ),
        fires={"recent-stroke": "critical"},
    ),
    Scenario(
        "stroke: TIA history needs review",
        lambda: select(
            conditions=[condition(icd("G45.9", "Transient cerebral ischemic attack"), onset="2020-01-01")]
        ),
        fires={"recent-stroke": "warning"},
    ),
    Scenario(
        "stroke: unrelated conditions stay silent",
        lambda: select(
            conditions=[condition(snomed("44054006", "Diabetes mellitus type 2"), onset="2026-10-01")]
        ),
        silent=frozenset({"recent-stroke"}),
    ),
    Scenario(
        "stroke: named only in the record's text two months ago is critical (recognised by name)",
        lambda: select(
            conditions=[condition(concept(text="Right MCA ischaemic stroke"), onset="2026-09-20")]
        ),
        fires={"recent-stroke": "critical"},
    ),
    Scenario(
        "stroke: 'no history of stroke' and a relative's stroke stay silent",
        lambda: select(
            conditions=[
                condition(concept(text="No history of stroke"), onset="2026-10-01"),
                condition(concept(text="Mother: stroke aged 71"), onset="2026-10-01"),
            ]
        ),
        silent=frozenset({"recent-stroke", "unreadable-records"}),
    ),
    Scenario(
        "stroke: a TIA last month is a warning (recent-TIA band), not a contraindication",
        lambda: select(
            conditions=[condition(icd("G45.9", "Transient cerebral ischemic attack"), onset="2026-10-15")]
        ),
        fires={"recent-stroke": "warning"},
    ),
    Scenario(
        "stroke: after-effects of a stroke recorded last month ask for its date (warning)",
        lambda: select(
            conditions=[
                condition(icd("I69.320", "Aphasia following cerebral infarction"), onset="2026-10-05")
            ]
        ),
        fires={"recent-stroke": "warning"},
    ),
    Scenario(
        "stroke: a refuted TIA and a TIA 'ruled out' stay silent",
        lambda: select(
            conditions=[
                condition(
                    icd("G45.9", "Transient cerebral ischemic attack"),
                    onset="2026-10-15",
                    verification="refuted",
                ),
                condition(concept(text="TIA ruled out"), onset="2026-10-15"),
            ]
        ),
        silent=frozenset({"recent-stroke"}),
    ),
    Scenario(
        "MI: a history-of-MI record from two months ago asks for the date (warning, not critical)",
        lambda: select(
            conditions=[
                condition(snomed("399211009", "History of myocardial infarction"), onset="2026-09-22")
            ]
        ),
        fires={"recent-myocardial-infarction": "warning"},
    ),
    Scenario(
        "MI: a history-of-MI record from three years ago stays silent",
        lambda: select(
            conditions=[
                condition(snomed("399211009", "History of myocardial infarction"), onset="2023-09-22")
            ]
        ),
        silent=frozenset({"recent-myocardial-infarction"}),
    ),
    Scenario(
        "MI: onset recorded as the patient's age this year is critical",
        lambda: select(conditions=[{**condition(MI), "onsetAge": {"value": 46, "unit": "a", "code": "a"}}]),
        fires={"recent-myocardial-infarction": "critical"},
    ),
    Scenario(
        "MI: onset recorded as age 30 (years ago) stays silent",
        lambda: select(conditions=[{**condition(MI), "onsetAge": {"value": 30, "unit": "a", "code": "a"}}]),
        silent=frozenset({"recent-myocardial-infarction"}),
    ),
    # aneurysm-or-avm
    Scenario(
        "aneurysm: critical for esketamine",
        lambda: select_es(conditions=[condition(icd("I71.4", "Abdominal aortic aneurysm, without rupture"))]),
        fires={"aneurysm-or-avm": "critical"},
    ),
    Scenario(
        "aneurysm: review for ketamine infusion",
        lambda: select(conditions=[condition(icd("I67.1", "Cerebral aneurysm, nonruptured"))]),
        fires={"aneurysm-or-avm": "warning"},
    ),
    Scenario(
        "aneurysm: resolved record stays silent",
        lambda: select_es(
            conditions=[condition(icd("I71.4", "Abdominal aortic aneurysm"), clinical="resolved")]
        ),
        silent=frozenset({"aneurysm-or-avm"}),
    ),
    # elevated-blood-pressure
    Scenario(
        "BP: 186/104 is critical",
        lambda: select(observations=[blood_pressure(186, 104)]),
        fires={"elevated-blood-pressure": "critical"},
    ),
    Scenario(
        "BP: 146/88 needs control first",
        lambda: select(observations=[blood_pressure(146, 88)]),
        fires={"elevated-blood-pressure": "warning"},
    ),
    Scenario(
        "BP: latest reading normal though an older one was high",
        lambda: select(
            observations=[
                blood_pressure(190, 120, taken="2026-03-01T09:00:00Z"),
                blood_pressure(124, 78, taken="2026-11-10T09:00:00Z"),
            ]
        ),
        silent=frozenset({"elevated-blood-pressure"}),
    ),
    Scenario(
        "BP: a reading dated in the future does not hide a real high one, and is reported",
        lambda: select(
            observations=[
                blood_pressure(188, 112, taken="2026-11-15T09:00:00Z"),
                blood_pressure(118, 76, taken="2030-01-01T09:00:00Z"),
            ]
        ),
        fires={"elevated-blood-pressure": "critical", "unreadable-records": "info"},
    ),
    Scenario(
        "BP: active hypertensive emergency is critical",
        lambda: select(conditions=[condition(icd("I16.1", "Hypertensive emergency"))]),
        fires={"elevated-blood-pressure": "critical"},
    ),
    # benzodiazepine-response
    Scenario(
        "benzo: clonazepam 0.25 mg x2 twice daily = 20 mg/day DZ-eq is a warning",
        lambda: select(statements=[med_statement(CLONAZEPAM_025, dosages=[dosage(dose=2, frequency=2)])]),
        fires={"benzodiazepine-response": "warning"},
    ),
    Scenario(
        "benzo: alprazolam 0.25 mg once daily = 5 mg/day DZ-eq is information",
        lambda: select(statements=[med_statement(ALPRAZOLAM_025)]),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: dose without frequency is said, not assumed",
        lambda: select(statements=[med_statement(CLONAZEPAM_025, dosages=[dosage(frequency=None)])]),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: one dose computed, one not: information that names both",
        lambda: select(
            statements=[
                med_statement(ALPRAZOLAM_025),
                med_statement(CLONAZEPAM_025, dosages=[dosage(frequency=None)]),
            ]
        ),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: as-needed only is information",
        lambda: select(statements=[med_statement(CLONAZEPAM_025, dosages=[dosage(prn=True)])]),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: brand name and strength in free text are computed (Klonopin 1 mg = 20 mg/day DZ-eq)",
        lambda: select(
            statements=[
                med_statement(concept(text="Klonopin 1 mg tablet"), dosages=[dosage(dose=1, frequency=1)])
            ]
        ),
        fires={"benzodiazepine-response": "warning"},
    ),
    Scenario(
        "benzo: brand name in free text without a strength is recognised; its dose is not guessed",
        lambda: select(
            statements=[
                med_statement(concept(text="Klonopin tablets"), dosages=[dosage(dose=1, frequency=1)])
            ]
        ),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: generic name and strength in free text are computed",
        lambda: select(
            statements=[
                med_statement(concept(text="clonazepam 1 mg tablet"), dosages=[dosage(dose=1, frequency=1)])
            ]
        ),
        fires={"benzodiazepine-response": "warning"},
    ),
    Scenario(
        "benzo: one therapy as a statement and a brand order is counted once (5 mg/day DZ-eq, not 10)",
        lambda: select(
            statements=[med_statement(ALPRAZOLAM_025)],
            requests=[med_request(rx("141927", "alprazolam 0.25 MG Oral Tablet [Xanax]"))],
        ),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: taper in force today (0.25 mg from November = 5 mg/day DZ-eq, not the 20 of October)",
        lambda: select(
            requests=[
                med_request(
                    CLONAZEPAM_025,
                    dosages=[
                        phase(dose=2, frequency=2, start="2026-10-01", end="2026-10-31", sequence=1),
                        phase(dose=1, frequency=1, start="2026-11-01", end=None, sequence=2),
                    ],
                )
            ]
        ),
        fires={"benzodiazepine-response": "info"},
    ),
    Scenario(
        "benzo: clobazam without a diagnosis is an antiepileptic: warning without hold advice",
        lambda: select(requests=[med_request(CLOBAZAM_10, dosages=[dosage(dose=1, frequency=2)])]),
        fires={"benzodiazepine-response": "warning"},
    ),
    Scenario(
        "benzo: low dose with epilepsy on record is an antiepileptic: information",
        lambda: select(
            statements=[med_statement(ALPRAZOLAM_025)],
            conditions=[condition(snomed("84757009", "Epilepsy"), onset="2012-01-01")],
        ),
        fires={"benzodiazepine-response": "info", "seizure-disorder": "info"},
    ),
    Scenario(
        "benzo: an active statement whose effective period ended in June stays silent",
        lambda: select(
            statements=[
                {
                    **med_statement(CLONAZEPAM_025, dosages=[dosage(dose=4, frequency=2)]),
                    "effectivePeriod": {"start": "2026-01-01", "end": "2026-06-30"},
                }
            ]
        ),
        silent=frozenset({"benzodiazepine-response"}),
    ),
    Scenario(
        "benzo: stopped statement and antidepressants stay silent",
        lambda: select(
            statements=[
                med_statement(CLONAZEPAM_025, status="stopped", dosages=[dosage(dose=4, frequency=2)]),
                med_statement(SERTRALINE),
                med_statement(LITHIUM, dosages=[dosage(dose=1, frequency=2)]),
            ]
        ),
        silent=frozenset({"benzodiazepine-response", "esketamine-pressor-medicines"}),
    ),
    # lamotrigine-response
    Scenario(
        "lamotrigine: 100 mg twice daily = 200 mg/day is information",
        lambda: select(statements=[med_statement(LAMOTRIGINE_100, dosages=[dosage(dose=1, frequency=2)])]),
        fires={"lamotrigine-response": "info"},
    ),
    Scenario(
        "lamotrigine: 100 mg/day is at, not above, the threshold",
        lambda: select(statements=[med_statement(LAMOTRIGINE_100)]),
        silent=frozenset({"lamotrigine-response"}),
    ),
    # risperidone-olanzapine-response
    Scenario(
        "risperidone in use is information by default",
        lambda: select(statements=[med_statement(RISPERIDONE_1)]),
        fires={"risperidone-olanzapine-response": "info"},
    ),
    Scenario(
        "olanzapine by brand name only",
        lambda: select(statements=[med_statement(concept(text="Zyprexa 10 mg"))]),
        fires={"risperidone-olanzapine-response": "info"},
    ),
    Scenario(
        "quetiapine is not risperidone or olanzapine",
        lambda: select(statements=[med_statement(rx("312743", "quetiapine 100 MG Oral Tablet"))]),
        silent=frozenset({"risperidone-olanzapine-response"}),
    ),
    # esketamine-pressor-medicines
    Scenario(
        "MAOI with esketamine: blood-pressure note",
        lambda: select_es(statements=[med_statement(PHENELZINE)]),
        fires={"esketamine-pressor-medicines": "info"},
    ),
    Scenario(
        "MAOI with ketamine infusion: no card (antidepressants do not interfere)",
        lambda: select(statements=[med_statement(PHENELZINE)]),
        silent=frozenset({"esketamine-pressor-medicines"}),
    ),
    # theophylline-seizure-threshold
    Scenario(
        "theophylline in use",
        lambda: select(statements=[med_statement(concept(text="theophylline 300 mg ER tablet"))]),
        fires={"theophylline-seizure-threshold": "warning"},
    ),
    Scenario(
        "no theophylline",
        lambda: select(statements=[med_statement(SERTRALINE)]),
        silent=frozenset({"theophylline-seizure-threshold"}),
    ),
    # naltrexone-response
    Scenario(
        "naltrexone in use",
        lambda: select(
            statements=[med_statement(rx("1483744", "Naltrexone hydrochloride 50 MG Oral Tablet"))]
        ),
        fires={"naltrexone-response": "info"},
    ),
    Scenario(
        "naltrexone stopped",
        lambda: select(
            statements=[
                med_statement(rx("1483744", "Naltrexone hydrochloride 50 MG Oral Tablet"), status="completed")
            ]
        ),
        silent=frozenset({"naltrexone-response"}),
    ),
    # conditions: psychosis, bipolar, seizure, unstable cardiac, ICP, IOP, thyroid, cystitis, hepatic
    Scenario(
        "psychotic disorder history",
        lambda: select(conditions=[condition(icd("F20.0", "Paranoid schizophrenia"), clinical="inactive")]),
        fires={"psychotic-disorder": "warning"},
    ),
    Scenario(
        "bipolar disorder (Synthea SNOMED code)",
        lambda: select(conditions=[condition(snomed("13746004", "Bipolar disorder"))]),
        fires={"bipolar-disorder": "info"},
    ),
    Scenario(
        "seizure disorder (Synthea SNOMED code)",
        lambda: select(conditions=[condition(snomed("128613002", "Seizure disorder"))]),
        fires={"seizure-disorder": "info"},
    ),
    Scenario(
        "resolved bipolar and seizure records stay silent",
        lambda: select(
            conditions=[
                condition(snomed("13746004", "Bipolar disorder"), clinical="resolved"),
                condition(snomed("128613002", "Seizure disorder"), clinical="resolved"),
            ]
        ),
        silent=frozenset({"bipolar-disorder", "seizure-disorder", "psychotic-disorder"}),
    ),
    Scenario(
        "unstable angina",
        lambda: select(conditions=[condition(icd("I20.0", "Unstable angina"))]),
        fires={"unstable-cardiac-disease": "warning"},
    ),
    Scenario(
        "unstable angina coded in SNOMED CT (preinfarction syndrome)",
        lambda: select(conditions=[condition(snomed("4557003", "Preinfarction syndrome"))]),
        fires={"unstable-cardiac-disease": "warning"},
    ),
    Scenario(
        "stable angina is not unstable cardiac disease",
        lambda: select(conditions=[condition(snomed("233819005", "Stable angina"))]),
        silent=frozenset({"unstable-cardiac-disease"}),
    ),
    Scenario(
        "raised intracranial pressure",
        lambda: select(conditions=[condition(icd("G93.2", "Benign intracranial hypertension"))]),
        fires={"raised-intracranial-pressure": "warning"},
    ),
    Scenario(
        "glaucoma",
        lambda: select(conditions=[condition(icd("H40.10X0", "Unspecified open-angle glaucoma"))]),
        fires={"raised-intraocular-pressure": "info"},
    ),
    Scenario(
        "hyperthyroidism",
        lambda: select(conditions=[condition(icd("E05.90", "Thyrotoxicosis, unspecified"))]),
        fires={"hyperthyroidism": "warning"},
    ),
    Scenario(
        "interstitial cystitis",
        lambda: select(conditions=[condition(icd("N30.10", "Interstitial cystitis without hematuria"))]),
        fires={"interstitial-cystitis": "info"},
    ),
    Scenario(
        "severe hepatic impairment: warning for esketamine",
        lambda: select_es(conditions=[condition(icd("K72.10", "Chronic hepatic failure without coma"))]),
        fires={"severe-hepatic-impairment": "warning"},
    ),
    Scenario(
        "severe hepatic impairment: information for ketamine",
        lambda: select(conditions=[condition(icd("K72.10", "Chronic hepatic failure without coma"))]),
        fires={"severe-hepatic-impairment": "info"},
    ),
    Scenario(
        "a healthy chart: none of the condition rules fire",
        lambda: select(
            conditions=[condition(snomed("195662009", "Acute viral pharyngitis"), onset="2026-11-01")]
        ),
        silent=frozenset(
            {
                "unstable-cardiac-disease",
                "raised-intracranial-pressure",
                "raised-intraocular-pressure",
                "hyperthyroidism",
                "interstitial-cystitis",
                "severe-hepatic-impairment",
                "pregnancy",
                "substance-use-disorder",
                "unreadable-records",
            }
        ),
    ),
    # pregnancy
    Scenario(
        "pregnancy: current",
        lambda: select(conditions=[condition(snomed("77386006", "Pregnancy"), onset="2026-07-01")]),
        fires={"pregnancy": "warning"},
    ),
    Scenario(
        "pregnancy: an 'active' record from 2019 is stale and silent",
        lambda: select(conditions=[condition(snomed("77386006", "Pregnancy"), onset="2019-02-01")]),
        silent=frozenset({"pregnancy"}),
    ),
    # substance-use-disorder
    Scenario(
        "ketamine use disorder is critical",
        lambda: select(conditions=[condition(icd("F16.20", "Hallucinogen dependence, uncomplicated"))]),
        fires={"substance-use-disorder": "critical"},
    ),
    Scenario(
        "alcohol use disorder is a warning",
        lambda: select(conditions=[condition(icd("F10.20", "Alcohol dependence, uncomplicated"))]),
        fires={"substance-use-disorder": "warning"},
    ),
    Scenario(
        "drug dependence coded in SNOMED CT (Synthea) is a warning",
        lambda: select(conditions=[condition(snomed("6525002", "Dependent drug abuse"))]),
        fires={"substance-use-disorder": "warning"},
    ),
    Scenario(
        "nicotine dependence is not counted",
        lambda: select(conditions=[condition(icd("F17.210", "Nicotine dependence, cigarettes"))]),
        silent=frozenset({"substance-use-disorder"}),
    ),
    # ordering-instructions
    Scenario(
        "instructions on a ketamine order",
        select,
        fires={"ordering-instructions": "info"},
    ),
    Scenario(
        "no instructions on patient-view",
        lambda: hook_request("patient-view"),
        silent=frozenset({"ordering-instructions"}),
    ),
    # unreadable-records
    Scenario(
        "a medication with no name is said, not ignored",
        lambda: select(
            statements=[
                {
                    "resourceType": "MedicationStatement",
                    "id": "nameless",
                    "status": "active",
                    "medicationReference": {"reference": "Medication/missing"},
                    "subject": {"reference": "Patient/x"},
                }
            ]
        ),
        fires={"unreadable-records": "info"},
    ),
    Scenario(
        "readable records: no data-quality card",
        lambda: select(statements=[med_statement(SERTRALINE)]),
        silent=frozenset({"unreadable-records"}),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, screen: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
    cards = screen(scenario.build())
    shown = findings_shown(cards)
    for rule_id, indicator in scenario.fires.items():
        assert shown.get(rule_id) == indicator, f"{rule_id}: expected {indicator}, got {shown.get(rule_id)}"
    for rule_id in scenario.silent:
        assert rule_id not in shown, f"{rule_id} fired: {shown[rule_id]}"
    assert len(shown) == len(findings_carried(cards)), "one card per problem: no rule on two cards"
    for card in cards:
        assert len(card["summary"]) < 140, card["summary"]
        assert len(card["detail"]) <= 900, card["detail"]
        text = (card["summary"] + " " + card["detail"]).lower()
        assert not [w for w in INTERNAL_VOCABULARY if w in text], text
        assert "](" not in card["detail"], "citations are card links, not markdown links"


def test_every_rule_has_firing_and_silent_scenarios(knowledge: Any) -> None:
    fired = {rule for s in SCENARIOS for rule in s.fires}
    silenced = {rule for s in SCENARIOS for rule in s.silent}
    for rule in knowledge.rules:
        assert rule.id in fired, f"{rule.id} has no firing scenario"
        assert rule.id in silenced, f"{rule.id} has no silent scenario"
