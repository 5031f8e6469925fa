"""Clinical rules as data: parse `rules/*.yaml`, validate against the rule schema, cross-check references.

A rule file is the whole of one clinical check: which facts it reads, the bands (severity steps) it can
reach, the site-policy parameters behind its thresholds, its card text and its citations. Python here only
knows the *shape* of a rule; every clinical fact comes from the file.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from cds.errors import ConfigError
from cds.loading import load_yaml, schema_validator

INDICATOR_RANK = {"info": 0, "warning": 1, "critical": 2}

# What a band's `when:` keys may say, by the kind of fact the band reads, and what each key's value must
# be. The engine (cds.clinical.engine) implements exactly these predicates; a key outside this table, or
# one for another kind of fact, would be ignored there, so the loader refuses it.
NUMBER = "the name of a number parameter"
SWITCH = "the name of an on/off parameter"
FLAG = "true"
VALUESET = "the canonical URL of a value set"
COMMON_WHEN_KEYS: Mapping[str, str] = {"enabled": SWITCH}
WHEN_KEYS: Mapping[str, Mapping[str, str]] = {
    "condition": {"onset_within_months": NUMBER, "onset_before_months": NUMBER, "onset_unknown": FLAG},
    "allergy": {"intolerance_with_reactions_in": VALUESET},
    "medication": {
        "total_above": NUMBER,
        "regular_use": FLAG,
        "as_needed_only": FLAG,
        "dose_unknown": FLAG,
        "indication": FLAG,
        "evidence_total_above": NUMBER,
        "evidence_total_at_most": NUMBER,
        "half_life_hours_at_least": NUMBER,
    },
    "blood-pressure": {
        "systolic_at_least": NUMBER,
        "diastolic_at_least": NUMBER,
        "reading_within_days": NUMBER,
    },
    "order": {},
    "unreadable": {},
}
DOSE_WHEN_KEYS = frozenset(WHEN_KEYS["medication"])  # a medication band with any of these reads the total
MATCHED_FACTS = frozenset({"condition", "allergy", "medication"})  # kinds a value set selects


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    default: Any
    description: str
    source: str
    unit: str | None = None
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    presets: Mapping[str, Any] | None = None

    def check(self, value: Any, where: str) -> None:
        """Reject a site value of the wrong type or outside the declared range."""
        if isinstance(self.default, bool) != isinstance(value, bool) or (
            isinstance(self.default, (int, float)) and not isinstance(value, (int, float))
        ):
            raise ConfigError(f"{where}: {self.name} must be like {self.default!r}, got {value!r}")
        if isinstance(self.default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}: {self.name} must be text, got {value!r}")
        if self.allowed is not None and value not in self.allowed:
            raise ConfigError(f"{where}: {self.name} must be one of {list(self.allowed)}, got {value!r}")
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            raise ConfigError(f"{where}: {self.name} must be at least {self.minimum}, got {value!r}")
        if self.maximum is not None and isinstance(value, (int, float)) and value > self.maximum:
            raise ConfigError(f"{where}: {self.name} must be at most {self.maximum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Band:
    id: str
    facts: str
    match: tuple[str, ...]
    products: frozenset[str]
    when: Mapping[str, Any]
    indicator: str | None  # fixed indicator, or None when `indicator_param` names a parameter
    indicator_param: str | None
    summary: string.Template
    detail: string.Template


@dataclass(frozen=True, slots=True)
class DoseSpec:
    match: tuple[str, ...]
    exclude: tuple[str, ...]
    basis_param: str
    equivalence_source_param: str | None
    evidence_basis: str | None = None  # the fixed basis the cited evidence states its figures in
    indication_conditions: tuple[str, ...] = ()  # condition value sets: the class is used for this
    indication_ingredients: frozenset[str] = frozenset()  # ingredients used almost only for it
    # ingredients whose excluded (procedural) forms belong to the session itself: listed, no advice
    given_with_session: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Citation:
    label: str
    url: str | None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    version: str
    title: str
    category: str
    evidence_tier: str
    clinical_status: str
    parameters: Mapping[str, Parameter]
    bands: tuple[Band, ...]
    dose: DoseSpec | None
    suggest_remove_order: frozenset[str]
    override_reasons: tuple[str, ...]
    citations: tuple[Citation, ...]
    policy_note: str | None
    when_then: str  # the plain-language comment that opens the file

    def valuesets(self) -> set[str]:
        urls = {url for band in self.bands for url in band.match}
        for band in self.bands:  # value sets a band's `when:` reads (allergy reactions)
            kinds = WHEN_KEYS.get(band.facts, {})
            urls.update(str(v) for k, v in band.when.items() if kinds.get(k) == VALUESET)
        if self.dose:
            urls.update(self.dose.match)
            urls.update(self.dose.exclude)
            urls.update(self.dose.indication_conditions)
        return urls


def _load_schema(schema_path: Path) -> Draft202012Validator:
    return schema_validator(schema_path)


def _leading_comment(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(part for part in lines if part)


def _template(text: str, where: str, names: Iterable[str]) -> string.Template:
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigError(f"{where}: invalid $placeholder syntax")
    unknown = set(template.get_identifiers()) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown placeholders {sorted(unknown)}")
    return template


def _when_keys_known(data: Any, where: str) -> None:
    """Every `when:` key is one the band's kind of fact understands (checked before the schema, whose
    message could not name the band)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("bands"), list):
        return
    for index, raw in enumerate(data["bands"]):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("when"), Mapping):
            continue
        facts = raw.get("facts", data.get("facts"))
        if not isinstance(facts, str) or facts not in WHEN_KEYS:
            continue  # the schema or the parser says what is wrong with the kind of fact
        allowed = {**COMMON_WHEN_KEYS, **WHEN_KEYS[facts]}
        for key in raw["when"]:
            if key in allowed:
                continue
            band_id = raw.get("id", f"#{index + 1}")
            elsewhere = sorted(kind for kind, keys in WHEN_KEYS.items() if key in keys)
            why = f"applies to {' and '.join(elsewhere)} facts, not {facts}" if elsewhere else "is unknown"
            raise ConfigError(
                f"{where}: band {band_id}: when key {key!r} {why}; {facts} bands may use {sorted(allowed)}"
            )


def _check_when_values(
    where: str, band_id: str, facts: str, when: Mapping[str, Any], parameters: Mapping[str, Parameter]
) -> None:
    """Each key's value is what its predicate reads: a declared parameter of the right type, or true."""
    allowed = {**COMMON_WHEN_KEYS, **WHEN_KEYS[facts]}  # every key is one of these (_when_keys_known)
    for key, value in when.items():
        expected = allowed[key]
        if expected in {FLAG, VALUESET}:
            continue  # the schema allows only `true`; value sets are checked with the rule's other sets
        if value not in parameters:
            raise ConfigError(f"{where}: band {band_id} when.{key} names undeclared parameter {value!r}")
        default = parameters[value].default
        is_switch = isinstance(default, bool)
        is_number = isinstance(default, (int, float)) and not is_switch
        if (expected == NUMBER and not is_number) or (expected == SWITCH and not is_switch):
            raise ConfigError(
                f"{where}: band {band_id} when.{key} must be {expected}; {value!r} is {default!r}"
            )


def _parse_rule(
    data: Mapping[str, Any],
    when_then: str,
    where: str,
    placeholders: Mapping[str, frozenset[str]],
    products: tuple[str, ...],
) -> Rule:
    parameters = {
        name: Parameter(
            name=name,
            default=spec["default"],
            description=spec["description"],
            source=spec["source"],
            unit=spec.get("unit"),
            allowed=tuple(spec["allowed"]) if "allowed" in spec else None,
            minimum=spec.get("minimum"),
            maximum=spec.get("maximum"),
            presets=spec.get("presets"),
        )
        for name, spec in data.get("parameters", {}).items()
    }
    for parameter in parameters.values():
        parameter.check(parameter.default, f"{where} default")
        for preset, value in (parameter.presets or {}).items():
            parameter.check(value, f"{where} preset {preset}")

    def param(name: str, context: str) -> str:
        if name not in parameters:
            raise ConfigError(f"{where}: {context} names undeclared parameter {name!r}")
        return name

    rule_facts = data.get("facts")
    bands = []
    for raw in data["bands"]:
        facts = raw.get("facts", rule_facts)
        if facts is None:
            raise ConfigError(f"{where}: band {raw['id']} has no facts kind (set it on the rule or band)")
        needs_match = facts in {"condition", "allergy"} or (facts == "medication" and "dose" not in data)
        if needs_match and not raw.get("match"):
            raise ConfigError(f"{where}: band {raw['id']} reads {facts} facts but matches no value set")
        if facts not in MATCHED_FACTS and raw.get("match"):
            raise ConfigError(
                f"{where}: band {raw['id']} reads {facts} facts, which no value set selects: remove `match`"
            )
        when = dict(raw.get("when", {}))
        _check_when_values(where, raw["id"], facts, when, parameters)
        if facts == "blood-pressure" and not {"systolic_at_least", "diastolic_at_least"} & set(when):
            raise ConfigError(
                f"{where}: band {raw['id']} reads blood pressures but sets neither when.systolic_at_least "
                "nor when.diastolic_at_least, so it could never fire"
            )
        indicator = raw["indicator"]
        indicator_param = None
        if isinstance(indicator, dict):
            indicator_param = param(indicator["param"], f"band {raw['id']} indicator")
            allowed = parameters[indicator_param].allowed or ()
            if not set(allowed) <= set(INDICATOR_RANK):
                raise ConfigError(f"{where}: parameter {indicator_param} must only allow card indicators")
            indicator = None
        names = placeholders[facts] | frozenset(parameters)
        bands.append(
            Band(
                id=raw["id"],
                facts=facts,
                match=tuple(raw.get("match", ())),
                products=frozenset(raw.get("products", products)),
                when=when,
                indicator=indicator,
                indicator_param=indicator_param,
                summary=_template(raw["summary"], f"{where} band {raw['id']} summary", names),
                detail=_template(raw["detail"], f"{where} band {raw['id']} detail", names),
            )
        )
    if len({band.id for band in bands}) != len(bands):
        raise ConfigError(f"{where}: band ids must be unique")

    dose = None
    if "dose" in data:
        spec = data["dose"]
        indication = spec.get("indication", {})
        dose = DoseSpec(
            match=tuple(spec["match"]),
            exclude=tuple(spec.get("exclude", ())),
            basis_param=param(spec["basis"], "dose.basis"),
            equivalence_source_param=(
                param(spec["equivalence_source"], "dose.equivalence_source")
                if "equivalence_source" in spec
                else None
            ),
            evidence_basis=spec.get("evidence_basis"),
            indication_conditions=tuple(indication.get("conditions", ())),
            indication_ingredients=frozenset(i.lower() for i in indication.get("ingredients", ())),
            given_with_session=frozenset(i.lower() for i in spec.get("given_with_session", ())),
        )
    if any(DOSE_WHEN_KEYS & set(band.when) for band in bands) and dose is None:
        raise ConfigError(f"{where}: dose bands need a `dose` block")
    if dose is not None:
        if any("indication" in band.when for band in bands) and not (
            dose.indication_conditions or dose.indication_ingredients
        ):
            raise ConfigError(f"{where}: `indication` bands need dose.indication")
        evidence_keys = {"evidence_total_above", "evidence_total_at_most"}
        if any(evidence_keys & set(band.when) for band in bands) and dose.evidence_basis is None:
            raise ConfigError(f"{where}: evidence_total bands need dose.evidence_basis")

    return Rule(
        id=data["id"],
        version=data["version"],
        title=data["title"],
        category=data["category"],
        evidence_tier=data["evidence_tier"],
        clinical_status=data.get("clinical_status", "active"),
        parameters=parameters,
        bands=tuple(bands),
        dose=dose,
        suggest_remove_order=frozenset(data.get("suggest_remove_order", ())),
        override_reasons=tuple(data.get("override_reasons", ())),
        citations=tuple(Citation(c["label"], c.get("url")) for c in data["citations"]),
        policy_note=data.get("policy_note"),
        when_then=when_then,
    )


def load_rules(
    rules_dir: Path,
    schema_path: Path,
    *,
    placeholders: Mapping[str, frozenset[str]],
    valueset_known: Callable[[str], bool],
    override_reason_known: Callable[[str], bool],
    products: tuple[str, ...],
) -> tuple[Rule, ...]:
    """Every `rules/*.yaml` except `_*`, `site-policy*` and the wording files; sorted by id."""
    validator = _load_schema(schema_path)
    rules: list[Rule] = []
    for path in sorted(rules_dir.glob("*.yaml")):
        if path.name.startswith(("_", "site-policy", "card-text", "page-text")):
            continue
        where = f"rules/{path.name}"
        text = path.read_text(encoding="utf-8")
        when_then = _leading_comment(text)
        if not (when_then.startswith("When") and " Then " in when_then):
            raise ConfigError(f"{where}: must open with a plain-language '# When ... Then ...' comment")
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
        _when_keys_known(data, where)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            location = "/".join(str(p) for p in first.absolute_path) or "(root)"
            raise ConfigError(f"{where}: {location}: {first.message}")
        rule = _parse_rule(data, when_then, where, placeholders, products)
        unknown_products = {p for band in rule.bands for p in band.products} - set(products)
        if unknown_products:
            raise ConfigError(f"{where}: unknown products {sorted(unknown_products)}")
        if f"{rule.id}.yaml" != path.name:
            raise ConfigError(f"{where}: file name must be the rule id ({rule.id}.yaml)")
        for url in sorted(rule.valuesets()):
            if not valueset_known(url):
                raise ConfigError(f"{where}: unknown value set {url}")
        for code in rule.override_reasons:
            if not override_reason_known(code):
                raise ConfigError(f"{where}: unknown override reason {code!r}")
        rules.append(rule)
    if not rules:
        raise ConfigError(f"no rules found in {rules_dir}")
    return tuple(sorted(rules, key=lambda r: r.id))
