"""Site policy: which threshold, window and tier applies, and where each value came from.

Resolution per rule parameter: the rule's evidence default, then the site's chosen preset (if the
parameter defines one, e.g. the clinic FAQ value), then an explicit site value. The origin travels with
the value so every card can say whether the evidence default or a site choice applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from cds.clinical.rules import Rule
from cds.clinical.schedule import parse_time_of_day
from cds.errors import ConfigError
from cds.loading import load_yaml

DEFAULT_ORIGIN = "default"
SITE_ORIGIN = "site"


@dataclass(frozen=True, slots=True)
class ResolvedParameter:
    value: Any
    origin: str  # "default", "site", or the name of the preset that set it


@dataclass(frozen=True, slots=True)
class SitePolicy:
    preset: str | None
    patient_view_scope: str
    treatments: frozenset[str]
    stale_after_days: int
    session_time: time  # usual session start, for orders that give only a day
    order_sign_instructions: bool  # show the patient-instructions card at order-sign too
    screen_link_hours: int  # how long a card's link to the screening page stays valid
    disabled_rules: frozenset[str]
    parameters: Mapping[str, Mapping[str, ResolvedParameter]]

    def param(self, rule_id: str, name: str) -> ResolvedParameter:
        return self.parameters[rule_id][name]

    def value(self, rule_id: str, name: str) -> Any:
        return self.parameters[rule_id][name].value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read site policy {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"site policy {path} must be a mapping")
    return data


def load_policy(
    defaults_path: Path, site_path: Path | None, schema_path: Path, rules: tuple[Rule, ...]
) -> SitePolicy:
    validator = Draft202012Validator(json.loads(schema_path.read_text(encoding="utf-8")))
    merged: dict[str, Any] = {}
    for source in (defaults_path, site_path):
        if source is None:
            continue
        data = _read_yaml(source)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
            raise ConfigError(f"site policy {source}: {where}: {errors[0].message}")
        site_params = data.pop("parameters", {})
        merged.update(data)
        for rule_id, overrides in site_params.items():
            merged.setdefault("parameters", {}).setdefault(rule_id, {}).update(overrides)

    by_id = {rule.id: rule for rule in rules}
    preset = merged.get("preset")
    if preset is not None and not any(
        preset in (p.presets or {}) for rule in rules for p in rule.parameters.values()
    ):
        raise ConfigError(f"site policy: no rule defines the preset {preset!r}")
    disabled = frozenset(merged.get("disabled_rules", ()))
    unknown_rules = (disabled | set(merged.get("parameters", {}))) - set(by_id)
    if unknown_rules:
        raise ConfigError(f"site policy names unknown rules: {sorted(unknown_rules)}")

    resolved: dict[str, dict[str, ResolvedParameter]] = {}
    for rule in rules:
        site_values = merged.get("parameters", {}).get(rule.id, {})
        unknown = set(site_values) - set(rule.parameters)
        if unknown:
            raise ConfigError(f"site policy: rule {rule.id} has no parameters {sorted(unknown)}")
        values: dict[str, ResolvedParameter] = {}
        for name, parameter in rule.parameters.items():
            current = ResolvedParameter(parameter.default, DEFAULT_ORIGIN)
            if preset is not None and parameter.presets and preset in parameter.presets:
                current = ResolvedParameter(parameter.presets[preset], preset)
            if name in site_values:
                parameter.check(site_values[name], f"site policy {rule.id}")
                current = ResolvedParameter(site_values[name], SITE_ORIGIN)
            values[name] = current
        resolved[rule.id] = values

    try:
        return SitePolicy(
            preset=preset,
            patient_view_scope=merged["patient_view_scope"],
            treatments=frozenset(merged["treatments"]),
            stale_after_days=int(merged["stale_after_days"]),
            session_time=parse_time_of_day(str(merged["session_time"])),
            order_sign_instructions=bool(merged["order_sign_instructions"]),
            screen_link_hours=int(merged["screen_link_hours"]),
            disabled_rules=disabled,
            parameters=resolved,
        )
    except KeyError as exc:
        raise ConfigError(f"site policy defaults are missing {exc}") from exc
