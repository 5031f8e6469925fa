"""Cards from findings: the frame around a rule's text, the suggestions, and what a card leaves out.

Findings come from the engine on typed facts (tests/support/facts.py); rules, card text and policy are the
shipped ones. Every expected date, hour and sentence is written here by hand from rules/card-text.yaml,
the rule files and the site policy defaults (sessions at 09:00, a 24-48 h hold, resume 6 h after).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any

import pytest

from cds.clinical.cards import (
    CardInputs,
    CardLinks,
    CardText,
    RenderedCard,
    _Renderer,
    onset_age_text,
    render,
)
from cds.clinical.engine import EngineContext, evaluate
from cds.clinical.knowledge import Knowledge
from cds.clinical.policy import SITE_ORIGIN, ResolvedParameter
from cds.clinical.rules import Rule
from cds.fhir.model import (
    BloodPressureFact,
    Coding,
    Concept,
    ConditionFact,
    DataGap,
    MedicationFact,
    OnsetAge,
    PatientFacts,
    SourceRef,
)
from tests.support.builders import RXNORM, SNOMED
from tests.support.facts import KETAMINE, MI, STROKE, condition, medication, situation

# 4 x 0.25 mg = 1 mg alprazolam a day = 20 mg diazepam-eq (Ashton: 0.5 mg = 10 mg): over 8, and short-acting
ALPRAZOLAM = Concept((Coding(RXNORM, "308047", "alprazolam 0.25 MG Oral Tablet"),))
MI_RULE = "recent-myocardial-infarction"
BENZO_RULE = "benzodiazepine-response"
BENZO_SUMMARY = "Benzodiazepines 20 mg/day diazepam-eq (over 8 mg/day diazepam-eq)"


@pytest.fixture(scope="module")
def ctx(knowledge: Knowledge) -> EngineContext:
    return knowledge.engine_context()


def render_chart(
    ctx: EngineContext,
    knowledge: Knowledge,
    facts: PatientFacts,
    screen: Any,
    *,
    rules: Sequence[Rule] | None = None,
    text: CardText | None = None,
    **inputs: Any,
) -> list[RenderedCard]:
    """The chart screened with `rules` (the shipped ones unless given) and worded with `text`."""
    findings = evaluate(ctx, knowledge.rules if rules is None else rules, facts, screen)
    return render(
        findings,
        CardInputs(situation=screen, facts=inputs.pop("with_facts", facts), **inputs),
        ctx=ctx,
        text=knowledge.card_text if text is None else text,
        override_catalogue=knowledge.override_reasons,
        new_uuid=lambda: "uuid",
    )


def cards(
    ctx: EngineContext, knowledge: Knowledge, facts: PatientFacts, screen: Any, **inputs: Any
) -> list[dict[str, Any]]:
    return [r.card for r in render_chart(ctx, knowledge, facts, screen, **inputs)]


def ketamine_order(order_id: str, planned: date) -> MedicationFact:
    return replace(
        medication(KETAMINE, draft=True),
        source=SourceRef("MedicationRequest", order_id),
        planned_start=planned,
    )


def ordered_for(planned: date, *orders: MedicationFact, hook: str = "order-select") -> Any:
    """A screen at `hook` on 22 Nov 2026 for a session the order plans on `planned`."""
    return situation(
        hook=hook,
        reference_date=planned,
        reference_from_order=True,
        ketamine_orders=orders or (ketamine_order("ket1", planned),),
    )


def card_of(all_cards: list[dict[str, Any]], summary_start: str) -> dict[str, Any]:
    found = [c for c in all_cards if c["summary"].startswith(summary_start)]
    assert len(found) == 1, [c["summary"] for c in all_cards]
    return found[0]


# ------------------------------------------------------------------------------- a hold that is too late


@pytest.mark.parametrize(
    ("planned", "summary_end", "plan", "asked", "occurrence"),
    [
        (
            # session 23 Nov 09:00: the 48 h hold needed the last dose by 21 Nov 09:00 (gone); the 24 h one
            # needs it by 22 Nov 09:00, today: "late"
            date(2026, 11, 23),
            "too late for a 48 h hold before 23 Nov: discuss with the prescriber",
            "Too late for a 48 h hold before the session at 09:00 on 23 Nov: discuss with the "
            "prescriber. A 24 h hold needs the last dose by 09:00 today; resume from 15:00 on 23 Nov (6 h "
            "after the start).",
            "Planned ketamine session 09:00 on 23 Nov. A 48 h benzodiazepine hold is no longer possible. "
            "Please advise whether the benzodiazepine (alprazolam 0.25 MG Oral Tablet) can be held for "
            "24 h (last dose by 09:00 today, resume from 15:00 on 23 Nov) or the session should move. Do "
            "not stop a regular benzodiazepine abruptly.",
            "2026-11-23",
        ),
        (
            # session today at 09:00: even the 24 h hold (last dose by 21 Nov 09:00) is gone: "too late"
            date(2026, 11, 22),
            "too late for a 48 h hold before 22 Nov: discuss with the prescriber",
            "Too late for a 48 h hold before the session at 09:00 today: discuss with the prescriber "
            "(move the session, or go ahead without a hold); if held, resume from 15:00 today.",
            "Planned ketamine session 09:00 today. A 48 h benzodiazepine hold is no longer possible. Please "
            "advise whether the session should move or go ahead without a hold (alprazolam 0.25 MG Oral "
            "Tablet). Do not stop a regular benzodiazepine abruptly.",
            "2026-11-22",
        ),
    ],
)
def test_a_hold_too_late_to_keep_is_never_given_a_past_time(
    ctx: EngineContext,
    knowledge: Knowledge,
    planned: date,
    summary_end: str,
    plan: str,
    asked: str,
    occurrence: str,
) -> None:
    # two records of the same therapy by one prescriber: both are what the request is about; one recipient
    first, again = medication(ALPRAZOLAM, per_day=4), medication(ALPRAZOLAM, per_day=4)
    prescriber = {"requester": {"reference": "Practitioner/dr1"}}
    resources = {first.source.reference(): prescriber, again.source.reference(): prescriber}
    facts = PatientFacts("Patient/p1", medications=(first, again))
    card = card_of(cards(ctx, knowledge, facts, ordered_for(planned), resources=resources), "Benzodiazepines")
    assert card["summary"] == f"{BENZO_SUMMARY}: {summary_end}"
    assert plan in card["detail"]
    [suggestion] = card["suggestions"]
    assert suggestion["label"] == "Ask the prescriber to confirm the hold plan"
    assert suggestion["actions"][0]["resource"] == {
        "resourceType": "CommunicationRequest",
        "status": "draft",
        "priority": "routine",
        "payload": [{"contentString": asked}],
        "about": [{"reference": first.source.reference()}, {"reference": again.source.reference()}],
        "subject": {"reference": "Patient/p1"},
        "recipient": [{"reference": "Practitioner/dr1"}],
        "occurrenceDateTime": occurrence,
    }


@pytest.mark.parametrize(
    ("planned", "summary_end", "plan", "asked"),
    [
        (
            # session 1 Dec 09:00: a 48 h hold puts the last dose at 09:00 on 29 Nov; resume 6 h after start
            date(2026, 12, 1),
            "last dose by 09:00 on 29 Nov, resume from 15:00 on 1 Dec",
            "If the prescriber agrees to a hold: last dose by 09:00 on 29 Nov (48 h before the session at "
            "09:00 on 1 Dec); resume from 15:00 on 1 Dec (6 h after the start).",
            "Planned ketamine session 09:00 on 1 Dec. Please confirm whether the benzodiazepine (alprazolam "
            "0.25 MG Oral Tablet) can be held: last dose by 09:00 on 29 Nov, resume from 15:00 on 1 Dec. Do "
            "not stop a regular benzodiazepine abruptly.",
        ),
        (
            # session 24 Nov 09:00: the last dose is due by 09:00 today. The screen knows the day, not the
            # hour, so today's deadline is still given (as the 24 h one is when the 48 h hold is too late)
            date(2026, 11, 24),
            "last dose by 09:00 today, resume from 15:00 on 24 Nov",
            "If the prescriber agrees to a hold: last dose by 09:00 today (48 h before the session at "
            "09:00 on 24 Nov); resume from 15:00 on 24 Nov (6 h after the start).",
            "Planned ketamine session 09:00 on 24 Nov. Please confirm whether the benzodiazepine (alprazolam "
            "0.25 MG Oral Tablet) can be held: last dose by 09:00 today, resume from 15:00 on 24 Nov. Do "
            "not stop a regular benzodiazepine abruptly.",
        ),
        (
            # a session in another year says the year
            date(2027, 1, 5),
            "last dose by 09:00 on 3 Jan 2027, resume from 15:00 on 5 Jan 2027",
            "If the prescriber agrees to a hold: last dose by 09:00 on 3 Jan 2027 (48 h before the session "
            "at 09:00 on 5 Jan 2027); resume from 15:00 on 5 Jan 2027 (6 h after the start).",
            "Planned ketamine session 09:00 on 5 Jan 2027. Please confirm whether the benzodiazepine "
            "(alprazolam 0.25 MG Oral Tablet) can be held: last dose by 09:00 on 3 Jan 2027, resume from "
            "15:00 on 5 Jan 2027. Do not stop a regular benzodiazepine abruptly.",
        ),
    ],
)
def test_a_hold_in_time_is_given_in_the_session_s_dates_and_times(
    ctx: EngineContext, knowledge: Knowledge, planned: date, summary_end: str, plan: str, asked: str
) -> None:
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(cards(ctx, knowledge, facts, ordered_for(planned)), "Benzodiazepines")
    assert card["summary"] == f"{BENZO_SUMMARY}: {summary_end}"
    assert plan in card["detail"]
    [suggestion] = card["suggestions"]
    assert suggestion["actions"][0]["resource"]["payload"] == [{"contentString": asked}]


def test_a_hold_with_no_session_date_is_given_in_hours(ctx: EngineContext, knowledge: Knowledge) -> None:
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(cards(ctx, knowledge, facts, situation()), "Benzodiazepines")
    assert card["summary"] == f"{BENZO_SUMMARY}: hold 48 h before each session, resume 6 h after"
    assert (
        "If the prescriber agrees to a hold: last dose 48 h before each session; resume 6 h after its start "
        "(no session date on the order yet)." in card["detail"]
    )


def test_a_hold_request_names_no_patient_or_prescriber_it_was_not_given(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(
        cards(ctx, knowledge, facts, ordered_for(date(2026, 12, 1)), with_facts=None), "Benzodiazepines"
    )
    resource = card["suggestions"][0]["actions"][0]["resource"]
    assert "subject" not in resource
    assert "recipient" not in resource
    assert resource["occurrenceDateTime"] == "2026-12-01"


# ------------------------------------------------------------------------- moving or removing the order


def test_moving_the_planned_start_shifts_the_order_s_dates_and_leaves_the_rest(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an infarction on 22 Sep 2026 is inside 6 months of a session on 23 Nov; the first start outside is
    # 23 Mar 2027 (6 months before it is 23 Sep). The order moves by 23 Nov -> 23 Mar = 120 days
    # (30 + 31 + 31 + 28).
    dosages: list[Any] = [
        "junk",
        {"timing": "BID"},
        {"timing": {"event": ["2026-11-23", "2026-11-23T09:00:00", 5, "soon", "2026-13-40"], "repeat": "x"}},
        {"timing": {"repeat": {"boundsPeriod": "2026-11-23"}}},
        {"text": "one infusion"},
    ]
    raw = {"resourceType": "MedicationRequest", "id": "ket1", "dosageInstruction": dosages}
    elsewhere = ketamine_order("ket2", date(2026, 11, 23))  # not among the draft orders sent: not moved
    screen = ordered_for(date(2026, 11, 23), ketamine_order("ket1", date(2026, 11, 23)), elsewhere)
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 9, 22)),))
    card = card_of(cards(ctx, knowledge, facts, screen, draft_orders=[raw]), "Heart attack")
    move, remove = card["suggestions"]
    assert move["label"] == "Move the planned start to 23 Mar 2027"
    [action] = move["actions"]
    assert (
        action["description"]
        == "Set the draft order's start to 23 Mar 2027, the first day outside the window"
    )
    assert action["resource"]["dosageInstruction"] == [
        "junk",
        {"timing": "BID"},
        {"timing": {"event": ["2027-03-23", "2027-03-23T09:00:00", 5, "soon", "2026-13-40"], "repeat": "x"}},
        {"timing": {"repeat": {"boundsPeriod": "2026-11-23"}}},
        {"text": "one infusion", "timing": {"repeat": {"boundsPeriod": {"start": "2027-03-23"}}}},
    ]
    assert raw["dosageInstruction"][4] == {"text": "one infusion"}  # a copy was moved, not the order sent
    assert remove["label"] == "Remove the ketamine infusion order"
    assert [a["resourceId"] for a in remove["actions"]] == [
        "MedicationRequest/ket1",
        "MedicationRequest/ket2",
    ]


def test_orders_the_card_cannot_address_get_no_suggestion(ctx: EngineContext, knowledge: Knowledge) -> None:
    # the order was not sent among the draft orders (nothing to move) and its id is no FHIR id (":" is not
    # allowed), so a delete could not name it
    screen = ordered_for(date(2026, 11, 23), ketamine_order("urn:uuid:5d1c", date(2026, 11, 23)))
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 9, 22)),))
    card = card_of(cards(ctx, knowledge, facts, screen), "Heart attack")
    assert (
        card["summary"]
        == "Heart attack 2 months ago (22 Sep): defer ketamine infusion; eligible from 23 Mar 2027"
    )
    assert "suggestions" not in card


def test_an_order_the_card_cannot_move_does_not_stop_it_moving_the_next(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # ket2 was not sent among the draft orders (nothing to move); ket1, after it, was and is moved:
    # 23 Nov -> 23 Mar 2027 (the first day outside 6 months of an infarction on 22 Sep 2026)
    raw = {"resourceType": "MedicationRequest", "id": "ket1", "dosageInstruction": [{"text": "one infusion"}]}
    unsent, sent = ketamine_order("ket2", date(2026, 11, 23)), ketamine_order("ket1", date(2026, 11, 23))
    screen = ordered_for(date(2026, 11, 23), unsent, sent)
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 9, 22)),))
    card = card_of(cards(ctx, knowledge, facts, screen, draft_orders=[raw]), "Heart attack")
    move = card["suggestions"][0]
    assert move["label"] == "Move the planned start to 23 Mar 2027"
    assert [a["resource"]["id"] for a in move["actions"]] == ["ket1"]
    assert move["actions"][0]["resource"]["dosageInstruction"] == [
        {"text": "one infusion", "timing": {"repeat": {"boundsPeriod": {"start": "2027-03-23"}}}}
    ]


def test_a_warning_inside_the_review_window_suggests_no_move(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an infarction on 22 Feb 2026 is 9 months before a session on 23 Nov: past the 6-month window, inside
    # 12 months (cardiology review, a warning); the order stays where it is and is not removed
    raw = {"resourceType": "MedicationRequest", "id": "ket1", "dosageInstruction": [{"text": "one infusion"}]}
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 2, 22)),))
    card = card_of(
        cards(ctx, knowledge, facts, ordered_for(date(2026, 11, 23)), draft_orders=[raw]), "Heart attack"
    )
    assert card["indicator"] == "warning"
    assert "suggestions" not in card


# ----------------------------------------------------------- how long ago, and an onset given as an age


@pytest.mark.parametrize(
    ("onset", "summary", "detail"),
    [
        # today is 22 Nov 2026, the session 2 Dec: 22 Oct is one whole month ago, and one before the session
        (
            date(2026, 10, 22),
            "Heart attack 1 month ago (22 Oct): defer ketamine infusion; eligible from 23 Apr 2027",
            "1 month ago today and 1 month before the planned start",
        ),
        # 8 Nov: two weeks ago, not yet a whole month ("0 months" read as a typo)
        (
            date(2026, 11, 8),
            "Heart attack under a month ago (8 Nov): defer ketamine infusion; eligible from 9 May 2027",
            "under a month ago today and under a month before the planned start",
        ),
    ],
)
def test_how_long_ago_reads_as_words_for_one_month_and_less(
    ctx: EngineContext, knowledge: Knowledge, onset: date, summary: str, detail: str
) -> None:
    facts = PatientFacts(None, conditions=(condition(MI, onset),))
    card = card_of(cards(ctx, knowledge, facts, ordered_for(date(2026, 12, 2))), "Heart attack")
    assert card["summary"] == summary
    assert detail in card["detail"]


@pytest.mark.parametrize(
    ("span", "summary"),
    [
        # 20 Sep and 1 Sep are both 2 whole months before 22 Nov: one figure, not "2-2"
        (
            (date(2026, 9, 1), date(2026, 9, 20)),
            "Heart attack 2 months ago (1 Sep 2026 to 20 Sep 2026): defer ketamine infusion; "
            "eligible from 21 Mar 2027",
        ),
        # 30 Sep is 1 whole month before 22 Nov, 1 Sep is 2: the span allows either
        (
            (date(2026, 9, 1), date(2026, 9, 30)),
            "Heart attack 1-2 months ago (1 Sep 2026 to 30 Sep 2026): defer ketamine infusion; "
            "eligible from 1 Apr 2027",
        ),
    ],
)
def test_an_onset_span_says_every_number_of_months_it_allows_and_no_more(
    ctx: EngineContext, knowledge: Knowledge, span: tuple[date, date], summary: str
) -> None:
    # the span's last day decides the window (6 months after it, plus a day, is the first day outside)
    infarction = replace(condition(MI, span[1]), onset_span=span)
    card = card_of(cards(ctx, knowledge, PatientFacts(None, conditions=(infarction,)), situation()), "Heart")
    assert card["summary"] == summary


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (
            OnsetAge(46, 46, "a", date(2026, 4, 2), date(2027, 4, 1)),
            " (onset recorded as age 46 years: between 2026-04-02 and 2027-04-01)",
        ),
        (
            OnsetAge(43, 45, "a", date(2023, 4, 2), date(2026, 4, 1)),
            " (onset recorded as age 43-45 years: between 2023-04-02 and 2026-04-01)",
        ),
        (
            OnsetAge(556, 556, "mo", None, None),
            " (onset recorded as age 556 months, but the birth date was not available to date it)",
        ),
        (
            OnsetAge(30, 35, "a", None, None),
            " (onset recorded as age 30-35 years, but the birth date was not available to date it)",
        ),
    ],
)
def test_an_onset_age_is_worded_whole_with_its_ages_unit_and_dates(
    knowledge: Knowledge, age: OnsetAge, text: str
) -> None:
    # compared whole: a template looked up by a wrong key can still contain the right words
    assert onset_age_text(knowledge.card_text, age) == text


def test_an_age_unit_the_wording_file_does_not_name_is_shown_as_recorded(knowledge: Knowledge) -> None:
    years_only = CardText({**knowledge.card_text.raw, "age_units": {"a": "years"}})
    assert onset_age_text(years_only, OnsetAge(18, 18, "mo", None, None)) == (
        " (onset recorded as age 18 mo, but the birth date was not available to date it)"
    )


# ------------------------------------------------------------------------------ what fits on one card


def test_records_beyond_three_are_counted_not_listed(ctx: EngineContext, knowledge: Knowledge) -> None:
    onsets = (date(2026, 6, 10), date(2026, 7, 10), date(2026, 8, 10), date(2026, 9, 10), date(2026, 10, 10))
    facts = PatientFacts(None, conditions=tuple(condition(MI, onset) for onset in onsets))
    card = card_of(cards(ctx, knowledge, facts, situation()), "Heart attack")
    assert card["detail"].split("\n\n")[1] == (
        "- Myocardial infarction, onset 10 Oct\n"
        "- Myocardial infarction, onset 10 Sep\n"
        "- Myocardial infarction, onset 10 Aug\n"
        "- and 2 earlier records (all on the screening page)"
    )


def test_long_records_give_way_before_the_detail_passes_900_characters(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # names of 174 characters: the detail's text quotes the newest (about 460 characters) and each record
    # line is about 190, so three records (about 1,100) or two (about 960) pass 900 and one (about 770) fits
    def named(number: int, month: int) -> Any:
        return condition(
            Concept(MI.codings, f"Myocardial infarction {number} " + "x" * 150), date(2026, month, 10)
        )

    facts = PatientFacts(None, conditions=(named(1, 8), named(2, 9), named(3, 10)))
    detail = card_of(cards(ctx, knowledge, facts, situation()), "Heart attack")["detail"]
    assert len(detail) <= 900
    records = detail.split("\n\n")[1].split("\n")
    assert [line[:26] for line in records] == ["- Myocardial infarction 3 ", "- and 2 earlier records (a"]


def test_a_detail_whose_own_text_passes_900_characters_is_cut_with_an_ellipsis(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    note = (
        "Myocardial infarction " + "with a long free-text note " * 40
    )  # 1,102 characters, quoted in the text
    facts = PatientFacts(None, conditions=(condition(Concept(MI.codings, note), date(2026, 10, 10)),))
    card = card_of(cards(ctx, knowledge, facts, situation()), "Heart attack")
    assert len(card["detail"]) <= 900
    assert card["detail"].endswith("a long…")
    assert card["detail"].startswith("**Myocardial infarction with a long free-text note")


def test_also_noted_lists_what_fits_and_says_there_is_more(ctx: EngineContext, knowledge: Knowledge) -> None:
    names = ("bipolar disorder", "epilepsy", "glaucoma", "interstitial cystitis", "cirrhosis of liver")
    long_label = "risperidone 2 mg at night, " + "as agreed with the community mental health team, " * 4
    meds = (
        medication(Concept(text=long_label)),
        medication(Concept(text="naltrexone 50 mg")),
        medication(Concept(text="Lamictal")),  # lamotrigine, dose unknown
        medication(Concept(text="clonazepam 0.25 MG Oral Tablet"), per_day=1),  # 5 mg diazepam-eq: under 8
    )
    unreadable = replace(condition(Concept(), None), unreadable="condition-not-coded")
    conditions = (*(condition(Concept(text=n), date(2026, 10, 1)) for n in names), unreadable)
    screen = situation(ketamine_orders=(ketamine_order("ket1", date(2026, 11, 22)),))
    card = card_of(
        cards(ctx, knowledge, PatientFacts(None, conditions=conditions, medications=meds), screen),
        "Also noted",
    )
    count = len(card["extension"]["ketamine-cds-findings"])
    assert card["summary"] == f"Also noted: {count} further points for the session, none urgent"
    lines = card["detail"].split("\n")
    assert len(card["detail"]) <= 900
    assert lines[-1] == "- more on the screening page"
    assert 1 < len(lines) - 1 < count  # some points listed, the rest on the page


def test_a_point_in_also_noted_is_cut_at_200_characters(ctx: EngineContext, knowledge: Knowledge) -> None:
    # the risperidone summary opens with the record's name, here 12 + 250 = 262 characters: its line keeps
    # the first 199 ("risperidone " and 187 x's) and an ellipsis, 200 in all
    long_name = "risperidone " + "x" * 250
    meds = (medication(Concept(text=long_name)),)
    conditions = (condition(Concept(text="bipolar disorder"), date(2026, 10, 1)),)
    card = card_of(
        cards(ctx, knowledge, PatientFacts(None, conditions=conditions, medications=meds), situation()),
        "Also noted",
    )
    assert sorted(card["detail"].split("\n")) == [
        "- Bipolar disorder on record: monitor for hypomania during the course",
        "- risperidone " + "x" * 187 + "…",
    ]


def test_each_card_is_filed_under_its_rule_or_its_frame_with_that_version(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the infarction's card under its rule (version 1.0.1); two points for information share "also-noted",
    # whose frame is versioned by the card text (2.0.0)
    conditions = (
        condition(MI, date(2026, 10, 10)),
        condition(Concept(text="bipolar disorder"), date(2026, 10, 1)),
        condition(Concept(text="interstitial cystitis"), date(2026, 10, 1)),
    )
    facts = PatientFacts(None, conditions=conditions)
    screen = situation()
    rendered = render_chart(ctx, knowledge, facts, screen)
    assert [(r.topic, r.version, len(r.findings)) for r in rendered] == [
        ("recent-myocardial-infarction", "1.0.1", 1),
        ("also-noted", "2.0.0", 2),
    ]
    assert rendered[1].card["source"] == {
        "label": "ketamine-cds screening rules",
        "topic": {
            "system": "https://ketamine-cds.example.org/fhir/CodeSystem/screening-rules",
            "code": "also-noted",
            "display": "Also noted",
        },
    }


def renderer(ctx: EngineContext, knowledge: Knowledge) -> _Renderer:
    inputs = CardInputs(situation=situation())
    return _Renderer(ctx, knowledge.card_text, inputs, knowledge.override_reasons, lambda: "u")


def consolidated_detail(ctx: EngineContext, knowledge: Knowledge, lines: list[str]) -> str:
    detail: str = renderer(ctx, knowledge).consolidated("also-noted", [], lines).card["detail"]
    return detail


def test_a_consolidated_card_takes_its_most_severe_finding_s_indicator(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an infarction 2 months ago (critical) and bipolar disorder (information): critical, not the
    # alphabetical last
    facts = PatientFacts(
        None,
        conditions=(condition(MI, date(2026, 9, 22)), condition(Concept(text="bipolar disorder"), None)),
    )
    findings = evaluate(ctx, knowledge.rules, facts, situation())
    assert sorted(f.indicator for f in findings) == ["critical", "info"]
    card = renderer(ctx, knowledge).consolidated("pre-session-review", findings, ["a line"]).card
    assert card["indicator"] == "critical"


MORE = "- more on the screening page"  # 28 characters


@pytest.mark.parametrize(
    ("last", "detail"),
    [
        # eight lines of "- " + 98 characters and newlines: 8 x 100 + 7 = 807; a ninth of "- " + 90 and its
        # newline make 900, the limit: all of it is kept
        ("b" * 90, "\n".join(["- " + "a" * 98] * 8 + ["- " + "b" * 90])),
        # one more character: the ninth line gives way to the pointer to the page (807 + 1 + 28 = 836)
        ("b" * 91, "\n".join(["- " + "a" * 98] * 8 + [MORE])),
    ],
)
def test_a_consolidated_detail_of_900_characters_is_kept_whole(
    ctx: EngineContext, knowledge: Knowledge, last: str, detail: str
) -> None:
    assert consolidated_detail(ctx, knowledge, ["a" * 98] * 8 + [last]) == detail


def test_a_consolidated_detail_keeps_its_first_line_however_long(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # three lines of 500 characters: two and the pointer (1,034) are still too long, so one is kept; a lone
    # line is never dropped for the pointer alone, even past the limit
    assert consolidated_detail(ctx, knowledge, ["a" * 500, "b" * 500, "c" * 500]) == f"- {'a' * 500}\n{MORE}"
    assert consolidated_detail(ctx, knowledge, ["a" * 1000]) == f"- {'a' * 1000}"


# -------------------------------------------------------------------- the pharmacist's pre-session review


def test_the_pre_session_review_lists_every_check_and_the_latest_reading(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # at order-sign: the benzodiazepine (interaction) and a systolic-only reading of 150.5 (contraindication
    # band, warning) are listed by summary; the rest say they found nothing; the hold request rides along
    order = ketamine_order("ket1", date(2026, 11, 23))
    reading = BloodPressureFact(SourceRef("Observation", "bp1"), datetime(2026, 11, 20, 9, 30), 150.5, None)
    facts = PatientFacts(
        None, medications=(order, medication(ALPRAZOLAM, per_day=4)), blood_pressures=(reading,)
    )
    all_cards = cards(ctx, knowledge, facts, ordered_for(date(2026, 11, 23), order, hook="order-sign"))
    assert [c["summary"] for c in all_cards] == [
        "Pre-session review: every check and its status for this order"
    ]
    assert all_cards[0]["detail"].split("\n") == [
        "- Contraindication to review: Blood pressure 150.5/? mmHg on 20 Nov: control and re-measure before "
        "ketamine infusion",
        f"- Interacting medicine: {BENZO_SUMMARY}: too late for a 48 h hold before 23 Nov: discuss with the "
        "prescriber",
        "- Other conditions that need care: none found",
        "- Records: all could be read",
        "- Instructions: not shown at signing",
        "- Latest blood pressure: 150.5/? mmHg, measured 20 Nov",
    ]
    assert [s["label"] for s in all_cards[0]["suggestions"]] == [
        "Ask the prescriber to confirm the hold plan"
    ]


def test_the_hold_request_stays_on_the_review_whatever_is_listed_after_it(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the benzodiazepine (a warning, with its hold request) and bipolar disorder (information, no request):
    # the review offers the one request, to be chosen or not ("at-most-one")
    order = ketamine_order("ket1", date(2026, 11, 23))
    facts = PatientFacts(
        None,
        medications=(order, medication(ALPRAZOLAM, per_day=4)),
        conditions=(condition(Concept(text="bipolar disorder"), date(2026, 10, 1)),),
    )
    [review] = cards(ctx, knowledge, facts, ordered_for(date(2026, 11, 23), order, hook="order-sign"))
    assert [f["rule"] for f in review["extension"]["ketamine-cds-findings"]] == [
        "benzodiazepine-response",
        "bipolar-disorder",
    ]
    assert [s["label"] for s in review["suggestions"]] == ["Ask the prescriber to confirm the hold plan"]
    assert review["selectionBehavior"] == "at-most-one"


def review_lines(all_cards: list[dict[str, Any]]) -> list[str]:
    """The pre-session review's checklist (the last card at order-sign), each line without its bullet."""
    review = all_cards[-1]
    assert review["summary"] == "Pre-session review: every check and its status for this order"
    lines = review["detail"].split("\n")
    assert all(line.startswith("- ") for line in lines), lines
    return [line[2:] for line in lines]


def test_the_review_counts_what_blocks_and_lists_what_to_review_in_the_same_check(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # two critical contraindications (each on a card of its own), a 152.5/96 reading (contraindication,
    # warning) and theophylline (interaction, warning) to review; nothing else
    order = ketamine_order("ket1", date(2026, 11, 23))
    reading = BloodPressureFact(SourceRef("Observation", "bp1"), datetime(2026, 11, 20, 9, 30), 152.5, 96)
    facts = PatientFacts(
        None,
        medications=(order, medication(Concept(text="theophylline 300 mg ER tablet"))),
        conditions=(condition(MI, date(2026, 9, 22)), condition(STROKE, date(2026, 10, 1))),
        blood_pressures=(reading,),
    )
    all_cards = cards(ctx, knowledge, facts, ordered_for(date(2026, 11, 23), order, hook="order-sign"))
    assert [c["indicator"] for c in all_cards] == ["critical", "critical", "warning"]
    assert review_lines(all_cards) == [
        "Contraindications: 2 blocking the session (separate card)",
        "Contraindication to review: Blood pressure 152.5/96 mmHg on 20 Nov: control and re-measure before "
        "ketamine infusion",
        "Interacting medicine: Theophylline/aminophylline in use: seizure risk with ketamine infusion",
        "Other conditions that need care: none found",
        "Records: all could be read",
        "Instructions: not shown at signing",
        "Latest blood pressure: 152.5/96 mmHg, measured 20 Nov",
    ]


NOTHING_FOUND = [
    "Contraindications: none found",
    "Interacting medicines: none found",
    "Other conditions that need care: none found",
    "Records: all could be read",
    "Instructions: not shown at signing",
]
NO_READING = "Latest blood pressure: none on record: measure before the session"


@pytest.mark.parametrize(
    ("with_facts", "reading", "last_line"),
    [
        (False, None, NO_READING),
        (True, None, NO_READING),
        # a lone diastolic value (under 90: nothing to flag) is shown with the systolic unknown
        (
            True,
            (None, 80.0, datetime(2026, 11, 20, 9, 30)),
            "Latest blood pressure: ?/80 mmHg, measured 20 Nov",
        ),
        # a reading from another year says the year
        (
            True,
            (128.0, 82.0, datetime(2025, 12, 1, 9, 30)),
            "Latest blood pressure: 128/82 mmHg, measured 1 Dec 2025",
        ),
    ],
)
def test_a_clear_review_ends_with_the_latest_reading_or_asks_for_one(
    ctx: EngineContext,
    knowledge: Knowledge,
    with_facts: bool,
    reading: tuple[float | None, float | None, datetime] | None,
    last_line: str,
) -> None:
    order = ketamine_order("ket1", date(2026, 11, 23))
    readings: tuple[BloodPressureFact, ...] = ()
    if reading is not None:
        systolic, diastolic, taken = reading
        readings = (BloodPressureFact(SourceRef("Observation", "bp1"), taken, systolic, diastolic),)
    facts = PatientFacts(None, medications=(order,), blood_pressures=readings)
    screen = ordered_for(date(2026, 11, 23), order, hook="order-sign")
    all_cards = cards(ctx, knowledge, facts, screen, with_facts=facts if with_facts else None)
    assert len(all_cards) == 1
    assert review_lines(all_cards) == [*NOTHING_FOUND, last_line]


# ---------------------------------------------------------------------------------------------- links


def test_the_screen_link_and_its_smart_launch_come_first(ctx: EngineContext, knowledge: Knowledge) -> None:
    links = CardLinks(
        screen_url="https://cds.example.org/screens/abc?token=t", smart_launch_url="https://ehr/launch"
    )
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 10, 10)),))
    card = card_of(cards(ctx, knowledge, facts, situation(), links=links), "Heart attack")
    assert card["links"][:2] == [
        {"label": "Whole screen, records and arithmetic", "url": links.screen_url, "type": "absolute"},
        {"label": "Whole screen in the EHR", "url": "https://ehr/launch", "type": "smart"},
    ]


# ------------------------------------------------------------------- the records behind a card, line by line

NO_ORDER_DATE = "No start date on the order: windows are counted to today, 22 Nov."
BIPOLAR = Concept((Coding(SNOMED, "371596008", "Bipolar I disorder"),))
BIPOLAR_TEXT = (
    "**Bipolar I disorder** is active on the problem list. Ketamine has been studied in bipolar depression "
    "alongside lithium or valproate, with a low rate of switching to mania; watch for hypomanic symptoms "
    "during the course."
)


@pytest.mark.parametrize(
    ("onset", "recorded", "record"),
    [
        (date(2026, 10, 1), None, "- Bipolar I disorder, onset 1 Oct"),
        (
            None,
            date(2026, 10, 1),
            "- Bipolar I disorder, recorded 1 Oct, no onset date recorded: the date the condition was "
            "recorded was used",
        ),
    ],
)
def test_a_record_dated_by_onset_or_recorded_date_says_what_its_dates_are_counted_to(
    ctx: EngineContext, knowledge: Knowledge, onset: date | None, recorded: date | None, record: str
) -> None:
    # bipolar disorder has no time window of its own: the line about the counting comes from the dated record
    bipolar = ConditionFact(SourceRef("Condition", "bp1"), BIPOLAR, "active", None, onset, recorded)
    card = card_of(cards(ctx, knowledge, PatientFacts(None, conditions=(bipolar,)), situation()), "Bipolar")
    assert card["detail"] == f"{BIPOLAR_TEXT}\n\n{record}\n\n{NO_ORDER_DATE}"


def test_an_onset_known_only_as_an_age_is_dated_on_its_record_line(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # age 45 at onset, the 46th birthday on 15 Oct 2026: the onset falls between 15 Oct 2025 and 14 Oct 2026;
    # its last day decides the window (6 months after it, plus a day: 15 Apr 2027). From 14 Oct to 22 Nov is
    # 1 whole month, from 15 Oct 2025 13 months. No record is dated by onset or recorded date: the line about
    # the counting is there because the band itself is a time window.
    span = (date(2025, 10, 15), date(2026, 10, 14))
    infarction = replace(
        condition(MI, span[1]), onset_span=span, onset_age=OnsetAge(45, 45, "a", span[0], span[1])
    )
    card = card_of(cards(ctx, knowledge, PatientFacts(None, conditions=(infarction,)), situation()), "Heart")
    assert card["summary"] == (
        "Heart attack 1-13 months ago (15 Oct 2025 to 14 Oct 2026): defer ketamine infusion; "
        "eligible from 15 Apr 2027"
    )
    assert card["detail"].split("\n\n") == [
        "**Myocardial infarction** dates from 15 Oct 2025 to 14 Oct 2026: 1-13 months ago today and 1-13 "
        "months before the planned start, inside the 6-month window. Ketamine raises blood pressure and "
        "heart rate for about an hour, a serious hazard after a recent heart attack. Defer until 15 Apr 2027 "
        "and ask cardiology to clear the patient.",
        "- Myocardial infarction, latest possible onset 14 Oct, onset recorded as age 45 years: between "
        "2025-10-15 and 2026-10-14",
        NO_ORDER_DATE,
    ]


def test_unreadable_records_are_named_by_kind_dated_first_and_not_counted_to_a_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a condition with no code or text has no name of its own and its type has no label: "(no name
    # recorded)"; a blood pressure Observation without a name is a "blood pressure reading". The reading
    # dated after today comes first (dated records before undated ones); none of these has a window, so no
    # line says what windows are counted to.
    uncoded = replace(condition(Concept(), None), unreadable="condition-not-coded")
    unreadable = BloodPressureFact(
        SourceRef("Observation", "bp1"), datetime(2026, 11, 20, 9, 30), None, None, "bp-value-unreadable"
    )
    future = BloodPressureFact(SourceRef("Observation", "bp2"), datetime(2026, 12, 1, 9, 30), 120, 80)
    facts = PatientFacts(None, conditions=(uncoded,), blood_pressures=(unreadable, future))
    card = card_of(cards(ctx, knowledge, facts, situation()), "3 record(s)")
    assert card["detail"] == (
        "The screen could not read or confirm the records below, so it cannot say whether they matter for "
        "ketamine infusion. Check each of them by hand; the rest of the screen is unaffected.\n\n"
        "- blood pressure reading, measured 1 Dec, blood pressure dated after today: left out of the latest "
        "reading\n"
        "- (no name recorded), condition has no code or text\n"
        "- blood pressure reading, blood pressure value unreadable"
    )


def test_a_finding_without_records_of_its_own_has_its_rule_s_text_alone(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # conditions that could not be fetched: the unreadable-records card has no record to list, no site
    # setting and no window, so the detail is the rule's text for ketamine infusion and nothing after it
    facts = PatientFacts(None, gaps=(DataGap("Condition", "timeout"),))
    [card] = cards(ctx, knowledge, facts, situation())
    assert card["detail"] == (
        "The screen could not read or confirm the records below, so it cannot say whether they matter for "
        "ketamine infusion. Check each of them by hand; the rest of the screen is unaffected."
    )


def test_a_date_basis_the_wording_file_does_not_name_leaves_the_bare_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    no_bases = CardText({**knowledge.card_text.raw, "date_basis": {}})
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 10, 10)),))
    [rendered] = render_chart(ctx, knowledge, facts, situation(), text=no_bases)
    assert rendered.card["detail"].split("\n\n")[1] == "- Myocardial infarction, 10 Oct"


# ------------------------------------------------------------------------- how many records fit in 900


def mi_text(label: str) -> str:
    """The contraindication text for an infarction on 10 Oct 2026, screened on 22 Nov with no order date."""
    return (
        f"**{label}** dates from 10 Oct: 1 month ago today and 1 month before the planned start, inside the "
        "6-month window. Ketamine raises blood pressure and heart rate for about an hour, a serious hazard "
        "after a recent heart attack. Defer until 11 Apr 2027 and ask cardiology to clear the patient."
    )


def mi_detail(ctx: EngineContext, knowledge: Knowledge, *records: tuple[str, date]) -> str:
    facts = PatientFacts(None, conditions=tuple(condition(Concept(MI.codings, n), d) for n, d in records))
    detail = card_of(cards(ctx, knowledge, facts, situation()), "Heart attack")["detail"]
    assert isinstance(detail, str)
    return detail


def test_a_detail_of_exactly_900_characters_keeps_all_three_records(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # 303 (the text) + 2 + 36 + 1 + 36 + 1 + 451 (the oldest record's line) + 2 + 65 (the counting) = 900
    mi = "Myocardial infarction"
    oldest = "Myocardial infarction " + "x" * 414
    detail = mi_detail(
        ctx, knowledge, (mi, date(2026, 10, 10)), (mi, date(2026, 9, 10)), (oldest, date(2026, 8, 10))
    )
    assert detail == (
        f"{mi_text(mi)}\n\n- {mi}, onset 10 Oct\n- {mi}, onset 10 Sep\n- {oldest}, onset 10 Aug"
        f"\n\n{NO_ORDER_DATE}"
    )
    assert len(detail) == 900


def test_one_record_beyond_three_is_counted_too(ctx: EngineContext, knowledge: Knowledge) -> None:
    mi = "Myocardial infarction"
    onsets = (date(2026, 10, 10), date(2026, 9, 10), date(2026, 8, 10), date(2026, 7, 10))
    detail = mi_detail(ctx, knowledge, *((mi, onset) for onset in onsets))
    assert detail.split("\n\n")[1] == (
        f"- {mi}, onset 10 Oct\n- {mi}, onset 10 Sep\n- {mi}, onset 10 Aug\n"
        "- and 1 earlier record (on the screening page)"
    )


def test_when_three_records_pass_900_characters_two_are_listed_and_the_rest_counted(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a 132-character name in the text and on every line: with three records the detail is 981 characters,
    # with two 832
    name = "Myocardial infarction " + "x" * 110
    onsets = (date(2026, 10, 10), date(2026, 9, 10), date(2026, 8, 10), date(2026, 7, 10))
    detail = mi_detail(ctx, knowledge, *((name, onset) for onset in onsets))
    assert detail == (
        f"{mi_text(name)}\n\n- {name}, onset 10 Oct\n- {name}, onset 10 Sep\n"
        f"- and 2 earlier records (all on the screening page)\n\n{NO_ORDER_DATE}"
    )


def test_when_even_one_record_passes_900_characters_the_records_are_only_counted(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a 272-character name: the text and one record line pass 900 (963), the text and the count fit (674)
    name = "Myocardial infarction " + "x" * 250
    onsets = (date(2026, 10, 10), date(2026, 9, 10), date(2026, 8, 10))
    detail = mi_detail(ctx, knowledge, *((name, onset) for onset in onsets))
    assert detail == (
        f"{mi_text(name)}\n\n- and 3 earlier records (all on the screening page)\n\n{NO_ORDER_DATE}"
    )


def test_a_detail_cut_at_a_space_ends_on_the_word_before_it(ctx: EngineContext, knowledge: Knowledge) -> None:
    # the name starts at character 2 (after "**"): its character 896 is the detail's 898, the last one kept
    # before the ellipsis, and it is a space
    name = "Myocardial infarction " + "a" * 874 + " " + "b" * 100
    detail = mi_detail(ctx, knowledge, (name, date(2026, 10, 10)))
    assert detail == "**Myocardial infarction " + "a" * 874 + "…"


# ------------------------------------------------------------------------------------- site settings


def site_set(ctx: EngineContext, rule_id: str, **values: Any) -> EngineContext:
    """`ctx` with the site choosing `values` for the rule's parameters."""
    parameters = dict(ctx.policy.parameters)
    chosen = {name: ResolvedParameter(value, SITE_ORIGIN) for name, value in values.items()}
    parameters[rule_id] = {**parameters[rule_id], **chosen}
    return replace(ctx, policy=replace(ctx.policy, parameters=parameters))


CRITICAL_AT_3 = (
    "Clinic setting: Myocardial infarction within this many months of the planned start is a "
    "contraindication, 3 months (the usual default is 6 months)."
)


@pytest.mark.parametrize(
    ("chosen", "lines"),
    [
        ({"critical_months": 3}, [CRITICAL_AT_3]),
        # a site value equal to the default is not a different setting: not said
        ({"critical_months": 3, "review_months": 12}, [CRITICAL_AT_3]),
        (
            {"critical_months": 3, "review_months": 9},
            [
                "Clinic setting: Myocardial infarction within this many months needs cardiology review, "
                "9 months (the usual default is 12 months).",
                CRITICAL_AT_3,
            ],
        ),
    ],
)
def test_a_card_says_each_window_the_site_set_away_from_the_default(
    ctx: EngineContext, knowledge: Knowledge, chosen: dict[str, int], lines: list[str]
) -> None:
    # an infarction on 22 Jul is 4 months before 22 Nov: past a 3-month contraindication window, inside
    # the review window (12 or 9 months), which names both windows
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 7, 22)),))
    card = card_of(cards(site_set(ctx, MI_RULE, **chosen), knowledge, facts, situation()), "Heart attack")
    assert card["summary"] == "Heart attack 4 months ago (22 Jul): cardiology review before ketamine infusion"
    assert card["detail"].split("\n\n")[2:] == ["\n".join(lines), NO_ORDER_DATE]


def test_a_setting_without_a_unit_is_said_without_one(ctx: EngineContext, knowledge: Knowledge) -> None:
    # lamotrigine 2 x 100 mg a day = 200 mg/day, over the default 100: the site raised the card to a warning
    lamotrigine = Concept((Coding(RXNORM, "198427", "lamotrigine 100 MG Oral Tablet"),))
    facts = PatientFacts(None, medications=(medication(lamotrigine, per_day=2),))
    site = site_set(ctx, "lamotrigine-response", indicator="warning")
    card = card_of(cards(site, knowledge, facts, situation()), "Lamotrigine")
    assert card["indicator"] == "warning"
    assert card["detail"].split("\n\n")[-1] == (
        "Clinic setting: Card level for lamotrigine above the threshold, warning (the usual default is info)."
    )


def test_a_setting_described_with_its_own_full_stop_gets_no_second_one(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    def reworded(rule: Rule) -> Rule:
        if rule.id != MI_RULE:
            return rule
        critical = replace(
            rule.parameters["critical_months"],
            description="Myocardial infarction within this many months, as coded in ICD-10 chapter IX.",
        )
        return replace(rule, parameters={**rule.parameters, "critical_months": critical})

    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 10, 10)),))
    site = site_set(ctx, MI_RULE, critical_months=3)
    screen = situation()
    rendered = render_chart(site, knowledge, facts, screen, rules=[reworded(r) for r in knowledge.rules])
    [card] = [r.card for r in rendered]
    assert card["detail"].split("\n\n")[2] == (
        "Clinic setting: Myocardial infarction within this many months, as coded in ICD-10 chapter IX, "
        "3 months (the usual default is 6 months)."
    )


# ------------------------------------------------------------------------------- the hold plan, in hours

BENZO_TEXT = (
    "Regular benzodiazepines add up to **20 mg/day diazepam-eq**, over 8 mg/day diazepam-eq; higher doses "
    "were linked to a weaker or shorter response to ketamine. Agree a timed hold with the prescriber. {plan} "
    "Never stop a regular benzodiazepine abruptly (withdrawal seizures). With esketamine, monitor for deeper "
    "sedation."
)


@pytest.mark.parametrize(
    ("chosen", "planned", "plan"),
    [
        (
            {},
            None,
            "If the prescriber agrees to a hold: last dose 48 h before each session; resume 6 h after its "
            "start (no session date on the order yet).",
        ),
        # a session on 2 Dec at 09:00: 48 h before is 09:00 on 30 Nov, 1.5 h after the start is 10:30
        (
            {"resume_hours_after": 1.5},
            date(2026, 12, 2),
            "If the prescriber agrees to a hold: last dose by 09:00 on 30 Nov (48 h before the session at "
            "09:00 on 2 Dec); resume from 10:30 on 2 Dec (1.5 h after the start).",
        ),
        # whole hours are written out in full, however many (never "1e+06")
        (
            {"hold_hours_before": "1000000"},
            None,
            "If the prescriber agrees to a hold: last dose 1000000 h before each session; resume 6 h after "
            "its start (no session date on the order yet).",
        ),
    ],
)
def test_the_hold_plan_is_the_one_sentence_for_its_case_with_the_hours_as_set(
    ctx: EngineContext, knowledge: Knowledge, chosen: dict[str, Any], planned: date | None, plan: str
) -> None:
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    screen = ordered_for(planned) if planned else situation()
    card = card_of(cards(site_set(ctx, BENZO_RULE, **chosen), knowledge, facts, screen), "Benzodiazepines")
    assert card["detail"].split("\n\n")[0] == BENZO_TEXT.format(plan=plan)


# ------------------------------------------------------------ the newest record dates and names the card


def test_the_newest_of_several_records_dates_and_names_the_card(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # two infarctions inside the 6-month window, the older one first in the chart: the card is about the
    # newer one (10 Oct: 1 month before 22 Nov, eligible from 11 Apr 2027), named as that record names it
    older = condition(Concept(MI.codings, "Infarction in September"), date(2026, 9, 10))
    newer = condition(Concept(MI.codings, "Infarction in October"), date(2026, 10, 10))
    card = card_of(cards(ctx, knowledge, PatientFacts(None, conditions=(older, newer)), situation()), "Heart")
    assert (
        card["summary"]
        == "Heart attack 1 month ago (10 Oct): defer ketamine infusion; eligible from 11 Apr 2027"
    )
    assert card["detail"].split("\n\n")[0] == mi_text("Infarction in October")


def test_an_end_of_window_in_this_year_is_given_without_the_year(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # an infarction on 1 Jun 2026 is 5 whole months before 22 Nov; 6 months after it is 1 Dec, so the
    # first day outside the window is 2 Dec, this year: no year on it
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 6, 1)),))
    card = card_of(cards(ctx, knowledge, facts, situation()), "Heart attack")
    assert (
        card["summary"] == "Heart attack 5 months ago (1 Jun): defer ketamine infusion; eligible from 2 Dec"
    )


def test_an_onset_age_without_a_birth_date_is_dated_at_the_latest_on_the_card(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # onsetAge 45 years with no birth date (no dates of its own), sent alongside an onsetPeriod of
    # 1 Sep to 14 Oct 2026: the period's last day dates the record, and the card says it is the latest day
    # (card-text date_values, onset-age: "$date at the latest"); 14 Oct is 1 whole month before 22 Nov,
    # and the window ends 6 months and a day after it, 15 Apr 2027
    infarction = replace(
        condition(MI, date(2026, 10, 14)),
        onset_span=(date(2026, 9, 1), date(2026, 10, 14)),
        onset_age=OnsetAge(45, 45, "a", None, None),
    )
    card = card_of(cards(ctx, knowledge, PatientFacts(None, conditions=(infarction,)), situation()), "Heart")
    assert card["summary"] == (
        "Heart attack 1 month ago (14 Oct at the latest): defer ketamine infusion; eligible from 15 Apr 2027"
    )
    assert card["detail"].startswith("**Myocardial infarction** dates from 14 Oct at the latest: 1 month ago")


def test_a_wording_file_without_date_values_leaves_the_bare_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the same record as above; the wording file has no date_values section (it is optional): "14 Oct"
    no_date_values = CardText({k: v for k, v in knowledge.card_text.raw.items() if k != "date_values"})
    infarction = replace(
        condition(MI, date(2026, 10, 14)),
        onset_span=(date(2026, 9, 1), date(2026, 10, 14)),
        onset_age=OnsetAge(45, 45, "a", None, None),
    )
    facts = PatientFacts(None, conditions=(infarction,))
    [rendered] = render_chart(ctx, knowledge, facts, situation(), text=no_date_values)
    assert rendered.card["summary"] == (
        "Heart attack 1 month ago (14 Oct): defer ketamine infusion; eligible from 15 Apr 2027"
    )


# ------------------------------------------------------------------------- when the hold request is offered


def rules_with(knowledge: Knowledge, rule_id: str, change: Any) -> list[Rule]:
    """The shipped rules with one rule replaced by `change(rule)`."""
    return [change(r) if r.id == rule_id else r for r in knowledge.rules]


def benzo_cards(
    ctx: EngineContext, rules: list[Rule], knowledge: Knowledge, facts: PatientFacts, screen: Any
) -> list[dict[str, Any]]:
    return cards(ctx, knowledge, facts, screen, rules=rules)


def reword_above_threshold(**changes: Any) -> Any:
    def change(rule: Rule) -> Rule:
        bands = tuple(replace(b, **changes) if b.id == "above-threshold" else b for b in rule.bands)
        return replace(rule, bands=bands)

    return change


@pytest.mark.parametrize(
    "changes",
    [
        # the hold plan in the detail only, a summary without the short hold
        {"summary": string.Template("Benzodiazepines $total $basis_unit (over $threshold $basis_unit)")},
        # the short hold in the summary only, a detail without the plan
        {"detail": string.Template("Regular benzodiazepines add up to $total $basis_unit.")},
    ],
)
def test_a_band_that_words_the_hold_in_its_summary_or_its_detail_alone_offers_the_request(
    ctx: EngineContext, knowledge: Knowledge, changes: dict[str, Any]
) -> None:
    rules = rules_with(knowledge, BENZO_RULE, reword_above_threshold(**changes))
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(
        benzo_cards(ctx, rules, knowledge, facts, ordered_for(date(2026, 12, 1))), "Benzodiazepines"
    )
    assert [s["label"] for s in card["suggestions"]] == ["Ask the prescriber to confirm the hold plan"]


def test_an_information_only_band_that_words_a_hold_offers_no_request(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    rules = rules_with(knowledge, BENZO_RULE, reword_above_threshold(indicator="info"))
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    # with the order's own instructions, it is one of two points on the "Also noted" card: no request there
    all_cards = benzo_cards(ctx, rules, knowledge, facts, ordered_for(date(2026, 12, 1)))
    card = card_of(all_cards, "Also noted")
    assert card["extension"]["ketamine-cds-findings"][0]["rule"] == BENZO_RULE
    assert card["indicator"] == "info"
    assert "suggestions" not in card


def test_a_rule_that_words_a_hold_without_hold_hours_asks_in_the_dated_wording(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the rule words $hold_short and $hold_plan but sets no hold hours, so there is no hold state: the
    # request still goes out, in the wording for a session with a date (card-text hold_request_text.dated)
    def no_hold_hours(rule: Rule) -> Rule:
        kept = {
            k: v for k, v in rule.parameters.items() if k not in {"hold_hours_before", "resume_hours_after"}
        }
        return replace(rule, parameters=kept)

    rules = rules_with(knowledge, BENZO_RULE, no_hold_hours)
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(
        benzo_cards(ctx, rules, knowledge, facts, ordered_for(date(2026, 12, 1))), "Benzodiazepines"
    )
    [payload] = card["suggestions"][0]["actions"][0]["resource"]["payload"]
    assert payload["contentString"].startswith(
        "Planned ketamine session $session. Please confirm whether the "
    )
    assert (
        "benzodiazepine (alprazolam 0.25 MG Oral Tablet) can be held: last dose by"
        in payload["contentString"]
    )


def test_a_hold_request_is_about_ten_medicine_records_at_most(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    records = tuple(medication(ALPRAZOLAM, per_day=4) for _ in range(11))
    facts = PatientFacts(None, medications=records)
    card = card_of(cards(ctx, knowledge, facts, ordered_for(date(2026, 12, 1))), "Benzodiazepines")
    about = card["suggestions"][0]["actions"][0]["resource"]["about"]
    assert about == [{"reference": r.source.reference()} for r in records[:10]]


def test_a_hold_request_for_an_order_without_a_session_date_names_no_date(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # a ketamine order with no planned start: the hold is in hours, and the request gives no date for it
    screen = situation(hook="order-select", ketamine_orders=(medication(KETAMINE, draft=True),))
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(cards(ctx, knowledge, facts, screen), "Benzodiazepines")
    assert card["summary"] == f"{BENZO_SUMMARY}: hold 48 h before each session, resume 6 h after"
    resource = card["suggestions"][0]["actions"][0]["resource"]
    assert resource["resourceType"] == "CommunicationRequest"
    assert "occurrenceDateTime" not in resource


# ------------------------------------------------------------- override reasons, links and fingerprints

OVERRIDE_SYSTEM = "https://ketamine-cds.example.org/fhir/CodeSystem/ketamine-override-reason"
HL7_REASONS = "http://cds-hooks.hl7.org/CodeSystem/non-adherence-reason"
RECORD_OUT_OF_DATE = {
    "system": OVERRIDE_SYSTEM,
    "code": "record-out-of-date",
    "display": "The record is out of date: the condition has resolved or the medicine was stopped",
}
ALREADY_ADDRESSED = {
    "system": OVERRIDE_SYSTEM,
    "code": "already-addressed",
    "display": "Already addressed with the patient",
}
KETALAR_URL = "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid=14e8f864-8b8a-4e7e-8439-e510d3107063"
SPRAVATO_URL = "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid=d81a6a79-a74a-44b7-822c-0dfa3036eaed"
JANSSEN_URL = (
    "https://www.jnjmedicalconnect.com/products/spravato/medical-content/"
    "use-of-spravato-in-patients-with-cardiovascular-or-cerebrovascular-conditions"
)


def test_the_review_offers_each_override_reason_and_cited_page_once_and_a_fingerprint_of_its_findings(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # at order-sign, an infarction 9 months before the session (cardiology review, a warning) and
    # interstitial cystitis (information) share the review card. Override reasons: the infarction's
    # (cleared-by-specialist, record-out-of-date, risk-benefit-ratio), then cystitis's new one
    # (already-addressed; record-out-of-date again is not repeated). Links: the infarction's Ketalar and
    # Janssen pages (its clinic FAQ has no address), then cystitis's Spravato page (its Ketalar page is the
    # same address, not repeated).
    order = ketamine_order("ket1", date(2026, 11, 23))
    conditions = (
        condition(MI, date(2026, 2, 22)),
        condition(Concept(text="interstitial cystitis"), date(2026, 10, 1)),
    )
    facts = PatientFacts(None, medications=(order,), conditions=conditions)
    screen = ordered_for(date(2026, 11, 23), order, hook="order-sign")
    [review] = render_chart(ctx, knowledge, facts, screen)
    assert [f.rule.id for f in review.findings] == ["recent-myocardial-infarction", "interstitial-cystitis"]
    assert review.card["overrideReasons"] == [
        {
            "system": OVERRIDE_SYSTEM,
            "code": "cleared-by-specialist",
            "display": "Cleared for this treatment by a specialist (cardiology, neurology or obstetrics)",
        },
        RECORD_OUT_OF_DATE,
        {
            "system": HL7_REASONS,
            "code": "risk-benefit-ratio",
            "display": "Recipient assessment of risk/benefit ratio",
        },
        ALREADY_ADDRESSED,
    ]
    assert review.card["links"] == [
        {
            "label": "KETALAR (ketamine hydrochloride) injection, US prescribing information (blood pressure "
            "elevation as a hazard)",
            "url": KETALAR_URL,
            "type": "absolute",
        },
        {
            "label": "Janssen Medical Information: SPRAVATO in patients with cardiovascular or "
            "cerebrovascular conditions (trial exclusions)",
            "url": JANSSEN_URL,
            "type": "absolute",
        },
        {
            "label": "SPRAVATO (esketamine) nasal spray, US prescribing information",
            "url": SPRAVATO_URL,
            "type": "absolute",
        },
    ]
    # a card of several findings is fingerprinted by theirs, joined by "|", in 32 hex digits
    joined = "|".join(f.fingerprint for f in review.findings)
    assert review.fingerprint == hashlib.sha256(joined.encode()).hexdigest()[:32]
    assert len(review.fingerprint) == 32


def test_a_card_of_one_finding_keeps_that_finding_s_fingerprint(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    facts = PatientFacts(None, conditions=(condition(MI, date(2026, 10, 10)),))
    [finding] = evaluate(ctx, knowledge.rules, facts, situation())
    [rendered] = render(
        [finding],
        CardInputs(situation=situation(), facts=facts),
        ctx=ctx,
        text=knowledge.card_text,
        override_catalogue=knowledge.override_reasons,
        new_uuid=lambda: "uuid",
    )
    assert rendered.fingerprint == finding.fingerprint


def test_a_rule_that_names_no_override_reasons_offers_its_category_s(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # bipolar disorder is "information": card-text default_override_reasons gives record-out-of-date, then
    # already-addressed (the rule's own list, in the other order, is set aside here)
    rules = rules_with(knowledge, "bipolar-disorder", lambda r: replace(r, override_reasons=()))
    facts = PatientFacts(None, conditions=(condition(Concept(text="bipolar disorder"), date(2026, 10, 1)),))
    [card] = benzo_cards(ctx, rules, knowledge, facts, situation())
    assert card["overrideReasons"] == [RECORD_OUT_OF_DATE, ALREADY_ADDRESSED]


def test_a_rule_s_own_override_reasons_are_offered_in_its_order(
    ctx: EngineContext, knowledge: Knowledge
) -> None:
    # the benzodiazepine rule names prescriber-consulted, record-out-of-date, risk-benefit-ratio; its
    # category's defaults would start with risk-benefit-ratio
    facts = PatientFacts(None, medications=(medication(ALPRAZOLAM, per_day=4),))
    card = card_of(cards(ctx, knowledge, facts, situation()), "Benzodiazepines")
    assert [r["code"] for r in card["overrideReasons"]] == [
        "prescriber-consulted",
        "record-out-of-date",
        "risk-benefit-ratio",
    ]
