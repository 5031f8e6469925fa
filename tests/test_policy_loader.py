"""Site policy: how values merge (evidence default -> preset -> site value), and every refusal of the loader.

Run on the policy loader alone (cds/clinical/policy.py) with small rules and policy files; how a policy
shows on a card is tested through the service in tests/test_site_policy.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cds.clinical.policy import DEFAULT_ORIGIN, SITE_ORIGIN, SitePolicy, load_policy
from cds.clinical.rules import Parameter, Rule
from cds.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "fhir_profiles" / "schemas" / "site-policy.schema.json"
DEFAULTS = ROOT / "rules" / "site-policy.yaml"


def rule(rule_id: str, **parameters: Parameter) -> Rule:
    return Rule(
        id=rule_id,
        version="1.0.0",
        title=rule_id,
        category="interaction",
        evidence_tier="EFF",
        clinical_status="active",
        parameters=parameters,
        bands=(),
        dose=None,
        suggest_remove_order=frozenset(),
        override_reasons=(),
        citations=(),
        policy_note=None,
        when_then="When ... Then ...",
    )


THRESHOLD = Parameter(
    "threshold", 8, "threshold", "a study", minimum=0, maximum=1000, presets={"clinic_faq": 100}
)
LEVEL = Parameter(
    "indicator",
    "info",
    "card level",
    "a review",
    allowed=("info", "warning"),
    presets={"clinic_faq": "warning"},
)
WINDOW = Parameter("window", 6, "months", "a label", minimum=1, maximum=36)
RULES = (rule("benzo", threshold=THRESHOLD, indicator=LEVEL), rule("mi", window=WINDOW))


def policy_from(tmp_path: Path, text: str | None, rules: tuple[Rule, ...] = RULES) -> SitePolicy:
    site = None
    if text is not None:
        site = tmp_path / "site.yaml"
        site.write_text(text, encoding="utf-8")
    return load_policy(DEFAULTS, site, SCHEMA, rules)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        policy_from(tmp_path, text)
    return raised.value.message


# ------------------------------------------------------------------------------------------------ merging


def test_without_a_site_file_every_value_is_the_evidence_default(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, None)
    assert policy.preset is None
    assert policy.param("benzo", "threshold").value == 8
    assert policy.param("benzo", "threshold").origin == DEFAULT_ORIGIN
    assert policy.value("mi", "window") == 6
    assert policy.treatments == frozenset({"ketamine", "esketamine"})
    assert policy.patient_view_scope == "ketamine-course"
    assert policy.disabled_rules == frozenset()


def test_a_preset_sets_the_parameters_that_define_it_and_names_itself(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "preset: clinic_faq\n")
    assert policy.preset == "clinic_faq"
    assert policy.param("benzo", "threshold").value == 100
    assert policy.param("benzo", "threshold").origin == "clinic_faq"
    assert policy.param("benzo", "indicator").value == "warning"
    assert policy.param("mi", "window").origin == DEFAULT_ORIGIN  # no clinic_faq value: unchanged


def test_a_site_value_wins_over_the_preset(tmp_path: Path) -> None:
    policy = policy_from(tmp_path, "preset: clinic_faq\nparameters:\n  benzo:\n    threshold: 20\n")
    assert policy.param("benzo", "threshold").value == 20
    assert policy.param("benzo", "threshold").origin == SITE_ORIGIN
    assert policy.param("benzo", "indicator").origin == "clinic_faq"


def test_site_settings_replace_the_shipped_ones_key_by_key(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        "patient_view_scope: ketamine-course\ntreatments: [esketamine]\nstale_after_days: 90\n"
        "disabled_rules: [mi]\n",
    )
    assert policy.patient_view_scope == "ketamine-course"
    assert policy.treatments == frozenset({"esketamine"})
    assert policy.stale_after_days == 90
    assert policy.disabled_rules == frozenset({"mi"})


def test_the_site_can_show_the_instructions_card_at_order_sign_which_the_defaults_do_not(
    tmp_path: Path,
) -> None:
    assert policy_from(tmp_path, None).order_sign_instructions is False
    assert policy_from(tmp_path, "order_sign_instructions: true\n").order_sign_instructions is True


def test_parameters_of_one_rule_merge_with_the_defaults_file(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(
        DEFAULTS.read_text(encoding="utf-8").replace(
            "parameters: {}", "parameters:\n  benzo:\n    threshold: 9\n"
        ),
        encoding="utf-8",
    )
    site = tmp_path / "site.yaml"
    site.write_text("parameters:\n  benzo:\n    indicator: warning\n", encoding="utf-8")
    policy = load_policy(defaults, site, SCHEMA, RULES)
    assert policy.value("benzo", "threshold") == 9
    assert policy.value("benzo", "indicator") == "warning"


# ------------------------------------------------------------------------------------------- refusals


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read site policy"):
        load_policy(DEFAULTS, tmp_path / "missing.yaml", SCHEMA, RULES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parameters: [unclosed\n", "cannot read site policy"),
        ("- preset\n", "must be a mapping"),
        ("patient_view_scope: sometimes\n", "patient_view_scope:"),
        ("treshold: 3\n", "(root)"),
        ("preset: lenient\n", "no rule defines the preset 'lenient'"),
        ("disabled_rules: [stroke]\n", "unknown rules: ['stroke']"),
        ("parameters:\n  stroke:\n    window: 3\n", "unknown rules: ['stroke']"),
    ],
)
def test_a_malformed_site_file_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("treshold: 3\n", "(root): Additional properties are not allowed ('treshold' was unexpected)"),
        ("parameters:\n  benzo:\n    threshold: [3]\n", "parameters/benzo/threshold: [3] is not of type"),
    ],
)
def test_a_refusal_names_where_the_site_file_is_wrong(tmp_path: Path, text: str, where: str) -> None:
    assert refusal(tmp_path, text).startswith(f"site policy {tmp_path / 'site.yaml'}: {where}")


def test_of_several_mistakes_the_one_first_in_key_order_is_named(tmp_path: Path) -> None:
    # two wrong settings; the schema lists session_time before screen_link_hours, the refusal names the
    # one that comes first by key: screen_link_hours
    message = refusal(tmp_path, "session_time: noon\nscreen_link_hours: 0\n")
    assert (
        message == f"site policy {tmp_path / 'site.yaml'}: screen_link_hours: 0 is less than the minimum of 1"
    )


def test_an_unknown_parameter_is_refused(tmp_path: Path) -> None:
    assert "rule benzo has no parameters ['treshold']" in refusal(
        tmp_path, "parameters:\n  benzo:\n    treshold: 3\n"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-1", "must be at least 0"),
        ("5000", "must be at most 1000"),
        ("'high'", "must be like 8"),
        ("true", "must be like 8"),
    ],
)
def test_a_site_value_outside_the_parameter_is_refused(tmp_path: Path, value: str, expected: str) -> None:
    message = refusal(tmp_path, f"parameters:\n  benzo:\n    threshold: {value}\n")
    assert message.startswith("site policy benzo: threshold")
    assert expected in message


def test_a_value_not_allowed_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "parameters:\n  benzo:\n    indicator: critical\n")
    assert "indicator must be one of ['info', 'warning']" in message


def test_defaults_missing_a_setting_are_refused(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("preset: null\ntreatments: [ketamine]\nstale_after_days: 30\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="site policy defaults are missing 'patient_view_scope'"):
        load_policy(defaults, None, SCHEMA, RULES)
