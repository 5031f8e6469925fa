"""Deciding what a call asks for (cds/clinical/situation.py): a full screen, an interaction review, nothing.

Typed medication facts only; no HTTP, no FHIR JSON. The policy is the shipped one, with its patient-view
scope switched where a test needs it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from itertools import count
from typing import Any

import pytest

from cds.clinical.knowledge import Knowledge
from cds.clinical.policy import SitePolicy
from cds.clinical.situation import FULL, INTERACTION, NONE, Situation, decide
from cds.fhir.model import Concept, MedicationFact, MedicationKind, SourceRef
from tests.support.facts import CLONAZEPAM, ESKETAMINE, KETAMINE, SERTRALINE, TODAY

_ids = count(1)


def draft(concept: Concept, *, selected: bool = True, start: date | None = None) -> MedicationFact:
    return MedicationFact(
        SourceRef("MedicationRequest", f"draft-{next(_ids)}"),
        MedicationKind.REQUEST,
        concept,
        "draft",
        intent="order",
        is_draft_order=True,
        is_selected=selected,
        planned_start=start,
    )


def on_chart(concept: Concept, status: str = "active") -> MedicationFact:
    return MedicationFact(
        SourceRef("MedicationStatement", f"ms-{next(_ids)}"), MedicationKind.STATEMENT, concept, status
    )


@pytest.fixture
def decide_for(knowledge: Knowledge) -> Any:
    def run(
        hook: str, *medications: MedicationFact, loaded: bool = True, policy: SitePolicy | None = None
    ) -> Situation | None:
        return decide(
            hook=hook,
            medications=medications,
            chart_loaded=loaded,
            terminology=knowledge.terminology,
            treatments=knowledge.treatments,
            interaction_valuesets=knowledge.interaction_valuesets,
            statuses=knowledge.statuses,
            policy=policy or knowledge.policy,
            today=TODAY,
        )

    return run


# ------------------------------------------------------------------------------------------ patient-view


def test_patient_view_screens_the_treatments_in_the_chart(decide_for: Any) -> None:
    found = decide_for("patient-view", on_chart(ESKETAMINE))
    assert found is not None
    assert (found.mode, found.products, found.reference_date) == (FULL, frozenset({"esketamine"}), TODAY)


def test_patient_view_without_either_treatment_is_silent_by_default(decide_for: Any) -> None:
    found = decide_for("patient-view", on_chart(SERTRALINE))
    assert found is not None
    assert found.mode == NONE


def test_patient_view_without_either_treatment_screens_for_what_the_site_offers(
    decide_for: Any, knowledge: Knowledge
) -> None:
    every_chart = replace(knowledge.policy, patient_view_scope="all")
    found = decide_for("patient-view", on_chart(SERTRALINE), policy=every_chart)
    assert found is not None
    assert found.mode == FULL
    assert found.products == knowledge.policy.treatments


def test_a_stopped_treatment_does_not_count(decide_for: Any, knowledge: Knowledge) -> None:
    assert decide_for("patient-view", on_chart(ESKETAMINE, status="stopped")).mode == NONE
    every_chart = replace(knowledge.policy, patient_view_scope="all")
    found = decide_for("patient-view", on_chart(ESKETAMINE, status="stopped"), policy=every_chart)
    assert found is not None
    assert found.products == knowledge.policy.treatments


def test_patient_view_for_courses_only(decide_for: Any, knowledge: Knowledge) -> None:
    course_only = replace(knowledge.policy, patient_view_scope="ketamine-course")
    assert decide_for("patient-view", on_chart(KETAMINE), loaded=False, policy=course_only) is None
    nothing = decide_for("patient-view", on_chart(SERTRALINE), policy=course_only)
    assert nothing is not None
    assert nothing.mode == NONE
    course = decide_for("patient-view", on_chart(KETAMINE), policy=course_only)
    assert course is not None
    assert (course.mode, course.products) == (FULL, frozenset({"ketamine"}))


# ------------------------------------------------------------------------------------- the order hooks


def test_a_selected_ketamine_order_is_a_full_screen_from_its_planned_start(decide_for: Any) -> None:
    start = date(2027, 1, 10)
    order = draft(KETAMINE, start=start)
    found = decide_for("order-select", order, loaded=False)
    assert found is not None
    assert (found.mode, found.products, found.reference_date) == (FULL, frozenset({"ketamine"}), start)
    assert found.reference_from_order
    assert found.ketamine_orders == (order,)
    assert found.clock_date == TODAY


def test_the_earliest_planned_start_sets_the_window(decide_for: Any) -> None:
    found = decide_for(
        "order-sign",
        draft(KETAMINE, start=date(2027, 2, 1)),
        draft(ESKETAMINE, start=date(2027, 1, 5)),
        draft(KETAMINE),
    )
    assert found is not None
    assert found.products == frozenset({"ketamine", "esketamine"})
    assert found.reference_date == date(2027, 1, 5)


def test_without_a_planned_start_the_window_runs_from_today(decide_for: Any) -> None:
    found = decide_for("order-select", draft(KETAMINE), loaded=False)
    assert found is not None
    assert (found.reference_date, found.reference_from_order) == (TODAY, False)


def test_an_unrelated_order_needs_nothing(decide_for: Any) -> None:
    found = decide_for("order-select", draft(SERTRALINE), loaded=False)
    assert found is not None
    assert found.mode == NONE


def test_order_select_looks_only_at_the_selected_orders(decide_for: Any) -> None:
    found = decide_for("order-select", draft(KETAMINE, selected=False), draft(SERTRALINE), loaded=False)
    assert found is not None
    assert found.mode == NONE


def test_order_sign_looks_at_every_draft(decide_for: Any) -> None:
    found = decide_for("order-sign", draft(KETAMINE, selected=False), draft(SERTRALINE, selected=False))
    assert found is not None
    assert found.mode == FULL


def test_an_interacting_order_next_to_a_ketamine_draft_is_reviewed(decide_for: Any) -> None:
    benzo = draft(CLONAZEPAM)
    found = decide_for("order-select", benzo, draft(ESKETAMINE, selected=False), loaded=False)
    assert found is not None
    assert (found.mode, found.products, found.focus) == (
        INTERACTION,
        frozenset({"esketamine"}),
        frozenset({benzo.source}),
    )


def test_an_interacting_order_needs_the_chart_to_know_about_a_course(decide_for: Any) -> None:
    benzo = draft(CLONAZEPAM)
    assert decide_for("order-select", benzo, on_chart(KETAMINE), loaded=False) is None
    found = decide_for("order-select", benzo, on_chart(KETAMINE))
    assert found is not None
    assert (found.mode, found.products) == (INTERACTION, frozenset({"ketamine"}))


def test_an_interacting_order_outside_any_course_is_silent(decide_for: Any) -> None:
    found = decide_for("order-select", draft(CLONAZEPAM), on_chart(SERTRALINE))
    assert found is not None
    assert found.mode == NONE
