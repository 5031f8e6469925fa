"""The golden scenarios, sharpened: for every card a scenario expects, the band that produced it and its key
figures (dates, months, doses, readings), plus the house rules every response keeps (summary under 140
characters, most severe card first, then by rule id).

The scenarios and their indicators live in tests/test_golden_rules.py; the bands and figures below were
worked out by hand from the rule files and the scenario's records (clock pinned to 2026-11-22), e.g.
clonazepam 0.25 mg x 2 twice a day = 1 mg/day = 20 mg/day diazepam-equivalent (0.5 mg = 10 mg, Ashton).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import ScreenResult
from tests.test_boundaries import screener_for
from tests.test_golden_rules import SCENARIOS, Scenario

SEVERITY = {"critical": 0, "warning": 1, "info": 2}
UNDATED = {"onset": "?", "months_ago": "?"}

# scenario name -> rule id -> (band id, figures the finding must carry)
EXPECTED: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "hypersensitivity: coded ketamine allergy": {"ketamine-hypersensitivity": ("documented-allergy", {})},
    "hypersensitivity: free-text Spravato allergy before an IV order (cross-reactivity)": {
        "ketamine-hypersensitivity": ("documented-allergy", {})
    },
    "hypersensitivity: anaesthetic allergy status without agent asks to confirm": {
        "ketamine-hypersensitivity": ("anaesthetic-allergy-unnamed", UNDATED)
    },
    "hypersensitivity: an intolerance with only mild nausea is a warning (mild-intolerance band)": {
        "ketamine-hypersensitivity": ("mild-intolerance", {})
    },
    "hypersensitivity: an intolerance with wheezing is not mild (critical, never the warning)": {
        "ketamine-hypersensitivity": ("documented-allergy", {})
    },
    "CNS depressants: morphine with esketamine is a warning (opioid-or-barbiturate band)": {
        "esketamine-cns-depressants": ("opioid-or-barbiturate", {})
    },
    "CNS depressants: zolpidem with esketamine is information (other-sedating-medicine band)": {
        "esketamine-cns-depressants": ("other-sedating-medicine", {})
    },
    "MI: 3 months before is critical": {
        "recent-myocardial-infarction": (
            "within-contraindication-window",
            {"onset": "2026-08-15", "months_ago": "3"},
        )
    },
    "MI: resolved but within 6 months still counts": {
        "recent-myocardial-infarction": (
            "within-contraindication-window",
            {"onset": "2026-07-01", "months_ago": "4"},
        )
    },
    "MI: 9 months before needs review": {
        "recent-myocardial-infarction": ("within-review-window", {"onset": "2026-02-10", "months_ago": "9"})
    },
    "MI: no onset, recorded date 2 months ago falls back and counts": {
        "recent-myocardial-infarction": (
            "within-contraindication-window",
            {"onset": "2026-09-20", "months_ago": "2"},
        )
    },
    "MI: old MI code with no date asks for the date": {
        "recent-myocardial-infarction": ("date-unknown", UNDATED)
    },
    "stroke: 5 months ago is critical": {
        "recent-stroke": ("within-contraindication-window", {"onset": "2026-06-10", "months_ago": "5"})
    },
    "stroke: 3 years ago needs review": {
        "recent-stroke": ("older-stroke-or-tia", {"onset": "2023-06-10", "months_ago": "41"})
    },
    "stroke: old intracerebral haemorrhage is critical for esketamine": {
        "recent-stroke": (
            "intracerebral-haemorrhage-esketamine",
            {"onset": "2015-01-01", "months_ago": "142"},
        )
    },
    "stroke: TIA history needs review": {
        "recent-stroke": ("older-stroke-or-tia", {"onset": "2020-01-01", "months_ago": "82"})
    },
    "stroke: named only in the record's text two months ago is critical (recognised by name)": {
        "recent-stroke": ("within-contraindication-window", {"onset": "2026-09-20", "months_ago": "2"})
    },
    "stroke: a TIA last month is a warning (recent-TIA band), not a contraindication": {
        "recent-stroke": ("recent-tia", {"onset": "2026-10-15", "months_ago": "1"})
    },
    "stroke: after-effects of a stroke recorded last month ask for its date (warning)": {
        "recent-stroke": ("recent-stroke-record", {"onset": "2026-10-05", "months_ago": "1"})
    },
    "MI: a history-of-MI record from two months ago asks for the date (warning, not critical)": {
        "recent-myocardial-infarction": (
            "history-recorded-recently",
            {"onset": "2026-09-22", "months_ago": "2"},
        )
    },
    # born 1980-04-02, infarction at age 46: between 2026-04-02 and 2027-04-01; the latest possible date
    # (capped at the reference date) decides how recent it is
    "MI: onset recorded as the patient's age this year is critical": {
        "recent-myocardial-infarction": (
            "within-contraindication-window",
            {"onset": "2026-04-02 to 2027-04-01", "months_ago": "0-7"},
        )
    },
    "aneurysm: critical for esketamine": {"aneurysm-or-avm": ("esketamine-contraindication", UNDATED)},
    "aneurysm: review for ketamine infusion": {"aneurysm-or-avm": ("ketamine-review", UNDATED)},
    "BP: 186/104 is critical": {
        "elevated-blood-pressure": (
            "severe-reading",
            {"systolic": "186", "diastolic": "104", "reading_date": "2026-11-01"},
        )
    },
    "BP: 146/88 needs control first": {
        "elevated-blood-pressure": (
            "elevated-reading",
            {"systolic": "146", "diastolic": "88", "reading_date": "2026-11-01"},
        )
    },
    "BP: a reading dated in the future does not hide a real high one, and is reported": {
        "elevated-blood-pressure": (
            "severe-reading",
            {"systolic": "188", "diastolic": "112", "reading_date": "2026-11-15"},
        ),
        "unreadable-records": ("unreadable", {"count": "1"}),
    },
    "BP: active hypertensive emergency is critical": {
        "elevated-blood-pressure": ("hypertensive-crisis", UNDATED)
    },
    "benzo: clonazepam 0.25 mg x2 twice daily = 20 mg/day DZ-eq is a warning": {
        "benzodiazepine-response": ("above-threshold-long-acting", {"total": "20"})
    },
    "benzo: alprazolam 0.25 mg once daily = 5 mg/day DZ-eq is information": {
        "benzodiazepine-response": ("regular-below-threshold", {"total": "5"})
    },
    "benzo: dose without frequency is said, not assumed": {
        "benzodiazepine-response": ("dose-not-computable", {"total": "0"})
    },
    "benzo: one dose computed, one not: information that names both": {
        "benzodiazepine-response": ("dose-partly-computable", {"total": "5"})
    },
    "benzo: as-needed only is information": {"benzodiazepine-response": ("as-needed-only", {"total": "0"})},
    "benzo: brand name and strength in free text are computed (Klonopin 1 mg = 20 mg/day DZ-eq)": {
        "benzodiazepine-response": ("above-threshold-long-acting", {"total": "20"})
    },
    "benzo: brand name in free text without a strength is recognised; its dose is not guessed": {
        "benzodiazepine-response": ("dose-not-computable", {"total": "0"})
    },
    "benzo: one therapy as a statement and a brand order is counted once (5 mg/day DZ-eq, not 10)": {
        "benzodiazepine-response": ("regular-below-threshold", {"total": "5"})
    },
    "benzo: taper in force today (0.25 mg from November = 5 mg/day DZ-eq, not the 20 of October)": {
        "benzodiazepine-response": ("regular-below-threshold", {"total": "5"})
    },
    # clobazam 10 mg twice a day = 20 mg/day; 20 mg clobazam = 10 mg diazepam (Ashton)
    "benzo: clobazam without a diagnosis is an antiepileptic: warning without hold advice": {
        "benzodiazepine-response": ("antiepileptic-above-threshold", {"total": "10"})
    },
    "benzo: low dose with epilepsy on record is an antiepileptic: information": {
        "benzodiazepine-response": ("antiepileptic", {"total": "5"}),
        "seizure-disorder": ("on-record", {"onset": "2012-01-01", "months_ago": "178"}),
    },
    "benzo: generic name and strength in free text are computed": {
        "benzodiazepine-response": ("above-threshold-long-acting", {"total": "20"})
    },
    "lamotrigine: 100 mg twice daily = 200 mg/day is information": {
        "lamotrigine-response": ("above-threshold", {"total": "200"})
    },
    "risperidone in use is information by default": {"risperidone-olanzapine-response": ("in-use", {})},
    "olanzapine by brand name only": {"risperidone-olanzapine-response": ("in-use", {})},
    "MAOI with esketamine: blood-pressure note": {"esketamine-pressor-medicines": ("in-use", {})},
    "theophylline in use": {"theophylline-seizure-threshold": ("in-use", {})},
    "naltrexone in use": {"naltrexone-response": ("in-use", {})},
    "psychotic disorder history": {"psychotic-disorder": ("on-record", UNDATED)},
    "bipolar disorder (Synthea SNOMED code)": {"bipolar-disorder": ("on-record", UNDATED)},
    "seizure disorder (Synthea SNOMED code)": {"seizure-disorder": ("on-record", UNDATED)},
    "unstable angina": {"unstable-cardiac-disease": ("on-record", UNDATED)},
    "unstable angina coded in SNOMED CT (preinfarction syndrome)": {
        "unstable-cardiac-disease": ("on-record", UNDATED)
    },
    "raised intracranial pressure": {"raised-intracranial-pressure": ("on-record", UNDATED)},
    "glaucoma": {"raised-intraocular-pressure": ("on-record", UNDATED)},
    "hyperthyroidism": {"hyperthyroidism": ("on-record", UNDATED)},
    "interstitial cystitis": {"interstitial-cystitis": ("on-record", UNDATED)},
    "severe hepatic impairment: warning for esketamine": {
        "severe-hepatic-impairment": ("esketamine", UNDATED)
    },
    "severe hepatic impairment: information for ketamine": {
        "severe-hepatic-impairment": ("ketamine", UNDATED)
    },
    "pregnancy: current": {"pregnancy": ("current", {"onset": "2026-07-01", "months_ago": "4"})},
    "ketamine use disorder is critical": {"substance-use-disorder": ("ketamine-use-disorder", UNDATED)},
    "alcohol use disorder is a warning": {"substance-use-disorder": ("other-substance-use", UNDATED)},
    "drug dependence coded in SNOMED CT (Synthea) is a warning": {
        "substance-use-disorder": ("other-substance-use", UNDATED)
    },
    "instructions on a ketamine order": {"ordering-instructions": ("ketamine", {})},
    "a medication with no name is said, not ignored": {"unreadable-records": ("unreadable", {"count": "1"})},
}


@pytest.fixture(scope="module")
def screen(knowledge: Knowledge) -> Callable[..., ScreenResult]:
    return screener_for(knowledge)


def test_every_firing_scenario_has_its_bands_written_down() -> None:
    firing = {s.name: set(s.fires) for s in SCENARIOS if s.fires}
    missing = sorted(set(firing) - set(EXPECTED))
    assert not missing, f"add the band and key figures of these scenarios to EXPECTED here: {missing}"
    assert {name: set(rules) for name, rules in EXPECTED.items()} == firing


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_band_figures_order_and_summary_length(
    scenario: Scenario, screen: Callable[..., ScreenResult]
) -> None:
    result = screen(scenario.build())
    findings = {f.rule.id: f for f in result.findings}
    for rule_id, (band, figures) in EXPECTED.get(scenario.name, {}).items():
        finding = findings.get(rule_id)
        assert finding is not None, f"{rule_id} did not fire"
        assert finding.band.id == band
        assert finding.indicator == scenario.fires[rule_id]
        assert {key: finding.values.get(key) for key in figures} == figures
    shown = [(card["indicator"], card["source"]["topic"]["code"]) for card in result.cards]
    assert shown == sorted(shown, key=lambda item: (SEVERITY[item[0]], item[1])), "most severe first"
    for card in result.cards:
        assert 0 < len(card["summary"]) < 140, card["summary"]
        assert card["summary"] == card["summary"].strip()
