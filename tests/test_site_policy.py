"""Site policy changes thresholds and tiers; the card says so in plain words when a site value differs
from the default, and the screening page always says which value applied and where it came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds.clinical.knowledge import load_knowledge
from cds.errors import ConfigError
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
from tests.support.cards import findings_shown, page_text
from tests.support.responses import assert_valid_response

CLONAZEPAM_1 = concept(coding(RXNORM, "197528", "clonazepam 1 MG Oral Tablet"))
LAMOTRIGINE_100 = concept(coding(RXNORM, "198427", "lamotrigine 100 MG Oral Tablet"))
RISPERIDONE = concept(coding(RXNORM, "312830", "risperidone 1 MG Oral Tablet"))


def policy_app(make_app: Callable[..., Flask], tmp_path: Path, text: str) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return make_app(policy_file=str(path)).test_client()


def cards_by_rule(client: Any, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = client.post("/cds-services/ketamine-order-select", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {c["source"]["topic"]["code"]: c for c in response.get_json()["cards"]}


def screened(client: Any, body: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]], str]:
    """(rule -> indicator, the cards, the screening page's HTML) for an order-select call."""
    response = client.post("/cds-services/ketamine-order-select", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    return findings_shown(cards), cards, page_text(client, cards)


def benzo_request() -> dict[str, Any]:
    # clonazepam 1 mg twice daily: 2 mg/day, 40 mg/day diazepam-eq (Ashton)
    return hook_request(
        "order-select",
        drafts=[ketamine_order()],
        statements=[med_statement(CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=2)])],
    )


def test_evidence_default_says_so_and_offers_the_faq_value(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    card = cards_by_rule(client, benzo_request())["benzodiazepine-response"]
    assert card["indicator"] == "warning"
    assert "40 mg/day diazepam-eq" in card["detail"]
    assert "1 unit x 2/day x 1 mg/unit = 2 mg/day = 40 mg/day diazepam-eq" in card["detail"]
    # The default applied: the card does not say so (plain words only when a site differs); the
    # screening page names the value, its source and the clinic FAQ alternative.
    assert "Clinic setting" not in card["detail"]
    assert "default" not in card["detail"]
    page = page_text(client, [card])
    assert "default, from Andrashko 2020" in page
    assert "the clinic FAQ value, 100 mg/day, is available" in page
    assert all("stop" not in s["label"].lower() for s in card.get("suggestions", []))


def test_clinic_faq_preset_applies_the_faq_rule_and_says_so(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    client = policy_app(make_app, tmp_path, "preset: clinic_faq\n")
    shown, cards, page = screened(client, benzo_request())
    # 2 mg/day of clonazepam is far below the FAQ's 100 mg/day: information, not a warning
    assert shown["benzodiazepine-response"] == "info"
    also_noted = next(c for c in cards if c["source"]["topic"]["code"] == "also-noted")
    assert "Benzodiazepine 2 mg/day (40 mg/day diazepam-eq)" in also_noted["detail"]
    assert "site setting (clinic FAQ values); the default is 8 mg/day" in page


def test_faq_preset_raises_lamotrigine_and_antipsychotic_tiers(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    body = hook_request(
        "order-select",
        drafts=[ketamine_order()],
        statements=[
            med_statement(LAMOTRIGINE_100, dosages=[dosage(dose=2, frequency=1)]),
            med_statement(RISPERIDONE),
        ],
    )
    default, _, _ = screened(make_app().test_client(), body)
    assert default["lamotrigine-response"] == "info"
    assert default["risperidone-olanzapine-response"] == "info"
    faq, _, _ = screened(policy_app(make_app, tmp_path, "preset: clinic_faq\n"), body)
    assert faq["lamotrigine-response"] == "warning"
    assert faq["risperidone-olanzapine-response"] == "warning"


def test_single_parameter_override_is_reported_as_site_policy(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    client = policy_app(make_app, tmp_path, "parameters:\n  benzodiazepine-response:\n    threshold: 50\n")
    shown, _, page = screened(client, benzo_request())
    assert shown["benzodiazepine-response"] == "info"  # 40 is not above 50
    assert "site setting; the default is 8 mg/day" in page


def test_instructions_card_can_be_switched_off(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    client = policy_app(make_app, tmp_path, "parameters:\n  ordering-instructions:\n    enabled: false\n")
    response = client.post(
        "/cds-services/ketamine-order-select", json=hook_request("order-select", drafts=[ketamine_order()])
    )
    assert "ordering-instructions" not in findings_shown(response.get_json()["cards"])


@pytest.mark.parametrize(
    "text",
    [
        "parameters:\n  benzodiazepine-response:\n    threshold: -1\n",
        "parameters:\n  benzodiazepine-response:\n    nonsense: 1\n",
        "parameters:\n  no-such-rule:\n    threshold: 1\n",
        "preset: no_such_preset\n",
        "patient_view_scope: sometimes\n",
        "parameters:\n  lamotrigine-response:\n    indicator: critical\n",
    ],
)
def test_invalid_site_policy_stops_start_up(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_knowledge(str(path))


@pytest.mark.parametrize(
    "policy", ["treatments: [ketamine, esketamine]\n", "patient_view_scope: ketamine-course\n"]
)
def test_patient_view_scope_ketamine_course(
    make_app: Callable[..., Flask], tmp_path: Path, knowledge: Any, policy: str
) -> None:
    """The default: a GP opening any chart with a benzodiazepine is not told about ketamine."""
    client = policy_app(make_app, tmp_path, policy)
    benzo = med_statement(CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=2)])
    no_course = client.post(
        "/cds-services/ketamine-patient-view", json=hook_request("patient-view", statements=[benzo])
    )
    assert no_course.get_json()["cards"] == []
    course = med_statement(concept(coding(RXNORM, "6130", "ketamine")), dosages=[dosage(frequency=None)])
    in_course = client.post(
        "/cds-services/ketamine-patient-view", json=hook_request("patient-view", statements=[benzo, course])
    ).get_json()
    assert_valid_response(knowledge, in_course)
    assert set(findings_shown(in_course["cards"])) == {"benzodiazepine-response"}


def test_patient_view_scope_all_screens_every_chart(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    client = policy_app(make_app, tmp_path, "patient_view_scope: all\n")
    benzo = med_statement(CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=2)])
    response = client.post(
        "/cds-services/ketamine-patient-view", json=hook_request("patient-view", statements=[benzo])
    )
    assert findings_shown(response.get_json()["cards"]) == {"benzodiazepine-response": "warning"}


def test_order_and_the_statement_derived_from_it_count_once(call: Callable[..., Any]) -> None:
    order = med_request(CLONAZEPAM_1, rid="rx-clon", dosages=[dosage(dose=1, frequency=2)])
    statement = med_statement(
        CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=2)], derived_from="MedicationRequest/rx-clon"
    )
    body = hook_request("order-select", drafts=[ketamine_order()], requests=[order], statements=[statement])
    card = next(c for c in call(body)["cards"] if c["source"]["topic"]["code"] == "benzodiazepine-response")
    assert "40 mg/day diazepam-eq" in card["summary"]  # not 80


def test_two_products_of_one_ingredient_are_summed(call: Callable[..., Any]) -> None:
    half = concept(coding(RXNORM, "197527", "clonazepam 0.5 MG Oral Tablet"))
    body = hook_request(
        "order-select",
        drafts=[ketamine_order()],
        statements=[
            med_statement(CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=1)]),
            med_statement(half, dosages=[dosage(dose=1, frequency=1)]),
        ],
    )
    card = next(c for c in call(body)["cards"] if c["source"]["topic"]["code"] == "benzodiazepine-response")
    assert "30 mg/day diazepam-eq" in card["summary"]


def test_an_old_active_record_is_flagged_as_possibly_stale(call: Callable[..., Any]) -> None:
    old = med_statement(CLONAZEPAM_1, dosages=[dosage(dose=1, frequency=2)], asserted="2019-01-10")
    body = hook_request("order-select", drafts=[ketamine_order()], statements=[old])
    card = next(c for c in call(body)["cards"] if c["source"]["topic"]["code"] == "benzodiazepine-response")
    assert card["indicator"] == "warning"  # still counted: absence of an update is not evidence of stopping
    assert "not updated for over 365 days" in card["detail"]
