"""Boundaries and missing data: every threshold and window at its exact edge, and one step inside it.

Each scenario runs the screen itself (no HTTP) with the clock pinned to the date the case needs, and checks
the band chosen, not only the indicator. Every expected date and figure is written here by hand from the
rule's stated threshold (rules/*.yaml), never computed by the code under test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.clinical.cards import CardText, _truncate, note_text
from cds.clinical.engine import months_before, months_between
from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.clinical.screening import Screener, ScreenResult
from cds.config import load_settings
from cds.fhir.model import Coding, Concept
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
    med_statement,
)
from tests.support.cards import findings_carried

MI = concept(coding(SNOMED, "22298006", "Myocardial infarction"))
STROKE = concept(coding(SNOMED, "230690007", "Cerebrovascular accident"))
PREGNANCY = concept(coding(SNOMED, "77386006", "Pregnancy"))
ANEURYSM = concept(coding(ICD10, "I67.1", "Cerebral aneurysm, nonruptured"))
ALPRAZOLAM_025 = concept(coding(RXNORM, "308047", "alprazolam 0.25 MG Oral Tablet"))
DIAZEPAM_RECTAL_10 = concept(coding(RXNORM, "104706", "diazepam 10 MG Rectal Suppository"))
THEOPHYLLINE = concept(coding(RXNORM, "10438", "theophylline"))


ROOT = Path(__file__).resolve().parent.parent


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)


@pytest.fixture(scope="module")
def screen(knowledge: Knowledge) -> Callable[..., ScreenResult]:
    return screener_for(knowledge)


def screener_for(knowledge: Knowledge) -> Callable[..., ScreenResult]:
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    service = {s.hook: s for s in knowledge.services.values()}

    def run(body: dict[str, Any], *, today: str = "2026-11-22") -> ScreenResult:
        with requests.Session() as http:
            screener = Screener(knowledge, settings, http, clock=lambda: at(today))
            return screener.screen(service[body["hook"]], body)

    return run


def select(**kwargs: Any) -> dict[str, Any]:
    return hook_request("order-select", drafts=[ketamine_order()], **kwargs)


def band_of(result: ScreenResult, rule_id: str) -> tuple[str, str] | None:
    """(band id, indicator) of the rule's finding, None when it stayed silent."""
    for finding in result.findings:
        if finding.rule.id == rule_id:
            return finding.band.id, finding.indicator
    return None


def finding_of(result: ScreenResult, rule_id: str) -> Any:
    found = [f for f in result.findings if f.rule.id == rule_id]
    assert len(found) == 1, [f.rule.id for f in result.findings]
    return found[0]


# ------------------------------------------------------------------------------------- calendar helpers


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 11, 22), 6, date(2026, 5, 22)),
        (date(2026, 1, 15), 1, date(2025, 12, 15)),  # across the year
        (date(2026, 12, 31), 12, date(2025, 12, 31)),
        (date(2026, 10, 31), 1, date(2026, 9, 30)),  # the 31st into a 30-day month
        (date(2026, 8, 31), 6, date(2026, 2, 28)),  # the 31st into February
        (date(2028, 8, 31), 6, date(2028, 2, 29)),  # ... of a leap year
        (date(2026, 3, 30), 1, date(2026, 2, 28)),  # the 30th into February
        (date(2026, 3, 29), 1, date(2026, 2, 28)),  # the 29th into February
        (date(2028, 3, 29), 1, date(2028, 2, 29)),
        (date(2028, 2, 29), 12, date(2027, 2, 28)),  # 29 February, a year back
        (date(2028, 2, 29), 48, date(2024, 2, 29)),  # 29 February, four years back
        (date(2026, 11, 22), 0.5, date(2026, 11, 7)),  # half a month is 15 days
    ],
)
def test_months_before_clips_to_month_end(day: date, months: float, expected: date) -> None:
    assert months_before(day, months) == expected


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        (date(2026, 5, 22), date(2026, 11, 22), 6),
        (date(2026, 5, 23), date(2026, 11, 22), 5),
        (date(2025, 11, 30), date(2026, 2, 28), 2),
        (date(2026, 11, 22), date(2026, 11, 22), 0),
        (date(2026, 11, 23), date(2026, 11, 22), 0),
    ],
)
def test_months_between_counts_whole_months(earlier: date, later: date, expected: int) -> None:
    assert months_between(earlier, later) == expected


# ------------------------------------------------------------------------------------- blood pressure


@pytest.mark.parametrize(
    ("systolic", "diastolic", "expected"),
    [
        (180, 100, ("severe-reading", "critical")),  # systolic exactly at 180
        (170, 110, ("severe-reading", "critical")),  # diastolic exactly at 110
        (179, 109, ("elevated-reading", "warning")),  # one below both critical thresholds
        (140, 80, ("elevated-reading", "warning")),  # systolic exactly at 140
        (120, 90, ("elevated-reading", "warning")),  # diastolic exactly at 90
        (139, 89, None),  # one below both warning thresholds
    ],
)
def test_blood_pressure_thresholds_are_at_or_above(
    screen: Callable[..., ScreenResult], systolic: float, diastolic: float, expected: Any
) -> None:
    result = screen(select(observations=[blood_pressure(systolic, diastolic)]))
    assert band_of(result, "elevated-blood-pressure") == expected
    if expected is not None:
        finding = finding_of(result, "elevated-blood-pressure")
        assert finding.values["systolic"] == str(systolic)
        assert finding.values["diastolic"] == str(diastolic)
        assert finding.values["reading_date"] == "2026-11-01"


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ("2025-11-22T09:00:00Z", ("severe-reading", "critical")),  # exactly 365 days before 2026-11-22
        ("2025-11-21T09:00:00Z", None),  # 366 days: too old to judge
    ],
)
def test_reading_age_limit_is_365_days_inclusive(
    screen: Callable[..., ScreenResult], taken: str, expected: Any
) -> None:
    result = screen(select(observations=[blood_pressure(190, 115, taken=taken)]))
    assert band_of(result, "elevated-blood-pressure") == expected


def test_latest_reading_decides_even_when_an_older_one_is_high(screen: Callable[..., ScreenResult]) -> None:
    result = screen(
        select(
            observations=[
                blood_pressure(150, 95, taken="2026-11-20T08:00:00Z"),
                blood_pressure(200, 120, taken="2026-11-19T08:00:00Z"),
            ]
        )
    )
    assert band_of(result, "elevated-blood-pressure") == ("elevated-reading", "warning")
    assert finding_of(result, "elevated-blood-pressure").values["systolic"] == "150"


# ------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("today", "onset", "expected"),
    [
        # 6 months before 2026-11-22 is 2026-05-22: that day is still inside the window
        ("2026-11-22", "2026-05-22", ("within-contraindication-window", "critical")),
        ("2026-11-22", "2026-05-21", ("within-review-window", "warning")),
        # 12 months before 2026-11-22 is 2025-11-22
        ("2026-11-22", "2025-11-22", ("within-review-window", "warning")),
        ("2026-11-22", "2025-11-21", None),
        # month ends: 6 months before 31 August 2026 is 28 February 2026
        ("2026-08-31", "2026-02-28", ("within-contraindication-window", "critical")),
        ("2026-08-31", "2026-02-27", ("within-review-window", "warning")),
        # 6 months before 30 September 2026 is 30 March 2026
        ("2026-09-30", "2026-03-30", ("within-contraindication-window", "critical")),
        ("2026-09-30", "2026-03-29", ("within-review-window", "warning")),
        # 6 months before 29 August 2026 is 28 February 2026 (no 29 February in 2026)
        ("2026-08-29", "2026-02-28", ("within-contraindication-window", "critical")),
        ("2026-08-29", "2026-02-27", ("within-review-window", "warning")),
        # from 29 February 2028: 6 months back is 29 August 2027, 12 months back 28 February 2027
        ("2028-02-29", "2027-08-29", ("within-contraindication-window", "critical")),
        ("2028-02-29", "2027-08-28", ("within-review-window", "warning")),
        ("2028-02-29", "2027-02-28", ("within-review-window", "warning")),
        ("2028-02-29", "2027-02-27", None),
    ],
)
def test_myocardial_infarction_windows_at_the_exact_day(
    screen: Callable[..., ScreenResult], today: str, onset: str, expected: Any
) -> None:
    result = screen(select(conditions=[condition(MI, onset=onset)]), today=today)
    assert band_of(result, "recent-myocardial-infarction") == expected
    if expected is not None:
        finding = finding_of(result, "recent-myocardial-infarction")
        assert finding.values["onset"] == onset
        assert finding.values["reference_date"] == today


@pytest.mark.parametrize(
    ("onset", "expected"),
    [
        ("2025-11-22", ("within-contraindication-window", "critical")),  # exactly 12 months before
        ("2025-11-21", ("older-stroke-or-tia", "warning")),
    ],
)
def test_stroke_window_at_the_exact_day(
    screen: Callable[..., ScreenResult], onset: str, expected: Any
) -> None:
    result = screen(select(conditions=[condition(STROKE, onset=onset)]))
    assert band_of(result, "recent-stroke") == expected


def test_months_ago_counts_whole_months(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(conditions=[condition(MI, onset="2026-05-23")]))
    assert finding_of(result, "recent-myocardial-infarction").values["months_ago"] == "5"
    result = screen(select(conditions=[condition(MI, onset="2026-05-22")]))
    assert finding_of(result, "recent-myocardial-infarction").values["months_ago"] == "6"


def test_planned_session_date_is_the_reference(screen: Callable[..., ScreenResult]) -> None:
    """An order starting 2027-01-31: 6 months before is 2026-07-31, so an MI on 2026-07-30 is past it."""
    order = ketamine_order(start="2027-01-31T09:00:00Z")
    inside = screen(
        hook_request("order-select", drafts=[order], conditions=[condition(MI, onset="2026-07-31")])
    )
    assert band_of(inside, "recent-myocardial-infarction") == ("within-contraindication-window", "critical")
    assert inside.situation.reference_date == date(2027, 1, 31)
    assert inside.situation.reference_from_order
    outside = screen(
        hook_request("order-select", drafts=[order], conditions=[condition(MI, onset="2026-07-30")])
    )
    assert band_of(outside, "recent-myocardial-infarction") == ("within-review-window", "warning")


@pytest.mark.parametrize(
    ("asserted", "stale"),
    [("2025-11-22", False), ("2025-11-21", True)],  # 365 days old is current; 366 is stale
)
@pytest.mark.parametrize(
    ("medicine", "rule_id"),
    [
        (ALPRAZOLAM_025, "benzodiazepine-response"),  # a rule that totals doses
        (THEOPHYLLINE, "theophylline-seizure-threshold"),  # a rule that only names the medicine
    ],
)
def test_record_365_days_old_is_not_stale(
    screen: Callable[..., ScreenResult], medicine: dict[str, Any], rule_id: str, asserted: str, stale: bool
) -> None:
    result = screen(select(statements=[med_statement(medicine, asserted=asserted)]))
    finding = finding_of(result, rule_id)
    assert [("stale" in hit.notes) for hit in finding.hits] == [stale]


# ------------------------------------------------------------------------------------- missing data


def test_condition_without_clinical_or_verification_status_counts_as_active(
    screen: Callable[..., ScreenResult],
) -> None:
    """aneurysm-or-avm reads only active conditions: a record that says nothing about status is active."""
    bare = condition(ANEURYSM, clinical=None, verification=None)
    assert "clinicalStatus" not in bare
    assert "verificationStatus" not in bare
    result = screen(select(conditions=[bare]))
    assert band_of(result, "aneurysm-or-avm") is not None
    resolved = screen(select(conditions=[condition(ANEURYSM, clinical="resolved", verification=None)]))
    assert band_of(resolved, "aneurysm-or-avm") is None


def test_allergy_without_statuses_counts_as_active(screen: Callable[..., ScreenResult]) -> None:
    bare = allergy(concept(coding(RXNORM, "6130", "ketamine")), clinical=None, verification=None)
    result = screen(select(allergies=[bare]))
    assert band_of(result, "ketamine-hypersensitivity") is not None
    refuted = allergy(concept(coding(RXNORM, "6130", "ketamine")), clinical=None, verification="refuted")
    assert band_of(screen(select(allergies=[refuted])), "ketamine-hypersensitivity") is None


def test_unconfirmed_allergy_says_so(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(allergies=[allergy(concept(text="ketamine"), verification="unconfirmed")]))
    assert [hit.notes for hit in finding_of(result, "ketamine-hypersensitivity").hits] == [("unconfirmed",)]


def test_an_allergy_with_no_reaction_recorded_gives_its_reaction_as_unknown(
    screen: Callable[..., ScreenResult],
) -> None:
    """A rule's text may quote $reaction: with none recorded it reads "?", as every unknown value does."""
    result = screen(select(allergies=[allergy(concept(coding(RXNORM, "6130", "ketamine")))]))
    finding = finding_of(result, "ketamine-hypersensitivity")
    assert (finding.band.id, finding.values["substance"], finding.values["reaction"]) == (
        "documented-allergy",
        "ketamine",
        "?",
    )


def test_records_with_neither_code_nor_text_are_said(screen: Callable[..., ScreenResult]) -> None:
    nameless_condition = condition({}, onset="2026-10-01")
    nameless_allergy = allergy({})
    result = screen(select(conditions=[nameless_condition], allergies=[nameless_allergy]))
    finding = finding_of(result, "unreadable-records")
    notes = sorted(note for hit in finding.hits for note in hit.notes)
    assert notes == ["unreadable:allergy-not-coded", "unreadable:condition-not-coded"]
    assert finding.values["count"] == "2"


def test_undated_condition_goes_to_the_date_unknown_band(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(conditions=[condition(MI)]))
    assert band_of(result, "recent-myocardial-infarction") == ("date-unknown", "warning")


def test_recorded_date_stands_in_for_a_missing_onset(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(conditions=[condition(MI, recorded="2026-05-22")]))
    finding = finding_of(result, "recent-myocardial-infarction")
    assert finding.band.id == "within-contraindication-window"
    assert [(hit.date_basis, hit.notes) for hit in finding.hits] == [
        ("recorded", ("recorded-date-fallback",))
    ]


# ------------------------------------------------------------------------------------- rule mechanics


def test_rescue_and_procedural_benzodiazepine_is_not_counted(screen: Callable[..., ScreenResult]) -> None:
    """Diazepam 10 mg rectal, twice a day, would be 20 mg/day diazepam-equivalent (over 8) if counted."""
    rectal = med_statement(DIAZEPAM_RECTAL_10, dosages=[dosage(dose=1, frequency=2)])
    finding = finding_of(screen(select(statements=[rectal])), "benzodiazepine-response")
    assert (finding.band.id, finding.indicator) == ("as-needed-only", "info")
    assert finding.values["total"] == "0"
    assert [hit.notes for hit in finding.hits] == [("rescue-or-procedural",)]


def test_equal_severity_bands_tie_to_the_band_listed_first(screen: Callable[..., ScreenResult]) -> None:
    """An MI 9 months ago (review window) and an undated one (date unknown): both warnings; the review
    window is listed first in the rule, so it is the card, and the undated record is listed beside it."""
    dated = condition(MI, onset="2026-02-10", rid="mi-dated")
    undated = condition(MI, rid="mi-undated")
    for order in ([dated, undated], [undated, dated]):
        finding = finding_of(screen(select(conditions=order)), "recent-myocardial-infarction")
        assert (finding.band.id, finding.indicator) == ("within-review-window", "warning")
        assert [hit.source.id for hit in finding.hits] == ["mi-dated"]
        assert [hit.source.id for hit in finding.other_hits] == ["mi-undated"]


def test_more_severe_band_wins_over_an_earlier_less_severe_one(screen: Callable[..., ScreenResult]) -> None:
    """Stroke: a 3-year-old stroke (warning) beside a 2-month-old one (critical): critical wins."""
    old = condition(STROKE, onset="2023-06-10", rid="stroke-old")
    recent = condition(STROKE, onset="2026-09-22", rid="stroke-recent")
    finding = finding_of(screen(select(conditions=[old, recent])), "recent-stroke")
    assert (finding.band.id, finding.indicator) == ("within-contraindication-window", "critical")
    assert finding.values["months_ago"] == "2"
    assert [hit.source.id for hit in finding.other_hits] == ["stroke-old"]


def test_cards_most_severe_first_then_by_rule_id(screen: Callable[..., ScreenResult]) -> None:
    result = screen(
        select(
            conditions=[
                condition(concept(coding(SNOMED, "13746004", "Bipolar disorder"))),  # info
                condition(concept(coding(ICD10, "E05.90", "Thyrotoxicosis, unspecified"))),  # warning
                condition(MI, onset="2026-08-15"),  # critical
                condition(concept(coding(SNOMED, "128613002", "Seizure disorder"))),  # info
                condition(concept(coding(ICD10, "F20.0", "Paranoid schizophrenia"))),  # warning
            ]
        )
    )
    shown = findings_carried(result.cards)  # the info findings share one "Also noted" card, in order
    assert shown == [
        ("recent-myocardial-infarction", "critical"),
        ("hyperthyroidism", "warning"),
        ("psychotic-disorder", "warning"),
        ("bipolar-disorder", "info"),
        ("ordering-instructions", "info"),
        ("seizure-disorder", "info"),
    ]


def test_disabled_rule_gives_no_card(tmp_path: Any) -> None:
    policy = tmp_path / "site.yaml"
    policy.write_text("disabled_rules: [recent-myocardial-infarction]\n", encoding="utf-8")
    run = screener_for(load_knowledge(policy_file=str(policy)))
    result = run(
        select(conditions=[condition(MI, onset="2026-08-15"), condition(STROKE, onset="2026-08-15")])
    )
    assert band_of(result, "recent-myocardial-infarction") is None
    assert band_of(result, "recent-stroke") == ("within-contraindication-window", "critical")


def test_summaries_stay_under_140_characters(screen: Callable[..., ScreenResult]) -> None:
    """A long condition name must not push a summary past the limit (the spec's "<140 characters")."""
    long_name = "Myocardial infarction " + "with a very long free-text qualifier " * 6
    busy = select(
        conditions=[
            condition(concept(coding(SNOMED, "22298006", long_name), text=long_name), onset="2026-08-15"),
            condition(STROKE),
            condition(PREGNANCY, onset="2026-07-01"),
        ],
        statements=[med_statement(ALPRAZOLAM_025, dosages=[dosage(dose=40, frequency=4)])],
        observations=[blood_pressure(186, 104)],
    )
    result = screen(busy)
    assert len(result.cards) >= 5
    for card in result.cards:
        assert 0 < len(card["summary"]) < 140, card["summary"]


# ------------------------------------------------------------------------------------- terminology negatives

VS = "https://ketamine-cds.example.org/fhir/ValueSet/"


def sets_of(knowledge: Knowledge, text: str | None = None, *codings: tuple[str, str]) -> list[str]:
    found = knowledge.terminology.memberships(
        Concept(codings=tuple(Coding(system, code) for system, code in codings), text=text)
    )
    return sorted(url.removeprefix(VS) for url in found)


@pytest.mark.parametrize(
    "text",
    [
        "deschloroketamine",  # a research chemical that contains the name
        "norketamine level",  # ketamine's metabolite
        "2-fluorodeschloroketamine",
        "ketamine-free anaesthesia",  # says ketamine is absent
        "Ketamine - free protocol",
        "Spravatonic drops",  # a brand inside another word
        "Xanaxx",
        "Klonopinic",
        "prediastatic",
        "Ativanish",
        "theophyllinated",
        "paralorazepam",
    ],
)
def test_names_inside_other_words_match_nothing(knowledge: Knowledge, text: str) -> None:
    assert sets_of(knowledge, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ketamine-induced hallucinations", ["ketamine-racemic-medications", "ketamine-substances"]),
        ("KETAMINE", ["ketamine-racemic-medications", "ketamine-substances"]),
        ("esketamine", ["esketamine-medications", "ketamine-substances"]),
        ("Spravato - hives", ["esketamine-medications", "ketamine-substances"]),
        ("Ativan 1 mg", ["benzodiazepine-medications"]),
        ("Diastat rectal gel", ["benzodiazepine-medications", "benzodiazepine-rescue-procedural"]),
    ],
)
def test_whole_names_still_match(knowledge: Knowledge, text: str, expected: list[str]) -> None:
    """The negatives above are not bought by matching nothing: whole names, any case, still match."""
    assert sets_of(knowledge, text) == expected


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (SNOMED, "6130"),  # RxNorm's ketamine ingredient code, under SNOMED CT
        (ICD10, "6130"),
        ("http://loinc.org", "22298006"),  # SNOMED CT's myocardial infarction, under LOINC
        (RXNORM, "22298006"),
        (SNOMED, "I21.4"),  # ICD-10-CM's NSTEMI, under SNOMED CT
        ("http://hl7.org/fhir/sid/icd-10", "I21.4"),  # WHO ICD-10 is not ICD-10-CM: not an alias
        ("urn:oid:2.16.840.1.113883.6.3", "I21"),
        (RXNORM, "I21.4"),
    ],
)
def test_same_digits_in_another_system_match_nothing(knowledge: Knowledge, system: str, code: str) -> None:
    assert sets_of(knowledge, None, (system, code)) == []


def test_the_right_system_does_match(knowledge: Knowledge) -> None:
    assert sets_of(knowledge, None, (ICD10, "I21.4")) == ["mi-acute"]
    assert sets_of(knowledge, None, (ICD10, "i214")) == ["mi-acute"]  # dots and case do not matter
    assert sets_of(knowledge, None, ("urn:oid:2.16.840.1.113883.6.90", "I21")) == ["mi-acute"]  # an alias
    assert "ketamine-substances" in sets_of(knowledge, None, (RXNORM, " 6130 "))


def test_ketamine_free_allergy_text_gives_no_card(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(allergies=[allergy(concept(text="Ketamine-free anaesthesia requested"))]))
    assert band_of(result, "ketamine-hypersensitivity") is None
    result = screen(select(allergies=[allergy(concept(text="deschloroketamine"))]))
    assert band_of(result, "ketamine-hypersensitivity") is None


@pytest.mark.parametrize(
    ("length", "expected_length", "cut"),
    [(138, 138, False), (139, 139, False), (140, 139, True), (400, 139, True)],
)
def test_summary_cut_below_140_characters(length: int, expected_length: int, cut: bool) -> None:
    summary = _truncate("x" * length)
    assert len(summary) == expected_length
    assert summary.endswith("…") is cut


def test_summary_whitespace_is_collapsed_before_measuring() -> None:
    assert _truncate("Blood   pressure\n 186/104  mmHg ") == "Blood pressure 186/104 mmHg"
    # cut at 138 characters (27 words and "wor"), trailing spaces dropped, then the ellipsis
    assert _truncate("word " * 40) == "word " * 27 + "wor…"
    assert _truncate("a" * 137 + " " + "b" * 10) == "a" * 137 + "…"  # no space before the ellipsis


# ------------------------------------------------------------------------------------- rule variants


def variant_knowledge(tmp_path: Path, rule_file: str, old: str, new: str) -> Knowledge:
    """The shipped knowledge with one rule file edited: band mechanics the shipped rules never combine."""
    for folder in ("hooks", "rules", "fhir_profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    path = tmp_path / "rules" / rule_file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")
    return load_knowledge(root=tmp_path)


@pytest.mark.parametrize(
    ("kept", "reading", "expected"),
    [
        # a severe band that reads the systolic pressure only: a diastolic of 120 alone does not fire it
        ("systolic_at_least: critical_systolic", (150, 120), ("elevated-reading", "warning")),
        ("systolic_at_least: critical_systolic", (185, 80), ("severe-reading", "critical")),
        # ... and one that reads the diastolic pressure only
        ("diastolic_at_least: critical_diastolic", (200, 95), ("elevated-reading", "warning")),
        ("diastolic_at_least: critical_diastolic", (150, 112), ("severe-reading", "critical")),
    ],
)
def test_blood_pressure_band_reads_only_the_pressures_it_names(
    tmp_path: Path, kept: str, reading: tuple[int, int], expected: Any
) -> None:
    both = "systolic_at_least: critical_systolic, diastolic_at_least: critical_diastolic"
    run = screener_for(variant_knowledge(tmp_path, "elevated-blood-pressure.yaml", both, kept))
    result = run(select(observations=[blood_pressure(*reading)]))
    assert band_of(result, "elevated-blood-pressure") == expected


def test_blood_pressure_band_without_an_age_limit_judges_an_old_reading(tmp_path: Path) -> None:
    """Without reading_within_days a band judges the latest reading however old it is."""
    run = screener_for(
        variant_knowledge(
            tmp_path, "elevated-blood-pressure.yaml", ", reading_within_days: reading_age_days", ""
        )
    )
    result = run(select(observations=[blood_pressure(190, 115, taken="2019-03-01T09:00:00Z")]))
    assert band_of(result, "elevated-blood-pressure") == ("severe-reading", "critical")


def test_reading_taken_today_is_not_in_the_future(screen: Callable[..., ScreenResult]) -> None:
    result = screen(select(observations=[blood_pressure(190, 115, taken="2026-11-22T08:00:00Z")]))
    assert band_of(result, "elevated-blood-pressure") == ("severe-reading", "critical")
    assert band_of(result, "unreadable-records") is None
    tomorrow = screen(select(observations=[blood_pressure(190, 115, taken="2026-11-23T08:00:00Z")]))
    assert band_of(tomorrow, "elevated-blood-pressure") is None
    assert band_of(tomorrow, "unreadable-records") == ("unreadable", "info")


def test_allergy_evidence_row_names_the_record(screen: Callable[..., ScreenResult]) -> None:
    coded = allergy(concept(coding(RXNORM, "6130", "ketamine")), rid="allergy-coded")
    coded["recordedDate"] = "2024-03-05"
    text_only = allergy(concept(text="Ketalar - rash"), rid="allergy-text", verification=None)
    finding = finding_of(screen(select(allergies=[coded, text_only])), "ketamine-hypersensitivity")
    rows = [
        (
            h.source.id,
            h.label,
            h.coding.code if h.coding else None,
            h.match_method,
            h.date,
            h.date_basis,
            h.notes,
        )
        for h in finding.hits
    ]
    assert rows == [
        ("allergy-coded", "ketamine", "6130", "code", date(2024, 3, 5), "recorded", ()),
        ("allergy-text", "Ketalar - rash", None, "name", None, None, ()),
    ]


# ------------------------------------------------------------------------------------- note sentences


def test_note_codes_become_sentences() -> None:
    text = CardText(
        {"notes": {"stale": "not updated for over $stale_after_days days", "dose:": "dose: $detail"}}
    )
    values = {"stale_after_days": "365"}
    assert note_text(text, "stale", values) == "not updated for over 365 days"
    # a prefixed code without a sentence of its own takes its prefix's, with the rest as the detail
    assert note_text(text, "dose:no-strength", values) == "dose: no-strength"
    assert note_text(text, "dose:unit:mg/mL", values) == "dose: unit:mg/mL"  # split at the first colon only
    assert note_text(text, "unknown-code", values) == "unknown-code"  # never dropped
    assert note_text(text, "other:thing", values) == "other:thing"
    with_values = CardText({"notes": {"bp:": "$detail, over $stale_after_days"}})
    assert note_text(with_values, "bp:old", values) == "old, over 365"


def test_a_reading_with_a_garbled_systolic_is_said_not_passed_as_normal(
    screen: Callable[..., ScreenResult],
) -> None:
    reading = blood_pressure(120, 80, taken="2026-11-20T09:00:00Z", rid="bp-garbled")
    reading["component"][0]["valueQuantity"]["value"] = "abc"
    result = screen(select(observations=[reading]))
    finding = finding_of(result, "unreadable-records")
    # the conformance check names the element too: "abc" is not a decimal
    assert sorted(note for hit in finding.hits for note in hit.notes) == [
        "nonconformant:component.0.valueQuantity.value",
        "unreadable:bp-value-unreadable",
    ]
    assert [hit.source.id for hit in finding.hits] == ["bp-garbled"]
