"""How chart records become readings and dates: split blood pressures, onset periods and onset text.

These came from an independent pharmacist's review: a diastolic sent as its own Observation was never
read, and an onset period or a month written in words was read at its first day (or not at all).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from cds.fhir.facts import BloodPressureSpec, blood_pressure_fact, condition_fact, pair_blood_pressures
from cds.fhir.model import BloodPressureFact, SourceRef

LOINC = "http://loinc.org"
SPEC = BloodPressureSpec(
    panel={(LOINC, "85354-9")},
    systolic={(LOINC, "8480-6")},
    diastolic={(LOINC, "8462-4")},
    above=0,
    below=400,
    pair_within=timedelta(minutes=10),
)


def _observation(ident: str, code: str, value: float, taken: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": ident,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": taken,
        "valueQuantity": {"value": value, "unit": "mmHg"},
    }


def _readings(*observations: dict[str, Any]) -> list[BloodPressureFact]:
    facts = [blood_pressure_fact(o, SPEC) for o in observations]
    return pair_blood_pressures([f for f in facts if f is not None], SPEC.pair_within)


def test_a_systolic_and_a_diastolic_taken_together_are_one_reading() -> None:
    [reading] = _readings(
        _observation("s", "8480-6", 128, "2026-03-11T09:00:00Z"),
        _observation("d", "8462-4", 112, "2026-03-11T09:00:00Z"),
    )
    assert (reading.systolic, reading.diastolic) == (128, 112)
    assert reading.source == SourceRef("Observation", "s")
    assert reading.partners == (SourceRef("Observation", "d"),)


def test_values_taken_apart_stay_separate_and_each_keeps_its_own_value() -> None:
    readings = _readings(
        _observation("s", "8480-6", 150, "2026-03-11T09:00:00Z"),
        _observation("d", "8462-4", 112, "2026-03-11T11:00:00Z"),
    )
    assert [(r.systolic, r.diastolic) for r in readings] == [(150, None), (None, 112)]


def test_each_value_pairs_once_with_the_nearest_partner() -> None:
    readings = _readings(
        _observation("s1", "8480-6", 150, "2026-03-11T09:00:00Z"),
        _observation("s2", "8480-6", 140, "2026-03-11T09:06:00Z"),
        _observation("d1", "8462-4", 95, "2026-03-11T09:05:00Z"),
    )
    assert [(r.systolic, r.diastolic) for r in readings] == [(150, None), (140, 95)]


def _condition(**onset: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c", "code": {"text": "Myocardial infarction"}, **onset}


def test_an_onset_period_counts_from_its_last_day_and_keeps_the_whole_span() -> None:
    fact = condition_fact(_condition(onsetPeriod={"start": "2025-05-01", "end": "2025-10-31"}), None)
    assert fact.onset == date(2025, 10, 31)
    assert fact.onset_span == (date(2025, 5, 1), date(2025, 10, 31))


def test_an_open_onset_period_gives_the_one_date_it_has() -> None:
    assert condition_fact(_condition(onsetPeriod={"start": "2025-05-01"}), None).onset == date(2025, 5, 1)


def test_a_month_written_in_words_dates_the_onset_at_its_last_day() -> None:
    fact = condition_fact(_condition(onsetString="November 2025 (per patient)"), None)
    assert fact.onset_span == (date(2025, 11, 1), date(2025, 11, 30))
    assert fact.onset == date(2025, 11, 30)
    assert fact.onset_text == "November 2025 (per patient)"


def test_onset_text_without_a_single_month_is_undated_but_kept() -> None:
    for text in ("a few years ago", "March or April 2025", "childhood"):
        fact = condition_fact(_condition(onsetString=text), None)
        assert fact.onset is None, text
        assert fact.onset_text == text


def test_an_onset_age_keeps_its_real_last_day_even_after_today() -> None:
    fact = condition_fact(_condition(onsetAge={"value": 45, "unit": "a"}), date(1980, 5, 10))
    assert fact.onset_span == (date(2025, 5, 10), date(2026, 5, 9))
    assert fact.onset == date(2026, 5, 9)


def test_readings_with_no_time_in_common_are_not_paired_by_date_alone() -> None:
    taken = datetime(2026, 3, 11, 9, tzinfo=UTC)
    lone = BloodPressureFact(SourceRef("Observation", "x"), taken, 150, None)
    late = BloodPressureFact(SourceRef("Observation", "y"), taken + timedelta(minutes=11), None, 95)
    assert pair_blood_pressures([lone, late], timedelta(minutes=10)) == [lone, late]


def _panel(systolic: Any, diastolic: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "panel",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": "2026-03-11T09:00:00Z",
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": systolic},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": diastolic},
        ],
    }


@pytest.mark.parametrize(
    "garbled",
    [
        {"value": float("nan"), "unit": "mmHg"},
        {"value": float("inf"), "unit": "mmHg"},
        {"value": "abc", "unit": "mmHg"},
        {"value": -5, "unit": "mmHg"},  # outside the plausible range (0 to 400 here)
        {"value": 2000, "unit": "mmHg"},
        None,  # the component is coded but carries no value
    ],
)
def test_a_panel_with_one_pressure_unreadable_is_said_and_keeps_the_other(garbled: Any) -> None:
    reading = blood_pressure_fact(_panel(garbled, {"value": 80, "unit": "mmHg"}), SPEC)
    assert reading is not None
    assert (reading.systolic, reading.diastolic, reading.unreadable) == (None, 80, "bp-value-unreadable")
    reading = blood_pressure_fact(_panel({"value": 150, "unit": "mmHg"}, garbled), SPEC)
    assert reading is not None
    assert (reading.systolic, reading.diastolic, reading.unreadable) == (150, None, "bp-value-unreadable")


def test_a_panel_with_both_pressures_readable_is_readable() -> None:
    reading = blood_pressure_fact(_panel({"value": 150, "unit": "mmHg"}, {"value": 80, "unit": "mmHg"}), SPEC)
    assert reading is not None
    assert (reading.systolic, reading.diastolic, reading.unreadable) == (150, 80, None)
