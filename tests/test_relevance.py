"""The relevance filter skips only records no rule could match; it never hides an unreadable one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cds.clinical.knowledge import Knowledge
from tests.support.builders import SNOMED, coding, concept, condition, hook_request, ketamine_order
from tests.support.cards import findings_shown, page_text


def test_filter_decisions(knowledge: Knowledge) -> None:
    keep = knowledge.relevance
    assert keep(concept(coding(SNOMED, "22298006", "Myocardial infarction")))
    assert not keep(concept(coding(SNOMED, "195662009", "Acute viral pharyngitis")))
    assert keep(concept(text="Klonopin 1 mg"))  # name match
    assert keep(None)  # no code at all: the data-quality rule must see it
    assert keep({"coding": [{"system": SNOMED}]})  # nothing readable
    assert keep({"coding": "junk"})  # unusual shape: build the fact
    assert keep({"coding": [{"system": SNOMED, "code": ["unhashable"]}]})
    # cached answers stay right
    assert not keep(concept(coding(SNOMED, "195662009", "Acute viral pharyngitis")))
    assert keep(concept(coding(SNOMED, "22298006", "Myocardial infarction")))


def test_a_large_irrelevant_chart_does_not_hide_the_relevant_record(
    call: Callable[..., Any], client: Any
) -> None:
    noise = [
        condition(concept(coding(SNOMED, "195662009", "Acute viral pharyngitis")), onset="2025-01-01")
        for _ in range(500)
    ]
    uncoded = condition({"text": ""}, onset="2026-01-01", rid="uncoded-cond")
    mi = condition(
        concept(coding(SNOMED, "22298006", "Myocardial infarction")), onset="2026-09-01", rid="the-mi"
    )
    cards = call(hook_request("order-select", drafts=[ketamine_order()], conditions=[*noise, mi, uncoded]))[
        "cards"
    ]
    shown = findings_shown(cards)
    assert shown["recent-myocardial-infarction"] == "critical"
    assert shown["unreadable-records"] == "info"
    # the records behind each finding are on the screening page, with their references
    page = page_text(client, cards)
    assert "Condition/the-mi" in page
    assert "Condition/uncoded-cond" in page
    assert "502 conditions" in page  # every condition was checked, the noise included
