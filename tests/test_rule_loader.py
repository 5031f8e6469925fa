"""The rule loader refuses every malformed rule at start-up, with a message naming the file, band and key.

One test per ConfigError the loader can raise (cds/clinical/rules.py), each on a small rule written to a
temporary folder and checked against the real rule schema. A misspelt or misplaced `when:` key, above
all, must stop start-up: a band that silently ignored its condition would fire on every record.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds.clinical.knowledge import PLACEHOLDERS, load_knowledge
from cds.clinical.rules import COMMON_WHEN_KEYS, WHEN_KEYS, Citation, DoseSpec, Parameter, Rule, load_rules
from cds.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "fhir_profiles" / "schemas" / "rule.schema.json"
VS = "https://ketamine-cds.example.org/fhir/ValueSet/"
KNOWN_VALUESETS = {VS + "mi-acute", VS + "benzodiazepine-medications", VS + "ketamine-substances"}
KNOWN_REASONS = {"record-out-of-date", "risk-benefit-ratio"}
PRODUCTS = ("ketamine", "esketamine")
OPENING = "# When the chart says so,\n# Then the card says so.\n"

MI_RULE: dict[str, Any] = {
    "id": "test-rule",
    "version": "1.0.0",
    "title": "A test rule",
    "category": "contraindication",
    "evidence_tier": "ABS",
    "parameters": {
        "window_months": {
            "default": 6,
            "unit": "months",
            "minimum": 1,
            "maximum": 36,
            "description": "window in months",
            "source": "a test",
        },
        "level": {
            "default": "info",
            "allowed": ["info", "warning"],
            "description": "card level",
            "source": "a test",
        },
        "shown": {"default": True, "description": "show the card", "source": "a test"},
    },
    "bands": [
        {
            "id": "recent",
            "facts": "condition",
            "match": [VS + "mi-acute"],
            "when": {"onset_within_months": "window_months"},
            "indicator": "critical",
            "summary": "Infarction $months_ago months ago: defer $product",
            "detail": "**$condition** from $onset, within $window_months months.",
        }
    ],
    "override_reasons": ["record-out-of-date"],
    "citations": [{"label": "A label", "url": "https://example.org/label"}],
}
DOSE_RULE: dict[str, Any] = {
    **copy.deepcopy(MI_RULE),
    "category": "interaction",
    "evidence_tier": "EFF",
    "parameters": {
        "threshold": {"default": 8, "description": "threshold per day", "source": "a test"},
        "basis": {
            "default": "drug-mg",
            "allowed": ["drug-mg"],
            "description": "dose basis",
            "source": "a test",
        },
    },
    "dose": {"match": [VS + "benzodiazepine-medications"], "basis": "basis"},
    "bands": [
        {
            "id": "above",
            "facts": "medication",
            "when": {"total_above": "threshold"},
            "indicator": "warning",
            "summary": "Benzodiazepines $total $basis_unit: response may be weaker",
            "detail": "The total is $total $basis_unit, over $threshold.",
        }
    ],
}


def write(folder: Path, data: Any, *, name: str | None = None, opening: str = OPENING) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{data['id']}.yaml")
    path.write_text(opening + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load(folder: Path) -> tuple[Rule, ...]:
    return load_rules(
        folder,
        SCHEMA,
        placeholders=PLACEHOLDERS,
        valueset_known=KNOWN_VALUESETS.__contains__,
        override_reason_known=KNOWN_REASONS.__contains__,
        products=PRODUCTS,
    )


def rule_with(base: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    change(data)
    return data


def refused(tmp_path: Path, data: Any, *, name: str | None = None, opening: str = OPENING) -> str:
    write(tmp_path, data, name=name, opening=opening)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path)
    return raised.value.message


def band(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = data["bands"][index]
    return found


# ------------------------------------------------------------------------------------------ good rules


def test_the_test_rules_themselves_load(tmp_path: Path) -> None:
    write(tmp_path, MI_RULE)
    write(tmp_path, {**DOSE_RULE, "id": "dose-rule"})
    rules = load(tmp_path)
    assert [r.id for r in rules] == ["dose-rule", "test-rule"]
    assert rules[1].when_then == "When the chart says so, Then the card says so."


def test_files_starting_with_underscore_and_the_policy_and_card_text_are_not_rules(tmp_path: Path) -> None:
    write(tmp_path, MI_RULE)
    for name in ("_treatments.yaml", "site-policy.yaml", "card-text.yaml"):
        (tmp_path / name).write_text("not: a rule\n", encoding="utf-8")
    assert [r.id for r in load(tmp_path)] == ["test-rule"]


# ------------------------------------------------------------------------------------------ when: keys


def test_a_misspelt_when_key_names_the_rule_band_and_key(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(when={"onset_within_month": "window_months"}))
    message = refused(tmp_path, data)
    assert "rules/test-rule.yaml" in message
    assert "band recent" in message
    assert "'onset_within_month'" in message
    assert "onset_within_months" in message  # the keys this band may use are listed


def test_a_when_key_of_another_kind_of_fact_is_refused(tmp_path: Path) -> None:
    """The case that once loaded silently: a condition key on a medication band."""
    data = rule_with(DOSE_RULE, lambda d: band(d)["when"].update(onset_within_months="threshold"))
    message = refused(tmp_path, data)
    assert "band above" in message
    assert "'onset_within_months'" in message
    assert "condition" in message
    assert "medication" in message


@pytest.mark.parametrize("kind", sorted(WHEN_KEYS))
def test_every_kind_of_fact_refuses_a_made_up_key(tmp_path: Path, kind: str) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(facts=kind, when={"when_it_rains": True}))
    message = refused(tmp_path, data)
    assert "'when_it_rains'" in message
    assert "band recent" in message


@pytest.mark.parametrize(
    ("when", "fragments"),
    [
        (
            {"onset_within_months": "no_such_window"},
            ["when.onset_within_months", "undeclared parameter 'no_such_window'"],
        ),
        ({"onset_within_months": "level"}, ["when.onset_within_months", "'level'", "number parameter"]),
        (
            {"onset_within_months": "window_months", "enabled": "window_months"},
            ["when.enabled", "on/off parameter"],
        ),
    ],
)
def test_a_when_value_must_name_a_declared_parameter_of_its_type(
    tmp_path: Path, when: dict[str, Any], fragments: list[str]
) -> None:
    message = refused(tmp_path, rule_with(MI_RULE, lambda d: band(d).update(when=when)))
    assert message.startswith("rules/test-rule.yaml: band recent when.")
    for fragment in fragments:
        assert fragment in message


def test_enabled_naming_an_on_off_parameter_loads(tmp_path: Path) -> None:
    write(tmp_path, rule_with(MI_RULE, lambda d: band(d)["when"].update(enabled="shown")))
    assert load(tmp_path)[0].bands[0].when["enabled"] == "shown"


def test_a_flag_key_must_be_true(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(when={"onset_unknown": False}))
    message = refused(tmp_path, data)
    assert "bands/0/when/onset_unknown" in message


def test_an_empty_when_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, rule_with(MI_RULE, lambda d: band(d).update(when={})))
    assert "bands/0/when" in message


def test_a_blood_pressure_band_needs_a_threshold(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        band(data).update(facts="blood-pressure", when={"reading_within_days": "window_months"})
        del band(data)["match"]
        band(data)["summary"] = "Blood pressure $systolic/$diastolic mmHg: control it first"
        band(data)["detail"] = "Reading $systolic/$diastolic on $reading_date."

    message = refused(tmp_path, rule_with(MI_RULE, change))
    assert "band recent" in message
    assert "systolic_at_least" in message


@pytest.mark.parametrize("kind", ["blood-pressure", "order", "unreadable"])
def test_match_on_a_band_whose_facts_no_value_set_selects_is_refused(tmp_path: Path, kind: str) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(facts=kind, when={"enabled": "shown"}))
    band(data)["summary"] = "Something about $product to say"
    band(data)["detail"] = "Something about $product to say."
    message = refused(tmp_path, data)
    assert "band recent" in message
    assert "match" in message
    assert kind in message


def test_a_misspelt_key_in_a_shipped_rule_stops_start_up(tmp_path: Path) -> None:
    for folder in ("hooks", "rules", "fhir_profiles"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    path = tmp_path / "rules" / "recent-myocardial-infarction.yaml"
    text = path.read_text(encoding="utf-8")
    assert "when: {onset_within_months: critical_months}" in text
    path.write_text(
        text.replace("{onset_within_months: critical_months}", "{onset_within_month: critical_months}")
    )
    with pytest.raises(ConfigError) as raised:
        load_knowledge(root=tmp_path)
    assert raised.value.message.startswith(
        "rules/recent-myocardial-infarction.yaml: band within-contraindication-window: "
        "when key 'onset_within_month' is unknown"
    )


def test_a_flag_key_does_not_end_the_check_of_the_keys_after_it(tmp_path: Path) -> None:
    when = {"onset_unknown": True, "onset_within_months": "no_such_window"}
    message = refused(tmp_path, rule_with(MI_RULE, lambda d: band(d).update(when=when)))
    assert "band recent when.onset_within_months names undeclared parameter 'no_such_window'" in message


def test_a_misspelt_key_is_named_after_bands_the_key_check_must_skip(tmp_path: Path) -> None:
    """A band without `when:` and a band without a kind of fact come first; the third band's misspelt key
    is still named by band (not left to the schema's anonymous `bands/2/when` message)."""

    def change(data: dict[str, Any]) -> None:
        first = band(data)
        no_when = {**copy.deepcopy(first), "id": "no-when"}
        del no_when["when"]
        no_facts = {**copy.deepcopy(first), "id": "no-facts"}
        del no_facts["facts"]
        misspelt = {**copy.deepcopy(first), "id": "misspelt", "when": {"onset_within_month": "window_months"}}
        data["bands"] = [no_when, no_facts, misspelt]

    message = refused(tmp_path, rule_with(MI_RULE, change))
    assert message.startswith(
        "rules/test-rule.yaml: band misspelt: when key 'onset_within_month' is unknown;"
    )


def test_a_band_without_an_id_is_named_by_its_position(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        second = {**copy.deepcopy(band(data)), "when": {"onset_within_month": "window_months"}}
        del second["id"]
        data["bands"].append(second)

    message = refused(tmp_path, rule_with(MI_RULE, change))
    assert message.startswith("rules/test-rule.yaml: band #2: when key 'onset_within_month' is unknown;")


def test_a_band_inheriting_its_kind_of_fact_is_checked_for_that_kind(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["facts"] = "condition"
        del band(data)["facts"]
        band(data)["when"] = {"total_above": "window_months"}

    message = refused(tmp_path, rule_with(MI_RULE, change))
    assert message.startswith(
        "rules/test-rule.yaml: band recent: when key 'total_above' applies to medication facts, "
        "not condition; condition bands may use "
        "['enabled', 'onset_before_months', 'onset_unknown', 'onset_within_months']"
    )


def test_an_unknown_kind_of_fact_is_left_to_the_schema_message(tmp_path: Path) -> None:
    message = refused(tmp_path, rule_with(MI_RULE, lambda d: band(d).update(facts="vital-signs")))
    assert message.startswith("rules/test-rule.yaml: bands/0/facts: 'vital-signs' is not one of")


def test_an_unknown_reaction_value_set_on_an_allergy_band_is_refused(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        band(data).update(
            facts="allergy",
            match=[VS + "ketamine-substances"],
            when={"intolerance_with_reactions_in": VS + "no-such-reactions"},
            summary="Allergy to $substance: avoid $product",
            detail="Reaction: $reaction.",
        )

    assert refused(tmp_path, rule_with(MI_RULE, change)) == (
        f"rules/test-rule.yaml: unknown value set {VS}no-such-reactions"
    )


# --------------------------------------------------------------------------------- the rest of the rule


def test_a_file_without_the_when_then_opening_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, MI_RULE, opening="# A rule about infarction\n")
    assert "rules/test-rule.yaml" in message
    assert "When ... Then" in message


@pytest.mark.parametrize(
    "opening",
    [
        "# When the chart says so, the card says so.\n",  # no Then
        "# If the chart says so,\n# Then the card says so.\n",  # Then, but not opening with When
    ],
)
def test_the_opening_needs_both_when_and_then(tmp_path: Path, opening: str) -> None:
    assert refused(tmp_path, MI_RULE, opening=opening) == (
        "rules/test-rule.yaml: must open with a plain-language '# When ... Then ...' comment"
    )


def test_the_opening_comment_keeps_a_line_that_starts_with_a_letter_after_the_hash(tmp_path: Path) -> None:
    write(
        tmp_path,
        MI_RULE,
        opening="# When the chart says so,\n#XR tablets included,\n## Then the card says so.\n",
    )
    (rule,) = load(tmp_path)
    assert rule.when_then == "When the chart says so, XR tablets included, Then the card says so."


def test_of_several_schema_violations_the_first_by_path_is_named(tmp_path: Path) -> None:
    # the schema checks version before category; the message names category, first in path order
    data = rule_with(MI_RULE, lambda d: d.update(version="one", category="advice"))
    assert refused(tmp_path, data) == (
        "rules/test-rule.yaml: category: 'advice' is not one of "
        "['contraindication', 'interaction', 'information', 'procedure', 'data-quality']"
    )


def test_invalid_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(OPENING + "id: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules/broken\.yaml: not valid YAML"):
        load(tmp_path)


def test_a_schema_violation_names_the_path(tmp_path: Path) -> None:
    message = refused(tmp_path, rule_with(MI_RULE, lambda d: d.update(category="advice")))
    assert message.startswith("rules/test-rule.yaml: category:")


def test_a_rule_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text(OPENING + "- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules/list\.yaml: \(root\)"):
        load(tmp_path)


def test_an_unknown_product_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(products=["ketamine", "esketamine"]))
    write(tmp_path, data)
    with pytest.raises(ConfigError, match=r"unknown products \['esketamine'\]"):
        load_rules(
            tmp_path,
            SCHEMA,
            placeholders=PLACEHOLDERS,
            valueset_known=KNOWN_VALUESETS.__contains__,
            override_reason_known=KNOWN_REASONS.__contains__,
            products=("ketamine",),
        )


def test_the_file_name_must_be_the_rule_id(tmp_path: Path) -> None:
    message = refused(tmp_path, MI_RULE, name="other-name.yaml")
    assert "file name must be the rule id (test-rule.yaml)" in message


def test_an_unknown_value_set_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(match=[VS + "no-such-set"]))
    assert f"unknown value set {VS}no-such-set" in refused(tmp_path, data)


def test_an_unknown_value_set_in_the_dose_block_is_refused(tmp_path: Path) -> None:
    data = rule_with(DOSE_RULE, lambda d: d["dose"].update(exclude=[VS + "no-such-set"]))
    assert f"unknown value set {VS}no-such-set" in refused(tmp_path, data)


def test_an_unknown_override_reason_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: d.update(override_reasons=["because"]))
    assert "unknown override reason 'because'" in refused(tmp_path, data)


def test_an_empty_folder_has_no_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no rules found"):
        load(tmp_path)


def test_a_band_without_a_kind_of_fact_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).pop("facts"))
    assert "band recent has no facts kind" in refused(tmp_path, data)


def test_a_kind_of_fact_set_on_the_rule_is_inherited(tmp_path: Path) -> None:
    write(tmp_path, rule_with(MI_RULE, lambda d: (d.update(facts="condition"), band(d).pop("facts"))))
    assert load(tmp_path)[0].bands[0].facts == "condition"


@pytest.mark.parametrize("kind", ["condition", "allergy"])
def test_condition_and_allergy_bands_need_a_value_set(tmp_path: Path, kind: str) -> None:
    data = rule_with(
        MI_RULE, lambda d: (band(d).update(facts=kind, when={"enabled": "shown"}), band(d).pop("match"))
    )
    band(data)["summary"] = "Something about $product to say"
    band(data)["detail"] = "Something about $product to say."
    assert f"band recent reads {kind} facts but matches no value set" in refused(tmp_path, data)


def test_a_medication_band_needs_a_value_set_or_a_dose_block(tmp_path: Path) -> None:
    data = rule_with(DOSE_RULE, lambda d: (d.pop("dose"), band(d).update(when={"enabled": "shown"})))
    data["parameters"]["shown"] = {"default": True, "description": "show the card", "source": "a test"}
    band(data)["summary"] = "Something about $product to say"
    band(data)["detail"] = "Something about $product to say."
    assert "band above reads medication facts but matches no value set" in refused(tmp_path, data)


def test_dose_bands_need_a_dose_block(tmp_path: Path) -> None:
    data = rule_with(
        DOSE_RULE, lambda d: (d.pop("dose"), band(d).update(match=[VS + "benzodiazepine-medications"]))
    )
    assert "dose bands need a `dose` block" in refused(tmp_path, data)


def test_the_dose_basis_must_be_a_declared_parameter(tmp_path: Path) -> None:
    data = rule_with(DOSE_RULE, lambda d: d["dose"].update(basis="units"))
    assert "dose.basis names undeclared parameter 'units'" in refused(tmp_path, data)


def test_the_equivalence_source_must_be_a_declared_parameter(tmp_path: Path) -> None:
    data = rule_with(DOSE_RULE, lambda d: d["dose"].update(equivalence_source="table"))
    assert "dose.equivalence_source names undeclared parameter 'table'" in refused(tmp_path, data)


def test_an_indicator_parameter_must_be_declared(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(indicator={"param": "severity"}))
    assert "band recent indicator names undeclared parameter 'severity'" in refused(tmp_path, data)


def test_an_indicator_parameter_may_only_allow_card_indicators(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["parameters"]["level"]["allowed"] = ["info", "urgent"]
        band(data)["indicator"] = {"param": "level"}

    assert "parameter level must only allow card indicators" in refused(tmp_path, rule_with(MI_RULE, change))


def test_an_indicator_parameter_loads(tmp_path: Path) -> None:
    write(tmp_path, rule_with(MI_RULE, lambda d: band(d).update(indicator={"param": "level"})))
    loaded = load(tmp_path)[0].bands[0]
    assert (loaded.indicator, loaded.indicator_param) == (None, "level")


def test_band_ids_must_be_unique(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: d["bands"].append(copy.deepcopy(band(d))))
    assert "band ids must be unique" in refused(tmp_path, data)


def test_broken_placeholder_syntax_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(summary="Infarction costs $ 5: defer it now"))
    assert "band recent summary: invalid $placeholder syntax" in refused(tmp_path, data)


def test_a_placeholder_the_band_cannot_fill_is_refused(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: band(d).update(detail="Latest reading $systolic mmHg, now."))
    assert "band recent detail: unknown placeholders ['systolic']" in refused(tmp_path, data)


def test_an_indicator_parameter_may_allow_all_three_card_indicators(tmp_path: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["parameters"]["level"]["allowed"] = ["info", "warning", "critical"]
        band(data)["indicator"] = {"param": "level"}

    write(tmp_path, rule_with(MI_RULE, change))
    assert load(tmp_path)[0].bands[0].indicator_param == "level"


def test_an_indication_band_needs_dose_indication(tmp_path: Path) -> None:
    data = rule_with(DOSE_RULE, lambda d: band(d)["when"].update(indication=True))
    assert refused(tmp_path, data) == "rules/test-rule.yaml: `indication` bands need dose.indication"


@pytest.mark.parametrize(
    "indication",
    [{"conditions": [VS + "mi-acute"]}, {"ingredients": ["Midazolam"]}],
    ids=["conditions", "ingredients"],
)
def test_dose_indication_by_conditions_or_by_ingredients_alone_is_enough(
    tmp_path: Path, indication: dict[str, Any]
) -> None:
    data = rule_with(
        DOSE_RULE,
        lambda d: (band(d)["when"].update(indication=True), d["dose"].update(indication=indication)),
    )
    write(tmp_path, data)
    spec = load(tmp_path)[0].dose
    assert spec is not None
    assert (spec.indication_conditions, spec.indication_ingredients) == (
        tuple(indication.get("conditions", ())),
        frozenset({"midazolam"}) if "ingredients" in indication else frozenset(),
    )


@pytest.mark.parametrize("key", ["evidence_total_above", "evidence_total_at_most"])
def test_an_evidence_total_band_needs_dose_evidence_basis(tmp_path: Path, key: str) -> None:
    data = rule_with(DOSE_RULE, lambda d: band(d)["when"].update({key: "threshold"}))
    assert refused(tmp_path, data) == "rules/test-rule.yaml: evidence_total bands need dose.evidence_basis"


FULL_RULE: dict[str, Any] = {
    "id": "full-rule",
    "version": "2.3.4",
    "title": "Every field written",
    "category": "interaction",
    "evidence_tier": "REL",
    "clinical_status": "any",
    "policy_note": "Ask the session pharmacist.",
    "parameters": {
        "threshold": {
            "default": 8,
            "unit": "mg",
            "minimum": 0,
            "maximum": 100,
            "presets": {"clinic_faq": 10},
            "description": "threshold per day",
            "source": "Smith 2020",
        },
        "basis": {
            "default": "drug-mg",
            "allowed": ["drug-mg"],
            "description": "dose basis",
            "source": "a test",
        },
        "table": {"default": "ashton", "description": "equivalence table", "source": "a test"},
        "level": {
            "default": "warning",
            "allowed": ["info", "warning"],
            "description": "level",
            "source": "a test",
        },
    },
    "dose": {
        "match": [VS + "benzodiazepine-medications"],
        "exclude": [VS + "ketamine-substances"],
        "basis": "basis",
        "equivalence_source": "table",
        "evidence_basis": "diazepam-equivalent",
        "indication": {"conditions": [VS + "mi-acute"], "ingredients": ["Clonazepam", "ALPRAZOLAM"]},
        "given_with_session": ["Midazolam"],
    },
    "bands": [
        {
            "id": "above",
            "facts": "medication",
            "products": ["ketamine"],
            "when": {"total_above": "threshold", "evidence_total_above": "threshold", "indication": True},
            "indicator": {"param": "level"},
            "summary": "Benzodiazepines $total $basis_unit: response may be weaker",
            "detail": "The total is $total $basis_unit, over $threshold.",
        },
        {
            "id": "unknown-dose",
            "facts": "medication",
            "when": {"dose_unknown": True},
            "indicator": "info",
            "summary": "Benzodiazepine dose unknown: check $medication",
            "detail": "No dose could be read for $medication.",
        },
    ],
    "suggest_remove_order": ["critical", "warning"],
    "override_reasons": ["risk-benefit-ratio", "record-out-of-date"],
    "citations": [{"label": "With a link", "url": "https://example.org/a"}, {"label": "Without a link"}],
}


def test_a_valid_rule_loads_with_exactly_the_fields_written(tmp_path: Path) -> None:
    write(tmp_path, FULL_RULE)
    (rule,) = load(tmp_path)
    assert (rule.id, rule.version, rule.title, rule.category, rule.evidence_tier) == (
        "full-rule",
        "2.3.4",
        "Every field written",
        "interaction",
        "REL",
    )
    assert (rule.clinical_status, rule.policy_note) == ("any", "Ask the session pharmacist.")
    assert rule.parameters["threshold"] == Parameter(
        name="threshold",
        default=8,
        description="threshold per day",
        source="Smith 2020",
        unit="mg",
        allowed=None,
        minimum=0,
        maximum=100,
        presets={"clinic_faq": 10},
    )
    assert rule.parameters["basis"].allowed == ("drug-mg",)
    assert rule.dose == DoseSpec(
        match=(VS + "benzodiazepine-medications",),
        exclude=(VS + "ketamine-substances",),
        basis_param="basis",
        equivalence_source_param="table",
        evidence_basis="diazepam-equivalent",
        indication_conditions=(VS + "mi-acute",),
        indication_ingredients=frozenset({"clonazepam", "alprazolam"}),
        given_with_session=frozenset({"midazolam"}),
    )
    above, unknown = rule.bands
    assert (above.id, above.facts, above.match, above.products) == (
        "above",
        "medication",
        (),
        frozenset({"ketamine"}),
    )
    assert above.when == {"total_above": "threshold", "evidence_total_above": "threshold", "indication": True}
    assert (above.indicator, above.indicator_param) == (None, "level")
    assert (unknown.indicator, unknown.indicator_param) == ("info", None)
    assert unknown.products == frozenset({"ketamine", "esketamine"})
    assert unknown.summary.template == "Benzodiazepine dose unknown: check $medication"
    assert rule.suggest_remove_order == frozenset({"critical", "warning"})
    assert rule.override_reasons == ("risk-benefit-ratio", "record-out-of-date")
    assert rule.citations == (
        Citation("With a link", "https://example.org/a"),
        Citation("Without a link", None),
    )


def test_optional_rule_keys_left_out_load_as_their_defaults(tmp_path: Path) -> None:
    data = rule_with(MI_RULE, lambda d: d.pop("override_reasons"))
    write(tmp_path, data)
    (rule,) = load(tmp_path)
    assert rule.clinical_status == "active"  # only active conditions count unless the file says "any"
    assert (rule.policy_note, rule.dose) == (None, None)
    assert (rule.suggest_remove_order, rule.override_reasons) == (frozenset(), ())


# ----------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        (
            "window_months",
            {"presets": {"clinic_faq": "six"}},
            "preset clinic_faq: window_months must be like 6",
        ),
        ("window_months", {"presets": {"clinic_faq": True}}, "preset clinic_faq: window_months must be like"),
        ("shown", {"presets": {"clinic_faq": 1}}, "shown must be like True"),
        ("level", {"default": 3}, "level must be one of"),
        ("level", {"presets": {"clinic_faq": "critical"}}, "level must be one of ['info', 'warning']"),
        (
            "window_months",
            {"default": 0},
            "rules/test-rule.yaml default: window_months must be at least 1, got 0",
        ),
        ("window_months", {"presets": {"clinic_faq": 40}}, "window_months must be at most 36"),
    ],
)
def test_parameter_defaults_and_presets_are_checked(
    tmp_path: Path, name: str, change: dict[str, Any], expected: str
) -> None:
    data = rule_with(MI_RULE, lambda d: d["parameters"][name].update(change))
    assert expected in refused(tmp_path, data)


def test_a_text_parameter_must_get_text(tmp_path: Path) -> None:
    data = rule_with(
        MI_RULE,
        lambda d: d["parameters"].update(
            hours={
                "default": "24-48",
                "description": "hold hours",
                "source": "a test",
                "presets": {"clinic_faq": 24},
            }
        ),
    )
    assert re.search(r"preset clinic_faq: hours must be text, got 24", refused(tmp_path, data))


# ----------------------------------------------------------------------------------------- the schema


def _properties(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            found.append((f"{path}.{name}", child))
        for key, child in node.items():
            found.extend(_properties(child, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_properties(child, f"{path}[{index}]"))
    return found


def test_the_rule_schema_documents_every_key() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    definitions = schema["$defs"]

    def described(node: dict[str, Any]) -> bool:
        if "description" in node:
            return True
        ref = node.get("$ref", "")
        return ref.startswith("#/$defs/") and "description" in definitions[ref.removeprefix("#/$defs/")]

    properties = _properties(schema)
    assert len(properties) > 40
    undocumented = [path for path, node in properties if not described(node)]
    assert undocumented == []


def test_the_schema_lists_exactly_the_when_keys_the_loader_knows() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    in_schema = set(schema["$defs"]["band"]["properties"]["when"]["properties"])
    known = set(COMMON_WHEN_KEYS) | {key for keys in WHEN_KEYS.values() for key in keys}
    assert in_schema == known
