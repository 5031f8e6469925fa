"""Findings -> CDS Hooks 2.0 cards. Deterministic given the uuid source; no empty or null values.

The frame (evidence trail, site-policy lines, notes) comes from rules/card-text.yaml; each rule supplies
its own summary and detail. Suggestions are offered only where acting on them is safe: removing the draft
ketamine or esketamine order on an order hook. Nothing here ever suggests stopping another medicine.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds.clinical.engine import EngineContext, Finding, Hit, fmt_number, product_text
from cds.clinical.policy import DEFAULT_ORIGIN, SITE_ORIGIN
from cds.clinical.rules import Rule
from cds.clinical.situation import Situation
from cds.fhir.model import OnsetAge
from cds.ids import new_uuid

SUMMARY_LIMIT = 139  # the spec's "<140 characters"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # an order a suggestion may delete must be addressable


@dataclass(frozen=True, slots=True)
class OverrideReason:
    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class CardText:
    """rules/card-text.yaml, parsed."""

    raw: Mapping[str, Any]

    def t(self, *path: str) -> str:
        node: Any = self.raw
        for key in path:
            node = node[key]
        return str(node)

    def fill(self, template: str, **values: str) -> str:
        return string.Template(template).safe_substitute(values)


def _truncate(text: str, limit: int = SUMMARY_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _note(text: CardText, note: str, values: Mapping[str, str]) -> str:
    """A note code -> its sentence; `prefix:detail` codes without their own sentence use the prefix's."""
    notes = text.raw["notes"]
    if note in notes:
        return text.fill(notes[note], **values)
    prefix, _, detail = note.partition(":")
    if f"{prefix}:" in notes:
        return text.fill(notes[f"{prefix}:"], detail=detail, **values)
    return note


def _record_line(text: CardText, hit: Hit, policy_values: Mapping[str, str]) -> str:
    coding = ""
    if hit.coding is not None and hit.coding.code:
        system = text.raw["systems"].get(hit.coding.system or "", hit.coding.system or "?")
        coding = text.fill(
            text.t("coding"),
            system=system,
            code=hit.coding.code,
            method=text.raw["match_methods"].get(hit.match_method or "", hit.match_method or "?"),
        )
    elif hit.match_method:
        method = text.raw["match_methods"].get(hit.match_method, hit.match_method)
        coding = text.fill(text.t("coding_without_code"), method=method)
    date = ""
    if hit.date is not None:
        basis = text.raw["date_basis"].get(hit.date_basis or "", hit.date_basis or "")
        date = text.fill(text.t("date"), basis=basis, value=hit.date.isoformat())
    if hit.onset_age is not None:
        date += _onset_age_text(text, hit.onset_age)
    figures = text.fill(text.t("figures"), figures=hit.figures) if hit.figures else ""
    notes = ""
    rendered = [_note(text, note, policy_values) for note in hit.notes]
    if rendered:
        notes = "; " + "; ".join(rendered)
    return text.fill(
        text.t("record"),
        reference=hit.source.reference(),
        label=hit.label or text.raw["resource_labels"].get(hit.source.resource_type, text.t("unlabelled")),
        coding=coding,
        date=date,
        figures=figures,
        notes=notes,
    )


def _onset_age_text(text: CardText, age: OnsetAge) -> str:
    unit = text.raw["age_units"].get(age.unit, age.unit)
    ages = fmt_number(age.low) if age.low == age.high else f"{fmt_number(age.low)}-{fmt_number(age.high)}"
    if age.earliest is None or age.latest is None:
        return text.fill(text.t("onset_age", "undated"), ages=ages, unit=unit)
    return text.fill(
        text.t("onset_age", "dated"),
        ages=ages,
        unit=unit,
        earliest=age.earliest.isoformat(),
        latest=age.latest.isoformat(),
    )


def _policy_lines(text: CardText, ctx: EngineContext, finding: Finding) -> list[str]:
    lines = []
    for name in finding.parameters_used:
        parameter = finding.rule.parameters[name]
        resolved = ctx.policy.param(finding.rule.id, name)
        default = str(parameter.default)
        faq = (parameter.presets or {}).get("clinic_faq")
        if resolved.origin == DEFAULT_ORIGIN:
            if faq is not None and faq != parameter.default:
                origin = text.fill(
                    text.t("origin", "default_with_faq"),
                    source=parameter.source,
                    faq=f"{faq}{' ' + parameter.unit if parameter.unit else ''}",
                )
            else:
                origin = text.fill(text.t("origin", "default"), source=parameter.source)
        elif resolved.origin == SITE_ORIGIN:
            origin = text.fill(text.t("origin", "site"), default=default)
        else:
            preset = text.raw["preset_names"].get(resolved.origin, resolved.origin)
            origin = text.fill(text.t("origin", "preset"), preset=preset, default=default)
        lines.append(
            text.fill(
                text.t("policy_line"),
                description=parameter.description.rstrip("."),
                value=finding.values.get(name, str(resolved.value)),
                unit=f" {parameter.unit}" if parameter.unit else "",
                origin=origin,
            )
        )
    return lines


def _detail(text: CardText, ctx: EngineContext, finding: Finding, situation: Situation) -> str:
    values = dict(finding.values)
    values["stale_after_days"] = str(ctx.policy.stale_after_days)
    parts = [finding.band.detail.safe_substitute(values).strip()]
    if finding.hits:
        parts.append(text.t("headings", "records"))
        parts.append("\n".join(_record_line(text, hit, values) for hit in finding.hits))
    if finding.other_hits:
        parts.append(text.t("headings", "other_records"))
        parts.append("\n".join(_record_line(text, hit, values) for hit in finding.other_hits))
    policy = _policy_lines(text, ctx, finding)
    dated = any(h.date_basis in {"onset", "recorded"} for h in finding.hits)
    if dated or "onset_within_months" in finding.band.when:
        key = "order" if situation.reference_from_order else "today"
        policy.append(
            "- " + text.fill(text.t("reference_date", key), date=situation.reference_date.isoformat())
        )
    if finding.rule.policy_note:
        policy.append("- " + finding.rule.policy_note.strip())
    if policy:
        parts.append(text.t("headings", "policy"))
        parts.append("\n".join(policy))
    parts.append(text.t("headings", "sources"))
    parts.append(
        "\n".join(f"- [{c.label}]({c.url})" if c.url else f"- {c.label}" for c in finding.rule.citations)
    )
    parts.append(
        text.fill(
            text.t("rule_line"),
            rule_id=finding.rule.id,
            version=finding.rule.version,
            tier=finding.rule.evidence_tier,
        )
    )
    return "\n\n".join(p for p in parts if p)


def _override_reasons(
    text: CardText, rule: Rule, catalogue: Mapping[str, OverrideReason]
) -> list[dict[str, str]]:
    codes = rule.override_reasons or tuple(text.raw["default_override_reasons"][rule.category])
    return [
        {"system": catalogue[c].system, "code": catalogue[c].code, "display": catalogue[c].display}
        for c in codes
    ]


def render_cards(
    findings: Sequence[Finding],
    situation: Situation,
    *,
    ctx: EngineContext,
    text: CardText,
    override_catalogue: Mapping[str, OverrideReason],
    new_uuid: Callable[[], str] = new_uuid,
) -> list[dict[str, Any]]:
    cards = []
    for finding in findings:
        rule = finding.rule
        values = dict(finding.values)
        card: dict[str, Any] = {
            "uuid": new_uuid(),
            "summary": _truncate(finding.band.summary.safe_substitute(values)),
            "indicator": finding.indicator,
            "detail": _detail(text, ctx, finding, situation),
            "source": {
                "label": text.t("source_label"),
                "topic": {
                    "system": text.t("rules_code_system"),
                    "code": rule.id,
                    "display": rule.title,
                },
            },
        }
        if (
            situation.hook in {"order-select", "order-sign"}
            and situation.ketamine_orders
            and finding.indicator in rule.suggest_remove_order
        ):
            product = product_text(ctx, situation.products)
            card["suggestions"] = [
                {
                    "label": text.fill(text.t("suggestion_remove_order"), product=product),
                    "uuid": new_uuid(),
                    "actions": [
                        {
                            "type": "delete",
                            "description": text.fill(
                                text.t("suggestion_remove_order_action"), product=product
                            ),
                            "resourceId": order.source.reference(),
                        }
                        for order in situation.ketamine_orders
                        if order.source.id and FHIR_ID.fullmatch(order.source.id)
                    ],
                }
            ]
            if not card["suggestions"][0]["actions"]:
                del card["suggestions"]
            else:
                card["selectionBehavior"] = "at-most-one"
        reasons = _override_reasons(text, rule, override_catalogue)
        if reasons:
            card["overrideReasons"] = reasons
        links = [{"label": c.label, "url": c.url, "type": "absolute"} for c in rule.citations if c.url]
        if links:
            card["links"] = links
        cards.append(card)
    return cards
