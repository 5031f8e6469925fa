"""The engine on typed facts, without FHIR JSON, HTTP or a database: which band a rule reaches, and why.

Facts are built directly (cds.fhir.model); the rules, value sets and policy are the shipped ones, except
where a test needs a rule of its own to show a property (ties between bands of the same severity).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from cds.clinical.engine import (
    EngineContext,
    Finding,
    Hit,
    evaluate,
    evaluate_rule,
    fmt_number,
    months_before,
)
from cds.clinical.knowledge import Knowledge, load_knowledge
from cds.clinical.policy import SITE_ORIGIN, ResolvedParameter
from cds.clinical.rules import Rule
from cds.clinical.situation import INTERACTION, NONE
from cds.fhir.facts import condition_fact
from cds.fhir.model import (
    AllergyFact,
    BloodPressureFact,
    Coding,
    Concept,
    ConditionFact,
    DataGap,
    MedicationFact,
    MedicationKind,
    OnsetAge,
    PatientFacts,
    ReactionFact,
    SourceRef,
)
from tests.support.builders import RXNORM, SNOMED
from tests.support.constants import ROOT
from tests.support.facts import (
    AVM,
    CLONAZEPAM,
    KETAMINE,
    MI,
    STROKE,
    TODAY,
    VALUESET,
    condition,
    fact_id,
    medication,
    situation,
)


@pytest.fixture(scope="module")
def ctx(knowledge: Knowledge) -> EngineContext:
    return knowledge.engine_context()


def rule(knowledge: Knowledge, rule_id: str) -> Rule:
    return next(r for r in knowledge.rules if r.id == rule_id)


def finding(
    ctx: EngineContext, knowledge: Knowledge, rule_id: str, facts: PatientFacts, **kw: Any
) -> Finding | None:
    return evaluate_rule(ctx, rule(knowledge, rule_id), facts, situation(**kw))


def months_ago(months: int) -> date:
    return months_before(TODAY, months)


# --------------------------------------------------------------------------------------- band selection


@pytest.mark.parametrize(
    ("onset", "band", "indicator"),
    [
        (months_ago(3), "within-contraindication-window", "critical"),
        (months_ago(9), "within-review-window", "warning"),
        (None, "date-unknown", "warning"),
    ],
)
def test_the_band_follows_the_date(
    ctx: EngineContext, knowledge: Knowledge, onset: date | None, band: str, indicator: str
) -> None:
    found = finding(
        ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(condition(MI, onset),))
    )
    assert found is not None
    assert (found.band.id, found.indicator) == (band, indicator)


def test_outside_every_window_nothing_is_found(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(36)),))
    assert finding(ctx, knowledge, "recent-myocardial-infarction", facts) is None


def test_the_window_is_counted_from_the_reference_date(ctx: EngineContext, knowledge: Knowledge) -> None:
    """An infarction 5 months before today is 8 months before a session planned 3 months from now."""
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(5)),))
    later = TODAY + timedelta(days=92)
    found = finding(ctx, knowledge, "recent-myocardial-infarction", facts, reference_date=later)
    assert found is not None
    assert found.band.id == "within-review-window"


def test_the_most_severe_band_wins_and_the_rest_is_context(ctx: EngineContext, knowledge: Knowledge) -> None:
    old, recent = condition(MI, months_ago(9)), condition(MI, months_ago(2))
    found = finding(
        ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(old, recent))
    )
    assert found is not None
    assert found.indicator == "critical"
    assert [hit.source for hit in found.hits] == [recent.source]
    assert [hit.source for hit in found.other_hits] == [old.source]


def test_a_fact_counts_for_the_first_band_it_meets_only(ctx: EngineContext, knowledge: Knowledge) -> None:
    """A 2-month-old infarction is also within 12 months; it is not listed a second time as context."""
    recent = condition(MI, months_ago(2))
    found = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(recent,)))
    assert found is not None
    assert [hit.source for hit in found.hits] == [recent.source]
    assert found.other_hits == ()


def test_between_bands_of_the_same_severity_the_first_listed_wins(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    template = rule(knowledge, "psychotic-disorder")
    first, second = template.bands[0], template.bands[0]
    stroke_band = replace(first, id="stroke-first", match=(VALUESET + "stroke",))
    mi_band = replace(second, id="mi-second", match=(VALUESET + "mi-acute",))
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(1)), condition(STROKE, months_ago(1))))
    for bands, expected in (((stroke_band, mi_band), "stroke-first"), ((mi_band, stroke_band), "mi-second")):
        found = evaluate_rule(ctx, replace(template, bands=bands), facts, situation())
        assert found is not None
        assert found.band.id == expected


@pytest.mark.parametrize(
    ("product", "band", "indicator"),
    [("esketamine", "esketamine-contraindication", "critical"), ("ketamine", "ketamine-review", "warning")],
)
def test_bands_apply_only_to_their_products(
    ctx: EngineContext, knowledge: Knowledge, product: str, band: str, indicator: str
) -> None:
    facts = PatientFacts(None, conditions=(condition(AVM, None),))
    found = finding(ctx, knowledge, "aneurysm-or-avm", facts, products=(product,))
    assert found is not None
    assert (found.band.id, found.indicator) == (band, indicator)


def test_a_dose_rule_answers_with_the_first_band_whose_total_holds(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    """4 x 0.25 mg clonazepam = 1 mg = 20 mg diazepam-equivalent a day: above the 8 mg threshold."""
    facts = PatientFacts(None, medications=(medication(CLONAZEPAM, per_day=4),))
    found = finding(ctx, knowledge, "benzodiazepine-response", facts)
    assert found is not None
    # clonazepam's half-life reaches 50 h: the above-threshold band for long-acting drugs comes first
    assert (found.band.id, found.indicator) == ("above-threshold-long-acting", "warning")
    assert found.values["total"] == "20"
    assert "threshold" in found.parameters_used


def test_a_small_dose_is_information(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(None, medications=(medication(CLONAZEPAM, per_day=1),))
    found = finding(ctx, knowledge, "benzodiazepine-response", facts)
    assert found is not None
    assert (found.band.id, found.indicator) == ("regular-below-threshold", "info")


def test_the_latest_blood_pressure_decides(ctx: EngineContext, knowledge: Knowledge) -> None:
    def reading(days_ago: int, systolic: float, diastolic: float) -> BloodPressureFact:
        taken = datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time())
        return BloodPressureFact(SourceRef("Observation", fact_id("bp")), taken, systolic, diastolic)

    high_then_normal = PatientFacts(None, blood_pressures=(reading(30, 190, 115), reading(2, 120, 80)))
    assert finding(ctx, knowledge, "elevated-blood-pressure", high_then_normal) is None
    normal_then_high = PatientFacts(None, blood_pressures=(reading(30, 120, 80), reading(2, 150, 85)))
    found = finding(ctx, knowledge, "elevated-blood-pressure", normal_then_high)
    assert found is not None
    assert found.band.id == "elevated-reading"


# ---------------------------------------------------------------------------------------- the whole screen


def test_findings_come_most_severe_first_then_by_rule_id(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(
        None,
        conditions=(condition(MI, months_ago(9)), condition(STROKE, months_ago(2))),
        allergies=(AllergyFact(SourceRef("AllergyIntolerance", "a1"), (KETAMINE,), "active", None),),
    )
    findings = evaluate(ctx, knowledge.rules, facts, situation())
    ranked = [(f.indicator, f.rule.id) for f in findings]
    assert ranked == [
        ("critical", "ketamine-hypersensitivity"),
        ("critical", "recent-stroke"),
        ("warning", "recent-myocardial-infarction"),
    ]


def test_a_screen_of_nothing_finds_nothing(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(2)),))
    assert evaluate(ctx, knowledge.rules, facts, situation(mode=NONE)) == []


def test_an_interaction_review_shows_only_interactions_with_the_ordered_medicine(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    ordered = medication(CLONAZEPAM, draft=True, per_day=4)
    facts = PatientFacts(None, medications=(ordered,), conditions=(condition(MI, months_ago(2)),))
    review = situation(mode=INTERACTION, hook="order-select", focus=frozenset({ordered.source}))
    assert [f.rule.id for f in evaluate(ctx, knowledge.rules, facts, review)] == ["benzodiazepine-response"]
    elsewhere = replace(review, focus=frozenset({SourceRef("MedicationRequest", "another-order")}))
    assert evaluate(ctx, knowledge.rules, facts, elsewhere) == []


def test_a_rule_the_site_disabled_is_not_run(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(2)),))
    policy = replace(ctx.policy, disabled_rules=frozenset({"recent-myocardial-infarction"}))
    assert evaluate(replace(ctx, policy=policy), knowledge.rules, facts, situation()) == []
    assert [f.rule.id for f in evaluate(ctx, knowledge.rules, facts, situation())] == [
        "recent-myocardial-infarction"
    ]


def test_session_instructions_need_a_ketamine_order(ctx: EngineContext, knowledge: Knowledge) -> None:
    order = medication(KETAMINE, draft=True)
    facts = PatientFacts(None, medications=(order,))
    assert evaluate(ctx, knowledge.rules, facts, situation()) == []
    ordered = situation(hook="order-select", ketamine_orders=(order,))
    assert [f.rule.id for f in evaluate(ctx, knowledge.rules, facts, ordered)] == ["ordering-instructions"]


def test_an_unreadable_record_is_never_silent(ctx: EngineContext, knowledge: Knowledge) -> None:
    unreadable = replace(condition(Concept(), None), unreadable="condition-not-coded")
    findings = evaluate(ctx, knowledge.rules, PatientFacts(None, conditions=(unreadable,)), situation())
    assert [(f.rule.id, f.indicator) for f in findings] == [("unreadable-records", "info")]
    assert findings[0].hits[0].source == unreadable.source


def test_the_fingerprint_changes_with_the_evidence_only(ctx: EngineContext, knowledge: Knowledge) -> None:
    record = condition(MI, months_ago(2))
    first = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(record,)))
    again = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(record,)))
    moved = finding(
        ctx,
        knowledge,
        "recent-myocardial-infarction",
        PatientFacts(None, conditions=(replace(record, onset=months_ago(3)),)),
    )
    assert first is not None
    assert again is not None
    assert moved is not None
    assert first.fingerprint == again.fingerprint != moved.fingerprint
    assert len(first.fingerprint) == 32  # 32 hex digits of a SHA-256


# ------------------------------------------------------------------------------------- evidence details


def test_numbers_on_cards_are_rounded_to_two_places_and_never_inf() -> None:
    assert [fmt_number(v) for v in (20.0, 1.5, 10 / 3, 0.004)] == ["20", "1.5", "3.33", "0"]
    assert fmt_number(float("inf")) == fmt_number(float("nan")) == "?"


def test_a_band_for_events_before_a_window(ctx: EngineContext, knowledge: Knowledge) -> None:
    """A site band for an infarction more than 12 months before the planned start (22 Nov 2026): 13 months
    ago holds; 12 months ago to the day (22 Nov 2025) is still inside the window; undated cannot be placed."""
    template = rule(knowledge, "recent-myocardial-infarction")
    review = next(band for band in template.bands if band.id == "within-review-window")
    older = replace(review, id="older-than-review", when={"onset_before_months": "review_months"})
    site_rule = replace(template, bands=(older,))
    for onset, holds in ((months_ago(13), True), (months_ago(12), False), (None, False)):
        facts = PatientFacts(None, conditions=(condition(MI, onset),))
        found = evaluate_rule(ctx, site_rule, facts, situation())
        assert (found is not None) is holds, onset


def test_how_an_onset_was_given_is_noted_on_the_evidence(ctx: EngineContext, knowledge: Knowledge) -> None:
    # March 2026 as a period: the cautious day is its last (31 Mar), 7 whole months before 22 Nov 2026
    # (31 Oct is 7 months on); its first day (1 Mar) is 8 months before: within 12 months, not within 6
    march = replace(condition(MI, date(2026, 3, 31)), onset_span=(date(2026, 3, 1), date(2026, 3, 31)))
    cases = (
        (march, "within-review-window", ("onset-span:2026-03-01 to 2026-03-31",)),
        (replace(march, onset_text="March 2026"), "within-review-window", ("onset-as-text:March 2026",)),
        (
            replace(condition(MI, None), onset_text="in the spring"),
            "date-unknown",
            ("onset-text:in the spring",),
        ),
        (
            replace(condition(MI, months_ago(2)), unreadable="onset-unreadable"),
            "within-contraindication-window",
            ("unreadable",),
        ),
    )
    for fact, band, notes in cases:
        found = finding(
            ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(fact,))
        )
        assert found is not None
        assert found.band.id == band
        assert found.hits[0].notes == notes
    found = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(march,)))
    assert found is not None
    assert (found.values["onset"], found.values["months_ago"]) == ("2026-03-01 to 2026-03-31", "7-8")


def test_an_intolerance_whose_reaction_is_not_described_stays_critical(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    def intolerance(*manifestations: Concept) -> AllergyFact:
        reaction = ReactionFact(manifestations, "mild")
        return AllergyFact(
            SourceRef("AllergyIntolerance", fact_id("a")),
            (KETAMINE,),
            "active",
            None,
            criticality="low",
            type="intolerance",
            reactions=(reaction,),
        )

    undescribed = finding(
        ctx, knowledge, "ketamine-hypersensitivity", PatientFacts(None, allergies=(intolerance(),))
    )
    assert undescribed is not None
    assert (undescribed.band.id, undescribed.indicator) == ("documented-allergy", "critical")
    nausea = intolerance(Concept(text="nausea"))
    mild = finding(ctx, knowledge, "ketamine-hypersensitivity", PatientFacts(None, allergies=(nausea,)))
    assert mild is not None
    assert (mild.band.id, mild.indicator, mild.values["reaction"]) == (
        "mild-intolerance",
        "warning",
        "nausea",
    )


def statement(concept: Concept, per_day: float) -> MedicationFact:
    """An active medication statement of `per_day` units a day (the patient's own account)."""
    return replace(
        medication(concept, per_day=per_day),
        source=SourceRef("MedicationStatement", fact_id("s")),
        kind=MedicationKind.STATEMENT,
        intent=None,
    )


@pytest.mark.parametrize(
    ("kind", "note"),
    [(MedicationKind.REQUEST, "same-therapy:orders"), (MedicationKind.STATEMENT, "same-therapy:statements")],
)
def test_the_same_dose_recorded_twice_in_one_kind_of_record_is_one_therapy(
    ctx: EngineContext, knowledge: Knowledge, kind: MedicationKind, note: str
) -> None:
    # each record: 4 x 0.25 mg = 1 mg clonazepam = 20 mg diazepam-eq (Ashton: 0.5 mg = 10 mg); not 40.
    # The note says which kind of record held it twice.
    def record() -> MedicationFact:
        return (
            statement(CLONAZEPAM, 4)
            if kind is MedicationKind.STATEMENT
            else medication(CLONAZEPAM, per_day=4)
        )

    first, second = record(), record()
    found = finding(
        ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(first, second))
    )
    assert found is not None
    assert found.values["total"] == "20"
    assert [(hit.source, hit.notes) for hit in found.hits] == [
        (first.source, (note,)),
        (second.source, (f"same-therapy-as:{first.source.reference()}",)),
    ]


def test_one_therapy_in_two_statements_and_an_order_is_mixed_and_the_higher_side_counts(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # order: 4 x 0.25 mg = 1 mg = 20 mg diazepam-eq; two statements of 2 x 0.25 mg = 0.5 mg = 10 mg each,
    # one therapy stated twice. Three records in statements and orders: "mixed", not "statement and
    # order"; the order's 20 is higher than the statements' 10, so 20 is the total, not 30 or 40
    first, second = statement(CLONAZEPAM, 2), statement(CLONAZEPAM, 2)
    order = medication(CLONAZEPAM, per_day=4)
    found = finding(
        ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(first, second, order))
    )
    assert found is not None
    assert found.values["total"] == "20"
    anchor = f"same-therapy-as:{order.source.reference()}"
    assert [(hit.source, hit.notes) for hit in found.hits] == [
        (order.source, ("same-therapy:mixed", "same-therapy-highest")),
        (first.source, (anchor,)),
        (second.source, (anchor,)),
    ]


def test_a_repeated_therapy_without_a_diazepam_equivalent_leaves_the_evidence_total_unknown(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # totalled in mg of the drug itself: each order is 1 x 20 mg halazepam = 20 mg/day, one therapy
    # ordered twice (20, not 40); the Ashton table has no halazepam, so there is no diazepam-eq total
    rules = {**ctx.policy.parameters}
    rules["benzodiazepine-response"] = {
        **rules["benzodiazepine-response"],
        "basis": ResolvedParameter("drug-mg", SITE_ORIGIN),
    }
    in_mg = replace(ctx, policy=replace(ctx.policy, parameters=rules))
    halazepam = Concept(text="halazepam 20 MG Oral Tablet")
    first, second = medication(halazepam, per_day=1), medication(halazepam, per_day=1)
    found = finding(
        in_mg, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(first, second))
    )
    assert found is not None
    assert (found.values["total"], found.values["evidence_total"]) == ("20", "?")
    assert [(hit.source, hit.notes) for hit in found.hits] == [
        (first.source, ("same-therapy:orders",)),
        (second.source, (f"same-therapy-as:{first.source.reference()}",)),
    ]


def test_session_sedation_is_listed_not_counted(ctx: EngineContext, knowledge: Knowledge) -> None:
    # midazolam IV belongs to the session (its sedation): listed, and the total stays clonazepam's 20 mg
    sedation = medication(Concept(text="midazolam 2 mg IV"), draft=True)
    daily = medication(CLONAZEPAM, per_day=4)
    found = finding(
        ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(daily, sedation))
    )
    assert found is not None
    assert found.values["total"] == "20"
    assert [(hit.source, hit.notes) for hit in found.hits] == [
        (daily.source, ()),
        (sedation.source, ("given-with-session",)),
    ]


def test_a_benzodiazepine_without_an_equivalent_is_not_computable(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 1 x 20 mg halazepam a day is computed in mg, but the Ashton table gives halazepam no equivalent
    halazepam = medication(Concept(text="halazepam 20 MG Oral Tablet"), per_day=1)
    found = finding(ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(halazepam,)))
    assert found is not None
    assert (found.band.id, found.indicator) == ("dose-not-computable", "info")
    assert found.hits[0].notes == ("dose:no-equivalence",)
    assert found.hits[0].figures == "1 tablet x 1/day x 20 mg/tablet = 20 mg/day"


def test_a_medicine_stopped_before_the_reference_date_is_no_interaction(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    theophylline = medication(Concept(text="theophylline 300 MG Extended Release Oral Tablet"))
    current = finding(
        ctx, knowledge, "theophylline-seizure-threshold", PatientFacts(None, medications=(theophylline,))
    )
    assert current is not None
    assert current.indicator == "warning"
    stopped = replace(theophylline, effective_end=TODAY - timedelta(days=22))
    assert (
        finding(ctx, knowledge, "theophylline-seizure-threshold", PatientFacts(None, medications=(stopped,)))
        is None
    )


def test_data_that_could_not_be_fetched_is_named_by_category(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    gaps = (
        DataGap("MedicationStatement", "timeout"),
        DataGap("Condition", "http-500"),
        DataGap("Condition", "x"),
    )
    found = finding(ctx, knowledge, "unreadable-records", PatientFacts(None, gaps=gaps))
    assert found is not None
    assert (found.values["categories"], found.values["count"]) == ("Condition, MedicationStatement", "0")


# --------------------------------------------------------------------------------- the evidence row


MI_CODING = Coding(SNOMED, "22298006", "Myocardial infarction")


def mi_hits(ctx: EngineContext, knowledge: Knowledge, fact: ConditionFact) -> tuple[str, tuple[Hit, ...]]:
    found = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(fact,)))
    assert found is not None
    return found.band.id, found.hits


def test_a_coded_record_is_cited_with_its_code_and_its_onset(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    record = condition(MI, months_ago(2))
    assert mi_hits(ctx, knowledge, record) == (
        "within-contraindication-window",
        (
            Hit(
                source=record.source,
                label="Myocardial infarction",
                coding=MI_CODING,
                match_method="code",
                date=months_ago(2),
                date_basis="onset",
            ),
        ),
    )


def test_an_undated_record_is_cited_without_a_date_or_its_kind(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    record = condition(MI, None)
    assert mi_hits(ctx, knowledge, record) == (
        "date-unknown",
        (Hit(record.source, "Myocardial infarction", MI_CODING, "code", None, None),),
    )


def test_a_record_dated_only_when_recorded_says_so_beside_its_other_notes(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    """No onset: the recorded date stands in (and says so); each later note is added to it, not instead."""
    recorded = replace(condition(MI, None), recorded=months_ago(2))
    cases = (
        (recorded, ("recorded-date-fallback",)),
        (
            replace(recorded, onset_text="in the spring"),
            ("recorded-date-fallback", "onset-text:in the spring"),
        ),
        (replace(recorded, unreadable="onset-unreadable"), ("recorded-date-fallback", "unreadable")),
        (
            replace(recorded, concept=Concept(text="Heart attack")),
            ("recorded-date-fallback", "by-name"),
        ),
    )
    for fact, notes in cases:
        band, [hit] = mi_hits(ctx, knowledge, fact)
        assert (band, hit.date, hit.date_basis, hit.notes) == (
            "within-contraindication-window",
            months_ago(2),
            "recorded",
            notes,
        )


def test_a_record_named_in_words_is_cited_as_matched_by_name(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    record = replace(condition(MI, months_ago(2)), concept=Concept(text="Heart attack"))
    _, [hit] = mi_hits(ctx, knowledge, record)
    assert (hit.label, hit.coding, hit.match_method, hit.notes) == (
        "Heart attack",
        None,
        "name",
        ("by-name",),
    )


def test_an_onset_given_as_an_age_is_cited_as_the_age(ctx: EngineContext, knowledge: Knowledge) -> None:
    """Aged 50, born 1 Aug 1975: 1 Aug 2025 to 31 Jul 2026. The last day, 31 Jul 2026, is 3 whole months
    before 22 Nov 2026 (31 Oct is 3 months on): within 6 months. The first day is 15 months before."""
    age = OnsetAge(50, 50, "a", date(2025, 8, 1), date(2026, 7, 31))
    record = replace(
        condition(MI, date(2026, 7, 31)), onset_age=age, onset_span=(date(2025, 8, 1), date(2026, 7, 31))
    )
    found = finding(ctx, knowledge, "recent-myocardial-infarction", PatientFacts(None, conditions=(record,)))
    assert found is not None
    assert found.band.id == "within-contraindication-window"
    assert found.hits == (
        Hit(
            source=record.source,
            label="Myocardial infarction",
            coding=MI_CODING,
            match_method="code",
            date=date(2026, 7, 31),
            date_basis="onset-age",
            onset_age=age,
        ),
    )
    assert (found.values["onset"], found.values["months_ago"]) == ("2025-08-01 to 2026-07-31", "3-15")


def test_an_age_without_a_birth_date_cannot_date_the_record(ctx: EngineContext, knowledge: Knowledge) -> None:
    """Aged 50 with no birth date on file: no onset. The recorded date stands in when there is one."""
    age = OnsetAge(50, 50, "a", None, None)
    undated = replace(condition(MI, None), onset_age=age)
    band, [hit] = mi_hits(ctx, knowledge, undated)
    assert (band, hit.date, hit.notes) == ("date-unknown", None, ("onset-age-without-birth-date",))
    recorded = replace(undated, recorded=months_ago(2))
    band, [hit] = mi_hits(ctx, knowledge, recorded)
    assert (band, hit.date, hit.notes) == (
        "within-contraindication-window",
        months_ago(2),
        ("recorded-date-fallback", "onset-age-without-birth-date"),
    )


def test_a_half_life_that_just_reaches_the_threshold_is_long_acting(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    """Estazolam's half-life is 10-24 h (Ashton): its longest, 24 h, reaches the 24 h default. 1 mg twice a
    day is 2 mg x 10/1.5 = 13.33 mg/day diazepam-eq, over 8."""
    estazolam = medication(Concept(text="estazolam 1 MG Oral Tablet"), per_day=2)
    found = finding(ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=(estazolam,)))
    assert found is not None
    assert (found.band.id, found.values["total"], found.values["long_acting"]) == (
        "above-threshold-long-acting",
        "13.33",
        "estazolam",
    )


def test_an_onset_age_that_cannot_be_dated_beside_a_period_is_the_period_s_last_day_at_the_latest(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    """A record giving both an age (no birth date on file) and the period March 2026: the period's last day,
    31 Mar 2026, dates it, and the engine says it is the latest the onset can be. 31 Mar is 7 whole months
    before 22 Nov 2026 (31 Oct is 7 months on): within 12 months, not within 6."""
    resource = {
        "resourceType": "Condition",
        "id": "c-age-and-period",
        "code": {"coding": [{"system": SNOMED, "code": "22298006", "display": "Myocardial infarction"}]},
        "onsetAge": {"value": 50, "system": "http://unitsofmeasure.org", "code": "a"},
        "onsetPeriod": {"start": "2026-03-01", "end": "2026-03-31"},
    }
    found = finding(
        ctx,
        knowledge,
        "recent-myocardial-infarction",
        PatientFacts(None, conditions=(condition_fact(resource, None),)),
    )
    assert found is not None
    assert found.band.id == "within-review-window"
    assert (found.values["onset"], found.values["months_ago"]) == ("2026-03-31 at the latest", "7")


# ------------------------------------------------------------ the benzodiazepine dose, checked by hand
# Clonazepam is 0.5 mg = 10 mg diazepam in the Ashton table (the default) and 1 mg = 10 mg in VA/DoD.

CLONAZEPAM_05_CODING = Coding(RXNORM, "197527", "clonazepam 0.5 MG Oral Tablet")
CLONAZEPAM_05 = Concept((CLONAZEPAM_05_CODING,))
CLONAZEPAM_05_CODE_ONLY = Concept((Coding(RXNORM, "197527"),))  # the value set names it, the record not


def benzodiazepines(ctx: EngineContext, knowledge: Knowledge, *meds: MedicationFact) -> Finding:
    found = finding(ctx, knowledge, "benzodiazepine-response", PatientFacts(None, medications=meds))
    assert found is not None
    return found


def rows(found: Finding) -> list[tuple[SourceRef, str | None, tuple[str, ...]]]:
    """What the pharmacist reads on each record: which one, the arithmetic, the notes."""
    return [(hit.source, hit.figures, hit.notes) for hit in found.hits]


def with_dosages(med: MedicationFact, *dosages: dict[str, Any]) -> MedicationFact:
    return replace(med, dosages=dosages)


def tablets(count: float, *, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    """`count` tablets once a day, in force from `start` to `end` when given."""
    repeat: dict[str, Any] = {"frequency": 1, "period": 1, "periodUnit": "d"}
    if start or end:
        repeat["boundsPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return {
        "timing": {"repeat": repeat},
        "doseAndRate": [{"doseQuantity": {"value": count, "unit": "{tbl}"}}],
    }


def with_parameters(ctx: EngineContext, **values: str) -> EngineContext:
    parameters = {**ctx.policy.parameters}
    parameters["benzodiazepine-response"] = {
        **parameters["benzodiazepine-response"],
        **{name: ResolvedParameter(value, SITE_ORIGIN) for name, value in values.items()},
    }
    return replace(ctx, policy=replace(ctx.policy, parameters=parameters))


def test_a_coded_dose_record_is_cited_with_its_code_its_authored_date_and_its_arithmetic(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # order authored 1 Sep: 2 x 0.5 mg = 1 mg = 20 mg diazepam-eq; undated statement: 1 x 0.5 mg = 0.5 mg
    # = 10 mg diazepam-eq, the same therapy told from the other side: the order's 20 is counted
    order = replace(medication(CLONAZEPAM_05, per_day=2), recorded=date(2026, 9, 1))
    told = statement(CLONAZEPAM_05, 1)
    found = benzodiazepines(ctx, knowledge, order, told)
    assert found.values["total"] == "20"
    label = "clonazepam 0.5 MG Oral Tablet"
    assert found.hits == (
        Hit(
            source=order.source,
            label=label,
            coding=CLONAZEPAM_05_CODING,
            match_method="code",
            date=date(2026, 9, 1),
            date_basis="authored",
            figures="2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day = 20 mg/day diazepam-eq",
            notes=("same-therapy:statement-and-order", "same-therapy-highest"),
        ),
        Hit(
            source=told.source,
            label=label,
            coding=CLONAZEPAM_05_CODING,
            match_method="code",
            date=None,
            date_basis=None,
            figures="1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day = 10 mg/day diazepam-eq",
            notes=(f"same-therapy-as:{order.source.reference()}",),
        ),
    )


def test_a_statement_derived_from_an_order_on_the_chart_is_listed_and_the_order_counted(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the order: 2 x 0.25 mg = 0.5 mg = 10 mg diazepam-eq. The statement derived from it says 4 x 0.25 mg
    # (20): it is the order's therapy, listed, never the higher side. A statement derived from an order
    # that is not on the chart stands alone: diazepam 1 x 5 mg = 5 mg = 5 mg diazepam-eq. Total 10 + 5.
    order = medication(CLONAZEPAM, per_day=2)
    derived = replace(statement(CLONAZEPAM, 4), derived_from=(order.source.reference(),))
    alone = replace(
        statement(Concept(text="diazepam 5 MG Oral Tablet"), 1),
        derived_from=("MedicationRequest/not-fetched",),
    )
    found = benzodiazepines(ctx, knowledge, order, derived, alone)
    assert found.values["total"] == "15"
    assert [(source, notes) for source, _, notes in rows(found)] == [
        (order.source, ()),
        (alone.source, ()),
        (derived.source, (f"same-therapy-as:{order.source.reference()}",)),
    ]


def test_records_no_longer_current_on_the_reference_date_are_listed_with_when_they_ended(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 22 Nov 2026 is the reference date. A statement whose period ends that day is still taken that day:
    # 4 x 0.25 mg = 1 mg = 20 mg diazepam-eq, counted. One that ended on 21 Nov is past use, and so is an
    # order whose only dated instruction ran 1 Sep to 31 Oct: listed, neither adds to the 20.
    today = replace(statement(CLONAZEPAM, 4), effective_end=TODAY)
    yesterday = replace(statement(CLONAZEPAM, 2), effective_end=TODAY - timedelta(days=1))
    phased = with_dosages(medication(CLONAZEPAM), tablets(6, start="2026-09-01", end="2026-10-31"))
    found = benzodiazepines(ctx, knowledge, today, yesterday, phased)
    assert found.values["total"] == "20"
    assert rows(found) == [
        (today.source, "4 tablet x 1/day x 0.25 mg/tablet = 1 mg/day = 20 mg/day diazepam-eq", ()),
        (yesterday.source, None, ("ended:2026-11-21",)),
        (phased.source, "every phase ended by 2026-10-31", ("phases-ended",)),
    ]


def test_midazolam_or_remimazolam_for_the_session_is_listed_as_given_with_it(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an order naming both session sedatives belongs to the session as much as one naming either
    daily = medication(CLONAZEPAM, per_day=4)
    sedation = medication(Concept(text="midazolam or remimazolam IV for sedation"), draft=True)
    found = benzodiazepines(ctx, knowledge, daily, sedation)
    assert found.values["total"] == "20"
    assert [(source, notes) for source, _, notes in rows(found)] == [
        (daily.source, ()),
        (sedation.source, ("given-with-session",)),
    ]


@pytest.mark.parametrize(
    ("dosages", "total", "figures", "notes"),
    [
        # 2 x 0.5 mg (the value set's name for 197527) = 1 mg = 20 mg diazepam-eq
        (
            (tablets(2),),
            "20",
            "2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day = 20 mg/day diazepam-eq",
            ("strength-from-code-name",),
        ),
        # on 22 Nov only the phase from 1 Nov holds: 1 x 0.5 mg = 0.5 mg = 10, not both phases (6 tablets)
        (
            (tablets(5, start="2026-09-01", end="2026-10-31"), tablets(1, start="2026-11-01")),
            "10",
            "in force on 2026-11-22 (from 2026-11-01): 1 tablet x 1/day x 0.5 mg/tablet = 0.5 mg/day"
            " = 10 mg/day diazepam-eq",
            ("strength-from-code-name",),
        ),
        # no dosage at all: the code's name cannot help, and is not said to
        ((), "0", None, ("dose:no-dosage",)),
        # the name gives the strength, but "1 tablet" says not how often
        (
            ({"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "{tbl}"}}]},),
            "0",
            None,
            ("strength-from-code-name", "dose:no-frequency"),
        ),
    ],
)
def test_a_product_code_alone_is_dosed_through_the_value_set_s_name_for_it(
    ctx: EngineContext,
    knowledge: Knowledge,
    dosages: tuple[dict[str, Any], ...],
    total: str,
    figures: str | None,
    notes: tuple[str, ...],
) -> None:
    record = with_dosages(medication(CLONAZEPAM_05_CODE_ONLY), *dosages)
    found = benzodiazepines(ctx, knowledge, record)
    assert found.values["total"] == total
    assert rows(found) == [(record.source, figures, notes)]


def test_the_equivalence_table_the_site_chose_converts_every_dose(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # VA/DoD: clonazepam 1 mg = 10 mg diazepam. 4 x 0.25 mg = 1 mg/day = 10 mg/day diazepam-eq (Ashton
    # would say 20), both as the total and, when totalled in drug mg, as the evidence total.
    record = medication(CLONAZEPAM, per_day=4)
    va_dod = benzodiazepines(with_parameters(ctx, equivalence_table="va_dod"), knowledge, record)
    assert (va_dod.values["total"], va_dod.values["evidence_total"]) == ("10", "10")
    assert rows(va_dod) == [
        (record.source, "4 tablet x 1/day x 0.25 mg/tablet = 1 mg/day = 10 mg/day diazepam-eq", ())
    ]
    in_mg = benzodiazepines(
        with_parameters(ctx, equivalence_table="va_dod", basis="drug-mg"), knowledge, record
    )
    assert (in_mg.band.id, in_mg.values["total"], in_mg.values["evidence_total"]) == (
        "above-evidence-level",
        "1",
        "10",
    )
    assert rows(in_mg) == [(record.source, "4 tablet x 1/day x 0.25 mg/tablet = 1 mg/day", ())]


def test_a_basis_the_card_text_gives_no_words_for_is_written_as_its_name(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    record = medication(CLONAZEPAM, per_day=4)
    unnamed = replace(ctx, dose_units={"drug-mg": "mg/day"})
    found = benzodiazepines(unnamed, knowledge, record)
    assert rows(found) == [
        (record.source, "4 tablet x 1/day x 0.25 mg/tablet = 1 mg/day = 20 diazepam-equivalent", ())
    ]


def test_an_as_needed_maximum_is_shown_in_mg_of_the_drug_and_not_converted(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # at most 4 x 0.25 mg a day as needed: 1 mg/day at most, listed; no diazepam-eq figure, no total
    prn = {
        "asNeededBoolean": True,
        "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "{tbl}"}}],
        "maxDosePerPeriod": {
            "numerator": {"value": 4, "unit": "{tbl}"},
            "denominator": {"value": 1, "unit": "d"},
        },
    }
    record = with_dosages(medication(CLONAZEPAM), prn)
    found = benzodiazepines(ctx, knowledge, record)
    assert (found.band.id, found.values["total"]) == ("as-needed-only", "0")
    assert rows(found) == [
        (record.source, "as needed, at most 4 tablet per 1 d x 0.25 mg/tablet = 1 mg/day", ("as-needed",))
    ]


@pytest.fixture(scope="module")
def other_names(tmp_path_factory: pytest.TempPathFactory) -> Knowledge:
    """The shipped knowledge with three more product codes in the benzodiazepine value set, named as other
    sources name products: not at all, by a brand only, and as a dose form without a strength."""
    root = tmp_path_factory.mktemp("other-names")
    for folder in ("hooks", "rules", "fhir_profiles"):
        shutil.copytree(ROOT / folder, root / folder)
    path = root / "fhir_profiles" / "valuesets" / "benzodiazepine-medications.json"
    valueset = json.loads(path.read_text(encoding="utf-8"))
    valueset["expansion"]["contains"] += [
        {"system": RXNORM, "code": "99000001"},
        {"system": RXNORM, "code": "99000002", "display": "Klonopin 0.5 MG Oral Tablet"},
        {"system": RXNORM, "code": "99000003", "display": "clonazepam Oral Tablet"},
    ]
    path.write_text(json.dumps(valueset), encoding="utf-8")
    return load_knowledge(root=root)


@pytest.mark.parametrize(
    ("code", "total", "figures", "notes"),
    [
        # in the class by its code, but no name says which benzodiazepine: no dose can be worked out
        ("99000001", "0", None, ("dose:no-strength",)),
        # Klonopin is clonazepam's brand: 2 x 0.5 mg = 1 mg = 20 mg diazepam-eq
        (
            "99000002",
            "20",
            "2 tablet x 1/day x 0.5 mg/tablet = 1 mg/day = 20 mg/day diazepam-eq",
            ("strength-from-code-name",),
        ),
        # the name says clonazepam tablets but no strength: read, and no wiser, so not said to be used
        ("99000003", "0", None, ("dose:no-strength",)),
    ],
)
def test_a_product_code_named_otherwise_in_the_value_set_is_dosed_only_as_far_as_its_name_tells(
    other_names: Knowledge, code: str, total: str, figures: str | None, notes: tuple[str, ...]
) -> None:
    record = with_dosages(medication(Concept((Coding(RXNORM, code),))), tablets(2))
    found = benzodiazepines(other_names.engine_context(), other_names, record)
    assert found.values["total"] == total
    assert rows(found) == [(record.source, figures, notes)]


# ------------------------------------------------------------------------ what the card's values say


EPILEPSY_CODING = Coding("http://hl7.org/fhir/sid/icd-10-cm", "G40", "Epilepsy and recurrent seizures")
EPILEPSY = Concept((EPILEPSY_CODING,))
BENZODIAZEPINES = VALUESET + "benzodiazepine-medications"


def epilepsy(onset: date | None, recorded: date | None, *, verification: str | None = None) -> ConditionFact:
    return ConditionFact(
        SourceRef("Condition", fact_id("c")), EPILEPSY, "active", verification, onset, recorded
    )


def test_the_indication_is_cited_with_its_code_and_the_onset_else_the_recorded_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 4 x 0.25 mg clonazepam = 1 mg = 20 mg/day diazepam-eq, over 8: with a seizure disorder on record the
    # antiepileptic band holds. A refuted epilepsy first in the list does not count and does not stop the
    # search; the next two are cited, one by its onset (not its later recorded date), one by its recorded
    # date since it has no onset. The indication named is the first counted: its display.
    refuted = epilepsy(date(2018, 1, 1), date(2018, 1, 2), verification="refuted")
    onset = epilepsy(date(2019, 3, 4), date(2020, 1, 10))
    recorded = epilepsy(None, date(2021, 5, 6))
    daily = medication(CLONAZEPAM, per_day=4)
    facts = PatientFacts(None, medications=(daily,), conditions=(refuted, onset, recorded))
    found = finding(ctx, knowledge, "benzodiazepine-response", facts)
    assert found is not None
    assert (found.band.id, found.values["indication"]) == (
        "antiepileptic-above-threshold",
        "Epilepsy and recurrent seizures",
    )
    assert [hit.source for hit in found.hits] == [daily.source, onset.source, recorded.source]
    assert found.hits[1:] == (
        Hit(
            source=onset.source,
            label="Epilepsy and recurrent seizures",
            coding=EPILEPSY_CODING,
            match_method="code",
            date=date(2019, 3, 4),
            date_basis="onset",
        ),
        Hit(
            source=recorded.source,
            label="Epilepsy and recurrent seizures",
            coding=EPILEPSY_CODING,
            match_method="code",
            date=date(2021, 5, 6),
            date_basis="recorded",
        ),
    )


def test_a_dose_rule_with_indication_conditions_only_still_looks_for_them(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    template = rule(knowledge, "benzodiazepine-response")
    assert template.dose is not None
    conditions_only = replace(template, dose=replace(template.dose, indication_ingredients=frozenset()))
    facts = PatientFacts(
        None, medications=(medication(CLONAZEPAM, per_day=4),), conditions=(epilepsy(None, None),)
    )
    found = evaluate_rule(ctx, conditions_only, facts, situation())
    assert found is not None
    assert (found.band.id, found.values["indication"]) == (
        "antiepileptic-above-threshold",
        "Epilepsy and recurrent seizures",
    )


def test_a_dose_rule_over_two_value_sets_counts_the_members_of_both(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # clonazepam is in the first set only: 4 x 0.25 mg = 1 mg = 20 mg/day diazepam-eq, still counted
    template = rule(knowledge, "benzodiazepine-response")
    assert template.dose is not None
    wider = replace(
        template,
        dose=replace(template.dose, match=(BENZODIAZEPINES, VALUESET + "lamotrigine-medications")),
    )
    record = medication(CLONAZEPAM, per_day=4)
    found = evaluate_rule(ctx, wider, PatientFacts(None, medications=(record,)), situation())
    assert found is not None
    assert found.values["total"] == "20"
    assert rows(found) == [
        (record.source, "4 tablet x 1/day x 0.25 mg/tablet = 1 mg/day = 20 mg/day diazepam-eq", ())
    ]


def test_a_basis_without_words_is_named_as_itself_in_the_card_s_units(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    unnamed = replace(ctx, dose_units={"drug-mg": "mg/day"})
    found = benzodiazepines(unnamed, knowledge, medication(CLONAZEPAM, per_day=4))
    assert (found.values["total"], found.values["basis_unit"], found.values["evidence_unit"]) == (
        "20",
        "diazepam-equivalent",
        "diazepam-equivalent",
    )


def test_parameters_are_written_in_the_card_values_as_a_person_reads_them(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    found = benzodiazepines(ctx, knowledge, medication(CLONAZEPAM, per_day=4))
    assert (found.values["threshold"], found.values["hold_hours_before"]) == ("8", "24-48")
    assert found.values["basis"] == "diazepam-equivalent"
    order = medication(KETAMINE, draft=True)
    ordered = situation(hook="order-select", ketamine_orders=(order,))
    instructions = rule(knowledge, "ordering-instructions")
    found = evaluate_rule(ctx, instructions, PatientFacts(None, medications=(order,)), ordered)
    assert found is not None
    assert (found.values["enabled"], found.values["solids_hours"]) == ("on", "6")
    # the order behind the session card is cited by its name
    assert found.hits == (Hit(source=order.source, label="ketamine"),)
    # a switch set to false is written "off" where a rule shows it without being gated by it
    ungated = replace(instructions, bands=tuple(replace(b, when={}) for b in instructions.bands))
    parameters = {**ctx.policy.parameters}
    parameters["ordering-instructions"] = {
        **parameters["ordering-instructions"],
        "enabled": ResolvedParameter(False, SITE_ORIGIN),
    }
    switched_off = replace(ctx, policy=replace(ctx.policy, parameters=parameters))
    found = evaluate_rule(switched_off, ungated, PatientFacts(None, medications=(order,)), ordered)
    assert found is not None
    assert found.values["enabled"] == "off"


def test_a_procedure_rule_is_run_only_when_ketamine_is_ordered(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    as_procedure = replace(rule(knowledge, "recent-myocardial-infarction"), category="procedure")
    order = medication(KETAMINE, draft=True)
    facts = PatientFacts(None, conditions=(condition(MI, months_ago(2)),))
    assert evaluate(ctx, [as_procedure], facts, situation()) == []
    ordered = situation(hook="order-select", ketamine_orders=(order,))
    assert [f.rule.id for f in evaluate(ctx, [as_procedure], facts, ordered)] == [
        "recent-myocardial-infarction"
    ]


def test_the_card_names_the_condition_and_the_substance_as_recorded(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    found = finding(
        ctx,
        knowledge,
        "recent-myocardial-infarction",
        PatientFacts(None, conditions=(condition(MI, months_ago(2)),)),
    )
    assert found is not None
    assert found.values["condition"] == "Myocardial infarction"
    # a refuted allergy listed first does not end the search: the active one behind it is the finding
    refuted = AllergyFact(SourceRef("AllergyIntolerance", fact_id("a")), (KETAMINE,), "active", "refuted")
    active = AllergyFact(SourceRef("AllergyIntolerance", fact_id("a")), (KETAMINE,), "active", None)
    found = finding(
        ctx, knowledge, "ketamine-hypersensitivity", PatientFacts(None, allergies=(refuted, active))
    )
    assert found is not None
    assert [hit.source for hit in found.hits] == [active.source]
    assert found.values["substance"] == "ketamine"


def test_a_diastolic_only_reading_is_shown_with_its_systolic_unknown(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a diastolic of 112.5 (no systolic) taken 19 Nov 2026, paired with a second record: 112.5 >= 110 is
    # the severe band; both records are cited with the reading and the day it was taken
    partner = SourceRef("Observation", fact_id("bp"))
    reading = BloodPressureFact(
        SourceRef("Observation", fact_id("bp")),
        datetime(2026, 11, 19, 8, 30),
        None,
        112.5,
        partners=(partner,),
    )
    found = finding(ctx, knowledge, "elevated-blood-pressure", PatientFacts(None, blood_pressures=(reading,)))
    assert found is not None
    assert found.band.id == "severe-reading"
    assert (found.values["systolic"], found.values["diastolic"], found.values["reading_date"]) == (
        "?",
        "112.5",
        "2026-11-19",
    )
    assert found.hits == tuple(
        Hit(source=source, label=None, date=date(2026, 11, 19), date_basis="taken", figures="?/112.5 mmHg")
        for source in (reading.source, partner)
    )


def test_a_statement_of_an_order_on_the_chart_is_one_record_of_a_medicine_in_use(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    theophylline = Concept(text="theophylline 300 MG Extended Release Oral Tablet")
    order = medication(theophylline)
    told = replace(statement(theophylline, 1), derived_from=(order.source.reference(),))
    alone = replace(statement(theophylline, 1), derived_from=("MedicationRequest/not-fetched",))
    facts = PatientFacts(None, medications=(order, told, alone))
    found = finding(ctx, knowledge, "theophylline-seizure-threshold", facts)
    assert found is not None
    assert [hit.source for hit in found.hits] == [order.source, alone.source]


def test_the_unreadable_records_finding_lists_each_record_by_its_name_once(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an unknown code with no name is cited by its code; "possible TIA; possible MI" leaves two names in
    # doubt, but the record is listed once, with the first of them
    unknown = condition(Concept((Coding(SNOMED, "1234567000"),)), None)
    doubtful = condition(Concept(text="possible TIA; possible MI"), None)
    found = finding(ctx, knowledge, "unreadable-records", PatientFacts(None, conditions=(unknown, doubtful)))
    assert found is not None
    assert found.hits == (
        Hit(source=unknown.source, label="1234567000", notes=("unreadable:code-not-recognised",)),
        Hit(source=doubtful.source, label="possible TIA; possible MI", notes=("unconfirmed-name:tia",)),
    )
    assert found.values["count"] == "2"


def test_a_value_just_below_zero_is_written_0_not_minus_0() -> None:
    assert fmt_number(-0.001) == "0"


# ------------------------------------------------- dose bands, indication and long-acting values by hand
THEOPHYLLINE = VALUESET + "theophylline-medications"


def test_an_undated_indication_named_in_words_is_cited_by_name_without_a_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 4 x 0.25 mg clonazepam = 20 mg/day diazepam-eq, over 8, beside "Epilepsy" written in words with no
    # onset and no recorded date: the antiepileptic band, the condition cited as matched by name, undated
    words = ConditionFact(
        SourceRef("Condition", fact_id("c")), Concept(text="Epilepsy"), "active", None, None, None
    )
    daily = medication(CLONAZEPAM, per_day=4)
    found = finding(
        ctx,
        knowledge,
        "benzodiazepine-response",
        PatientFacts(None, medications=(daily,), conditions=(words,)),
    )
    assert found is not None
    assert (found.band.id, found.values["indication"]) == ("antiepileptic-above-threshold", "Epilepsy")
    cited = found.hits[1]
    assert (cited.source, cited.match_method, cited.date, cited.date_basis, cited.notes) == (
        words.source,
        "name",
        None,
        None,
        ("by-name",),
    )


def test_a_regular_dose_with_no_indication_states_the_indication_unknown_and_names_its_bases(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 4 x 0.25 mg clonazepam = 20 mg/day diazepam-eq, over 8 (clonazepam's half-life, 18-50 h, reaches
    # 24): no seizure disorder, so the card's indication is "?"; the basis and the equivalence table
    # decided the total, so both are reported as parameters used
    found = benzodiazepines(ctx, knowledge, medication(CLONAZEPAM, per_day=4))
    assert (found.band.id, found.values["indication"]) == ("above-threshold-long-acting", "?")
    assert {"basis", "equivalence_table"} <= set(found.parameters_used)


def test_every_long_acting_benzodiazepine_is_named_with_the_longest_half_life(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # clonazepam 4 x 0.25 mg = 1 mg = 20 mg/day diazepam-eq (half-life 18-50 h); diazepam 1 x 5 mg =
    # 5 mg/day (20-100 h, 36-200 h with its metabolite). 25 over 8, both reach 24 h: named in order,
    # and the longest half-life is diazepam's metabolite's 200 h
    found = benzodiazepines(
        ctx,
        knowledge,
        medication(CLONAZEPAM, per_day=4),
        medication(Concept(text="diazepam 5 MG Oral Tablet"), per_day=1),
    )
    assert (found.band.id, found.values["total"]) == ("above-threshold-long-acting", "25")
    assert (found.values["long_acting"], found.values["half_life_hours"]) == ("clonazepam, diazepam", "200")


def test_a_dose_exactly_at_the_evidence_level_is_at_most_the_evidence_level(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # diazepam 4 x 2 mg = 8 mg/day = 8 mg/day diazepam-eq: not over the threshold of 8, not over the
    # evidence's 8, at most 8
    found = benzodiazepines(ctx, knowledge, medication(Concept(text="diazepam 2 MG Oral Tablet"), per_day=4))
    assert (found.band.id, found.values["total"], found.values["evidence_total"]) == (
        "regular-below-threshold",
        "8",
        "8",
    )


def test_a_dose_in_mg_of_a_drug_without_an_equivalent_is_not_comparable_with_the_evidence(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # totalled in mg of the drug, threshold 100: 1 x 20 mg halazepam = 20 mg/day, at most 100; the
    # Ashton table gives halazepam no equivalent, so its evidence total is unknown: not "at most 8"
    in_mg = with_parameters(ctx, basis="drug-mg", threshold="100")
    halazepam = medication(Concept(text="halazepam 20 MG Oral Tablet"), per_day=1)
    found = benzodiazepines(in_mg, knowledge, halazepam)
    assert (found.band.id, found.values["total"], found.values["evidence_total"]) == (
        "regular-not-comparable",
        "20",
        "?",
    )


def test_as_needed_only_means_no_regular_and_no_uncomputed_dose(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a rule with the as-needed band alone: as-needed clonazepam holds it; beside a regular 20 mg/day, or
    # beside a record with no dose at all, the use is not as needed only
    template = rule(knowledge, "benzodiazepine-response")
    only = replace(template, bands=tuple(b for b in template.bands if b.id == "as-needed-only"))
    prn = {
        "asNeededBoolean": True,
        "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "{tbl}"}}],
    }
    as_needed = with_dosages(medication(CLONAZEPAM), prn)

    def band(*meds: MedicationFact) -> str | None:
        found = evaluate_rule(ctx, only, PatientFacts(None, medications=meds), situation())
        return None if found is None else found.band.id

    assert band(as_needed) == "as-needed-only"
    assert band(as_needed, medication(CLONAZEPAM, per_day=4)) is None
    assert band(as_needed, medication(CLONAZEPAM)) is None


def test_the_first_dose_band_that_holds_answers_even_before_a_more_severe_one(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # bands reordered: regular use (information) before above-threshold (warning). 20 mg/day holds both;
    # the dose describes one total, so the first is the answer
    template = rule(knowledge, "benzodiazepine-response")
    by_id = {b.id: b for b in template.bands}
    reordered = replace(template, bands=(by_id["regular-not-comparable"], by_id["above-threshold"]))
    facts = PatientFacts(None, medications=(medication(CLONAZEPAM, per_day=4),))
    found = evaluate_rule(ctx, reordered, facts, situation())
    assert found is not None
    assert (found.band.id, found.indicator) == ("regular-not-comparable", "info")


def test_a_medicine_counts_for_the_first_presence_band_it_meets_and_later_bands_still_run(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # band 1 (information): theophylline; band 2 (warning): theophylline or a benzodiazepine. The
    # theophylline order counts for band 1 only; band 2 is met by the clonazepam order, and wins as the
    # more severe, with the theophylline listed below it
    template = rule(knowledge, "theophylline-seizure-threshold")
    [in_use] = template.bands
    listed = replace(in_use, id="listed", indicator="info")
    wider = replace(in_use, match=(THEOPHYLLINE, BENZODIAZEPINES))
    two = replace(template, bands=(listed, wider))
    theophylline = medication(Concept(text="theophylline 300 MG Extended Release Oral Tablet"))
    clonazepam = medication(CLONAZEPAM)
    found = evaluate_rule(ctx, two, PatientFacts(None, medications=(theophylline, clonazepam)), situation())
    assert found is not None
    assert (found.band.id, [h.source for h in found.hits]) == ("in-use", [clonazepam.source])
    assert [h.source for h in found.other_hits] == [theophylline.source]


def test_a_stopped_medicine_is_passed_over_and_the_current_ones_named_in_order(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the first theophylline ended 21 days ago: passed over, the next two are current and both named,
    # alphabetically, joined by "; "
    stopped = replace(
        medication(Concept(text="theophylline 300 MG Extended Release Oral Tablet")),
        effective_end=TODAY - timedelta(days=21),
    )
    slow = medication(Concept(text="theophylline 300 MG Extended Release Oral Tablet"))
    small = medication(Concept(text="theophylline 100 MG Extended Release Oral Tablet"))
    found = finding(
        ctx,
        knowledge,
        "theophylline-seizure-threshold",
        PatientFacts(None, medications=(stopped, slow, small)),
    )
    assert found is not None
    assert [h.source for h in found.hits] == [slow.source, small.source]
    assert found.values["medication"] == (
        "theophylline 100 MG Extended Release Oral Tablet; theophylline 300 MG Extended Release Oral Tablet"
    )


def test_an_allergy_counts_for_every_substance_it_names_in_record_order(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the first allergy names ketamine then penicillin: still a ketamine allergy. A band over two value
    # sets lists both ketamine allergies in record order
    first = AllergyFact(
        SourceRef("AllergyIntolerance", fact_id("a")), (KETAMINE, Concept(text="penicillin")), "active", None
    )
    second = AllergyFact(SourceRef("AllergyIntolerance", fact_id("a")), (KETAMINE,), "active", None)
    template = rule(knowledge, "ketamine-hypersensitivity")
    documented = next(b for b in template.bands if b.id == "documented-allergy")
    wider = replace(
        template,
        bands=(replace(documented, match=(*documented.match, VALUESET + "ketamine-allergy-condition")),),
    )
    found = evaluate_rule(ctx, wider, PatientFacts(None, allergies=(first, second)), situation())
    assert found is not None
    assert (found.band.id, [h.source for h in found.hits]) == (
        "documented-allergy",
        [first.source, second.source],
    )
    alone = finding(ctx, knowledge, "ketamine-hypersensitivity", PatientFacts(None, allergies=(first,)))
    assert alone is not None
    assert alone.band.id == "documented-allergy"


def test_the_switch_that_gates_a_band_is_not_reported_as_a_parameter_used(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the ketamine session band is gated by "enabled" and its text quotes the two fasting times only
    order = medication(KETAMINE, draft=True)
    ordered = situation(hook="order-select", ketamine_orders=(order,))
    found = evaluate_rule(
        ctx, rule(knowledge, "ordering-instructions"), PatientFacts(None, medications=(order,)), ordered
    )
    assert found is not None
    assert found.parameters_used == ("solids_hours", "clear_liquids_hours")


def test_a_band_of_a_dose_rule_with_no_dose_condition_lists_its_records_without_a_total(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a band over the benzodiazepine value set that asks nothing of the dose: the clonazepam order is
    # listed as a record in use, with no arithmetic and no total on the card
    template = rule(knowledge, "benzodiazepine-response")
    listing = replace(template.bands[-1], id="listed", when={}, match=(BENZODIAZEPINES,))
    record = medication(CLONAZEPAM, per_day=4)
    found = evaluate_rule(
        ctx, replace(template, bands=(listing,)), PatientFacts(None, medications=(record,)), situation()
    )
    assert found is not None
    assert rows(found) == [(record.source, None, ())]
    assert "total" not in found.values


def test_a_condition_met_by_a_milder_band_first_is_not_counted_again_by_a_severer_one(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # bands reordered: within 12 months (warning) before within 6 months (critical). An infarction 2
    # months ago meets the first and counts there only: the card is the warning, nothing else listed
    template = rule(knowledge, "recent-myocardial-infarction")
    by_id = {b.id: b for b in template.bands}
    reordered = replace(
        template, bands=(by_id["within-review-window"], by_id["within-contraindication-window"])
    )
    recent = condition(MI, months_ago(2))
    found = evaluate_rule(ctx, reordered, PatientFacts(None, conditions=(recent,)), situation())
    assert found is not None
    assert (found.band.id, found.indicator, found.other_hits) == ("within-review-window", "warning", ())


def test_an_order_shown_by_a_session_band_still_counts_as_a_medicine_in_use(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the ketamine session band (information) shows the ordered ketamine; a presence band (warning) over
    # the ketamine substances after it still finds the same order, and as the more severe it answers
    instructions = rule(knowledge, "ordering-instructions")
    session = next(b for b in instructions.bands if b.id == "ketamine")
    [in_use] = rule(knowledge, "theophylline-seizure-threshold").bands
    presence = replace(in_use, id="ketamine-in-use", match=(VALUESET + "ketamine-substances",))
    two = replace(instructions, bands=(session, presence))
    order = medication(KETAMINE, draft=True)
    ordered = situation(hook="order-select", ketamine_orders=(order,))
    found = evaluate_rule(ctx, two, PatientFacts(None, medications=(order,)), ordered)
    assert found is not None
    assert (found.band.id, [h.source for h in found.hits]) == ("ketamine-in-use", [order.source])
