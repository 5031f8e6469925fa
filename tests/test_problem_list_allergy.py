"""An allergy to ketamine written on the problem list (a Condition), not the allergy list, still reaches
the hypersensitivity rule, by name in the text or in a coding's display; negated or family-history
wording does not. Found by an independent pharmacist's review ("Allergy to ketamine - laryngospasm 2019"
on the problem list gave no card)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.builders import SNOMED, coding, concept, condition, hook_request, ketamine_order

RULE = "ketamine-hypersensitivity"
Screen = Callable[[dict[str, Any]], list[dict[str, Any]]]


def _cards(screen: Screen, code: dict[str, Any], **status: Any) -> dict[str, str]:
    request = hook_request("order-sign", drafts=[ketamine_order()], conditions=[condition(code, **status)])
    return {c["source"]["topic"]["code"]: c["indicator"] for c in screen(request)}


@pytest.mark.parametrize(
    "code",
    [
        concept(text="Allergy to ketamine - laryngospasm 2019"),
        concept(text="Ketalar allergy (anaphylaxis at induction)"),
        concept(text="Hypersensitivity to esketamine"),
        concept(
            coding(SNOMED, "999999999", "Allergy to ketamine (finding)")
        ),  # a code the service does not know
    ],
)
def test_a_problem_list_allergy_to_ketamine_is_critical(screen: Screen, code: dict[str, Any]) -> None:
    assert _cards(screen, code).get(RULE) == "critical"


@pytest.mark.parametrize(
    "text",
    ["No known allergy to ketamine", "Family history: allergy to ketamine (mother)", "Ketamine use disorder"],
)
def test_negated_family_or_other_ketamine_entries_do_not_read_as_an_allergy(
    screen: Screen, text: str
) -> None:
    assert RULE not in _cards(screen, concept(text=text))


def test_a_refuted_problem_list_allergy_is_silent(screen: Screen) -> None:
    code = concept(text="Allergy to ketamine")
    assert RULE not in _cards(screen, code, verification="refuted")
