"""Chart corpus: contraindications found however a chart records them, and silence where it should be.

Charts shaped like real ones, written apart from the golden scenarios and with codes and wordings other
than the issue's examples: codes one level below the curated expansions, conditions named only in words
(with negation, family history and doubt around them), records nobody can read, dates given as an age,
allergy records of differing severity, and sedating medicines with esketamine. Each case says which rules
must fire at which level, which must stay silent, and what the card's evidence must say. Firing and silent
cases come in pairs, as in the CDC opioid CDS test sets.

The corpus runs through the screening function itself (no HTTP, no database), with the clock pinned to
2026-11-22; the chart's patient was born on 1980-04-02.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
from cds.config import load_settings
from tests.conftest import NOW
from tests.support.builders import (
    ICD10,
    RXNORM,
    SNOMED,
    allergy,
    coding,
    concept,
    condition,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)
from tests.support.cards import screen_views
from tests.support.fhir_server import FhirServerHandle

LOCAL = "urn:oid:2.16.840.1.113883.19.5.99"  # a hospital's own problem-list code system
CNS_RULE = "esketamine-cns-depressants"
ESKETAMINE_PRODUCT = concept(coding(RXNORM, "2201623", "esketamine Nasal Spray"))
STROKE_RULE = "recent-stroke"
MI_RULE = "recent-myocardial-infarction"
ANEURYSM_RULE = "aneurysm-or-avm"
DATA_RULE = "unreadable-records"
ALLERGY_RULE = "ketamine-hypersensitivity"
BY_NAME = "recognised by name: confirm"


@dataclass(frozen=True)
class Case:
    name: str
    chart: Callable[[], dict[str, Any]]
    fires: dict[str, str] = field(default_factory=dict)  # rule id -> indicator
    silent: frozenset[str] = frozenset()
    evidence: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rule id -> phrases in its detail
    absent: dict[str, tuple[str, ...]] = field(default_factory=dict)  # rule id -> phrases it must not say


def ketamine(**chart: Any) -> dict[str, Any]:
    return hook_request("order-select", drafts=[ketamine_order()], **chart)


def esketamine(**chart: Any) -> dict[str, Any]:
    return hook_request("order-select", drafts=[ketamine_order(esketamine=True)], **chart)


def sct(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(coding(SNOMED, code, display))


def icd(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(coding(ICD10, code, display))


def words(text: str) -> dict[str, Any]:
    return concept(text=text)


def local(code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    return concept(coding(LOCAL, code, display), text=text)


def aged(record: dict[str, Any], low: float, high: float | None = None, unit: str = "a") -> dict[str, Any]:
    """The record with its onset given as the patient's age (onsetAge) or an age range (onsetRange)."""
    out = {k: v for k, v in record.items() if not k.startswith("onset")}
    age = {"value": low, "unit": "years" if unit == "a" else "months", "system": "http://unitsofmeasure.org"}
    if high is None:
        out["onsetAge"] = {**age, "code": unit}
    else:
        out["onsetRange"] = {"low": {**age, "code": unit}, "high": {**age, "value": high, "code": unit}}
    return out


def reacting(
    record: dict[str, Any],
    *manifestations: dict[str, Any],
    kind: str | None = "intolerance",
    criticality: str | None = "low",
    severity: str | None = "mild",
) -> dict[str, Any]:
    """An AllergyIntolerance with its type, criticality and one reaction showing `manifestations`."""
    out = dict(record)
    if kind:
        out["type"] = kind
    if criticality:
        out["criticality"] = criticality
    if manifestations:
        reaction: dict[str, Any] = {"manifestation": list(manifestations)}
        if severity:
            reaction["severity"] = severity
        out["reaction"] = [reaction]
    return out


def esketamine_course(*orders: dict[str, Any]) -> dict[str, Any]:
    """order-select of another medicine for a patient whose chart shows an esketamine course."""
    course = med_statement(ESKETAMINE_PRODUCT, rid="esk-course")
    return hook_request("order-select", drafts=list(orders), statements=[course])


def without_patient(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a client sends it that prefetches no Patient and offers no FHIR server."""
    body["prefetch"].pop("patient")
    return body


CASES: list[Case] = [
    # ------------------------------------------------ (a) codes below or beside the curated expansions
    Case(
        "embolic stroke (SNOMED, a descendant the curated set lacked) 4 months ago",
        lambda: ketamine(conditions=[condition(sct("371041009", "Embolic stroke"), onset="2026-07-20")]),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "cardioembolic stroke 8 months before esketamine",
        lambda: esketamine(
            conditions=[condition(sct("413758000", "Cardioembolic stroke"), onset="2026-03-30")]
        ),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "completed stroke three years ago is past history, not a contraindication",
        lambda: ketamine(conditions=[condition(sct("25133001", "Completed stroke"), onset="2023-09-01")]),
        fires={STROKE_RULE: "warning"},
    ),
    Case(
        "stroke with intracranial haemorrhage in 2019 rules out esketamine",
        lambda: esketamine(
            conditions=[
                condition(
                    sct("5571000124103", "Cerebrovascular accident with intracranial hemorrhage"),
                    onset="2019-05-02",
                )
            ]
        ),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "intracranial haemorrhage (parent concept) 2015, esketamine",
        lambda: esketamine(conditions=[condition(sct("1386000"), onset="2015-02-11", clinical="resolved")]),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "subarachnoid haemorrhage two years ago before a ketamine infusion is a review",
        lambda: ketamine(
            conditions=[condition(sct("21454007", "Subarachnoid hemorrhage"), onset="2024-10-01")]
        ),
        fires={STROKE_RULE: "warning"},
    ),
    Case(
        "brain stem stroke syndrome (ICD-10-CM G46.3) last month",
        lambda: ketamine(
            conditions=[condition(icd("G46.3", "Brain stem stroke syndrome"), onset="2026-10-19")]
        ),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "ischaemic stroke without coma, recorded 10 weeks ago with no onset",
        lambda: ketamine(
            conditions=[
                condition(sct("140921000119102", "Ischemic stroke without coma"), recorded="2026-09-10")
            ]
        ),
        fires={STROKE_RULE: "critical"},
        evidence={STROKE_RULE: ("recorded was used",)},
    ),
    Case(
        "ICD-10-CM stroke sent under the OID form of the code system",
        lambda: ketamine(
            conditions=[
                condition(
                    concept(
                        coding("urn:oid:2.16.840.1.113883.6.90", "I63.512", "Cerebral infarction, left MCA")
                    ),
                    onset="2026-09-01",
                )
            ]
        ),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "thoracic aortic aneurysm (SNOMED) before esketamine",
        lambda: esketamine(conditions=[condition(sct("433068007", "Aneurysm of thoracic aorta"))]),
        fires={ANEURYSM_RULE: "critical"},
    ),
    Case(
        "aortic aneurysm (SNOMED parent) before a ketamine infusion",
        lambda: ketamine(conditions=[condition(sct("67362008"))]),
        fires={ANEURYSM_RULE: "warning"},
    ),
    Case(
        "cerebral arterial aneurysm before esketamine",
        lambda: esketamine(conditions=[condition(sct("128608001", "Cerebral arterial aneurysm"))]),
        fires={ANEURYSM_RULE: "critical"},
    ),
    Case(
        "healed (old) myocardial infarction with no date asks for the date",
        lambda: ketamine(conditions=[condition(sct("1755008", "Healed myocardial infarction"))]),
        fires={MI_RULE: "warning"},
    ),
    Case(
        "past MI found on an ECG, recorded last month, is not an infarction last month",
        lambda: ketamine(
            conditions=[
                condition(
                    sct("32574007", "Past myocardial infarction diagnosed on electrocardiogram"),
                    recorded="2026-10-30",
                )
            ]
        ),
        silent=frozenset(),
        absent={MI_RULE: ("critical",)},
    ),
    Case(
        "cerebrovascular disease without an infarction is not a stroke",
        lambda: ketamine(
            conditions=[condition(sct("62914000", "Cerebrovascular disease"), onset="2026-10-01")]
        ),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "family history of stroke coded in ICD-10-CM (Z82.3)",
        lambda: ketamine(
            conditions=[condition(icd("Z82.3", "Family history of stroke"), onset="2026-11-01")]
        ),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "the digits of the old-MI concept under another code system mean nothing",
        lambda: ketamine(conditions=[condition(concept(coding(ICD10, "1755008")))]),
        silent=frozenset({MI_RULE}),
        fires={DATA_RULE: "info"},
    ),
    Case(
        "the digits of an aneurysm concept in a local code system, named as something else",
        lambda: esketamine(conditions=[condition(local("128609009", "Chronic knee pain"))]),
        silent=frozenset({ANEURYSM_RULE, DATA_RULE}),
    ),
    Case(
        "sequela of cerebral infarction three years after is past history",
        lambda: ketamine(
            conditions=[
                condition(icd("I69.398", "Other sequelae of cerebral infarction"), onset="2023-04-01")
            ]
        ),
        fires={STROKE_RULE: "warning"},
    ),
    # ------------------------------------------------------------- (b) named, not coded (and not said)
    Case(
        "only text: left MCA CVA three months ago",
        lambda: ketamine(conditions=[condition(words("L MCA CVA"), onset="2026-08-18")]),
        fires={STROKE_RULE: "critical"},
        evidence={STROKE_RULE: (BY_NAME,)},
    ),
    Case(
        "a local code whose display names a cerebral infarct, six weeks before esketamine",
        lambda: esketamine(
            conditions=[
                condition(local("NEU-0042", "Cerebral infarct, right PCA territory"), onset="2026-10-10")
            ]
        ),
        fires={STROKE_RULE: "critical"},
        evidence={STROKE_RULE: (BY_NAME,)},
    ),
    Case(
        "British spelling in the text of an unrecognised SNOMED code",
        lambda: ketamine(
            conditions=[
                condition(
                    concept(coding(SNOMED, "999999991000000109"), text="Acute ischaemic stroke"),
                    onset="2026-11-02",
                )
            ]
        ),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "NSTEMI in words two months ago",
        lambda: ketamine(conditions=[condition(words("NSTEMI - troponin peak 2.1"), onset="2026-09-25")]),
        fires={MI_RULE: "critical"},
        evidence={MI_RULE: (BY_NAME,)},
    ),
    Case(
        "heart attack in words ten months ago needs cardiology review",
        lambda: ketamine(conditions=[condition(words("Heart attack"), onset="2026-01-15")]),
        fires={MI_RULE: "warning"},
    ),
    Case(
        "inferior STEMI named with no date",
        lambda: ketamine(conditions=[condition(words("Inferior STEMI, stented"))]),
        fires={MI_RULE: "warning"},
    ),
    Case(
        "AAA in words before esketamine",
        lambda: esketamine(conditions=[condition(words("AAA 4.8 cm on surveillance"))]),
        fires={ANEURYSM_RULE: "critical"},
        evidence={ANEURYSM_RULE: (BY_NAME,)},
    ),
    Case(
        "berry aneurysm (clipped) before esketamine",
        lambda: esketamine(conditions=[condition(local("VASC-7", "Berry aneurysm - clipped 2012"))]),
        fires={ANEURYSM_RULE: "critical"},
    ),
    Case(
        "brain bleed in words, years ago, before esketamine",
        lambda: esketamine(conditions=[condition(words("Brain bleed"), onset="2014-06-01")]),
        fires={STROKE_RULE: "critical"},
    ),
    Case(
        "old MI in words, undated",
        lambda: ketamine(conditions=[condition(words("Old MI"))]),
        fires={MI_RULE: "warning"},
    ),
    Case(
        "'no history of stroke' never fires",
        lambda: ketamine(conditions=[condition(words("No history of stroke"), onset="2026-11-01")]),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "'family history of stroke' never fires",
        lambda: ketamine(
            conditions=[condition(words("Family history of stroke (mother, aged 70)"), onset="2026-11-01")]
        ),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "'ruled out MI' never fires",
        lambda: ketamine(conditions=[condition(words("Chest pain - MI ruled out"), onset="2026-11-15")]),
        silent=frozenset({MI_RULE, DATA_RULE}),
    ),
    Case(
        "'denies heart attack' never fires",
        lambda: ketamine(conditions=[condition(words("Denies heart attack or stroke"), onset="2026-11-15")]),
        silent=frozenset({MI_RULE, STROKE_RULE}),
    ),
    Case(
        "an aneurysm in the father is not the patient's",
        lambda: esketamine(conditions=[condition(words("FHx: AAA in father"))]),
        silent=frozenset({ANEURYSM_RULE, DATA_RULE}),
    ),
    Case(
        "heat stroke is not a stroke",
        lambda: ketamine(conditions=[condition(words("Heat stroke"), onset="2026-08-01")]),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "stroke risk assessment is not a stroke",
        lambda: ketamine(conditions=[condition(words("Stroke risk assessment"), onset="2026-11-01")]),
        silent=frozenset({STROKE_RULE, DATA_RULE}),
    ),
    Case(
        "aneurysmal bone cyst is not an aneurysm",
        lambda: esketamine(conditions=[condition(words("Aneurysmal bone cyst of tibia"))]),
        silent=frozenset({ANEURYSM_RULE}),
    ),
    Case(
        "splenic infarct is not a stroke",
        lambda: ketamine(conditions=[condition(words("Splenic infarct"), onset="2026-10-01")]),
        silent=frozenset({STROKE_RULE}),
    ),
    Case(
        "mild MI on an echo report means mitral insufficiency",
        lambda: ketamine(conditions=[condition(words("Mild MI"), onset="2026-10-01")]),
        silent=frozenset({MI_RULE}),
    ),
    Case(
        "deschloroketamine is not ketamine",
        lambda: ketamine(
            allergies=[allergy(words("Deschloroketamine (research chemical) - agitation"))],
            statements=[med_statement(words("2F-deschloroketamine, recreational"))],
        ),
        silent=frozenset({ALLERGY_RULE}),
    ),
    Case(
        "a coded record's display is not read for other conditions",
        lambda: ketamine(
            conditions=[
                condition(
                    icd("Z86.73", "Personal history of TIA and cerebral infarction"), onset="2026-10-20"
                )
            ]
        ),
        fires={STROKE_RULE: "warning"},
    ),
    # ------------------------------------------------------------------- dates given as age or ranges
    Case(
        "MI at age 46 (this year of life) is dated by its latest possible day",
        lambda: ketamine(conditions=[aged(condition(sct("401314000", "Acute NSTEMI")), 46)]),
        fires={MI_RULE: "critical"},
        evidence={
            MI_RULE: (
                "onset recorded as age 46 years: between 2026-04-02 and 2027-04-01",
                "dates from 2 Apr 2026 to 1 Apr 2027",
            )
        },
        absent={MI_RULE: ("without an onset", "2026-11-22")},  # today is not the onset: never shown as one
    ),
    Case(
        "MI at age 556 months: a one-month window, 2026-08-02 to 2026-09-01",
        lambda: ketamine(conditions=[aged(condition(sct("22298006")), 556, unit="mo")]),
        fires={MI_RULE: "critical"},
        evidence={MI_RULE: ("age 556 months: between 2026-08-02 and 2026-09-01",)},
    ),
    Case(
        "MI between ages 43 and 45: latest possible date 2026-04-01, inside 12 months",
        lambda: ketamine(conditions=[aged(condition(icd("I21.4", "NSTEMI")), 43, 45)]),
        fires={MI_RULE: "warning"},
        evidence={MI_RULE: ("between 2023-04-02 and 2026-04-01",)},
    ),
    Case(
        "MI between ages 38 and 40 ended more than a year ago: no card",
        lambda: ketamine(conditions=[aged(condition(icd("I21.4", "NSTEMI")), 38, 40)]),
        silent=frozenset({MI_RULE}),
    ),
    Case(
        "stroke at age 30 is an old stroke",
        lambda: ketamine(conditions=[aged(condition(sct("230690007", "Stroke")), 30)]),
        fires={STROKE_RULE: "warning"},
        evidence={STROKE_RULE: ("not dated within the last 12 months",)},
    ),
    Case(
        "an age with no Patient to date it asks for the date",
        lambda: without_patient(ketamine(conditions=[aged(condition(sct("22298006")), 46)])),
        fires={MI_RULE: "warning"},
        evidence={MI_RULE: ("birth date was not available",)},
    ),
    Case(
        "TIA last month: warning about a recent TIA, not 'outside the window'",
        lambda: ketamine(
            conditions=[
                condition(icd("G45.8", "Other transient cerebral ischemic attacks"), onset="2026-10-24")
            ]
        ),
        fires={STROKE_RULE: "warning"},
        evidence={STROKE_RULE: ("ischaemic attack this recent",)},
        absent={STROKE_RULE: ("outside the", "not dated within")},
    ),
    Case(
        "TIA in 2021 is past history",
        lambda: ketamine(conditions=[condition(sct("266257000"), onset="2021-02-14")]),
        fires={STROKE_RULE: "warning"},
        evidence={STROKE_RULE: ("not dated within the last 12 months",)},
    ),
    Case(
        "hemiplegia after a stroke recorded last month asks for the stroke's date",
        lambda: ketamine(
            conditions=[
                condition(
                    icd(
                        "I69.354", "Hemiplegia following cerebral infarction affecting left non-dominant side"
                    ),
                    onset="2026-10-12",
                )
            ]
        ),
        fires={STROKE_RULE: "warning"},
        evidence={STROKE_RULE: ("Confirm when the stroke happened",)},
        absent={STROKE_RULE: ("not dated within",)},
    ),
    Case(
        "history of CVA recorded two months ago asks for the stroke's date",
        lambda: ketamine(conditions=[condition(sct("275526006"), recorded="2026-09-15")]),
        fires={STROKE_RULE: "warning"},
        evidence={STROKE_RULE: ("Confirm when the stroke happened",)},
    ),
    Case(
        "history of MI recorded three months ago is not an MI three months ago",
        lambda: ketamine(
            conditions=[condition(sct("399211009", "History of myocardial infarction"), onset="2026-08-20")]
        ),
        fires={MI_RULE: "warning"},
        evidence={MI_RULE: ("says that it happened, not", "Confirm the date")},
    ),
    # ------------------------------------------------------------------- allergy record severity
    Case(
        "ketamine intolerance, low criticality, mild vomiting: a warning that names the reaction",
        lambda: ketamine(allergies=[reacting(allergy(sct("373464007", "Ketamine")), words("Vomiting"))]),
        fires={ALLERGY_RULE: "warning"},
        evidence={ALLERGY_RULE: ("Vomiting",)},
    ),
    Case(
        "esketamine intolerance, mild dizziness coded in SNOMED CT, before esketamine",
        lambda: esketamine(
            allergies=[reacting(allergy(words("Spravato")), sct("404640003", "Dizziness"), criticality=None)]
        ),
        fires={ALLERGY_RULE: "warning"},
    ),
    Case(
        "intolerance with hives is an immune reaction: critical",
        lambda: ketamine(allergies=[reacting(allergy(words("ketamine")), words("Hives"))]),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "allergy (not intolerance) with mild nausea stays critical",
        lambda: ketamine(allergies=[reacting(allergy(words("Ketalar")), words("nausea"), kind="allergy")]),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance of unknown type stays critical",
        lambda: ketamine(allergies=[reacting(allergy(words("ketamine")), words("nausea"), kind=None)]),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance with severe hallucinations stays critical",
        lambda: ketamine(
            allergies=[
                reacting(allergy(words("ketamine")), sct("7011001", "Hallucinations"), severity="severe")
            ]
        ),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance with no reaction recorded stays critical",
        lambda: ketamine(allergies=[reacting(allergy(words("ketamine intolerance")))]),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance of high criticality with a mild headache stays critical",
        lambda: ketamine(
            allergies=[reacting(allergy(words("ketamine")), words("headache"), criticality="high")]
        ),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "ketamine intolerance of low criticality, reaction severity not recorded: mild, a warning",
        lambda: ketamine(
            allergies=[reacting(allergy(sct("373464007", "Ketamine")), words("Nausea"), severity=None)]
        ),
        fires={ALLERGY_RULE: "warning"},
    ),
    Case(
        "intolerance with neither criticality nor reaction severity recorded stays critical",
        lambda: ketamine(
            allergies=[reacting(allergy(words("ketamine")), words("nausea"), criticality=None, severity=None)]
        ),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance with mild nausea and dizziness names each reaction once",
        lambda: ketamine(
            allergies=[
                reacting(allergy(words("ketamine")), words("Nausea"), words("Dizziness"), words("Nausea"))
            ]
        ),
        fires={ALLERGY_RULE: "warning"},
        evidence={ALLERGY_RULE: ("rather than an allergy: Nausea; Dizziness. This is not",)},
    ),
    Case(
        "intolerance with mild nausea and a rash: the rash makes it critical",
        lambda: ketamine(allergies=[reacting(allergy(words("ketamine")), words("nausea"), words("rash"))]),
        fires={ALLERGY_RULE: "critical"},
    ),
    Case(
        "intolerance of morphine is not a ketamine record",
        lambda: ketamine(allergies=[reacting(allergy(words("Morphine")), words("nausea"))]),
        silent=frozenset({ALLERGY_RULE}),
    ),
    # ------------------------------------------------- sedating medicines with esketamine (new rule)
    Case(
        "oxycodone SCD (name in the display) with esketamine: warning",
        lambda: esketamine(
            statements=[
                med_statement(concept(coding(RXNORM, "1049621", "oxycodone hydrochloride 5 MG Oral Tablet")))
            ]
        ),
        fires={CNS_RULE: "warning"},
    ),
    Case(
        "buprenorphine/naloxone by brand in free text with esketamine: warning",
        lambda: esketamine(statements=[med_statement(words("Suboxone 8/2 mg film daily"))]),
        fires={CNS_RULE: "warning"},
    ),
    Case(
        "butalbital combination (CDC barbiturate list code) with esketamine: warning",
        lambda: esketamine(
            statements=[
                med_statement(
                    concept(
                        coding(
                            RXNORM,
                            "238134",
                            "butalbital 50 MG / acetaminophen 325 MG / caffeine 40 MG Oral Tablet",
                        )
                    )
                )
            ]
        ),
        fires={CNS_RULE: "warning"},
    ),
    Case(
        "eszopiclone at night with esketamine: information",
        lambda: esketamine(statements=[med_statement(words("eszopiclone 2 mg at bedtime"))]),
        fires={CNS_RULE: "info"},
    ),
    Case(
        "pregabalin by brand with esketamine: information",
        lambda: esketamine(statements=[med_statement(words("Lyrica 75 mg twice daily"))]),
        fires={CNS_RULE: "info"},
    ),
    Case(
        "hydroxyzine for anxiety with esketamine: information",
        lambda: esketamine(statements=[med_statement(words("hydroxyzine pamoate 25 mg prn"))]),
        fires={CNS_RULE: "info"},
    ),
    Case(
        "an opioid with a ketamine infusion: this esketamine rule stays silent",
        lambda: ketamine(statements=[med_statement(words("tramadol 50 mg"))]),
        silent=frozenset({CNS_RULE}),
    ),
    Case(
        "naloxone and loperamide are not CNS depressants",
        lambda: esketamine(
            statements=[med_statement(words("naloxone nasal spray")), med_statement(words("loperamide 2 mg"))]
        ),
        silent=frozenset({CNS_RULE}),
    ),
    Case(
        "a stopped opioid stays silent",
        lambda: esketamine(statements=[med_statement(words("oxycodone 5 mg"), status="stopped")]),
        silent=frozenset({CNS_RULE}),
    ),
    Case(
        "fentanyl patch ordered for a patient in an esketamine course: the interaction card",
        lambda: esketamine_course(
            med_request(words("fentanyl 25 mcg/h transdermal patch"), status="draft", rid="opioid-draft")
        ),
        fires={CNS_RULE: "warning"},
    ),
    Case(
        "cetirizine (not sedating) ordered in an esketamine course: no card",
        lambda: esketamine_course(
            med_request(words("cetirizine 10 mg"), status="draft", rid="antihistamine-draft")
        ),
        silent=frozenset({CNS_RULE}),
    ),
    # ----------------------------------------------------------- (c) near-matches and unreadable codes
    Case(
        "possible TIA is listed for a person to check, not fired",
        lambda: ketamine(conditions=[condition(words("?TIA vs migraine with aura"), onset="2026-10-28")]),
        silent=frozenset({STROKE_RULE}),
        fires={DATA_RULE: "info"},
        evidence={DATA_RULE: ('"tia"',)},
    ),
    Case(
        "suspected MI is listed for a person to check",
        lambda: ketamine(
            conditions=[condition(words("Suspected MI, awaiting troponin"), onset="2026-11-20")]
        ),
        silent=frozenset({MI_RULE}),
        fires={DATA_RULE: "info"},
    ),
    Case(
        "a misspelt aneurysm is listed for a person to check",
        lambda: esketamine(conditions=[condition(words("Aneurysym of aorta"))]),
        silent=frozenset({ANEURYSM_RULE}),
        fires={DATA_RULE: "info"},
        evidence={DATA_RULE: ("aneurysym",)},
    ),
    Case(
        "a local code with no name is counted as unreadable",
        lambda: ketamine(conditions=[condition(local("PL-88213"), onset="2026-10-01")]),
        fires={DATA_RULE: "info"},
        evidence={DATA_RULE: ("code is not one the service knows",)},
    ),
    Case(
        "an unknown SNOMED code with no display is counted as unreadable",
        lambda: ketamine(conditions=[condition(concept(coding(SNOMED, "1234567000")))]),
        fires={DATA_RULE: "info"},
    ),
    Case(
        "an unknown code with a readable name is not counted",
        lambda: ketamine(conditions=[condition(local("PL-1001", "Seasonal allergic rhinitis"))]),
        silent=frozenset({DATA_RULE}),
    ),
    Case(
        "a medicine coded only locally with no name is counted as unreadable",
        lambda: ketamine(
            statements=[med_statement(concept(coding("urn:oid:1.2.36.1.2001.1001.101", "884521")))]
        ),
        fires={DATA_RULE: "info"},
    ),
    Case(
        "a medicine with an unknown RxNorm code but a name is not counted",
        lambda: ketamine(
            statements=[med_statement(concept(coding(RXNORM, "9999991", "cetirizine 10 MG Oral Tablet")))]
        ),
        silent=frozenset({DATA_RULE}),
    ),
]


@pytest.fixture(scope="module")
def screen(knowledge: Knowledge) -> Iterator[Callable[[dict[str, Any]], dict[str, dict[str, Any]]]]:
    """Rule id -> the finding as its screening page shows it (records, codes, notes)."""
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    with requests.Session() as http:
        screener = Screener(knowledge, settings, http, lambda: NOW)

        def run(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
            service = next(s for s in knowledge.services.values() if s.hook == body["hook"])
            return screen_views(knowledge, screener.screen(service, body), NOW)

        yield run


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case, screen: Callable[[dict[str, Any]], dict[str, dict[str, Any]]]) -> None:
    by_rule = screen(case.chart())
    for rule_id, indicator in case.fires.items():
        shown = by_rule.get(rule_id, {}).get("indicator")
        assert shown == indicator, f"{rule_id}: expected {indicator}, got {shown}"
    for rule_id in case.silent:
        assert rule_id not in by_rule, f"{rule_id} fired: {by_rule[rule_id]['summary']}"
    for rule_id, phrases in case.evidence.items():
        for phrase in phrases:
            assert phrase in by_rule[rule_id]["detail"], f"{rule_id} does not say {phrase!r}"
    for rule_id, phrases in case.absent.items():
        card = by_rule.get(rule_id)
        for phrase in phrases:
            assert card is None or phrase not in (card["indicator"], card["detail"]), f"{rule_id}: {phrase!r}"


def test_the_corpus_pairs_firing_and_silent_cases() -> None:
    assert len(CASES) >= 55
    fired = {rule for case in CASES for rule in case.fires}
    silenced = {rule for case in CASES for rule in case.silent}
    assert {STROKE_RULE, MI_RULE, ANEURYSM_RULE, DATA_RULE, ALLERGY_RULE, CNS_RULE} <= fired
    assert {STROKE_RULE, MI_RULE, ANEURYSM_RULE, DATA_RULE, ALLERGY_RULE, CNS_RULE} <= silenced


@pytest.mark.integration
def test_an_age_at_onset_is_dated_with_the_patient_fetched_from_the_fhir_server(
    knowledge: Knowledge, fhir_server: FhirServerHandle
) -> None:
    """The client prefetches the chart but not the Patient: the service reads it to date the onset."""
    patient_id = "7047a810-38d5-46fd-8151-a815ad02303c"  # a test patient born 1972-07-11
    body = ketamine(conditions=[aged(condition(sct("22298006")), 54)])  # 2026-07-11 to 2027-07-10
    body["context"]["patientId"] = patient_id
    body["prefetch"].pop("patient")
    body["fhirServer"] = fhir_server.base_url
    body["fhirAuthorization"] = {"access_token": fhir_server.token, "token_type": "Bearer", "expires_in": 300}
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    with requests.Session() as http:
        screener = Screener(knowledge, settings, http, lambda: NOW)
        service = next(s for s in knowledge.services.values() if s.hook == "order-select")
        result = screener.screen(service, body)
    assert result.fetched == ("patient",)
    card = next(c for c in result.cards if c["source"]["topic"]["code"] == MI_RULE)
    assert card["indicator"] == "critical"
    assert "between 2026-07-11 and 2027-07-10" in card["detail"]
