"""The whole screen of one call, as plain JSON data for the screening page behind every card.

The cards carry the decision; this record carries everything else: every check the screen ran (the
negatives included, "none found in 34 conditions checked"), the records, codes and dates behind each
finding, the dose arithmetic, the thresholds and windows that applied and where they came from, the data
that could not be obtained or read, and the citations. It is built once per call, stored, and rendered
by cds/web/templates/screen.html. Pure: wording from rules/page-text.yaml and rules/card-text.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cds.clinical.cards import CardText, Wording, card_values, fmt_date, note_text, onset_age_text
from cds.clinical.engine import EngineContext, Finding, Hit, product_text
from cds.clinical.policy import DEFAULT_ORIGIN, SITE_ORIGIN
from cds.clinical.rules import Rule
from cds.clinical.situation import FULL, INTERACTION, Situation
from cds.fhir.model import PatientFacts

if TYPE_CHECKING:
    from cds.clinical.knowledge import Knowledge
    from cds.clinical.screening import ScreenResult


@dataclass(frozen=True, slots=True)
class PageText(Wording):
    """rules/page-text.yaml, parsed."""


def _record(card_text: CardText, page: PageText, hit: Hit, values: Mapping[str, str]) -> dict[str, Any]:
    coding = ""
    method = card_text.raw["match_methods"].get(hit.match_method or "", hit.match_method or "")
    if hit.coding is not None and hit.coding.code:
        system = card_text.raw["systems"].get(hit.coding.system or "", hit.coding.system or "?")
        coding = page.fill(page.t("coding"), system=system, code=hit.coding.code, method=method)
    elif hit.match_method:
        coding = page.fill(page.t("coding_without_code"), method=method)
    label = hit.label or card_text.raw["resource_labels"].get(
        hit.source.resource_type, card_text.t("unlabelled")
    )
    when = ""
    if hit.date is not None:
        basis = card_text.raw["date_basis"].get(hit.date_basis or "", "")
        when = f"{basis} {hit.date.isoformat()}".strip()
    if hit.onset_age is not None:
        when += onset_age_text(card_text, hit.onset_age)
    return {
        "reference": hit.source.reference(),
        "label": label,
        "coding": coding,
        "date": when,
        "figures": hit.figures or "",
        "notes": [note_text(card_text, n, values) for n in hit.notes],
    }


def _policy(page: PageText, ctx: EngineContext, finding: Finding) -> list[str]:
    lines = []
    for name in finding.parameters_used:
        parameter = finding.rule.parameters[name]
        resolved = ctx.policy.param(finding.rule.id, name)
        unit = f" {parameter.unit}" if parameter.unit else ""
        faq = (parameter.presets or {}).get("clinic_faq")
        if resolved.origin == DEFAULT_ORIGIN:
            if faq is not None and faq != parameter.default:
                origin = page.fill(
                    page.t("origin", "default_with_faq"), source=parameter.source, faq=f"{faq}{unit}"
                )
            else:
                origin = page.fill(page.t("origin", "default"), source=parameter.source)
        elif resolved.origin == SITE_ORIGIN:
            origin = page.fill(page.t("origin", "site"), default=f"{parameter.default}{unit}")
        else:
            preset = page.raw["preset_names"].get(resolved.origin, resolved.origin)
            origin = page.fill(
                page.t("origin", "preset"), preset=preset, default=f"{parameter.default}{unit}"
            )
        lines.append(
            page.fill(
                page.t("policy_line"),
                description=parameter.description.rstrip("."),
                value=finding.values.get(name, str(resolved.value)),
                unit=unit,
                origin=origin,
            )
        )
    if finding.rule.policy_note:
        lines.append(" ".join(finding.rule.policy_note.split()))
    return lines


def _kind_counts(checked: Mapping[str, int], facts: PatientFacts | None) -> dict[str, int]:
    """Records read per kind: every record of the chart was checked, including those the screen set
    aside early because no rule is about them, so the counts come from what was read."""
    if facts is None:
        return {}
    return {
        "condition": checked.get("Condition", 0),
        "allergy": checked.get("AllergyIntolerance", 0),
        "medication": checked.get("MedicationStatement", 0) + checked.get("MedicationRequest", 0),
        "blood-pressure": checked.get("Observation", 0),
    }


def _completeness(
    page: PageText,
    fetched: Sequence[str],
    counts: Mapping[str, int],
    facts: PatientFacts | None,
    unreadable: Finding | None,
) -> list[str]:
    """What the screen could and could not see: never "nothing found" for data it did not have."""
    lines = [
        page.fill(page.t("completeness", "fetched"), keys=", ".join(fetched))
        if fetched
        else page.t("completeness", "nothing_fetched")
    ]
    if counts:
        lines.append(
            page.fill(
                page.t("completeness", "counts"),
                conditions=str(counts["condition"]),
                medications=str(counts["medication"]),
                allergies=str(counts["allergy"]),
                readings=str(counts["blood-pressure"]),
            )
        )
    gaps = facts.gaps if facts is not None else ()
    for gap in gaps:
        lines.append(page.fill(page.t("completeness", "gap"), category=gap.category, reason=gap.reason))
    if unreadable is not None:
        lines.append(page.fill(page.t("completeness", "unreadable"), count=str(len(unreadable.hits))))
    elif not gaps:
        lines.append(page.t("completeness", "complete"))
    return lines


def _applies(rule: Rule, situation: Situation, ctx: EngineContext) -> bool:
    if rule.id in ctx.policy.disabled_rules:
        return False
    if situation.mode == INTERACTION and rule.category != "interaction":
        return False
    return not (rule.category == "procedure" and not situation.ketamine_orders)


def build_record(
    *,
    findings: Sequence[Finding],
    rules: Sequence[Rule],
    situation: Situation,
    facts: PatientFacts | None,
    cards: Sequence[Mapping[str, Any]],
    fetched: Sequence[str],
    checked: Mapping[str, int],
    ctx: EngineContext,
    card_text: CardText,
    page: PageText,
    now: datetime,
) -> dict[str, Any]:
    """The screen as JSON: cards, checks (findings and negatives), completeness, in a stable order."""
    product = product_text(ctx, situation.products) if situation.products else ""
    by_rule = {f.rule.id: f for f in findings}
    counts = _kind_counts(checked, facts)
    today = situation.clock_date
    checks: list[dict[str, Any]] = []
    for rule in rules:
        if not _applies(rule, situation, ctx) or situation.mode not in {FULL, INTERACTION}:
            continue
        finding = by_rule.get(rule.id)
        check: dict[str, Any] = {"rule": rule.id, "title": rule.title, "category": rule.category}
        check["rule_line"] = page.fill(page.t("rule_line"), rule_id=rule.id, version=rule.version)
        check["citations"] = [{"label": c.label, "url": c.url or ""} for c in rule.citations]
        if finding is None:
            kinds = sorted({band.facts for band in rule.bands if band.products & situation.products})
            if not kinds:
                check["status"] = "not-applicable"
                check["statement"] = page.fill(page.t("not_applicable"), product=product)
            else:
                check["status"] = "clear"
                parts = []
                for kind in kinds:
                    label = page.raw["kinds"].get(kind, kind)
                    if kind in counts:
                        key = "clear_line" if counts[kind] else "clear_line_none"
                        parts.append(page.fill(page.t(key), count=str(counts[kind]), kind=label))
                check["statement"] = " ".join(dict.fromkeys(parts)) or page.t("status", "clear")
            checks.append(check)
            continue
        values = card_values(card_text, ctx, finding, situation)
        check["status"] = finding.indicator
        check["statement"] = " ".join(finding.band.summary.safe_substitute(values).split())
        check["explanation"] = " ".join(finding.band.detail.safe_substitute(values).replace("**", "").split())
        check["records"] = [_record(card_text, page, h, values) for h in finding.hits]
        check["other_records"] = [_record(card_text, page, h, values) for h in finding.other_hits]
        check["policy"] = _policy(page, ctx, finding)
        checks.append(check)
    rank = {"critical": 0, "warning": 1, "info": 2, "clear": 3, "not-applicable": 4}
    checks.sort(key=lambda c: rank[c["status"]])
    completeness = _completeness(page, fetched, counts, facts, by_rule.get("unreadable-records"))
    key = "order" if situation.reference_from_order else "today"
    return {
        "hook": situation.hook,
        "screened_for": page.fill(
            page.t("screened_for"), product=product, moment=page.raw["hooks"].get(situation.hook, "")
        )
        if product
        else "",
        "reference": page.fill(
            page.t("reference_date", key),
            date=fmt_date(card_text, situation.reference_date, today),
            today=fmt_date(card_text, today, today),
        ),
        "screened_at": now.strftime(page.t("moment_format")),
        "cards": [
            {"summary": c["summary"], "indicator": c["indicator"], "detail": c.get("detail", "")}
            for c in cards
        ],
        "checks": checks,
        "completeness": completeness,
    }


def record_of(knowledge: Knowledge, result: ScreenResult, now: datetime) -> dict[str, Any]:
    """`build_record` for one screen's result, with the wording and context the knowledge holds."""
    return build_record(
        findings=result.findings,
        rules=knowledge.rules,
        situation=result.situation,
        facts=result.facts,
        cards=result.cards,
        fetched=result.fetched,
        checked=result.checked,
        ctx=knowledge.engine_context(),
        card_text=knowledge.card_text,
        page=knowledge.page_text,
        now=now,
    )
