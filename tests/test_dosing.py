"""Dosage -> daily mg: the arithmetic, the conservative readings, and refusal to guess."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.clinical.dosing import (
    PROBLEMS,
    DosingVocabulary,
    daily_dose,
    default_vocabulary_path,
    parse_strengths,
)
from cds.errors import ConfigError
from cds.fhir.model import (
    Coding,
    Concept,
    DailyDose,
    DoseStatus,
    MedicationFact,
    MedicationKind,
    Quantity,
    SourceRef,
    Strength,
)
from tests.support.constants import property_examples

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY_FILE = ROOT / "fhir_profiles" / "tables" / "dosing-vocabulary.json"
SOURCES = ROOT / "knowledge" / "sources"
TEST_PATIENTS = ROOT / "tests" / "data" / "fhir-test-data"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@pytest.fixture(scope="module")
def vocab() -> DosingVocabulary:
    return DosingVocabulary.load(VOCABULARY_FILE)


def med(
    display: str | None,
    *dosages: Any,
    text: str | None = None,
    strengths: tuple[Strength, ...] = (),
) -> MedicationFact:
    codings = (Coding(RXNORM, "123", display),) if display else ()
    return MedicationFact(
        source=SourceRef("MedicationRequest", "1"),
        kind=MedicationKind.REQUEST,
        concept=Concept(codings, text),
        status="active",
        strengths=strengths,
        dosages=tuple(dosages),
    )


def dose(value: Any = 1, unit: str | None = None, *, code: str | None = None) -> list[dict[str, Any]]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity["unit"] = unit
    if code is not None:
        quantity["code"] = code
        quantity["system"] = "http://unitsofmeasure.org"
    return [{"doseQuantity": quantity}]


def per(frequency: Any, period: Any = 1, unit: Any = "d", **more: Any) -> dict[str, Any]:
    return {"repeat": {"frequency": frequency, "period": period, "periodUnit": unit, **more}}


CLONAZEPAM_1 = "clonazepam 1 MG Oral Tablet"
CLONAZEPAM_05 = "clonazepam 0.5 MG Oral Tablet"


# ------------------------------------------------------------------------------------------ computed


def test_synthea_shape_no_unit_four_times_a_day(vocab: DosingVocabulary) -> None:
    dosage = {
        "sequence": 1,
        "timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": 1}}],
    }
    result = daily_dose(med("clonazePAM 0.25 MG Oral Tablet", dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.ingredient == "clonazepam"
    assert result.mg_per_day == pytest.approx(1.0)
    assert result.explanation == "1 unit x 4/day x 0.25 mg/unit = 1 mg/day"
    assert result.problem is None


def test_clonazepam_one_mg_twice_daily(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_1, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(2.0)
    assert result.explanation == "1 tablet x 2/day x 1 mg/tablet = 2 mg/day"


def test_tablets_times_strength_from_a_coding_display(vocab: DosingVocabulary) -> None:
    """The concept text says nothing useful; the second coding's display carries the strength."""
    concept = Concept(
        (Coding("urn:local", "x1", "Benzo tablet"), Coding(RXNORM, "197527", CLONAZEPAM_05)), "Klonopin"
    )
    fact = MedicationFact(
        SourceRef("MedicationStatement", "2"),
        MedicationKind.STATEMENT,
        concept,
        "active",
        dosages=({"doseAndRate": dose(2, code="{tbl}"), "timing": per(3)},),
    )
    result = daily_dose(fact, "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(3.0)
    assert result.explanation == "2 tablet x 3/day x 0.5 mg/tablet = 3 mg/day"


def test_strengths_from_medication_ingredient_win_over_the_name(vocab: DosingVocabulary) -> None:
    own = (Strength("Clonazepam", Quantity(2, "mg")),)
    dosage = {"doseAndRate": dose(1), "timing": per(1)}
    result = daily_dose(med(CLONAZEPAM_05, dosage, strengths=own), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(2.0)


def test_strength_with_a_count_denominator_is_per_unit(vocab: DosingVocabulary) -> None:
    own = (Strength("clonazepam", Quantity(1, "MG"), Quantity(2, "{tbl}")),)
    dosage = {"doseAndRate": dose(2, "TAB"), "timing": per(1)}
    result = daily_dose(med("clonazepam", dosage, strengths=own), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(1.0)


def test_split_doses_on_the_same_day_are_summed(vocab: DosingVocabulary) -> None:
    morning = {"doseAndRate": dose(1, "mg"), "timing": {"repeat": {"when": ["MORN"]}}}
    night = {"doseAndRate": dose(2, "mg"), "timing": {"repeat": {"when": ["HS"]}}}
    result = daily_dose(med(CLONAZEPAM_1, morning, night), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(3.0)
    assert result.explanation is not None
    assert "total 3 mg/day" in result.explanation


def test_same_sequence_is_concurrent(vocab: DosingVocabulary) -> None:
    a = {"sequence": 1, "doseAndRate": dose(1, "tablet"), "timing": per(1)}
    b = {"sequence": 1, "doseAndRate": dose(2, "tablet"), "timing": per(1)}
    result = daily_dose(med(CLONAZEPAM_1, a, b), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(3.0)


def test_consecutive_sequences_take_the_highest_day(vocab: DosingVocabulary) -> None:
    """A taper: 2 tablets three times a day, then 1 tablet twice a day -> the first step counts."""
    step1 = {"sequence": 1, "doseAndRate": dose(2, "tablet"), "timing": per(3)}
    step2 = {"sequence": 2, "doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, step2, step1), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(3.0)
    assert result.explanation is not None
    assert "sequence 1:" in result.explanation
    assert "sequence 2:" in result.explanation
    assert result.explanation.endswith("highest 3 mg/day")


def test_taper_with_an_uncomputable_step_is_unknown(vocab: DosingVocabulary) -> None:
    step1 = {"sequence": 1, "doseAndRate": dose(1, "tablet"), "timing": per(2)}
    step2 = {"sequence": 2, "text": "then as directed"}
    result = daily_dose(med(CLONAZEPAM_05, step1, step2), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "no-dose-quantity"
    assert result.mg_per_day is None


def test_dose_range_uses_the_high_end(vocab: DosingVocabulary) -> None:
    dosage = {
        "doseAndRate": [{"doseRange": {"low": {"value": 1, "unit": "tablet"}, "high": {"value": 2}}}],
        "timing": per(2),
    }
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(2.0)  # 2 tablets, not 1 (nor 1.5)
    assert result.explanation is not None
    assert "high end" in result.explanation


def test_dose_range_without_a_high_end_is_unknown(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": [{"doseRange": {"low": {"value": 1}}}], "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "no-dose-quantity"


def test_frequency_max_is_used(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(1, frequencyMax=3)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(1.5)
    assert result.explanation is not None
    assert "frequencyMax" in result.explanation


def test_period_ignores_period_max(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(1, 12, "h", periodMax=24)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(1.0)
    assert result.explanation == "1 tablet x 1 per 12 h (2/day) x 0.5 mg/tablet = 1 mg/day"


def test_weekly_dose(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(70, "mg"), "timing": per(1, 1, "wk")}
    result = daily_dose(med("diazepam 10 MG Oral Tablet", dosage), "diazepam", vocab)
    assert result.mg_per_day == pytest.approx(10.0)


def test_day_of_week_reduces_a_daily_schedule(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(7, "mg"), "timing": per(1, dayOfWeek=["mon", "wed", "fri"])}
    result = daily_dose(med("diazepam 1 MG Oral Tablet", dosage), "diazepam", vocab)
    assert result.mg_per_day == pytest.approx(3.0)


def test_timing_code_bid(vocab: DosingVocabulary) -> None:
    code = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "BID"}]}
    dosage = {"doseAndRate": dose(1, "{tbl}"), "timing": {"code": code}}
    result = daily_dose(med(CLONAZEPAM_1, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(2.0)
    assert result.explanation == "1 tablet x BID (2/day) x 1 mg/tablet = 2 mg/day"


def test_timing_code_q8h_and_qod(vocab: DosingVocabulary) -> None:
    q8h = {"doseAndRate": dose(1), "timing": {"code": {"coding": [{"code": "Q8H"}]}}}
    qod = {"doseAndRate": dose(1), "timing": {"code": {"text": "qod"}}}
    assert daily_dose(med(CLONAZEPAM_1, q8h), "clonazepam", vocab).mg_per_day == pytest.approx(3.0)
    assert daily_dose(med(CLONAZEPAM_1, qod), "clonazepam", vocab).mg_per_day == pytest.approx(0.5)


def test_time_of_day(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1), "timing": {"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(1.0)


def test_when_codes_are_administrations(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1), "timing": {"repeat": {"when": ["MORN", "NOON", "EVE"]}}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(1.5)


def test_a_milligram_dose_is_written_once_and_other_mass_units_show_the_mg(vocab: DosingVocabulary) -> None:
    # diazepam 2 mg twice a day: 2 mg x 2 = 4 mg/day, whether the unit is written "mg" or "milligrams"
    for unit in ("mg", "milligrams"):
        dosage = {"doseAndRate": dose(2, unit), "timing": per(2)}
        result = daily_dose(med("diazepam 2 MG Oral Tablet", dosage), "diazepam", vocab)
        assert result.mg_per_day == 4.0
        assert result.explanation == "2 mg x 2/day = 4 mg/day", unit


def test_a_frequency_with_a_period_unit_but_no_period_is_per_one_unit(vocab: DosingVocabulary) -> None:
    # 3 times per day (period absent, periodUnit d): 1 tablet x 3 x 0.5 mg = 1.5 mg/day
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"frequency": 3, "periodUnit": "d"}}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 1.5
    assert result.explanation == "1 tablet x 3/day x 0.5 mg/tablet = 1.5 mg/day"


def test_a_bare_period_is_once_per_period(vocab: DosingVocabulary) -> None:
    # every 2 days, no frequency: 1 tablet x 0.5/day x 0.5 mg = 0.25 mg/day
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"period": 2, "periodUnit": "d"}}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 0.25
    assert result.explanation == "1 tablet x 1 per 2 d (0.5/day) x 0.5 mg/tablet = 0.25 mg/day"


def test_a_frequency_max_without_a_frequency_is_the_count(vocab: DosingVocabulary) -> None:
    # up to 3 times a day: 1 tablet x 3 x 0.5 mg = 1.5 mg/day
    repeat = {"frequencyMax": 3, "period": 1, "periodUnit": "d"}
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": repeat}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 1.5
    assert result.explanation == "1 tablet x 3/day (frequencyMax) x 0.5 mg/tablet = 1.5 mg/day"


def test_a_meal_code_is_three_administrations_and_an_unknown_code_is_one(vocab: DosingVocabulary) -> None:
    # AC (before meals) = breakfast, lunch, dinner: 1 tablet x 3 x 0.5 mg = 1.5 mg/day
    meals = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["AC"]}}}
    result = daily_dose(med(CLONAZEPAM_05, meals), "clonazepam", vocab)
    assert result.mg_per_day == 1.5
    assert result.explanation == "1 tablet x 3/day (AC) x 0.5 mg/tablet = 1.5 mg/day"
    # MORN and a code the vocabulary does not know ("SNACK"): one each, 2 x 0.5 mg = 1 mg/day
    other = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["SNACK", "MORN"]}}}
    result = daily_dose(med(CLONAZEPAM_05, other), "clonazepam", vocab)
    assert result.mg_per_day == 1.0
    assert result.explanation == "1 tablet x 2/day (MORN, SNACK) x 0.5 mg/tablet = 1 mg/day"


def test_times_of_day_are_counted_to_the_minute_and_listed(vocab: DosingVocabulary) -> None:
    # 08:00 written twice ("08:00", "08:00:00") is one time: 08:00 and 20:00 = 2 x 0.5 mg = 1 mg/day
    times = {
        "doseAndRate": dose(1, "tablet"),
        "timing": {"repeat": {"timeOfDay": ["20:00:00", "08:00", "08:00:00"]}},
    }
    result = daily_dose(med(CLONAZEPAM_05, times), "clonazepam", vocab)
    assert result.mg_per_day == 1.0
    assert result.explanation == "1 tablet x 2/day (08:00, 20:00) x 0.5 mg/tablet = 1 mg/day"
    # the same on Monday and Thursday only: 2 x 2/7 = 0.571429 a day, x 0.5 mg = 0.285714 mg/day
    repeat = {"timeOfDay": ["08:00:00", "20:00:00"], "dayOfWeek": ["mon", "thu"]}
    weekly = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": repeat}}
    result = daily_dose(med(CLONAZEPAM_05, weekly), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(2 / 7)
    assert result.explanation == (
        "1 tablet x 2/day (08:00, 20:00) on 2 of 7 days (0.571429/day) x 0.5 mg/tablet = 0.285714 mg/day"
    )


def test_times_of_day_without_a_clock_time_spoil_the_total_beside_a_readable_instruction(
    vocab: DosingVocabulary,
) -> None:
    good = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["MORN"]}}}
    bedtime = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"timeOfDay": ["bedtime"]}}}
    result = daily_dose(med(CLONAZEPAM_05, good, bedtime), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (
        DoseStatus.UNKNOWN,
        None,
        "unreadable-dosage",
    )


@pytest.mark.parametrize("field", ["when", "timeOfDay"])
def test_one_hundred_times_of_day_are_read_and_more_are_not(vocab: DosingVocabulary, field: str) -> None:
    # the same bedtime (or 21:00) a hundred times is once a day: 1 tablet x 0.5 mg; a hundred and one
    # entries are past the read limit, and the instruction is unreadable rather than cut short
    entry = "HS" if field == "when" else "21:00:00"
    for count, mg, problem in ((100, 0.5, None), (101, None, "unreadable-dosage")):
        dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {field: [entry] * count}}}
        result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
        assert (result.mg_per_day, result.problem) == (mg, problem), count


@pytest.mark.parametrize("field", ["when", "timeOfDay"])
@pytest.mark.parametrize("value", ["HS", ["HS", 5]])
def test_times_of_day_that_are_not_a_list_of_words_are_unreadable(
    vocab: DosingVocabulary, field: str, value: Any
) -> None:
    # alone, or beside a readable instruction (one tablet in the morning), whose total it spoils
    bad = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {field: value}}}
    good = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["MORN"]}}}
    for dosages in ((bad,), (good, bad)):
        result = daily_dose(med(CLONAZEPAM_05, *dosages), "clonazepam", vocab)
        assert (result.status, result.mg_per_day, result.problem) == (
            DoseStatus.UNKNOWN,
            None,
            "unreadable-dosage",
        )


def test_volume_times_concentration(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(0.5, "mL", code="mL"), "timing": per(3)}
    result = daily_dose(med("lorazepam 2 MG/ML Oral Solution", dosage), "lorazepam", vocab)
    assert result.mg_per_day == pytest.approx(3.0)
    assert result.explanation == "0.5 mL x 3/day x 2 mg/mL = 3 mg/day"


def test_mass_units_are_converted(vocab: DosingVocabulary) -> None:
    micrograms = {"doseAndRate": dose(500, "mcg"), "timing": per(2)}
    ucum = {"doseAndRate": dose(250, code="ug"), "timing": per(2)}
    grams = {"doseAndRate": dose(0.002, "g"), "timing": per(1)}
    milligrams = {"doseAndRate": dose(1, "MG"), "timing": per(1)}
    for dosage, expected in ((micrograms, 1.0), (ucum, 0.5), (grams, 2.0), (milligrams, 1.0)):
        result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
        assert result.status is DoseStatus.COMPUTED
        assert result.mg_per_day == pytest.approx(expected)
    result = daily_dose(med(CLONAZEPAM_05, micrograms), "clonazepam", vocab)
    assert result.explanation == "500 mcg (0.5 mg) x 2/day = 1 mg/day"


def test_microgram_strength_in_the_name(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(2), "timing": per(2)}
    result = daily_dose(med("clonidine hydrochloride 100 MCG Oral Tablet", dosage), "clonidine", vocab)
    assert result.mg_per_day == pytest.approx(0.4)


def test_tablets_of_a_combination_use_the_ingredient_strength(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1), "timing": per(4)}
    fact = med("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", dosage)
    assert daily_dose(fact, "oxycodone", vocab).mg_per_day == pytest.approx(20.0)
    assert daily_dose(fact, "acetaminophen", vocab).mg_per_day == pytest.approx(1300.0)


def test_mass_dose_whose_unit_names_the_ingredient_is_accepted_on_a_combination(
    vocab: DosingVocabulary,
) -> None:
    fact = med(
        "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet",
        {"doseAndRate": dose(5, "mg oxycodone", code="mg"), "timing": per(2)},
    )
    assert daily_dose(fact, "oxycodone", vocab).mg_per_day == pytest.approx(10.0)
    assert daily_dose(fact, "acetaminophen", vocab).problem == "ambiguous-combination"
    unknown_unit = med(fact.concept.label(), {"doseAndRate": dose(5, "mg oxycodone"), "timing": per(2)})
    assert daily_dose(unknown_unit, "oxycodone", vocab).problem == "unit-not-convertible"


def test_a_dose_range_written_in_full_reads_its_high_end(vocab: DosingVocabulary) -> None:
    # 1-2 tablets twice a day of 0.5 mg tablets: 2 tablets x 2/day x 0.5 mg = 2 mg/day
    both = {"low": {"value": 1, "unit": "tablet"}, "high": {"value": 2, "unit": "tablet"}}
    high_only = {"high": {"value": 2, "unit": "tablet"}}
    low_without_value = {"low": {"unit": "tablet"}, "high": {"value": 2}}  # the unit is on the low end
    for dose_range, written in ((both, " of 1-2"), (high_only, ""), (low_without_value, "")):
        dosage = {"doseAndRate": [{"doseRange": dose_range}], "timing": per(2)}
        result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
        assert result.status is DoseStatus.COMPUTED
        assert result.mg_per_day == 2.0
        assert result.explanation == (
            f"2 tablet (high end of dose range{written}) x 2/day x 0.5 mg/tablet = 2 mg/day"
        )
    written_out = {"doseAndRate": [{"doseRange": "1-2 tablets"}], "timing": per(2)}
    assert daily_dose(med(CLONAZEPAM_05, written_out), "clonazepam", vocab).problem == "unreadable-dosage"


def test_a_single_dose_and_rate_object_reads_like_a_list_of_one(vocab: DosingVocabulary) -> None:
    # 1 tablet x 2/day x 0.5 mg = 1 mg/day, whether doseAndRate is a list or one object
    dosage = {"doseAndRate": {"doseQuantity": {"value": 1, "unit": "tablet"}}, "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 1.0
    assert result.explanation == "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"


def test_a_blank_unit_code_leaves_the_unit_text(vocab: DosingVocabulary) -> None:
    # code " " says nothing, unit "mL" does: 0.5 mL x 3/day x 2 mg/mL = 3 mg/day (not 0.5 "unit" of a liquid)
    dosage = {"doseAndRate": [{"doseQuantity": {"value": 0.5, "code": " ", "unit": "mL"}}], "timing": per(3)}
    result = daily_dose(med("lorazepam 2 MG/ML Oral Solution", dosage), "lorazepam", vocab)
    assert result.mg_per_day == 3.0
    assert result.explanation == "0.5 mL x 3/day x 2 mg/mL = 3 mg/day"


@pytest.mark.parametrize(("amount", "per_volume"), [(2000, "L"), (200, "dL"), (0.002, "uL"), (0.002, "µL")])
def test_a_strength_per_litre_decilitre_or_microlitre_is_per_millilitre(
    vocab: DosingVocabulary, amount: float, per_volume: str
) -> None:
    # 2,000 mg/L = 200 mg/dL = 0.002 mg/uL = 2 mg/mL; 0.5 mL x 3/day x 2 mg/mL = 3 mg/day
    own = (Strength("lorazepam", Quantity(amount, "mg"), Quantity(1, per_volume)),)
    dosage = {"doseAndRate": dose(0.5, "mL"), "timing": per(3)}
    result = daily_dose(med(None, dosage, text="lorazepam oral solution", strengths=own), "lorazepam", vocab)
    assert result.mg_per_day == 3.0
    assert result.explanation == "0.5 mL x 3/day x 2 mg/mL = 3 mg/day"


def test_named_times_on_some_days_of_the_week(vocab: DosingVocabulary) -> None:
    # morning and bedtime on Mondays and Thursdays: 2/day on 2 of 7 days = 4/7 = 0.571429/day;
    # x 1 tablet x 0.5 mg = 2/7 = 0.285714 mg/day (4 tablets of 0.5 mg = 2 mg a week)
    repeat = {"when": ["MORN", "HS"], "dayOfWeek": ["mon", "thu"]}
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": repeat}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(2 / 7)
    assert result.explanation == (
        "1 tablet x 2/day (HS, MORN) on 2 of 7 days (0.571429/day) x 0.5 mg/tablet = 0.285714 mg/day"
    )


def test_a_bedtime_dose_on_four_weekdays_is_counted_on_four_of_seven_days(vocab: DosingVocabulary) -> None:
    # at bedtime Monday to Thursday: 1/day on 4 of 7 days = 4/7 = 0.571429/day; x 0.5 mg = 0.285714 mg/day
    repeat = {"when": ["HS"], "dayOfWeek": ["mon", "tue", "wed", "thu"]}
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": repeat}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.explanation == (
        "1 tablet x 1/day (HS) on 4 of 7 days (0.571429/day) x 0.5 mg/tablet = 0.285714 mg/day"
    )


def test_an_empty_day_of_week_list_is_every_day(vocab: DosingVocabulary) -> None:
    # dayOfWeek [] names no day: twice a day every day, 2 x 1 tablet x 0.5 mg = 1 mg/day
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(2, dayOfWeek=[])}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day) == (DoseStatus.COMPUTED, 1.0)
    assert result.explanation == "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"


def test_days_of_week_do_not_thin_a_schedule_longer_than_a_day(vocab: DosingVocabulary) -> None:
    # once every 2 days already says how often: 0.5/day, the weekdays listed do not reduce it again;
    # 1 tablet x 0.5/day x 0.5 mg = 0.25 mg/day (not 0.5 x 3/7)
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(1, 2, "d", dayOfWeek=["mon", "wed", "fri"])}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 0.25
    assert result.explanation == "1 tablet x 1 per 2 d (0.5/day) x 0.5 mg/tablet = 0.25 mg/day"


def test_days_of_week_given_as_an_object_are_unreadable(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(1, dayOfWeek={"mon": True})}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (
        DoseStatus.UNKNOWN,
        None,
        "unreadable-dosage",
    )


@pytest.mark.parametrize(
    ("repeat", "mg", "explanation"),
    [
        # frequency 2, frequencyMax 2: the maximum adds nothing, so it is not named: 2 x 0.5 mg = 1 mg/day
        ({"frequency": 2, "frequencyMax": 2}, 1.0, "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"),
        # frequency 3, frequencyMax 2 (written the wrong way round): 3 a day is read, 1.5 mg/day
        ({"frequency": 3, "frequencyMax": 2}, 1.5, "1 tablet x 3/day x 0.5 mg/tablet = 1.5 mg/day"),
        # up to once a day: the count is the frequencyMax, 0.5 mg/day
        ({"frequencyMax": 1}, 0.5, "1 tablet x 1/day (frequencyMax) x 0.5 mg/tablet = 0.5 mg/day"),
        # half a time a day, as written (FHIR wants a whole number; the figure is not rounded up to 1)
        ({"frequency": 0.5}, 0.25, "1 tablet x 0.5/day x 0.5 mg/tablet = 0.25 mg/day"),
        ({"frequencyMax": 0.5}, 0.25, "1 tablet x 0.5/day (frequencyMax) x 0.5 mg/tablet = 0.25 mg/day"),
    ],
)
def test_frequency_max_is_named_only_when_it_raises_the_count(
    vocab: DosingVocabulary, repeat: dict[str, Any], mg: float, explanation: str
) -> None:
    timing = {"repeat": {**repeat, "period": 1, "periodUnit": "d"}}
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": timing}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day) == (DoseStatus.COMPUTED, mg)
    assert result.explanation == explanation


def test_a_timing_said_two_ways_is_read_at_the_higher(vocab: DosingVocabulary) -> None:
    # repeat says twice a day, the code says TID: 3 a day is read, 3 x 0.5 mg = 1.5 mg/day
    timing = {
        "repeat": {"frequency": 2, "period": 1, "periodUnit": "d"},
        "code": {"coding": [{"code": "TID"}]},
    }
    result = daily_dose(
        med(CLONAZEPAM_05, {"doseAndRate": dose(1, "tablet"), "timing": timing}), "clonazepam", vocab
    )
    assert (result.status, result.mg_per_day) == (DoseStatus.COMPUTED, 1.5)
    assert result.explanation == "1 tablet x TID (3/day) x 0.5 mg/tablet = 1.5 mg/day"


def test_codings_without_a_code_or_with_an_unknown_code_are_passed_over(vocab: DosingVocabulary) -> None:
    # a coding with no code, a local code the vocabulary does not know, then BID: 2 x 0.5 mg = 1 mg/day
    codings = [
        {"system": "urn:example:local"},
        {"system": "urn:example:local", "code": "TWICE-A-DAY"},
        {"system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation", "code": "BID"},
    ]
    timing = {"code": {"coding": codings}}
    result = daily_dose(
        med(CLONAZEPAM_05, {"doseAndRate": dose(1, "tablet"), "timing": timing}), "clonazepam", vocab
    )
    assert (result.status, result.mg_per_day) == (DoseStatus.COMPUTED, 1.0)
    assert result.explanation == "1 tablet x BID (2/day) x 0.5 mg/tablet = 1 mg/day"


def test_very_small_and_very_large_figures_are_written_out_without_an_exponent(
    vocab: DosingVocabulary,
) -> None:
    # 0.05 mcg once a day = 0.00005 mg/day (not "5e-05")
    micro = {"doseAndRate": dose(0.05, "mcg"), "timing": per(1)}
    result = daily_dose(med("diazepam 5 MG Oral Tablet", micro), "diazepam", vocab)
    assert result.mg_per_day == pytest.approx(0.00005)
    assert result.explanation == "0.05 mcg (0.00005 mg) x 1/day = 0.00005 mg/day"
    # a strength recorded as 2e15 mg a tablet: written in full, with no exponent and no trailing point
    huge = (Strength("clonazepam", Quantity(2e15, "mg")),)
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(1)}
    result = daily_dose(med(None, tablets, text="clonazepam", strengths=huge), "clonazepam", vocab)
    assert result.mg_per_day == 2e15
    assert result.explanation == "1 tablet x 1/day x 2000000000000000 mg/tablet = 2000000000000000 mg/day"


def test_of_several_doses_the_highest_is_read_and_a_tie_shows_the_first(vocab: DosingVocabulary) -> None:
    # 2 tablets then 1 tablet: the 2 tablets count, 2 x 0.5 mg x 2/day = 2 mg/day
    two_then_one = [
        {"doseQuantity": {"value": 2, "unit": "tablet"}},
        {"doseQuantity": {"value": 1, "unit": "tablet"}},
    ]
    result = daily_dose(
        med(CLONAZEPAM_05, {"doseAndRate": two_then_one, "timing": per(2)}), "clonazepam", vocab
    )
    assert result.mg_per_day == 2.0
    assert result.explanation == "2 tablet x 2/day x 0.5 mg/tablet = 2 mg/day"
    # 1 tablet (0.5 mg) and 500 mcg (0.5 mg) are the same dose: the first written is shown
    tie = [{"doseQuantity": {"value": 1, "unit": "tablet"}}, {"doseQuantity": {"value": 500, "unit": "mcg"}}]
    result = daily_dose(med(CLONAZEPAM_05, {"doseAndRate": tie, "timing": per(2)}), "clonazepam", vocab)
    assert result.mg_per_day == 1.0
    assert result.explanation == "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"


def test_a_readable_dose_after_an_open_range_is_read(vocab: DosingVocabulary) -> None:
    # "at least 1 tablet" has no upper end; the 1 tablet written after it is read: 1 x 0.5 mg x 2 = 1 mg/day
    items = [
        {"doseRange": {"low": {"value": 1, "unit": "tablet"}}},
        {"doseQuantity": {"value": 1, "unit": "tablet"}},
    ]
    result = daily_dose(med(CLONAZEPAM_05, {"doseAndRate": items, "timing": per(2)}), "clonazepam", vocab)
    assert (result.status, result.mg_per_day) == (DoseStatus.COMPUTED, 1.0)
    assert result.explanation == "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"


def test_of_several_unreadable_doses_the_first_names_the_problem(vocab: DosingVocabulary) -> None:
    # an open range (no-dose-quantity) before a negative dose (unreadable): the first problem is named
    items = [
        {"doseRange": {"low": {"value": 1, "unit": "tablet"}}},
        {"doseQuantity": {"value": -1, "unit": "tablet"}},
    ]
    result = daily_dose(med(CLONAZEPAM_05, {"doseAndRate": items, "timing": per(2)}), "clonazepam", vocab)
    assert (result.status, result.problem) == (DoseStatus.UNKNOWN, "no-dose-quantity")
    # a dose item that is no object at all is unreadable, not a missing dose
    result = daily_dose(med(CLONAZEPAM_05, {"doseAndRate": [["x"]], "timing": per(2)}), "clonazepam", vocab)
    assert (result.status, result.problem) == (DoseStatus.UNKNOWN, "unreadable-dosage")


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([{"doseQuantity": "1 tablet"}], "unreadable-dosage"),  # a dose that is no object
        ([{"doseQuantity": {"value": 1, "unit": 7}}], "unreadable-dosage"),  # a unit that is no text
        ([{"doseQuantity": {"value": None, "unit": "tablet"}}], "no-dose-quantity"),
        ([{"doseQuantity": {"unit": "tablet"}}], "no-dose-quantity"),
        # a dose without its value before an unreadable one: the first problem is named
        ([{"doseQuantity": {"unit": "tablet"}}, {"doseQuantity": "x"}], "no-dose-quantity"),
        ([{"doseQuantity": "x"}, {"doseQuantity": {"unit": "tablet"}}], "unreadable-dosage"),
    ],
)
def test_a_dose_without_a_value_is_missing_and_a_malformed_one_unreadable(
    vocab: DosingVocabulary, items: list[Any], problem: str
) -> None:
    result = daily_dose(med(CLONAZEPAM_05, {"doseAndRate": items, "timing": per(2)}), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (DoseStatus.UNKNOWN, None, problem)


def test_the_high_end_of_a_range_keeps_its_own_unit_and_borrows_the_low_ends_code(
    vocab: DosingVocabulary,
) -> None:
    # 0.5 mg to 1000 mcg: the high end is 1000 mcg = 1 mg, twice a day = 2 mg/day (not 1000 mg)
    own = {"low": {"value": 0.5, "unit": "mg"}, "high": {"value": 1000, "unit": "mcg"}}
    result = daily_dose(
        med(CLONAZEPAM_05, {"doseAndRate": [{"doseRange": own}], "timing": per(2)}), "clonazepam", vocab
    )
    assert result.mg_per_day == 2.0
    assert result.explanation == "1000 mcg (1 mg) (high end of dose range of 0.5-1000) x 2/day = 2 mg/day"
    # 250 to 500 with the UCUM code ug on the low end only: the high end is 500 ug = 0.5 mg, x 2 = 1 mg/day
    low = {"value": 250, "code": "ug", "system": "http://unitsofmeasure.org"}
    borrowed = {"low": low, "high": {"value": 500}}
    dosage = {"doseAndRate": [{"doseRange": borrowed}], "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 1.0
    assert result.explanation == "500 ug (0.5 mg) (high end of dose range of 250-500) x 2/day = 1 mg/day"


# ------------------------------------------------------------------------------------------ as needed


def test_as_needed_without_a_maximum(vocab: DosingVocabulary) -> None:
    dosage = {"asNeededBoolean": True, "doseAndRate": dose(1), "timing": per(1)}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.AS_NEEDED
    assert result.mg_per_day is None


def test_synthea_as_needed_without_dose(vocab: DosingVocabulary) -> None:
    result = daily_dose(med(CLONAZEPAM_05, {"asNeededBoolean": True, "sequence": 1}), "clonazepam", vocab)
    assert result.status is DoseStatus.AS_NEEDED
    assert result.mg_per_day is None


def test_as_needed_with_max_dose_per_period(vocab: DosingVocabulary) -> None:
    dosage = {
        "asNeededCodeableConcept": {"text": "anxiety"},
        "doseAndRate": dose(1, "tablet"),
        "maxDosePerPeriod": {
            "numerator": {"value": 4, "unit": "tablet"},
            "denominator": {"value": 1, "unit": "day", "code": "d"},
        },
    }
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.AS_NEEDED
    assert result.mg_per_day == pytest.approx(2.0)
    assert result.explanation == "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day"


def test_max_dose_per_period_is_converted_to_a_day(vocab: DosingVocabulary) -> None:
    dosage = {
        "asNeededBoolean": True,
        "maxDosePerPeriod": {
            "numerator": {"value": 1, "unit": "mg"},
            "denominator": {"value": 6, "code": "h"},
        },
    }
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(4.0)


def test_regular_plus_as_needed_counts_the_regular_total(vocab: DosingVocabulary) -> None:
    regular = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    prn = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet")}
    result = daily_dose(med(CLONAZEPAM_05, regular, prn), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(1.0)
    assert result.explanation is not None
    assert "as needed" in result.explanation


def prn_limited(*limits: tuple[float, str, float, str]) -> dict[str, Any]:
    """An as-needed tablet with maxDosePerPeriod limits (numerator value, unit; per value, unit)."""
    ratios = [
        {"numerator": {"value": n, "unit": nu}, "denominator": {"value": d, "code": du}}
        for n, nu, d, du in limits
    ]
    return {
        "asNeededBoolean": True,
        "doseAndRate": dose(1, "tablet"),
        "maxDosePerPeriod": ratios[0] if len(ratios) == 1 else ratios,
    }


def test_an_as_needed_result_names_its_ingredient_and_no_problem(vocab: DosingVocabulary) -> None:
    # without a maximum: as needed, no amount, and nothing wrong with the record
    no_limit = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet")}
    result = daily_dose(med(CLONAZEPAM_05, no_limit), "clonazepam", vocab)
    assert result == DailyDose(
        "clonazepam", DoseStatus.AS_NEEDED, None, "as needed, no maxDosePerPeriod", None
    )
    # at most 4 tablets a day: 4 x 0.5 mg = 2 mg/day
    limited = prn_limited((4, "tablet", 1, "d"))
    result = daily_dose(med(CLONAZEPAM_05, limited), "clonazepam", vocab)
    assert result == DailyDose(
        "clonazepam",
        DoseStatus.AS_NEEDED,
        2.0,
        "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day",
        None,
    )


def test_an_as_needed_maximum_beside_a_regular_dose_is_never_added_to_it(vocab: DosingVocabulary) -> None:
    # regular: 1 tablet x 2/day x 0.5 mg = 1 mg/day; as needed: at most 4 tablets a day = 2 mg/day
    regular = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, regular, prn_limited((4, "tablet", 1, "d"))), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 1.0  # not 3.0 (regular + as-needed maximum)
    assert result.explanation == (
        "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day; "
        "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day"
    )


def test_an_as_needed_dose_without_maximum_beside_a_regular_dose(vocab: DosingVocabulary) -> None:
    regular = {"doseAndRate": dose(2, "tablet"), "timing": per(1)}
    prn = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet"), "timing": per(6)}
    result = daily_dose(med(CLONAZEPAM_05, regular, prn), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 1.0  # 2 tablets x 0.5 mg; the as-needed 6 a day adds nothing


def test_of_several_limits_the_most_restrictive_binds(vocab: DosingVocabulary) -> None:
    # 4 tablets a day = 2 mg/day; 10 tablets a week = 5 mg / 7 d = 0.714286 mg/day; every limit applies
    day, week = (4, "tablet", 1, "d"), (10, "tablet", 1, "wk")
    for limits in ((day, week), (week, day)):
        result = daily_dose(med(CLONAZEPAM_05, prn_limited(*limits)), "clonazepam", vocab)
        assert result.status is DoseStatus.AS_NEEDED
        assert result.mg_per_day == pytest.approx(5 / 7)
        assert result.explanation == "as needed, at most 10 tablet per 1 wk x 0.5 mg/tablet = 0.714286 mg/day"


def test_an_unreadable_limit_leaves_the_readable_one(vocab: DosingVocabulary) -> None:
    prn = prn_limited((3, "tablet", 1, "d"), (3, "tablet", 1, "fortnight"))
    result = daily_dose(med(CLONAZEPAM_05, prn), "clonazepam", vocab)
    assert result.mg_per_day == 1.5  # 3 x 0.5 mg a day; "per fortnight" is no period unit


def test_as_needed_maxima_in_consecutive_sequences_take_the_highest(vocab: DosingVocabulary) -> None:
    # step 1: at most 4 tablets a day = 2 mg/day; step 2: at most 2 a day = 1 mg/day; no dates: 2 mg/day
    step1 = {**prn_limited((4, "tablet", 1, "d")), "sequence": 1}
    step2 = {**prn_limited((2, "tablet", 1, "d")), "sequence": 2}
    result = daily_dose(med(CLONAZEPAM_05, step2, step1), "clonazepam", vocab)
    assert result.status is DoseStatus.AS_NEEDED
    assert result.mg_per_day == 2.0
    assert result.explanation == (
        "sequence 1: as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day | "
        "sequence 2: as needed, at most 2 tablet per 1 d x 0.5 mg/tablet = 1 mg/day; "
        "no dates say which applies: highest 2 mg/day"
    )


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        ("4 tablets a day", "unreadable-dosage"),
        ([{"numerator": {"value": 4, "unit": "tablet"}}], "no-dose-quantity"),
        ({"numerator": {"value": 4, "unit": "tablet"}, "denominator": "1 day"}, "unreadable-dosage"),
        ({"numerator": {"value": 4, "unit": "tablet"}, "denominator": {"value": 1}}, "unit-not-convertible"),
    ],
)
def test_an_unreadable_as_needed_maximum_gives_no_amount(
    vocab: DosingVocabulary, limit: Any, problem: str
) -> None:
    dosage = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet"), "maxDosePerPeriod": limit}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.AS_NEEDED
    assert result.mg_per_day is None
    assert result.problem == problem
    assert result.explanation == "as needed, maxDosePerPeriod not computable"


def test_a_maximum_per_period_whose_code_is_no_period_reads_its_unit_text(vocab: DosingVocabulary) -> None:
    # code "{day}" is no period unit, the unit text "day" is: 4 tablets per 1 day x 0.5 mg = 2 mg/day
    limit = {
        "numerator": {"value": 4, "unit": "tablet"},
        "denominator": {"value": 1, "code": "{day}", "unit": "day"},
    }
    dosage = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet"), "maxDosePerPeriod": limit}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.mg_per_day == 2.0
    assert result.explanation == "as needed, at most 4 tablet per 1 day x 0.5 mg/tablet = 2 mg/day"


def test_as_needed_without_a_maximum_says_so(vocab: DosingVocabulary) -> None:
    dosage = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet")}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (DoseStatus.AS_NEEDED, None, None)
    assert result.explanation == "as needed, no maxDosePerPeriod"


def test_a_readable_limit_after_an_unreadable_one_still_binds(vocab: DosingVocabulary) -> None:
    # "1 day" is no Duration; the next limit, 3 tablets a day x 0.5 mg, gives 1.5 mg/day
    unreadable = {"numerator": {"value": 4, "unit": "tablet"}, "denominator": "1 day"}
    readable = {"numerator": {"value": 3, "unit": "tablet"}, "denominator": {"value": 1, "code": "d"}}
    dosage = {
        "asNeededBoolean": True,
        "doseAndRate": dose(1, "tablet"),
        "maxDosePerPeriod": [unreadable, readable],
    }
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (DoseStatus.AS_NEEDED, 1.5, None)
    assert result.explanation == "as needed, at most 3 tablet per 1 d x 0.5 mg/tablet = 1.5 mg/day"


def test_of_two_limits_allowing_the_same_day_the_first_is_shown(vocab: DosingVocabulary) -> None:
    # 4 tablets a day and 8 tablets per 2 days both allow 2 mg/day; the first as written explains it
    result = daily_dose(
        med(CLONAZEPAM_05, prn_limited((4, "tablet", 1, "d"), (8, "tablet", 2, "d"))), "clonazepam", vocab
    )
    assert result.mg_per_day == 2.0
    assert result.explanation == "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day"
    result = daily_dose(
        med(CLONAZEPAM_05, prn_limited((8, "tablet", 2, "d"), (4, "tablet", 1, "d"))), "clonazepam", vocab
    )
    assert result.mg_per_day == 2.0
    assert result.explanation == "as needed, at most 8 tablet per 2 d x 0.5 mg/tablet = 2 mg/day"


PER_FORTNIGHT = {
    "numerator": {"value": 3, "unit": "tablet"},
    "denominator": {"value": 1, "unit": "fortnight"},
}


@pytest.mark.parametrize(
    "unreadable",
    [
        5,  # not a Ratio
        {"numerator": {"value": 4, "unit": "tablet"}, "denominator": "1 day"},  # not a Duration
        # 5e-324 mcg is 0 mg once converted (below the smallest float): no maximum a day
        {"numerator": {"value": 5e-324, "unit": "mcg"}, "denominator": {"value": 1, "code": "d"}},
    ],
)
def test_of_several_unreadable_limits_the_first_names_the_problem(
    vocab: DosingVocabulary, unreadable: Any
) -> None:
    for limits, problem in (
        ([unreadable, PER_FORTNIGHT], "unreadable-dosage"),
        ([PER_FORTNIGHT, unreadable], "unit-not-convertible"),  # "fortnight" is no period unit
    ):
        dosage = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet"), "maxDosePerPeriod": limits}
        result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
        assert (result.status, result.mg_per_day, result.problem) == (DoseStatus.AS_NEEDED, None, problem)
        assert result.explanation == "as needed, maxDosePerPeriod not computable"


def test_a_maximum_per_period_without_a_period_value_is_per_one_unit(vocab: DosingVocabulary) -> None:
    # at most 4 tablets per day (denominator value absent = 1 d): 4 x 0.5 mg = 2 mg/day
    limit = {"numerator": {"value": 4, "unit": "tablet"}, "denominator": {"unit": "day", "code": "d"}}
    dosage = {"asNeededBoolean": True, "doseAndRate": dose(1, "tablet"), "maxDosePerPeriod": limit}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert (result.status, result.mg_per_day) == (DoseStatus.AS_NEEDED, 2.0)
    assert result.explanation == "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day"


@pytest.mark.parametrize(
    ("value", "unit", "written"),
    [
        (0.0005, "L", "0.0005 L (0.5 mL)"),
        (0.005, "dL", "0.005 dL (0.5 mL)"),
        (500, "uL", "500 uL (0.5 mL)"),
        (500, "\u00b5L", "500 \u00b5L (0.5 mL)"),  # micro sign
        (500, "\u03bcL", "500 \u03bcL (0.5 mL)"),  # Greek mu
    ],
)
def test_volumes_in_litres_decilitres_and_microlitres(
    vocab: DosingVocabulary, value: float, unit: str, written: str
) -> None:
    # 0.5 mL x 3/day x 2 mg/mL = 3 mg/day, whatever unit the 0.5 mL is written in
    dosage = {"doseAndRate": dose(value, unit, code=unit), "timing": per(3)}
    result = daily_dose(med("lorazepam 2 MG/ML Oral Solution", dosage), "lorazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(3.0)
    assert result.explanation == f"{written} x 3/day x 2 mg/mL = 3 mg/day"


@pytest.mark.parametrize(
    ("events", "per_day"),
    [
        (["2026-11-22T08:00:00Z", "2026-11-22T20:00:00Z"], 2),
        (["2026-11-22T08:00:00Z", "2026-11-23T08:00:00Z"], 1),
        (["2026-11-22T06:00:00Z", "2026-11-22T12:00:00Z", "2026-11-22T18:00:00Z", "2026-11-23T08:00:00Z"], 3),
    ],
)
def test_timing_by_events_only_counts_the_busiest_day(
    vocab: DosingVocabulary, events: list[str], per_day: int
) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"event": events}}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == pytest.approx(per_day * 0.5)
    assert result.explanation == (
        f"1 tablet x {per_day}/day (timing.event) x 0.5 mg/tablet = {per_day * 0.5:g} mg/day"
    )


def test_a_dated_event_list_with_a_bad_entry_is_unreadable(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": {"event": ["2026-11-22T08:00:00Z", "tomorrow"]}}
    assert daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab).problem == "unreadable-dosage"


@pytest.mark.parametrize("events", ["2026-11-22T08:00:00Z", ["2026-11-22T08:00:00Z", 5]])
def test_unreadable_events_spoil_the_total_beside_a_readable_instruction(
    vocab: DosingVocabulary, events: Any
) -> None:
    """Events that are not a list of dates leave no total, even beside an instruction read in full."""
    readable = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    by_events = {"doseAndRate": dose(1, "tablet"), "timing": {"event": events}}
    result = daily_dose(med(CLONAZEPAM_05, readable, by_events), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (
        DoseStatus.UNKNOWN,
        None,
        "unreadable-dosage",
    )


def test_only_the_first_thousand_timing_events_are_read(vocab: DosingVocabulary) -> None:
    """A cost guard: what stands after the thousandth event is not looked at."""
    one_a_day = [(date(2024, 1, 1) + timedelta(days=n)).isoformat() for n in range(1000)]

    def on(events: list[str]) -> dict[str, Any]:
        return {"doseAndRate": dose(1, "tablet"), "timing": {"event": events}}

    read = daily_dose(med(CLONAZEPAM_05, on([*one_a_day, "junk"])), "clonazepam", vocab)
    assert (read.status, read.mg_per_day) == (DoseStatus.COMPUTED, 0.5)  # 1 tablet of 0.5 mg once a day
    within = daily_dose(med(CLONAZEPAM_05, on([*one_a_day[:999], "junk"])), "clonazepam", vocab)
    assert (within.status, within.problem) == (DoseStatus.UNKNOWN, "unreadable-dosage")


@pytest.mark.parametrize(("comparator", "computed"), [("<", True), ("<=", True), (">", False), (">=", False)])
def test_comparators_give_an_upper_end_or_nothing(
    vocab: DosingVocabulary, comparator: str, computed: bool
) -> None:
    # "< 2 tablets" and "<= 2 tablets" are read at 2 tablets (1 mg); "> 2" has no upper end to screen
    dosage = {"doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablet", "comparator": comparator}}]}
    dosage["timing"] = per(1)
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    if computed:
        assert result.status is DoseStatus.COMPUTED
        assert result.mg_per_day == 1.0
    else:
        assert result.status is DoseStatus.UNKNOWN
        assert result.problem == "unreadable-dosage"


def test_1440_administrations_a_day_is_the_last_readable_rate(vocab: DosingVocabulary) -> None:
    # once a minute = 1,440 a day x 1 tablet x 0.5 mg = 720 mg/day: implausible but readable; one more
    # administration a day is past the plausibility limit and reads as unreadable
    every_minute = {"doseAndRate": dose(1, "tablet"), "timing": per(1, 1, "min")}
    at_limit = daily_dose(med(CLONAZEPAM_05, every_minute), "clonazepam", vocab)
    assert at_limit.status is DoseStatus.COMPUTED
    assert at_limit.mg_per_day == 720.0
    for frequency in (1441, 1450):
        over = {"doseAndRate": dose(1, "tablet"), "timing": per(frequency)}
        assert daily_dose(med(CLONAZEPAM_05, over), "clonazepam", vocab).problem == "unreadable-dosage"
    assert (
        daily_dose(med(CLONAZEPAM_05, {**over, "timing": per(1430)}), "clonazepam", vocab).mg_per_day == 715
    )


def test_the_largest_readable_quantity_is_one_million(vocab: DosingVocabulary) -> None:
    largest = {"doseAndRate": dose(1_000_000, "ug"), "timing": per(1, 1000000, "d")}
    assert daily_dose(med(CLONAZEPAM_05, largest), "clonazepam", vocab).mg_per_day == pytest.approx(0.001)
    too_large = {"doseAndRate": dose(1_000_001, "ug"), "timing": per(1)}
    assert daily_dose(med(CLONAZEPAM_05, too_large), "clonazepam", vocab).problem == "unreadable-dosage"


@pytest.mark.parametrize(
    ("unit", "system", "label"),
    [
        ("{pill}", "http://unitsofmeasure.org", "pill"),
        ("{tablet}", "http://unitsofmeasure.org", "tablet"),
        ("{tbl}", "http://unitsofmeasure.org", "tablet"),
        ("{capsule}", "http://unitsofmeasure.org", "capsule"),
        ("{puff}", "http://unitsofmeasure.org", "puff"),
        ("{spray}", "http://unitsofmeasure.org", "spray"),
        ("TAB", "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "tablet"),
        ("ORTAB", "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "tablet"),
        ("CAP", "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "capsule"),
        ("ERCAP", "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "capsule"),
    ],
)
def test_dose_form_units_count_units_of_the_product(
    vocab: DosingVocabulary, unit: str, system: str, label: str
) -> None:
    # 1 unit x 3/day x 1 mg = 3 mg/day alprazolam, as an EHR client's draft order writes it
    quantity = {"value": 1, "unit": unit, "system": system, "code": unit}
    dosage = {"doseAndRate": [{"doseQuantity": quantity}], "timing": per(3)}
    result = daily_dose(med("alprazolam 1 MG Oral Tablet", dosage), "alprazolam", vocab)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 3.0
    assert result.explanation == f"1 {label} x 3/day x 1 mg/{label} = 3 mg/day"


# ------------------------------------------------------------------------- phases and other names

NOV_22 = date(2026, 11, 22)


def phase(tablets: float, start: str | None, end: str | None, sequence: int | None = None) -> dict[str, Any]:
    bounds = {k: v for k, v in (("start", start), ("end", end)) if v}
    out: dict[str, Any] = {"doseAndRate": dose(tablets, "tablet"), "timing": per(1, boundsPeriod=bounds)}
    if sequence is not None:
        out["sequence"] = sequence
    return out


def test_the_phase_in_force_on_the_day_sets_the_dose(vocab: DosingVocabulary) -> None:
    # 2 tablets (1 mg) in October, 1 tablet (0.5 mg) from 1 November: on 22 November, 0.5 mg
    taper = med(CLONAZEPAM_05, phase(2, "2026-10-01", "2026-10-31", 1), phase(1, "2026-11-01", None, 2))
    result = daily_dose(taper, "clonazepam", vocab, on=NOV_22)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 0.5
    assert result.explanation == (
        "in force on 2026-11-22 (from 2026-11-01): 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
    )
    on_oct_31 = daily_dose(taper, "clonazepam", vocab, on=date(2026, 10, 31))
    assert on_oct_31.mg_per_day == 1.0  # both ends of a period are inside it
    assert daily_dose(taper, "clonazepam", vocab).mg_per_day == 1.0  # no day asked: the highest


def test_unsequenced_dated_entries_are_not_summed(vocab: DosingVocabulary) -> None:
    taper = med(CLONAZEPAM_05, phase(2, "2026-10-01", "2026-10-31"), phase(1, "2026-11-01", "2026-11-30"))
    assert daily_dose(taper, "clonazepam", vocab, on=NOV_22).mg_per_day == 0.5  # not 1.5


def test_partial_dates_cover_their_whole_month(vocab: DosingVocabulary) -> None:
    taper = med(CLONAZEPAM_05, phase(2, "2026-10", "2026-10"), phase(1, "2026-11", None))
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 10, 31)).mg_per_day == 1.0
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 1)).mg_per_day == 0.5


def test_a_month_alone_starts_on_its_first_day_and_ends_on_its_last(vocab: DosingVocabulary) -> None:
    taper = med(CLONAZEPAM_05, phase(2, "2026-10", "2026-10"), phase(1, "2026-11", None))
    first_day = daily_dose(taper, "clonazepam", vocab, on=date(2026, 10, 1))
    assert first_day.explanation == (
        "in force on 2026-10-01 (2026-10-01 to 2026-10-31): 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day"
    )
    next_month = daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 1))
    assert next_month.explanation == (
        "in force on 2026-11-01 (from 2026-11-01): 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
    )


def test_an_undated_entry_applies_throughout_a_dated_schedule(vocab: DosingVocabulary) -> None:
    night = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["HS"]}}}
    taper = med(CLONAZEPAM_05, phase(2, "2026-10-01", "2026-10-31"), phase(1, "2026-11-01", None), night)
    assert daily_dose(taper, "clonazepam", vocab, on=NOV_22).mg_per_day == 1.0  # 0.5 + 0.5 at night


def test_a_schedule_whose_every_phase_ended_is_ended(vocab: DosingVocabulary) -> None:
    old = med(CLONAZEPAM_05, phase(2, "2026-09-01", "2026-09-30"), phase(1, "2026-10-01", "2026-10-31"))
    result = daily_dose(old, "clonazepam", vocab, on=NOV_22)
    assert result == DailyDose("clonazepam", DoseStatus.ENDED, None, "every phase ended by 2026-10-31", None)


def test_a_schedule_not_yet_started_counts_its_first_phase(vocab: DosingVocabulary) -> None:
    planned = med(CLONAZEPAM_05, phase(2, "2026-12-01", "2026-12-14"), phase(1, "2026-12-15", None))
    result = daily_dose(planned, "clonazepam", vocab, on=NOV_22)
    assert result.mg_per_day == 1.0
    assert result.explanation is not None
    assert result.explanation.startswith("not started on 2026-11-22; first phase from 2026-12-01: ")


def test_unreadable_bounds_leave_an_entry_undated(vocab: DosingVocabulary) -> None:
    junk = {"doseAndRate": dose(1, "tablet"), "timing": per(1, boundsPeriod={"start": "soon"})}
    assert daily_dose(med(CLONAZEPAM_05, junk), "clonazepam", vocab, on=NOV_22).mg_per_day == 0.5


def chained(tablets: float, days: int, sequence: int) -> dict[str, Any]:
    duration = {"value": days, "unit": "days", "code": "d"}
    return {
        "sequence": sequence,
        "doseAndRate": dose(tablets, "tablet"),
        "timing": per(1, boundsDuration=duration),
    }


def test_durations_chain_from_the_record_start(vocab: DosingVocabulary) -> None:
    # from 1 November: 2 tablets for 14 days (1-14 Nov), 1 tablet for 14 days (15-28 Nov), then half
    steps = (chained(2, 14, 1), chained(1, 14, 2), chained(0.5, 14, 3))
    taper = replace(med(CLONAZEPAM_05, *steps), effective_start=date(2026, 11, 1))
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 14)).mg_per_day == 1.0
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 15)).mg_per_day == 0.5
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 29)).mg_per_day == 0.25
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 12, 13)).status is DoseStatus.ENDED
    undated = daily_dose(replace(taper, effective_start=None), "clonazepam", vocab, on=NOV_22)
    assert undated.mg_per_day == 1.0  # no start date: the phases cannot be placed, the highest counts
    assert undated.explanation is not None
    assert undated.explanation.endswith("no dates say which applies: highest 1 mg/day")


def test_a_brand_name_in_text_gives_its_ingredient_strength(vocab: DosingVocabulary) -> None:
    klonopin = med(None, {"doseAndRate": dose(1, "tablet"), "timing": per(2)}, text="Klonopin 0.5 mg tablet")
    assert daily_dose(klonopin, "clonazepam", vocab).problem == "no-strength"  # not without the alias
    result = daily_dose(klonopin, "clonazepam", vocab, aliases=("Klonopin",))
    assert result.mg_per_day == 1.0
    assert result.explanation == "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day"


def test_a_product_name_known_elsewhere_gives_the_strength(vocab: DosingVocabulary) -> None:
    bare = med(None, {"doseAndRate": dose(1, "tablet"), "timing": per(2)})
    assert daily_dose(bare, "clonazepam", vocab).problem == "no-strength"
    named = daily_dose(bare, "clonazepam", vocab, product_names=("clonazepam 1 MG Oral Tablet",))
    assert named.mg_per_day == 2.0
    own = med(CLONAZEPAM_05, {"doseAndRate": dose(1, "tablet"), "timing": per(2)})
    mine_first = daily_dose(own, "clonazepam", vocab, product_names=("clonazepam 1 MG Oral Tablet",))
    assert mine_first.mg_per_day == 1.0  # the record's own name wins


def test_dated_instructions_in_force_together_are_dated_by_the_days_they_share(
    vocab: DosingVocabulary,
) -> None:
    # 2 tablets from 1 Nov (no end) and 1 tablet until 30 Nov (no start) both hold on 22 Nov:
    # 1 mg + 0.5 mg = 1.5 mg/day, a total that holds from 1 Nov to 30 Nov (not "undated", not open-ended)
    from_nov = phase(2, "2026-11-01", None)
    for other in (phase(1, None, "2026-11-30"), phase(1, "2026-10-01", "2026-11-30")):
        result = daily_dose(med(CLONAZEPAM_05, from_nov, other), "clonazepam", vocab, on=NOV_22)
        assert result.mg_per_day == 1.5
        assert result.explanation == (
            "in force on 2026-11-22 (2026-11-01 to 2026-11-30): 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day; "
            "1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day; total 1.5 mg/day"
        )


def test_an_instruction_dated_only_by_its_end(vocab: DosingVocabulary) -> None:
    until = med(CLONAZEPAM_05, phase(1, None, "2026-11-30"))
    result = daily_dose(until, "clonazepam", vocab, on=NOV_22)
    assert result.explanation == (
        "in force on 2026-11-22 (until 2026-11-30): 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
    )
    after = daily_dose(until, "clonazepam", vocab, on=date(2026, 12, 1))
    assert after.status is DoseStatus.ENDED
    assert after.explanation == "every phase ended by 2026-11-30"


def test_when_every_dated_phase_ended_the_undated_instructions_remain(vocab: DosingVocabulary) -> None:
    # the October step (2 tablets) ended; 1 tablet at bedtime, undated, goes on: 0.5 mg/day
    night = {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": {"when": ["HS"]}}}
    fact = med(CLONAZEPAM_05, phase(2, "2026-10-01", "2026-10-31"), night)
    result = daily_dose(fact, "clonazepam", vocab, on=NOV_22)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 0.5
    assert result.explanation == (
        "every phase ended by 2026-10-31; undated instructions only: "
        "1 tablet x 1/day (HS) x 0.5 mg/tablet = 0.5 mg/day"
    )


def test_a_phase_of_unknown_length_starts_and_nothing_after_it_is_placed(vocab: DosingVocabulary) -> None:
    # from 1 Nov: 2 tablets for 14 days (1-14 Nov); then 1 tablet for a time not given (from 15 Nov, no end);
    # then half a tablet for 14 days, which cannot be placed and so counts beside whichever step holds
    open_step = {"sequence": 2, "doseAndRate": dose(1, "tablet"), "timing": per(1)}
    steps = (chained(2, 14, 1), open_step, chained(0.5, 14, 3))
    taper = replace(med(CLONAZEPAM_05, *steps), effective_start=date(2026, 11, 1))
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 10)).mg_per_day == 1.0  # 2 x 0.5 mg
    result = daily_dose(taper, "clonazepam", vocab, on=NOV_22)
    assert result.mg_per_day == 0.5  # 1 x 0.5 mg, above half a tablet (0.25 mg)
    assert result.explanation == (
        "in force on 2026-11-22 (from 2026-11-15): sequence 2: 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
        " | sequence 3: 0.5 tablet x 1/day x 0.5 mg/tablet = 0.25 mg/day; no dates say which applies: "
        "highest 0.5 mg/day"
    )
    assert daily_dose(taper, "clonazepam", vocab, on=date(2027, 6, 1)).mg_per_day == 0.5


def test_a_period_that_ends_before_it_starts_holds_on_no_day_not_even_its_start(
    vocab: DosingVocabulary,
) -> None:
    # "from 22 Nov to 20 Nov" never holds; on 22 Nov it has not "not started yet" either: it ended on 20 Nov
    inverted = med(CLONAZEPAM_05, phase(1, "2026-11-22", "2026-11-20"))
    result = daily_dose(inverted, "clonazepam", vocab, on=NOV_22)
    assert result == DailyDose("clonazepam", DoseStatus.ENDED, None, "every phase ended by 2026-11-20", None)


def test_a_sequence_that_is_not_a_whole_number_counts_beside_every_phase(vocab: DosingVocabulary) -> None:
    # sequence "2" (text) is no sequence: it applies with sequence 1, 0.5 mg + 1 mg = 1.5 mg/day
    first = {"sequence": 1, "doseAndRate": dose(1, "tablet"), "timing": per(1)}
    texted = {"sequence": "2", "doseAndRate": dose(2, "tablet"), "timing": per(1)}
    result = daily_dose(med(CLONAZEPAM_05, first, texted), "clonazepam", vocab)
    assert result == DailyDose(
        "clonazepam",
        DoseStatus.COMPUTED,
        1.5,
        "1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day; 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day; "
        "total 1.5 mg/day",
        None,
    )


def test_an_ingredient_that_is_not_text_has_no_strength(vocab: DosingVocabulary) -> None:
    good = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(CLONAZEPAM_05, good), None, vocab)  # type: ignore[arg-type]
    assert result == DailyDose("", DoseStatus.UNKNOWN, None, None, "no-strength")


def test_a_recorded_strength_whose_ingredient_is_not_text_is_unreadable(vocab: DosingVocabulary) -> None:
    good = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    odd = (Strength(None, Quantity(1, "mg")),)  # type: ignore[arg-type]
    result = daily_dose(med(CLONAZEPAM_05, good, strengths=odd), "clonazepam", vocab)
    assert result == DailyDose("clonazepam", DoseStatus.UNKNOWN, None, None, "unreadable-dosage")


def test_a_brand_starting_with_x_reads_its_strength_by_alias(vocab: DosingVocabulary) -> None:
    # Xanax 0.5 mg, 1 tablet twice a day: 1 mg/day of alprazolam
    xanax = med(None, {"doseAndRate": dose(1, "tablet"), "timing": per(2)}, text="Xanax 0.5 MG Oral Tablet")
    result = daily_dose(xanax, "alprazolam", vocab, aliases=("Xanax",))
    assert (result.mg_per_day, result.explanation) == (1.0, "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day")


def test_a_mass_dose_naming_its_ingredient_reads_on_a_recorded_combination(vocab: DosingVocabulary) -> None:
    # Medication.ingredient: acetaminophen 325 mg and oxycodone hydrochloride 5 mg a tablet.
    # "5 mg oxycodone" twice a day is 10 mg/day of oxycodone; a bare "5 mg" could be either ingredient
    own = (
        Strength("acetaminophen", Quantity(325, "mg")),
        Strength("oxycodone hydrochloride", Quantity(5, "mg")),
    )
    named = {"doseAndRate": dose(5, "mg oxycodone", code="mg"), "timing": per(2)}
    result = daily_dose(med(None, named, strengths=own), "oxycodone", vocab)
    assert result == DailyDose("oxycodone", DoseStatus.COMPUTED, 10.0, "5 mg x 2/day = 10 mg/day", None)
    bare = {"doseAndRate": dose(5, "mg"), "timing": per(2)}
    result = daily_dose(med(None, bare, strengths=own), "oxycodone", vocab)
    assert (result.status, result.problem) == (DoseStatus.UNKNOWN, "ambiguous-combination")


def test_recorded_ingredients_without_the_one_asked_give_no_strength_for_a_mass_dose(
    vocab: DosingVocabulary,
) -> None:
    # the record's ingredient is diazepam 5 mg: "5 mg" is not read as clonazepam
    own = (Strength("diazepam", Quantity(5, "mg")),)
    milligrams = {"doseAndRate": dose(5, "mg"), "timing": per(2)}
    result = daily_dose(med(None, milligrams, text="clonazepam", strengths=own), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (DoseStatus.UNKNOWN, None, "no-strength")


def test_a_mass_dose_naming_its_ingredient_reads_on_an_unparsed_combination(vocab: DosingVocabulary) -> None:
    # "Mestranol / Norethynodrel" carries no strengths; "5 mg mestranol" once a day is 5 mg/day of mestranol
    named = {"doseAndRate": dose(5, "mg mestranol", code="mg"), "timing": per(1)}
    result = daily_dose(med(None, named, text="Mestranol / Norethynodrel"), "mestranol", vocab)
    assert result == DailyDose("mestranol", DoseStatus.COMPUTED, 5.0, "5 mg x 1/day = 5 mg/day", None)


@pytest.mark.parametrize(
    "flag",
    [{"asNeeded": True}, {"asNeededFor": [{"text": "anxiety"}]}],
    ids=["R5 asNeeded", "R5 asNeededFor"],
)
def test_the_r5_as_needed_fields_make_a_dose_as_needed(vocab: DosingVocabulary, flag: dict[str, Any]) -> None:
    # at most 4 tablets of 0.5 mg a day: 2 mg/day as needed
    dosage = prn_limited((4, "tablet", 1, "d"))
    del dosage["asNeededBoolean"]  # the R4 flag: only the R5 one says "as needed" here
    dosage.update(flag)
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result == DailyDose(
        "clonazepam",
        DoseStatus.AS_NEEDED,
        2.0,
        "as needed, at most 4 tablet per 1 d x 0.5 mg/tablet = 2 mg/day",
        None,
    )


def test_an_empty_or_malformed_as_needed_for_leaves_a_regular_dose(vocab: DosingVocabulary) -> None:
    # 1 tablet of 0.5 mg twice a day: 1 mg/day, whatever an empty or non-list asNeededFor says
    reasons: object
    for reasons in ([], "anxiety", {}):
        dosage = {"asNeededFor": reasons, "doseAndRate": dose(1, "tablet"), "timing": per(2)}
        result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
        assert result == DailyDose(
            "clonazepam", DoseStatus.COMPUTED, 1.0, "1 tablet x 2/day x 0.5 mg/tablet = 1 mg/day", None
        )


def test_a_duration_over_a_hundred_years_is_no_duration(vocab: DosingVocabulary) -> None:
    def taper(first_days: int) -> MedicationFact:
        steps = (chained(2, first_days, 1), chained(1, 14, 2))
        return replace(med(CLONAZEPAM_05, *steps), effective_start=date(2026, 11, 1))

    # 36,525 days (100 Julian years) from 1 Nov 2026 ends 36,524 days on: 100 x 365 + 24 leap days
    # (2028 to 2124 by fours, less 2100) = 36,524, so on 1 Nov 2126
    placed = daily_dose(taper(36525), "clonazepam", vocab, on=NOV_22)
    assert placed.explanation == (
        "in force on 2026-11-22 (2026-11-01 to 2126-11-01): 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day"
    )
    # one day more is past the plausibility limit: step 1 starts with no end and step 2 cannot be placed
    unplaced = daily_dose(taper(36526), "clonazepam", vocab, on=NOV_22)
    assert unplaced.mg_per_day == 1.0
    assert unplaced.explanation == (
        "in force on 2026-11-22 (from 2026-11-01): sequence 1: 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day"
        " | sequence 2: 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day; no dates say which applies: "
        "highest 1 mg/day"
    )


def test_a_duration_in_weeks_by_its_code_alone_or_in_days_by_its_unit_text_alone_chains(
    vocab: DosingVocabulary,
) -> None:
    # from 1 Nov: 2 tablets for 2 wk (code only) = 14 days, 1-14 Nov; 1 tablet for 14 "days" (unit text only),
    # 15-28 Nov; then half a tablet for 14 d, 29 Nov-12 Dec
    steps = (
        {
            "sequence": 1,
            "doseAndRate": dose(2, "tablet"),
            "timing": per(1, boundsDuration={"value": 2, "code": "wk"}),
        },
        {
            "sequence": 2,
            "doseAndRate": dose(1, "tablet"),
            "timing": per(1, boundsDuration={"value": 14, "unit": "days"}),
        },
        chained(0.5, 14, 3),
    )
    taper = replace(med(CLONAZEPAM_05, *steps), effective_start=date(2026, 11, 1))
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 14)).mg_per_day == 1.0
    second = daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 15))
    assert second.mg_per_day == 0.5
    assert second.explanation == (
        "in force on 2026-11-15 (2026-11-15 to 2026-11-28): 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
    )
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 28)).mg_per_day == 0.5
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 29)).mg_per_day == 0.25


def test_a_phase_lasts_as_long_as_its_longest_instruction(vocab: DosingVocabulary) -> None:
    # step 1: 2 tablets a day for 14 days and 1 tablet at night for 7 days: the step is 1-14 Nov;
    # step 2 (1 tablet for 14 days) starts on 15 Nov. On 10 Nov: 1 mg + 0.5 mg = 1.5 mg/day
    night = {
        "sequence": 1,
        "doseAndRate": dose(1, "tablet"),
        "timing": {"repeat": {"when": ["HS"], "boundsDuration": {"value": 7, "code": "d"}}},
    }
    steps = (chained(2, 14, 1), night, chained(1, 14, 2))
    taper = replace(med(CLONAZEPAM_05, *steps), effective_start=date(2026, 11, 1))
    result = daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 10))
    assert result.mg_per_day == 1.5
    assert result.explanation == (
        "in force on 2026-11-10 (2026-11-01 to 2026-11-14): 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day; "
        "1 tablet x 1/day (HS) x 0.5 mg/tablet = 0.5 mg/day; total 1.5 mg/day"
    )
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 11, 15)).mg_per_day == 0.5


@pytest.mark.parametrize(
    "duration",
    [
        {"value": 14, "code": 14},  # a unit that is not text
        {"value": 14, "unit": "fortnight"},  # no period unit
        {"value": "14", "code": "d"},  # a value that is not a number
        {"value": 101, "code": "a"},  # 101 years = 36,890.25 days, past the 100-year limit
    ],
)
def test_a_duration_that_cannot_be_read_leaves_its_phase_open_ended(
    vocab: DosingVocabulary, duration: dict[str, Any]
) -> None:
    # step 1 starts on 1 Nov with no end; step 2 cannot be placed and counts beside it: the higher, 1 mg/day
    first = {"sequence": 1, "doseAndRate": dose(2, "tablet"), "timing": per(1, boundsDuration=duration)}
    taper = replace(med(CLONAZEPAM_05, first, chained(1, 14, 2)), effective_start=date(2026, 11, 1))
    result = daily_dose(taper, "clonazepam", vocab, on=NOV_22)
    assert result.status is DoseStatus.COMPUTED
    assert result.mg_per_day == 1.0
    assert result.explanation == (
        "in force on 2026-11-22 (from 2026-11-01): sequence 1: 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day"
        " | sequence 2: 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day; no dates say which applies: "
        "highest 1 mg/day"
    )


def test_a_year_alone_covers_the_whole_year(vocab: DosingVocabulary) -> None:
    taper = med(CLONAZEPAM_05, phase(2, "2025", "2025"), phase(1, "2026", None))
    last_day = daily_dose(taper, "clonazepam", vocab, on=date(2025, 12, 31))
    assert last_day.mg_per_day == 1.0
    assert last_day.explanation == (
        "in force on 2025-12-31 (2025-01-01 to 2025-12-31): 2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day"
    )
    assert daily_dose(taper, "clonazepam", vocab, on=date(2025, 1, 1)).mg_per_day == 1.0
    assert daily_dose(taper, "clonazepam", vocab, on=date(2026, 1, 1)).mg_per_day == 0.5


@pytest.mark.parametrize("start", ["2026-02-30", "2026-13", "2026-11-31", "2026-00-10"])
def test_impossible_dates_leave_an_entry_undated(vocab: DosingVocabulary, start: str) -> None:
    junk = {"doseAndRate": dose(1, "tablet"), "timing": per(1, boundsPeriod={"start": start})}
    result = daily_dose(med(CLONAZEPAM_05, junk), "clonazepam", vocab, on=NOV_22)
    assert result.mg_per_day == 0.5
    assert result.explanation == "1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"  # no dates played a part


# ------------------------------------------------------------------------------------------ unknown


def test_missing_frequency_is_unknown_not_once_daily(vocab: DosingVocabulary) -> None:
    for timing in (None, {}, {"repeat": {}}, {"repeat": {"frequency": 3}}, {"code": {"text": "as directed"}}):
        dosage: dict[str, Any] = {"doseAndRate": dose(1, "tablet")}
        if timing is not None:
            dosage["timing"] = timing
        result = daily_dose(med(CLONAZEPAM_1, dosage), "clonazepam", vocab)
        assert result.status is DoseStatus.UNKNOWN, timing
        assert result.problem == "no-frequency", timing
        assert result.mg_per_day is None


def test_missing_strength_is_unknown(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(None, dosage, text="clonazepam"), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "no-strength"


def test_ingredient_not_in_the_product(vocab: DosingVocabulary) -> None:
    tablets = {"doseAndRate": dose(1), "timing": per(2)}
    milligrams = {"doseAndRate": dose(5, "mg"), "timing": per(2)}
    for dosage in (tablets, milligrams):
        result = daily_dose(med("diazepam 5 MG Oral Tablet", dosage), "clonazepam", vocab)
        assert result.problem == "no-strength"


def test_mass_dose_without_known_strength_is_computed_for_a_single_ingredient(
    vocab: DosingVocabulary,
) -> None:
    dosage = {"doseAndRate": dose(2, "mg"), "timing": per(2)}
    result = daily_dose(med(None, dosage, text="Clonazepam"), "clonazepam", vocab)
    assert result.mg_per_day == pytest.approx(4.0)


def test_mass_dose_of_a_combination_is_ambiguous(vocab: DosingVocabulary) -> None:
    dosage = {"doseAndRate": dose(5, "mg"), "timing": per(4)}
    fact = med("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", dosage)
    result = daily_dose(fact, "oxycodone", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "ambiguous-combination"
    unparsed = med(None, dosage, text="Mestranol / Norethynodrel")
    assert daily_dose(unparsed, "mestranol", vocab).problem == "ambiguous-combination"


def test_no_dosage_and_no_dose_quantity(vocab: DosingVocabulary) -> None:
    assert daily_dose(med(CLONAZEPAM_1), "clonazepam", vocab).problem == "no-dosage"
    text_only = {"text": "take as directed", "timing": per(1)}
    assert daily_dose(med(CLONAZEPAM_1, text_only), "clonazepam", vocab).problem == "no-dose-quantity"
    rate_only = {"doseAndRate": [{"rateQuantity": {"value": 1, "unit": "mL/h"}}], "timing": per(1)}
    assert daily_dose(med(CLONAZEPAM_1, rate_only), "clonazepam", vocab).problem == "no-dose-quantity"


def test_units_that_cannot_be_converted(vocab: DosingVocabulary) -> None:
    drops = {"doseAndRate": dose(5, "drops", code="[drp]"), "timing": per(2)}
    assert daily_dose(med("diazepam 5 MG/ML Oral Solution", drops), "diazepam", vocab).problem == (
        "unit-not-convertible"
    )
    millilitres_of_tablets = {"doseAndRate": dose(5, "mL"), "timing": per(2)}
    assert daily_dose(med(CLONAZEPAM_1, millilitres_of_tablets), "clonazepam", vocab).problem == (
        "unit-not-convertible"
    )
    tablets_of_liquid = {"doseAndRate": dose(1), "timing": per(2)}
    assert daily_dose(
        med("diazepam 5 MG/ML Oral Solution", tablets_of_liquid), "diazepam", vocab
    ).problem == ("unit-not-convertible")


@pytest.mark.parametrize(
    ("timing", "problem"),
    [
        (per(1, dayOfWeek="mon"), "unreadable-dosage"),
        (per(1, 1, 1), "unreadable-dosage"),
        (per(1, 1e-310, "d"), "unreadable-dosage"),  # once every 1e-310 days: 1/1e-310 overflows to inf
        ({"repeat": {"when": []}}, "no-frequency"),
        ({"repeat": {"when": [" "]}}, "no-frequency"),
        ({"repeat": {"timeOfDay": ["morning"]}}, "unreadable-dosage"),
        ({"repeat": {"timeOfDay": []}}, "no-frequency"),
        ({"code": "BID"}, "unreadable-dosage"),
        ({"code": {"coding": "BID"}}, "unreadable-dosage"),
        ({"event": "2026-11-22T08:00:00Z"}, "unreadable-dosage"),
        ({"event": []}, "no-frequency"),
    ],
)
def test_timings_that_give_no_rate(vocab: DosingVocabulary, timing: Any, problem: str) -> None:
    dosage = {"doseAndRate": dose(1, "tablet"), "timing": timing}
    result = daily_dose(med(CLONAZEPAM_05, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == problem
    assert result.mg_per_day is None


@pytest.mark.parametrize(
    "strength",
    [
        Strength("clonazepam", Quantity(1, None)),  # type: ignore[arg-type]
        Strength("clonazepam", Quantity(1, "mg"), Quantity(1, None)),  # type: ignore[arg-type]
        Strength("clonazepam", Quantity(1, "mg"), Quantity(0, "{tbl}")),  # per zero tablets
        Strength(None, Quantity(1, "mg")),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_strength_is_unreadable_not_guessed(vocab: DosingVocabulary, strength: Strength) -> None:
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    result = daily_dose(med(None, tablets, text="clonazepam", strengths=(strength,)), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "unreadable-dosage"


def test_a_strength_that_only_looks_like_a_quantity_is_unreadable(vocab: DosingVocabulary) -> None:
    # numerator or denominator of another type, even with a text unit, is not read as mg per tablet
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    lookalike: Any = SimpleNamespace(value=0.5, unit="mg")
    per_tablet: Any = SimpleNamespace(value=1, unit="tablet")
    for strength in (
        Strength("clonazepam", lookalike),
        Strength("clonazepam", Quantity(0.5, "mg"), per_tablet),
    ):
        result = daily_dose(med(None, tablets, text="clonazepam", strengths=(strength,)), "clonazepam", vocab)
        assert (result.status, result.problem) == (DoseStatus.UNKNOWN, "unreadable-dosage")


def test_a_pack_of_a_solution_and_tablets_reads_the_strength_of_the_form_dosed(
    vocab: DosingVocabulary,
) -> None:
    pack = "{1 (diazepam 5 MG/ML Injectable Solution) / 10 (diazepam 2 MG Oral Tablet) } Pack"
    # tablets: the solution's 5 mg/mL is passed over, 1 tablet x 2/day x 2 mg = 4 mg/day
    tablets = daily_dose(med(pack, {"doseAndRate": dose(1, "tablet"), "timing": per(2)}), "diazepam", vocab)
    assert (tablets.status, tablets.mg_per_day) == (DoseStatus.COMPUTED, 4.0)
    assert tablets.explanation == "1 tablet x 2/day x 2 mg/tablet = 4 mg/day"
    # millilitres: the tablet's 2 mg is passed over, 2 mL x 2/day x 5 mg/mL = 20 mg/day
    ml = daily_dose(med(pack, {"doseAndRate": dose(2, "mL"), "timing": per(2)}), "diazepam", vocab)
    assert (ml.status, ml.mg_per_day) == (DoseStatus.COMPUTED, 20.0)
    assert ml.explanation == "2 mL x 2/day x 5 mg/mL = 20 mg/day"


@pytest.mark.parametrize(
    "odd",
    [
        Strength("clonazepam", Quantity(1e-300, "ng"), Quantity(1e300, "tablet")),  # 1e-906 mg: 0 as a float
        Strength("clonazepam", Quantity(1e308, "kg"), Quantity(1, "tablet")),  # 1e314 mg: infinite
    ],
)
def test_a_strength_beyond_float_range_beside_a_readable_one_is_unreadable(
    vocab: DosingVocabulary, odd: Strength
) -> None:
    # not "two strengths" (ambiguous-combination): one of them cannot be read at all
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(1)}
    strengths = (Strength("clonazepam", Quantity(0.5, "mg")), odd)
    result = daily_dose(med(None, tablets, text="clonazepam", strengths=strengths), "clonazepam", vocab)
    assert (result.status, result.problem) == (DoseStatus.UNKNOWN, "unreadable-dosage")


def test_patches_of_a_per_hour_strength_cannot_be_converted(vocab: DosingVocabulary) -> None:
    # 0.025 mg/h is a delivery rate: one patch every 72 h gives no mg per patch to multiply
    dosage = {"doseAndRate": dose(1, "patch"), "timing": per(1, 72, "h")}
    result = daily_dose(med("fentanyl 0.025 MG/HR Transdermal System", dosage), "fentanyl", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.problem == "unit-not-convertible"


def test_a_pack_of_two_strengths_is_ambiguous_and_a_pack_of_one_is_not(vocab: DosingVocabulary) -> None:
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(1)}
    phased = "{21 (clonazepam 0.5 MG Oral Tablet) / 7 (clonazepam 1 MG Oral Tablet) } Pack"
    assert daily_dose(med(phased, tablets), "clonazepam", vocab).problem == "ambiguous-combination"
    same = "{21 (clonazepam 0.5 MG Oral Tablet) / 7 (clonazepam 0.5 MG Oral Tablet) } Pack"
    assert daily_dose(med(same, tablets), "clonazepam", vocab).mg_per_day == 0.5  # 1 tablet x 0.5 mg


def test_at_most_one_hundred_dosage_instructions_are_read(vocab: DosingVocabulary) -> None:
    # 100 instructions of 1 tablet a day applying together: 100 x 0.5 mg = 50 mg/day; 101 are unreadable
    one = {"doseAndRate": dose(1, "tablet"), "timing": per(1)}
    assert daily_dose(med(CLONAZEPAM_05, *[one] * 100), "clonazepam", vocab).mg_per_day == 50.0
    too_many = daily_dose(med(CLONAZEPAM_05, *[one] * 101), "clonazepam", vocab)
    assert too_many.status is DoseStatus.UNKNOWN
    assert too_many.problem == "unreadable-dosage"


def test_amounts_too_small_to_represent_are_unreadable_never_zero(vocab: DosingVocabulary) -> None:
    # 5e-324 is the smallest positive float: a year's 5e-324 mg, or tablets of 5e-324 mcg (5e-327 mg),
    # come to less than it a day and would read as 0 mg/day
    tiny = 5e-324
    yearly = {"doseAndRate": dose(tiny, "mg"), "timing": per(1, 1, "a")}
    assert daily_dose(med(CLONAZEPAM_05, yearly), "clonazepam", vocab).problem == "unreadable-dosage"
    limit = {"numerator": {"value": tiny, "unit": "mg"}, "denominator": {"value": 1, "code": "a"}}
    prn = daily_dose(
        med(CLONAZEPAM_05, {"asNeededBoolean": True, "maxDosePerPeriod": limit}), "clonazepam", vocab
    )
    assert (prn.status, prn.mg_per_day, prn.problem) == (DoseStatus.AS_NEEDED, None, "unreadable-dosage")
    tablets = {"doseAndRate": dose(1, "tablet"), "timing": per(1)}
    dust = (Strength("clonazepam", Quantity(tiny, "mcg")),)
    assert daily_dose(med(None, tablets, strengths=dust), "clonazepam", vocab).problem == "unreadable-dosage"


GARBAGE_DOSAGES: list[Any] = [
    "take one daily",
    None,
    42,
    {"doseAndRate": dose("1"), "timing": per(2)},
    {"doseAndRate": dose(-1), "timing": per(2)},
    {"doseAndRate": dose(0), "timing": per(2)},
    {"doseAndRate": dose(float("nan")), "timing": per(2)},
    {"doseAndRate": dose(float("inf")), "timing": per(2)},
    {"doseAndRate": dose(1e308), "timing": per(2)},
    {"doseAndRate": dose(10**400), "timing": per(2)},
    {"doseAndRate": dose(True), "timing": per(2)},
    {"doseAndRate": dose(1, unit=7), "timing": per(2)},  # type: ignore[arg-type]
    {"doseAndRate": "1 tablet", "timing": per(2)},
    {"doseAndRate": [["x"]], "timing": per(2)},
    {"doseAndRate": dose(1), "timing": per("2")},
    {"doseAndRate": dose(1), "timing": per(2, -1)},
    {"doseAndRate": dose(1), "timing": per(2, 1, "fortnight")},
    {"doseAndRate": dose(1), "timing": per(float("nan"))},
    {"doseAndRate": dose(1), "timing": per(1e9, 1, "s")},
    {"doseAndRate": dose(1), "timing": "BID"},
    {"doseAndRate": dose(1), "timing": {"repeat": "BID"}},
    {"doseAndRate": dose(1), "timing": {"repeat": {"when": "MORN"}}},
    {"doseAndRate": dose(1), "timing": {"repeat": {"timeOfDay": [8]}}},
    {"doseAndRate": dose(1), "timing": per(1, dayOfWeek=["someday"])},
    {"doseAndRate": dose(1), "timing": per(1), "asNeededBoolean": "yes"},
]


@pytest.mark.parametrize("dosage", GARBAGE_DOSAGES)
def test_garbage_is_unknown_with_a_problem_code(vocab: DosingVocabulary, dosage: Any) -> None:
    result = daily_dose(med(CLONAZEPAM_1, dosage), "clonazepam", vocab)
    assert result.status is DoseStatus.UNKNOWN
    assert result.mg_per_day is None
    assert result.problem in PROBLEMS


def test_garbage_next_to_a_good_entry_spoils_the_total(vocab: DosingVocabulary) -> None:
    good = {"doseAndRate": dose(1), "timing": per(2)}
    bad = {"doseAndRate": dose(-3), "timing": per(2)}
    assert daily_dose(med(CLONAZEPAM_1, good, bad), "clonazepam", vocab).status is DoseStatus.UNKNOWN


@pytest.mark.parametrize(
    "bad",
    [
        {"doseAndRate": dose(1, "tablet"), "timing": "BID"},  # a timing that is no object
        {"doseAndRate": dose(1, "tablet"), "timing": {"repeat": "BID"}},  # a repeat that is no object
        {"doseAndRate": dose(1, "tablet"), "timing": per(1, 1e-310, "d")},  # every 1e-310 days: infinite
        {"doseAndRate": dose(1, "tablet"), "timing": per(2000)},  # 2000 a day is over the 1440 limit
        {"doseAndRate": dose(1, "tablet"), "timing": per(1, dayOfWeek="mon")},  # a day that is no list
        {"doseAndRate": dose(1, "tablet"), "timing": per(1, dayOfWeek=["someday"])},  # no day it names
        {"doseAndRate": dose(1, "tablet"), "timing": per(1, 1, 1)},  # a periodUnit that is no word
        {"doseAndRate": dose(1, "tablet"), "timing": per(1, 1, "fortnight")},  # a periodUnit not known
        {"doseAndRate": dose(1, "tablet"), "timing": {"code": "BID"}},  # a code that is no object
        {"doseAndRate": dose(1, "tablet"), "timing": {"code": {"coding": "BID"}}},  # codings not a list
        {"doseAndRate": "1 tablet", "timing": per(2)},  # doseAndRate that is neither object nor list
        {"doseAndRate": [["x"]], "timing": per(2)},  # a dose item that is no object
        {
            "doseAndRate": dose(1, "tablet"),
            "timing": per(1),
            "asNeededBoolean": "yes",
        },  # a flag not true/false
        {
            "doseAndRate": dose(1, "tablet"),
            "timing": per(1),
            "asNeededCodeableConcept": "anxiety",
        },  # no object
        # 5e-324 mg once a year: less than the smallest float a day, so 0 mg/day, never a readable figure
        {"doseAndRate": dose(5e-324, "mg"), "timing": per(1, 1, "a")},
    ],
)
def test_an_unreadable_instruction_beside_a_readable_one_leaves_no_total(
    vocab: DosingVocabulary, bad: Any
) -> None:
    # 1 tablet twice a day alone is 1 mg/day; beside an instruction that cannot be read, no total is given
    good = {"doseAndRate": dose(1, "tablet"), "timing": per(2)}
    assert daily_dose(med(CLONAZEPAM_05, good), "clonazepam", vocab).mg_per_day == 1.0
    result = daily_dose(med(CLONAZEPAM_05, good, bad), "clonazepam", vocab)
    assert (result.status, result.mg_per_day, result.problem) == (
        DoseStatus.UNKNOWN,
        None,
        "unreadable-dosage",
    )
    assert result.ingredient == "clonazepam"


def test_a_total_too_large_to_represent_is_unreadable_never_infinite(vocab: DosingVocabulary) -> None:
    # a strength recorded as 1e305 mg a tablet: 1000 tablets a day is 1e308 mg/day, still a number;
    # two such instructions together come to 2e308, beyond the largest float (about 1.8e308)
    huge = (Strength("clonazepam", Quantity(1e305, "mg")),)
    thousand = {"doseAndRate": dose(1000, "tablet"), "timing": per(1)}
    one = daily_dose(med(None, thousand, text="clonazepam", strengths=huge), "clonazepam", vocab)
    assert (one.status, one.mg_per_day) == (DoseStatus.COMPUTED, 1e308)
    both = daily_dose(med(None, thousand, thousand, text="clonazepam", strengths=huge), "clonazepam", vocab)
    assert both == DailyDose("clonazepam", DoseStatus.UNKNOWN, problem="unreadable-dosage")


def test_garbage_strengths_and_ingredient(vocab: DosingVocabulary) -> None:
    good = {"doseAndRate": dose(1), "timing": per(2)}
    nan_strength = (Strength("clonazepam", Quantity(float("nan"), "mg")),)
    assert daily_dose(med(None, good, strengths=nan_strength), "clonazepam", vocab).problem == (
        "unreadable-dosage"
    )
    odd_unit = (Strength("clonazepam", Quantity(1, "[iU]")),)
    assert daily_dose(med(None, good, strengths=odd_unit), "clonazepam", vocab).problem == (
        "unit-not-convertible"
    )
    assert daily_dose(med(CLONAZEPAM_1, good), "", vocab).status is DoseStatus.UNKNOWN


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clonazePAM 0.25 MG Oral Tablet", [("clonazepam", 0.25, "mg", None)]),
        ("24 HR lamotrigine 300 MG Extended Release Oral Tablet", [("lamotrigine", 300, "mg", None)]),
        (
            "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet",
            [("acetaminophen", 325, "mg", None), ("oxycodone", 5, "mg", None)],
        ),
        ("diazepam 5 MG/ML Oral Solution", [("diazepam", 5, "mg", (1, "mL"))]),
        ("{30 (clonazepam 0.5 MG Oral Tablet) } Pack", [("clonazepam", 0.5, "mg", None)]),
        ("lorazepam 2 MG/ML Injectable Solution", [("lorazepam", 2, "mg", (1, "mL"))]),
        ("clonazepam 0.5 MG Oral Tablet [Klonopin]", [("clonazepam", 0.5, "mg", None)]),
        ("lithium carbonate 300 MG Oral Tablet", [("lithium", 300, "mg", None)]),
        ("clonidine 100 MCG Oral Tablet", [("clonidine", 0.1, "mg", None)]),
        ("amoxicillin 1 G Oral Tablet", [("amoxicillin", 1000, "mg", None)]),
        ("fentanyl 0.025 MG/HR Transdermal System", [("fentanyl", 0.025, "mg", (1, "h"))]),
        ("0.7 ML midazolam 14.3 MG/ML Auto-Injector", [("midazolam", 14.3, "mg", (1, "mL"))]),
        (
            "Abuse-Deterrent 12 HR Oxycodone Hydrochloride 15 MG Extended Release Oral Tablet",
            [("oxycodone", 15, "mg", None)],
        ),
        (
            "{1 (0.1 ML) (diazepam 100 MG/ML Nasal Spray [Valtoco]) } Pack [Valtoco 10 MG Dose Kit]",
            [("diazepam", 100, "mg", (1, "mL"))],
        ),
        (
            "{21 (clonazepam 0.5 MG Oral Tablet) / 7 (clonazepam 0.5 MG Oral Tablet) } Pack",
            [("clonazepam", 0.5, "mg", None)],
        ),
        (
            "{21 (clonazepam 0.5 MG Oral Tablet) / 7 (clonazepam 1 MG Oral Tablet) } Pack",
            [("clonazepam", 0.5, "mg", None), ("clonazepam", 1, "mg", None)],
        ),
        # a strength per 5 mL keeps its 5 mL: 300 mg in 5 mL, not 300 mg/mL
        ("lithium citrate 300 MG/5 ML Oral Solution", [("lithium", 300, "mg", (5, "mL"))]),
        # Adderall 10 mg: two salts of each moiety add up, 2.5 + 2.5 mg each
        (
            "amphetamine aspartate 2.5 MG / amphetamine sulfate 2.5 MG / dextroamphetamine saccharate 2.5 MG"
            " / dextroamphetamine sulfate 2.5 MG Oral Tablet",
            [("amphetamine", 5, "mg", None), ("dextroamphetamine", 5, "mg", None)],
        ),
        # a name wrapped in brackets, and a lower-case duration before the ingredient
        ("(clonazepam 0.5 MG Oral Tablet)", [("clonazepam", 0.5, "mg", None)]),
        ("24 hr lamotrigine 300 mg extended release tablet", [("lamotrigine", 300, "mg", None)]),
        # a strength with no ingredient name before it is passed over; the next one in the component is read
        ("0.5 MG clonazepam 1 MG Oral Tablet", [("clonazepam", 1, "mg", None)]),
        # a salt that is also a mineral: what is left when the salt word is stripped is the ingredient
        ("Calcium Carbonate 500 MG Oral Tablet", [("calcium", 500, "mg", None)]),
        # a [Brand] written between the ingredient and its strength is passed over
        ("Oxycodone Hydrochloride [Roxicodone] 5 MG Oral Tablet", [("oxycodone", 5, "mg", None)]),
        # a note in parentheses after a single product is not a pack: the whole name is read
        ("Diazepam 5 MG Oral Tablet (Valium)", [("diazepam", 5, "mg", None)]),
        ("clonazepam 0 MG Oral Tablet", []),
        ("diazepam 5 MG/0 ML Oral Solution", []),
        ("Camila 28 Day Pack", []),
        ("NuvaRing 0.12/0.015 MG per 24HR 21 Day Vaginal System", []),
        ("", []),
    ],
)
def test_parse_strengths(name: str, expected: list[tuple[str, float, str, Any]]) -> None:
    found = [
        (
            s.ingredient,
            s.numerator.value,
            s.numerator.unit,
            (s.denominator.value, s.denominator.unit) if s.denominator else None,
        )
        for s in parse_strengths(name)
    ]
    assert found == [(i, pytest.approx(v), u, d) for i, v, u, d in expected]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Oxycodone Hydrochloride", "oxycodone"),
        ("Oxycodone Hydrochloride,", "oxycodone"),  # a trailing comma is no part of the salt word
        ("Lithium,Carbonate", "lithium"),  # a comma separates words like a space
        ("Amphetamine Aspartate Monohydrate", "amphetamine"),  # every trailing salt word goes
        ("Penicillin G Potassium", "penicillin g"),  # only trailing words: "G" stops the stripping
        ("Insulin  Glargine ", "insulin glargine"),  # no salt: words kept, single-spaced
        ("Calcium Carbonate", "calcium"),  # a salt word left alone is the ingredient, not stripped
        ("Magnesium", "magnesium"),
        ("Ferrous Sulfate", "ferrous sulfate"),  # a keep_names entry stays whole
        (" Ferrous   SULFATE ", "ferrous sulfate"),
        ("Ferrous Sulfate Heptahydrate", "ferrous sulfate heptahydrate"),  # not a salt word
    ],
)
def test_ingredient_names_are_normalised_as_a_pharmacist_reads_them(
    vocab: DosingVocabulary, name: str, expected: str
) -> None:
    assert vocab.normalise_ingredient(name) == expected


def test_parse_strengths_tolerates_junk() -> None:
    assert parse_strengths(None) == ()  # type: ignore[arg-type]
    assert parse_strengths("9" * 500 + " MG x") == ()
    assert parse_strengths("x " + "1 MG / " * 3000) is not None


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


BENZO_SUFFIXES = ("azepam", "azolam", "azepate", "azepoxide", "bazam")


def test_every_cdc_benzodiazepine_display_yields_a_benzodiazepine_strength() -> None:
    rows = _csv_rows(SOURCES / "cdc-benzodiazepine-medications.csv")
    assert len(rows) > 200
    for row in rows:
        strengths = parse_strengths(row["display"])
        benzos = [s for s in strengths if s.ingredient.endswith(BENZO_SUFFIXES)]
        assert benzos, row["display"]
        for strength in benzos:
            assert strength.ingredient in row["display"].lower()
            assert strength.numerator.unit == "mg"
            assert strength.numerator.value > 0


def test_synthea_fixtures_compute_or_explain() -> None:
    files = sorted(TEST_PATIENTS.glob("*.trimmed.json"))
    assert len(files) == 9
    vocab = DosingVocabulary.load(VOCABULARY_FILE)
    computed = 0
    seen: dict[tuple[str, str], Any] = {}
    for file in files:
        for entry in json.loads(file.read_text(encoding="utf-8"))["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "MedicationRequest":
                continue
            cc = resource.get("medicationCodeableConcept") or {}
            codings = tuple(
                Coding(c.get("system"), c.get("code"), c.get("display")) for c in cc.get("coding", [])
            )
            fact = MedicationFact(
                SourceRef("MedicationRequest", resource["id"]),
                MedicationKind.REQUEST,
                Concept(codings, cc.get("text")),
                resource.get("status"),
                dosages=tuple(resource.get("dosageInstruction") or ()),
            )
            names = [c.display for c in codings if c.display]
            for ingredient in {s.ingredient for n in names for s in parse_strengths(n)}:
                result = daily_dose(fact, ingredient, vocab)
                if result.status is DoseStatus.COMPUTED:
                    computed += 1
                    assert result.mg_per_day is not None
                    assert math.isfinite(result.mg_per_day)
                    assert result.mg_per_day > 0
                else:
                    assert result.mg_per_day is None or result.mg_per_day > 0
                seen[(" | ".join(names), ingredient)] = result
    assert computed > 0
    percocet = seen[
        ("Acetaminophen 325 MG / Oxycodone Hydrochloride 10 MG Oral Tablet [Percocet]", "oxycodone")
    ]
    assert percocet.status is DoseStatus.COMPUTED
    assert percocet.mg_per_day == pytest.approx(40.0)  # 1 tablet x 4/day x 10 mg
    assert percocet.explanation == "1 unit x 4/day x 10 mg/unit = 40 mg/day"
    every_six_hours = seen[("Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet", "oxycodone")]
    assert every_six_hours.mg_per_day == pytest.approx(20.0)  # 1 per 6 h


# ------------------------------------------------------------------------------------------ vocabulary


def test_the_shipped_vocabulary_is_the_default(vocab: DosingVocabulary) -> None:
    assert default_vocabulary_path().resolve() == VOCABULARY_FILE.resolve()
    assert vocab.mass_factor("MCG") == pytest.approx(0.001)
    assert vocab.count_label("") == "unit"
    assert vocab.period_days("wk") == 7
    assert "hydrochloride" in vocab.salt_words


def test_a_malformed_vocabulary_is_named_with_its_file_and_field(tmp_path: Path) -> None:
    good = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps({**good, "mass_units_to_mg": {**good["mass_units_to_mg"], "mg": -1}}), "utf-8")
    with pytest.raises(ConfigError) as raised:
        DosingVocabulary.load(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "mass_units_to_mg.mg" in str(raised.value)


def test_malformed_vocabularies_stop_start_up(tmp_path: Path) -> None:
    good = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    broken: list[Any] = ["{not json", json.dumps([1, 2])]
    for key, value in (
        ("mass_units_to_mg", {"mg": -1}),
        ("mass_units_to_mg", {}),
        ("period_units_to_days", {"d": "one"}),
        ("count_units", {"tablet": 3}),
        ("timing_codes", {"BID": {"frequency": 2}}),
        ("days_of_week", ["mon"]),
        ("limits", {"max_quantity_value": 0}),
    ):
        broken.append(json.dumps({**good, key: value}))
    missing = dict(good)
    del missing["volume_units_to_ml"]
    broken.append(json.dumps(missing))
    broken.append(json.dumps({**good, "volume_units_to_ml": {"mg": 1}}))  # a unit of two kinds
    for number, text in enumerate(broken):
        path = tmp_path / f"vocabulary-{number}.json"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError):
            DosingVocabulary.load(path)
    with pytest.raises(ConfigError):
        DosingVocabulary.load(tmp_path / "absent.json")


def _edited(change: Any) -> dict[str, Any]:
    vocabulary: dict[str, Any] = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    change(vocabulary)
    return vocabulary


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v["mass_units_to_mg"].update(MG=2), "'mass_units_to_mg' has conflicting entries for 'mg'"),
        (lambda v: v.update(days_of_week="mon"), "'days_of_week' must be a list of non-empty strings"),
        (lambda v: v["timing_codes"].update(BID="2/d"), "'timing_codes.BID' must be a Timing.repeat object"),
        (
            lambda v: v["timing_codes"].update(BID={"frequency": 2, "period": 1, "periodUnit": "fortnight"}),
            "'timing_codes.BID.periodUnit' 'fortnight' is not a period unit",
        ),
        (
            lambda v: v["event_timing_administrations"].update(C=True),
            "'event_timing_administrations.C' must be a positive whole number",
        ),
        (
            lambda v: v["event_timing_administrations"].update(C=0),
            "'event_timing_administrations.C' must be a positive whole number",
        ),
        (lambda v: v.update(product_names=[]), "'product_names' must be an object"),
        (
            lambda v: v["product_names"]["strength_units"].update(MG=["mg"]),
            "'product_names.strength_units.MG' must be [unit, factor]",
        ),
        (
            lambda v: v["product_names"]["denominator_units"].update(ML=""),
            "'product_names.denominator_units.ML' must be a unit",
        ),
        (lambda v: v.update(limits=1440), "'limits' must be an object"),
        # a section missing or empty, for every section read
        (lambda v: v.pop("mass_units_to_mg"), "'mass_units_to_mg' must be a non-empty object"),
        (lambda v: v.update(count_units={}), "'count_units' must be a non-empty object"),
        (lambda v: v.update(timing_codes={}), "'timing_codes' must be a non-empty object"),
        (
            lambda v: v.update(event_timing_administrations={}),
            "'event_timing_administrations' must be a non-empty object",
        ),
        (
            lambda v: v["product_names"].update(strength_units={}),
            "'strength_units' must be a non-empty object",
        ),
        (
            lambda v: v["product_names"].pop("denominator_units"),
            "'denominator_units' must be a non-empty object",
        ),
        # one wrong entry, in every section
        (lambda v: v["volume_units_to_ml"].update(ml=0), "'volume_units_to_ml.ml' must be a positive number"),
        (
            lambda v: v["period_units_to_days"].update(d="one"),
            "'period_units_to_days.d' must be a positive number",
        ),
        (lambda v: v["count_units"].update(tablet=" "), "'count_units.tablet' must name a label"),
        # "tab" as millilitres and as tablets: the volume and count tables overlap (mass is not involved)
        (lambda v: v["volume_units_to_ml"].update(tab=1), "units listed as more than one kind: ['tab']"),
        (
            lambda v: v["timing_codes"].update(BID={"frequency": 2, "periodUnit": "d"}),
            "'timing_codes.BID' needs frequency, period and periodUnit",
        ),
        (
            lambda v: v["timing_codes"].update(BID={"period": 1, "periodUnit": "d"}),
            "'timing_codes.BID' needs frequency, period and periodUnit",
        ),
        (lambda v: v.update(days_of_week=["mon"]), "'days_of_week' must list the seven FHIR day codes"),
        (
            lambda v: v["product_names"]["strength_units"].update(MG=["mg", 0]),
            "'product_names.strength_units.MG' must be [unit, factor]",
        ),
        (
            lambda v: v["product_names"].update(salt_words=["hydrochloride", "  "]),
            "'product_names.salt_words' must be a list of non-empty strings",
        ),
        (
            lambda v: v["product_names"].update(keep_names=["ferrous sulfate", ""]),
            "'product_names.keep_names' must be a list of non-empty strings",
        ),
        # one limit missing is enough to refuse the file (the other one is present and valid)
        (
            lambda v: v["limits"].pop("max_administrations_per_day"),
            "'limits' needs positive max_quantity_value and max_administrations_per_day",
        ),
        (
            lambda v: v["limits"].update(max_quantity_value=-1),
            "'limits' needs positive max_quantity_value and max_administrations_per_day",
        ),
    ],
)
def test_each_malformed_field_is_named(tmp_path: Path, change: Any, message: str) -> None:
    # the whole message: the file, then what is wrong where, nothing else
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(_edited(change)), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        DosingVocabulary.load(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_vocabulary_that_cannot_be_read_or_is_not_an_object_is_named(tmp_path: Path) -> None:
    absent = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as raised:
        DosingVocabulary.load(absent)
    assert str(raised.value).startswith(f"{absent}: cannot read dosing vocabulary: ")
    assert "No such file" in str(raised.value)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        DosingVocabulary.load(listed)
    assert str(raised.value) == f"{listed}: the dosing vocabulary must be a JSON object"


def test_keep_names_may_be_left_out(tmp_path: Path) -> None:
    # keep_names is optional: without it no name is kept whole, and salt words are still stripped
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(_edited(lambda v: v["product_names"].pop("keep_names"))), encoding="utf-8")
    vocabulary = DosingVocabulary.load(path)
    assert vocabulary.keep_names == frozenset()
    assert vocabulary.normalise_ingredient("Clonazepam  Hydrochloride") == "clonazepam"


def test_a_unit_spelt_twice_with_one_factor_loads(tmp_path: Path) -> None:
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(_edited(lambda v: v["mass_units_to_mg"].update(MG=1))), encoding="utf-8")
    assert DosingVocabulary.load(path).mass_factor("Mg") == 1


def _site_vocabulary(v: dict[str, Any]) -> None:
    v["timing_codes"][" q5h "] = {"frequency": 1, "period": 5, "periodUnit": " H "}
    v["event_timing_administrations"][" Snack "] = 2
    v["product_names"]["keep_names"] = ["Ferrous   Sulfate"]
    v["product_names"]["salt_words"] = [" Hydrochloride ", "Sodium"]


def test_a_valid_vocabulary_loads_with_exactly_the_values_written(tmp_path: Path) -> None:
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(_edited(_site_vocabulary)), encoding="utf-8")
    vocabulary = DosingVocabulary.load(path)
    # timing codes upper-cased and trimmed, their period unit a lower-case unit key
    bid = vocabulary.timing_codes["BID"]
    assert (bid.frequency, bid.period, bid.period_unit) == (2, 1, "d")
    q5h = vocabulary.timing_codes["Q5H"]
    assert (q5h.frequency, q5h.period, q5h.period_unit) == (1, 5, "h")
    assert "q5h" not in vocabulary.timing_codes
    # EventTiming codes lower-cased and trimmed, with the count written
    assert vocabulary.when_administrations["snack"] == 2
    assert vocabulary.when_administrations["ac"] == 3
    assert vocabulary.when_administrations["morn.early"] == 1
    assert "SNACK" not in vocabulary.when_administrations
    # product-name units: RxNorm unit -> (unit, factor) and RxNorm denominator -> unit, as written
    assert vocabulary.strength_units["MCG"] == ("mg", 0.001)
    assert vocabulary.denominator_units["ML"] == "mL"
    assert vocabulary.denominator_units["ACTUAT"] == "{actuat}"
    # word lists lower-cased with their spaces made single
    assert vocabulary.keep_names == frozenset({"ferrous sulfate"})
    assert vocabulary.salt_words == frozenset({"hydrochloride", "sodium"})
    assert vocabulary.normalise_ingredient("Ferrous Sulfate") == "ferrous sulfate"
    assert vocabulary.normalise_ingredient("Oxycodone Hydrochloride") == "oxycodone"


def test_a_strength_too_large_to_hold_is_dropped_and_the_next_ingredient_still_read(tmp_path: Path) -> None:
    # a site unit worth 1e308 mg: 10 of it is beyond float range, so that strength is no number at all;
    # the clonazepam written after it in the same product is still 0.5 mg per tablet
    path = tmp_path / "vocabulary.json"
    path.write_text(
        json.dumps(_edited(lambda v: v["product_names"]["strength_units"].update(HUGE=["mg", 1e308]))),
        encoding="utf-8",
    )
    vocabulary = DosingVocabulary.load(path)
    assert vocabulary.parse_strengths("ketamine 10 HUGE / clonazepam 0.5 MG Oral Tablet") == (
        Strength("clonazepam", Quantity(0.5, "mg")),
    )
    assert vocabulary.parse_strengths("ketamine 10 HUGE Oral Tablet") == ()


def test_product_names_read_with_a_freshly_loaded_vocabulary(tmp_path: Path) -> None:
    vocabulary = DosingVocabulary.load(VOCABULARY_FILE)
    # one tablet of clonazepam holds 0.5 mg; no denominator means per tablet
    assert vocabulary.parse_strengths("clonazePAM 0.5 MG Oral Tablet") == (
        Strength("clonazepam", Quantity(0.5, "mg")),
    )
    # 5 mg in each mL, the units written in lower case
    assert vocabulary.parse_strengths("diazepam 5 mg/ml Injectable Solution") == (
        Strength("diazepam", Quantity(5, "mg"), Quantity(1, "mL")),
    )
    # 0.09 mg per actuation; 1 G is 1000 mg
    assert vocabulary.parse_strengths("albuterol 0.09 MG/ACTUAT Metered Dose Inhaler") == (
        Strength("albuterol", Quantity(0.09, "mg"), Quantity(1, "{actuat}")),
    )
    assert vocabulary.parse_strengths("levetiracetam 1 G Oral Tablet") == (
        Strength("levetiracetam", Quantity(1000, "mg")),
    )


def test_the_longest_unit_spelling_is_read_first(tmp_path: Path) -> None:
    # a site that lists "MG/ACTUAT" as a numerator unit of its own has it read whole: 0.09 mg and no
    # denominator, not "MG" followed by the denominator "/ACTUAT"
    def spelled(v: dict[str, Any]) -> None:
        v["product_names"]["strength_units"]["MG/ACTUAT"] = ["mg", 1]

    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(_edited(spelled)), encoding="utf-8")
    vocabulary = DosingVocabulary.load(path)
    assert vocabulary.parse_strengths("albuterol 0.09 MG/ACTUAT Metered Dose Inhaler") == (
        Strength("albuterol", Quantity(0.09, "mg")),
    )


# ------------------------------------------------------------------------------------------ property

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(
        ["mg", "mL", "tablet", "{tbl}", "g", "ug", "d", "h", "wk", "BID", "MORN", "08:00:00", ""]
    ),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    json_value,
)
quantity = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            "value": number,
            "unit": st.one_of(st.sampled_from(["mg", "mL", "tablet", "mcg", "g", "d", "h"]), json_value),
            "code": st.one_of(st.sampled_from(["mg", "mL", "{tbl}", "ug", "d", "h"]), json_value),
            "comparator": st.sampled_from(["<", "<=", ">", ">="]),
        },
    ),
)
repeat = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            "frequency": number,
            "frequencyMax": number,
            "period": number,
            "periodMax": number,
            "periodUnit": st.one_of(st.sampled_from(["s", "min", "h", "d", "wk", "mo", "a"]), json_value),
            "when": st.one_of(st.lists(st.sampled_from(["MORN", "HS", "AC", "C"]), max_size=4), json_value),
            "timeOfDay": st.one_of(st.lists(st.sampled_from(["08:00:00", "20:00"]), max_size=3), json_value),
            "dayOfWeek": st.one_of(st.lists(st.sampled_from(["mon", "fri", "xyz"]), max_size=3), json_value),
        },
    ),
)
timing = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {},
        optional={
            "repeat": repeat,
            "code": st.one_of(
                st.fixed_dictionaries(
                    {"coding": st.lists(st.fixed_dictionaries({"code": json_leaf}), max_size=2)}
                ),
                json_value,
            ),
            "event": st.one_of(
                st.lists(st.sampled_from(["2026-01-01T08:00:00Z", "2026-01-01"]), max_size=3), json_value
            ),
        },
    ),
)
dose_and_rate = st.one_of(
    json_value,
    st.lists(
        st.one_of(
            json_value,
            st.fixed_dictionaries(
                {},
                optional={
                    "doseQuantity": quantity,
                    "doseRange": st.one_of(
                        json_value, st.fixed_dictionaries({}, optional={"low": quantity, "high": quantity})
                    ),
                },
            ),
        ),
        max_size=3,
    ),
)
dosage_dict = st.fixed_dictionaries(
    {},
    optional={
        "sequence": st.one_of(st.integers(min_value=-3, max_value=3), json_value),
        "timing": timing,
        "doseAndRate": dose_and_rate,
        "asNeededBoolean": st.one_of(st.booleans(), json_value),
        "asNeededCodeableConcept": json_value,
        "maxDosePerPeriod": st.one_of(
            json_value, st.fixed_dictionaries({}, optional={"numerator": quantity, "denominator": quantity})
        ),
    },
)
nice = st.one_of(st.sampled_from([1, 2, 0.5, 3, 12]), number)
plausible_dosage = st.fixed_dictionaries(
    {
        "doseAndRate": st.lists(
            st.fixed_dictionaries(
                {
                    "doseQuantity": st.fixed_dictionaries(
                        {"value": nice},
                        optional={"unit": st.sampled_from(["mg", "mL", "tablet", "mcg", "g", "[drp]", ""])},
                    )
                }
            ),
            min_size=1,
            max_size=2,
        ),
        "timing": st.fixed_dictionaries(
            {
                "repeat": st.fixed_dictionaries(
                    {"frequency": nice, "period": nice, "periodUnit": st.sampled_from(["h", "d", "wk", "x"])},
                    optional={
                        "frequencyMax": nice,
                        "when": st.lists(st.sampled_from(["MORN", "AC"]), max_size=2),
                    },
                )
            }
        ),
    },
    optional={
        "sequence": st.one_of(st.integers(min_value=1, max_value=3), json_value),
        "asNeededBoolean": st.booleans(),
        "maxDosePerPeriod": st.fixed_dictionaries(
            {
                "numerator": quantity,
                "denominator": st.fixed_dictionaries({"value": nice, "unit": st.just("d")}),
            }
        ),
    },
)
strength = st.builds(
    Strength,
    st.sampled_from(["clonazepam", "Clonazepam", "oxycodone", ""]),
    st.builds(
        Quantity, st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["mg", "g", "ug", "x"])
    ),
    st.one_of(
        st.none(),
        st.builds(
            Quantity, st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["mL", "1", "h"])
        ),
    ),
)


_VOCAB = DosingVocabulary.load(VOCABULARY_FILE)


@settings(
    max_examples=property_examples(400),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    dosages=st.lists(st.one_of(plausible_dosage, dosage_dict, json_value), max_size=4),
    display=st.sampled_from(
        [CLONAZEPAM_05, "clonazepam 2 MG/ML Oral Solution", "Acetaminophen 325 MG / Oxycodone 5 MG", ""]
    ),
    strengths=st.lists(strength, max_size=2),
    ingredient=st.sampled_from(["clonazepam", "oxycodone", "CLONAZEPAM", ""]),
)
def test_daily_dose_never_raises_nor_returns_a_negative_or_non_finite_amount(
    dosages: list[Any], display: str, strengths: list[Strength], ingredient: str
) -> None:
    result = daily_dose(med(display or None, *dosages, strengths=tuple(strengths)), ingredient, _VOCAB)
    assert result.status in set(DoseStatus)
    if result.mg_per_day is not None:
        assert math.isfinite(result.mg_per_day)
        assert result.mg_per_day >= 0
    if result.status is DoseStatus.COMPUTED:
        assert result.mg_per_day is not None
        assert result.explanation
    if result.status is DoseStatus.UNKNOWN:
        assert result.problem in PROBLEMS
        assert result.mg_per_day is None
