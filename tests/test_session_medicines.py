"""The ketamine order set's own midazolam (for emergence reactions, or given with the procedure) is part of
the session: listed where a benzodiazepine card fires for another record, never advice to avoid a dose
around sessions. Found by an independent pharmacist's review (order sets with PRN midazolam all drew the
"avoid a dose around sessions" card)."""

from __future__ import annotations

from typing import Any

from cds.clinical.engine import Finding
from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
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
MIDAZOLAM_TEXT = concept(text="midazolam 1 mg IV")
MIDAZOLAM_CODED = concept(coding(RXNORM, "6960", "midazolam"), text="midazolam 2 MG/ML Injectable Solution")
DIASTAT = concept(text="Diastat 10 mg rectal gel")
CLONAZEPAM = concept(text="clonazepam 1 mg tablet")


def _prn_order(medication: dict[str, Any]) -> dict[str, Any]:
    return med_request(medication, status="draft", dosages=[dosage(1, "mg", prn=True)])


def _benzodiazepine_card(screener: Screener, knowledge: Knowledge, **records: Any) -> Finding | None:
    """The benzodiazepine finding of an order-sign screen, if any."""
    request = hook_request("order-sign", **records)
    service = next(s for s in knowledge.services.values() if s.hook == request["hook"])
    return next((f for f in screener.screen(service, request).findings if f.rule.id == RULE), None)


def test_the_order_sets_prn_midazolam_draws_no_benzodiazepine_card(
    screener: Screener, knowledge: Knowledge
) -> None:
    for midazolam in (MIDAZOLAM_TEXT, MIDAZOLAM_CODED):
        drafts = [ketamine_order(), _prn_order(midazolam)]
        assert _benzodiazepine_card(screener, knowledge, drafts=drafts) is None


def test_midazolam_is_listed_as_given_with_the_session_beside_a_regular_benzodiazepine(
    screener: Screener, knowledge: Knowledge
) -> None:
    card = _benzodiazepine_card(
        screener,
        knowledge,
        drafts=[ketamine_order(), _prn_order(MIDAZOLAM_TEXT)],
        statements=[med_statement(CLONAZEPAM, dosages=[dosage(1, "mg", frequency=2)])],
    )
    assert card is not None
    assert card.indicator == "warning"
    assert card.band.id != "as-needed-only"
    notes = {note for hit in card.hits for note in hit.notes}
    assert "given-with-session" in notes  # listed beside the regular dose, not counted
    assert "rescue-or-procedural" not in notes


def test_a_seizure_rescue_form_alone_still_draws_its_card(screener: Screener, knowledge: Knowledge) -> None:
    card = _benzodiazepine_card(
        screener,
        knowledge,
        drafts=[ketamine_order()],
        statements=[med_statement(DIASTAT, dosages=[dosage(10, "mg", prn=True)])],
    )
    assert card is not None
    assert card.indicator == "info"
    assert card.band.id == "as-needed-only"
