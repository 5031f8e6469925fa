"""The ketamine order set's own midazolam (for emergence reactions, or given with the procedure) is part of
the session: listed where a benzodiazepine card fires for another record, never advice to avoid a dose
around sessions. Found by an independent pharmacist's review (order sets with PRN midazolam all drew the
"avoid a dose around sessions" card)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.builders import (
    RXNORM,
    coding,
    concept,
    dosage,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)

RULE = "benzodiazepine-response"
Screen = Callable[[dict[str, Any]], list[dict[str, Any]]]
MIDAZOLAM_TEXT = concept(text="midazolam 1 mg IV")
MIDAZOLAM_CODED = concept(coding(RXNORM, "6960", "midazolam"), text="midazolam 2 MG/ML Injectable Solution")
DIASTAT = concept(text="Diastat 10 mg rectal gel")
CLONAZEPAM = concept(text="clonazepam 1 mg tablet")


def _prn_order(medication: dict[str, Any]) -> dict[str, Any]:
    return med_request(medication, status="draft", dosages=[dosage(1, "mg", prn=True)])


def _benzodiazepine_card(screen: Screen, **records: Any) -> dict[str, Any] | None:
    request = hook_request("order-sign", **records)
    return next((c for c in screen(request) if c["source"]["topic"]["code"] == RULE), None)


def test_the_order_sets_prn_midazolam_draws_no_benzodiazepine_card(screen: Screen) -> None:
    for midazolam in (MIDAZOLAM_TEXT, MIDAZOLAM_CODED):
        drafts = [ketamine_order(), _prn_order(midazolam)]
        assert _benzodiazepine_card(screen, drafts=drafts) is None


def test_midazolam_is_listed_as_given_with_the_session_beside_a_regular_benzodiazepine(
    screen: Screen,
) -> None:
    card = _benzodiazepine_card(
        screen,
        drafts=[ketamine_order(), _prn_order(MIDAZOLAM_TEXT)],
        statements=[med_statement(CLONAZEPAM, dosages=[dosage(1, "mg", frequency=2)])],
    )
    assert card is not None
    assert card["indicator"] == "warning"
    assert "given with the session itself" in card["detail"]
    assert "avoid a dose around sessions" not in card["summary"]


def test_a_seizure_rescue_form_alone_still_draws_its_card(screen: Screen) -> None:
    card = _benzodiazepine_card(
        screen,
        drafts=[ketamine_order()],
        statements=[med_statement(DIASTAT, dosages=[dosage(10, "mg", prn=True)])],
    )
    assert card is not None
    assert card["indicator"] == "info"
