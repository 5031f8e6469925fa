"""Findings -> CDS Hooks 2.0 cards a clinician acts on in ten seconds. Deterministic given the uuid source.

One card per problem, the decision on the card and the rest one click away on the screening page:
- critical and warning findings get a card each (critical first); info findings share one "Also noted"
  card; at order-sign on a ketamine order the pharmacist gets one "Pre-session review" card with every
  check's status, and separate cards only for what blocks the session;
- a card's detail is the rule's own text, the newest records behind it, and a site setting only when it
  differs from the default; tiers, presets, codes and citations stay off the card (citations are links);
- dates are calendar dates, counted from the planned start when the order has one (cds.clinical.schedule).

All wording comes from rules/card-text.yaml and the rules; nothing here ever suggests stopping a medicine.
"""

from __future__ import annotations

import copy
import hashlib
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from cds.clinical.engine import EngineContext, Finding, Hit, fmt_number, latest_blood_pressure, product_text
from cds.clinical.policy import DEFAULT_ORIGIN
from cds.clinical.rules import INDICATOR_RANK, Rule
from cds.clinical.schedule import hold_window, months_between, session_start, window_ends
from cds.clinical.situation import Situation
from cds.fhir.model import OnsetAge, PatientFacts
from cds.ids import new_uuid

SUMMARY_LIMIT = 139  # the spec's "<140 characters"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # an order a suggestion may delete must be addressable
DETAIL_LIMIT = 900  # about 120 words
ALSO_NOTED = "also-noted"
PRE_SESSION_REVIEW = "pre-session-review"
HOLD_PARAMETERS = ("hold_hours_before", "resume_hours_after")
FINDINGS_EXTENSION = "ketamine-cds-findings"


@dataclass(frozen=True, slots=True)
class OverrideReason:
    system: str
    code: str
    display: str


@dataclass(frozen=True, slots=True)
class Wording:
    """A parsed wording file (rules/card-text.yaml, rules/page-text.yaml): look up and fill templates."""

    raw: Mapping[str, Any]

    def t(self, *path: str) -> str:
        node: Any = self.raw
        for key in path:
            node = node[key]
        return str(node)

    def fill(self, template: str, **values: str) -> str:
        return string.Template(template).safe_substitute(values)


@dataclass(frozen=True, slots=True)
class CardText(Wording):
    """rules/card-text.yaml, parsed."""


@dataclass(frozen=True, slots=True)
class CardLinks:
    """Where the card's own links point: the screening page for this call and the rules page."""

    screen_url: str | None = None  # the whole screen for this call (opaque id + signed token)
    rules_url: str | None = None  # the service's page about its rules (card.source.url)
    smart_launch_url: str | None = None  # set when the site registers the service as a SMART app


@dataclass(frozen=True, slots=True)
class RenderedCard:
    """A card and the findings it carries (one, or several on a consolidated card)."""

    card: dict[str, Any]
    findings: tuple[Finding, ...]
    topic: str  # the rule id, or ALSO_NOTED / PRE_SESSION_REVIEW
    version: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CardInputs:
    """Everything besides the findings that a card may quote."""

    situation: Situation
    facts: PatientFacts | None = None
    draft_orders: Sequence[Mapping[str, Any]] = ()  # raw draft orders, for "move the planned start"
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "Type/id" -> resource
    links: CardLinks = CardLinks()


# ------------------------------------------------------------------------------------------ formatting


def _truncate(text: str, limit: int = SUMMARY_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def fmt_date(text: CardText, day: date, today: date | None = None) -> str:
    """ "1 Oct" in the clock's year, "11 Jul 2027" in any other year (a bare day and month across a new
    year reads as the wrong year)."""
    short = today is not None and day.year == today.year
    return day.strftime(text.t("date_format", "short" if short else "long")).lstrip("0")


def fmt_datetime(text: CardText, moment: datetime, today: date | None = None) -> str:
    return text.fill(
        text.t("date_format", "moment_today" if moment.date() == today else "moment"),
        time=moment.strftime("%H:%M"),
        date=fmt_date(text, moment.date(), today),
    )


def note_text(text: CardText, note: str, values: Mapping[str, str]) -> str:
    """A note code -> its sentence; `prefix:detail` codes without their own sentence use the prefix's."""
    notes = text.raw["notes"]
    if note in notes:
        return text.fill(notes[note], **values)
    prefix, _, detail = note.partition(":")
    if f"{prefix}:" in notes:
        return text.fill(notes[f"{prefix}:"], detail=detail, **values)
    return note


def _newest_first(hits: Sequence[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (h.date is not None, h.date or date.min), reverse=True)


# ------------------------------------------------------------------------------------- card values


def card_values(text: CardText, ctx: EngineContext, finding: Finding, situation: Situation) -> dict[str, str]:
    """The finding's template values plus the dates a card states: the newest record's date, how long ago
    it was from today and from the planned start, when a time window ends, and a benzodiazepine hold."""
    values = dict(finding.values)
    today = situation.clock_date
    ref = situation.reference_date
    values["stale_after_days"] = str(ctx.policy.stale_after_days)
    values["start"] = fmt_date(text, ref, today)
    values["counted_from"] = text.fill(
        text.t("counted_from", "order" if situation.reference_from_order else "today"), date=values["start"]
    )
    dated = [h for h in finding.hits if h.date is not None]
    if dated:
        newest = max(dated, key=lambda h: h.date or date.min)
        assert newest.date is not None
        span = newest.span or (
            (newest.onset_age.earliest, newest.onset_age.latest)
            if newest.onset_age is not None and newest.onset_age.earliest and newest.onset_age.latest
            else None
        )
        if span is not None and span[0] != span[1]:
            # a span (an age, a period, a month): both ends, never one invented day
            values["onset"] = f"{fmt_date(text, span[0])} to {fmt_date(text, span[1])}"  # with years
            values["months_ago"] = _months_range(text, newest.date, span[0], ref)
            values["months_ago_today"] = _months_range(text, newest.date, span[0], today)
        else:
            values["onset"] = fmt_date(text, newest.date, today)
            date_value = text.raw.get("date_values", {}).get(newest.date_basis or "")
            if date_value:  # e.g. an onset known only as an age: "22 Nov at the latest"
                values["onset"] = text.fill(date_value, date=values["onset"])
            values["months_ago"] = _months(text, months_between(newest.date, ref))
            values["months_ago_today"] = _months(text, months_between(newest.date, today))
        if newest.label and finding.band.facts == "condition":
            values["condition"] = newest.label
        window = finding.band.when.get("onset_within_months")
        if isinstance(window, str):
            ends = window_ends(newest.date, float(ctx.policy.value(finding.rule.id, window)))
            values["eligible_from"] = fmt_date(text, ends, today)
            values["eligible_from_iso"] = ends.isoformat()
    if "reading_date" in values and finding.hits and finding.hits[0].date:
        values["reading_date"] = fmt_date(text, finding.hits[0].date, today)
    if all(name in finding.rule.parameters for name in HOLD_PARAMETERS):
        values.update(hold_values(text, ctx, finding.rule, situation))
    return values


def _months_range(text: CardText, latest_day: date, earliest_day: date, reference: date) -> str:
    latest, earliest = months_between(latest_day, reference), months_between(earliest_day, reference)
    if latest == earliest:
        return _months(text, latest)
    return text.fill(text.t("months_ago", "range"), low=str(latest), high=str(earliest))


def _months(text: CardText, count: int) -> str:
    """Whole months in words: "under a month", "1 month", "5 months"."""
    if count <= 0:
        return text.t("months_ago", "none")
    if count == 1:
        return text.t("months_ago", "one")
    return text.fill(text.t("months_ago", "many"), count=str(count))


def hold_values(text: CardText, ctx: EngineContext, rule: Rule, situation: Situation) -> dict[str, str]:
    """The hold plan in calendar date-times when the order names a session day, else in hours."""
    before, after = (ctx.policy.value(rule.id, name) for name in HOLD_PARAMETERS)
    start = session_start(situation.reference_date, ctx.policy.session_time)
    window = hold_window(start, before, after)
    today = situation.clock_date
    values = {
        "hold_hours": _hours(window.hold_hours),
        "resume_hours": _hours(window.resume_hours),
        "session": fmt_datetime(text, window.session, today),
        "last_dose_by": fmt_datetime(text, window.last_dose_by, today),
        "resume_from": fmt_datetime(text, window.resume_from, today),
    }
    key = "dated" if situation.reference_from_order else "undated"
    if situation.reference_from_order and window.last_dose_by.date() < today:
        # the full hold can no longer be kept: never print a last-dose time already gone
        key = "late" if window.last_dose_latest.date() >= today else "too_late"
        values["shortest_hours"] = _hours(window.shortest_hold_hours)
        values["last_dose_latest"] = fmt_datetime(text, window.last_dose_latest, today)
        values["session_day"] = fmt_date(text, window.session.date(), today)
    values["hold_state"] = key
    values["hold_plan"] = text.fill(text.t("hold_plan", key), **values)
    values["hold_short"] = text.fill(text.t("hold_short", key), **values)
    return values


def _hours(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


# ------------------------------------------------------------------------------------------- detail


def _record_line(text: CardText, hit: Hit, values: Mapping[str, str], today: date) -> str:
    label = hit.label or text.raw["resource_labels"].get(hit.source.resource_type, text.t("unlabelled"))
    parts = [label]
    if hit.figures:
        parts.append(hit.figures)
    if hit.date is not None:
        basis = text.raw["date_basis"].get(hit.date_basis or "", "")
        parts.append(f"{basis} {fmt_date(text, hit.date, today)}".strip())
    if hit.onset_age is not None:
        parts.append(onset_age_text(text, hit.onset_age).strip(" ()"))
    parts.extend(note_text(text, note, values) for note in hit.notes)
    return text.fill(text.t("record"), line=", ".join(parts))


def onset_age_text(text: CardText, age: OnsetAge) -> str:
    """An onset recorded as an age, with the dates it spans when the birth date is known."""
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


def _records(text: CardText, hits: Sequence[Hit], values: Mapping[str, str], today: date, shown: int) -> str:
    ordered = _newest_first(hits)
    lines = [_record_line(text, hit, values, today) for hit in ordered[:shown]]
    hidden = len(ordered) - shown
    if hidden == 1:
        lines.append(text.t("more_record"))
    elif hidden > 1:
        lines.append(text.fill(text.t("more_records"), count=str(hidden)))
    return "\n".join(lines)


def _site_settings(text: CardText, ctx: EngineContext, finding: Finding) -> str:
    """Say a threshold or window only when the site chose a value other than the evidence default."""
    lines = []
    for name in finding.parameters_used:
        resolved = ctx.policy.param(finding.rule.id, name)
        parameter = finding.rule.parameters[name]
        if resolved.origin == DEFAULT_ORIGIN or resolved.value == parameter.default:
            continue
        unit = f" {parameter.unit}" if parameter.unit else ""
        lines.append(
            text.fill(
                text.t("site_setting"),
                description=parameter.description.rstrip("."),
                value=f"{resolved.value}{unit}",
                default=f"{parameter.default}{unit}",
            )
        )
    return "\n".join(lines)


def _fit(parts: Callable[[int], list[str]]) -> str:
    """The detail with as many records as fit in DETAIL_LIMIT (three at most, one at least)."""
    for shown in (3, 2, 1, 0):
        detail = "\n\n".join(p for p in parts(shown) if p)
        if len(detail) <= DETAIL_LIMIT:
            return detail
    return detail[: DETAIL_LIMIT - 1].rstrip() + "…"


def _detail(
    text: CardText, ctx: EngineContext, finding: Finding, values: Mapping[str, str], clock: date
) -> str:
    body = " ".join(finding.band.detail.safe_substitute(values).split())
    dated = any(h.date_basis in {"onset", "recorded"} for h in finding.hits) or (
        "onset_within_months" in finding.band.when
    )

    def parts(shown: int) -> list[str]:
        return [
            body,
            _records(text, finding.hits, values, clock, shown) if finding.hits else "",
            _site_settings(text, ctx, finding),
            values["counted_from"] if dated else "",
        ]

    return _fit(parts)


# ---------------------------------------------------------------------------------------- suggestions


def _remove_order(
    text: CardText, ctx: EngineContext, situation: Situation, uuid: Callable[[], str]
) -> list[Any]:
    product = product_text(ctx, situation.products)
    actions = [
        {
            "type": "delete",
            "description": text.fill(text.t("suggestion_remove_order_action"), product=product),
            "resourceId": order.source.reference(),
        }
        for order in situation.ketamine_orders
        if order.source.id and FHIR_ID.fullmatch(order.source.id)
    ]
    if not actions:
        return []
    return [
        {
            "label": text.fill(text.t("suggestion_remove_order"), product=product),
            "uuid": uuid(),
            "actions": actions,
        }
    ]


def _moved_order(order: Mapping[str, Any], new_start: date, old_start: date | None) -> dict[str, Any]:
    """A copy of the draft order whose timing starts on `new_start` (events shift by the same days)."""
    moved = copy.deepcopy(dict(order))
    shift = (new_start - old_start) if old_start else None
    for dosage in moved.get("dosageInstruction") or []:
        if not isinstance(dosage, dict):
            continue
        timing = dosage.setdefault("timing", {})
        if not isinstance(timing, dict):
            continue
        events = timing.get("event")
        if isinstance(events, list) and shift is not None:
            timing["event"] = [_shift(e, shift) for e in events]
        repeat = timing.setdefault("repeat", {})
        if isinstance(repeat, dict):
            bounds = repeat.setdefault("boundsPeriod", {})
            if isinstance(bounds, dict):
                bounds["start"] = new_start.isoformat()
    return moved


def _shift(value: Any, shift: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if len(value) == 10:
            return (date.fromisoformat(value) + shift).isoformat()
        return (datetime.fromisoformat(value) + shift).isoformat()
    except ValueError:
        return value


def _move_start(
    text: CardText, finding: Finding, values: Mapping[str, str], inputs: CardInputs, uuid: Callable[[], str]
) -> list[Any]:
    iso = values.get("eligible_from_iso")
    situation = inputs.situation
    if not iso or not situation.ketamine_orders or finding.indicator != "critical":
        return []
    new_start = date.fromisoformat(iso)
    by_ref = {f"{o.get('resourceType')}/{o.get('id')}": o for o in inputs.draft_orders if o.get("id")}
    actions = []
    for order in situation.ketamine_orders:
        raw = by_ref.get(order.source.reference())
        if raw is None:
            continue
        actions.append(
            {
                "type": "update",
                "description": text.fill(
                    text.t("suggestion_move_start_action"), date=values["eligible_from"]
                ),
                "resource": _moved_order(raw, new_start, order.planned_start),
            }
        )
    if not actions:
        return []
    return [
        {
            "label": text.fill(text.t("suggestion_move_start"), date=values["eligible_from"]),
            "uuid": uuid(),
            "actions": actions,
        }
    ]


def _confirm_hold(
    text: CardText, finding: Finding, values: Mapping[str, str], inputs: CardInputs, uuid: Callable[[], str]
) -> list[Any]:
    """Ask the benzodiazepine's prescriber to confirm the hold plan: a draft CommunicationRequest."""
    # Only where the band itself advises a timed hold (never for an antiepileptic benzodiazepine).
    wording = {*finding.band.summary.get_identifiers(), *finding.band.detail.get_identifiers()}
    if not wording & {"hold_plan", "hold_short"} or finding.indicator == "info":
        return []
    situation = inputs.situation
    medicines = [h.source.reference() for h in finding.hits if h.source.id]
    recipients: list[dict[str, str]] = []
    for ref in medicines:
        requester = (inputs.resources.get(ref) or {}).get("requester")
        reference = requester.get("reference") if isinstance(requester, dict) else None
        if isinstance(reference, str) and {"reference": reference} not in recipients:
            recipients.append({"reference": reference})
    resource: dict[str, Any] = {
        "resourceType": "CommunicationRequest",
        "status": "draft",
        "priority": "routine",
        "payload": [
            {
                "contentString": text.fill(
                    text.t("hold_request_text", values.get("hold_state", "dated")), **values
                )
            }
        ],
        "about": [{"reference": ref} for ref in medicines][:10],
    }
    if inputs.facts is not None and inputs.facts.patient_ref:
        resource["subject"] = {"reference": inputs.facts.patient_ref}
    if recipients:
        resource["recipient"] = recipients
    if situation.ketamine_orders and situation.reference_from_order:
        resource["occurrenceDateTime"] = situation.reference_date.isoformat()
    return [
        {
            "label": text.t("suggestion_confirm_hold"),
            "uuid": uuid(),
            "actions": [
                {
                    "type": "create",
                    "description": text.t("suggestion_confirm_hold_action"),
                    "resource": resource,
                }
            ],
        }
    ]


# ---------------------------------------------------------------------------------------------- cards


def _override_reasons(
    text: CardText, rules: Sequence[Rule], catalogue: Mapping[str, OverrideReason]
) -> list[dict[str, str]]:
    codes: list[str] = []
    for rule in rules:
        for code in rule.override_reasons or tuple(text.raw["default_override_reasons"][rule.category]):
            if code not in codes:
                codes.append(code)
    return [
        {"system": catalogue[c].system, "code": catalogue[c].code, "display": catalogue[c].display}
        for c in codes
    ]


def _links(text: CardText, findings: Sequence[Finding], links: CardLinks) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if links.screen_url:
        out.append({"label": text.t("screen_link"), "url": links.screen_url, "type": "absolute"})
        if links.smart_launch_url:
            out.append({"label": text.t("screen_link_smart"), "url": links.smart_launch_url, "type": "smart"})
    seen = set()
    for finding in findings:
        for citation in finding.rule.citations:
            if citation.url and citation.url not in seen:
                seen.add(citation.url)
                out.append({"label": citation.label, "url": citation.url, "type": "absolute"})
    return out


def _source(text: CardText, code: str, display: str, links: CardLinks) -> dict[str, Any]:
    source: dict[str, Any] = {
        "label": text.t("source_label"),
        "topic": {"system": text.t("rules_code_system"), "code": code, "display": display},
    }
    if links.rules_url:
        source["url"] = links.rules_url
    return source


def _fingerprint(findings: Sequence[Finding]) -> str:
    if len(findings) == 1:
        return findings[0].fingerprint
    return hashlib.sha256("|".join(f.fingerprint for f in findings).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Renderer:
    ctx: EngineContext
    text: CardText
    inputs: CardInputs
    catalogue: Mapping[str, OverrideReason]
    uuid: Callable[[], str]

    def values(self, finding: Finding) -> dict[str, str]:
        return card_values(self.text, self.ctx, finding, self.inputs.situation)

    def single(self, finding: Finding) -> RenderedCard:
        text, situation = self.text, self.inputs.situation
        values = self.values(finding)
        card: dict[str, Any] = {
            "uuid": self.uuid(),
            "summary": _truncate(finding.band.summary.safe_substitute(values)),
            "indicator": finding.indicator,
            "detail": _detail(text, self.ctx, finding, values, situation.clock_date),
            "source": _source(text, finding.rule.id, finding.rule.title, self.inputs.links),
        }
        suggestions: list[Any] = []
        if situation.hook in {"order-select", "order-sign"}:
            suggestions += _move_start(text, finding, values, self.inputs, self.uuid)
            suggestions += _confirm_hold(text, finding, values, self.inputs, self.uuid)
            if situation.ketamine_orders and finding.indicator in finding.rule.suggest_remove_order:
                suggestions += _remove_order(text, self.ctx, situation, self.uuid)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        return self._finish(card, [finding], finding.rule.id, finding.rule.version)

    def consolidated(self, topic: str, findings: Sequence[Finding], lines: Sequence[str]) -> RenderedCard:
        text = self.text
        indicator = max((f.indicator for f in findings), key=INDICATOR_RANK.__getitem__, default="info")
        items = [text.fill(text.t("consolidated_line"), line=line) for line in lines]
        detail = "\n".join(items)
        kept = len(items)
        while len(detail) > DETAIL_LIMIT and kept > 1:
            kept -= 1
            detail = "\n".join([*items[:kept], text.t("consolidated_more")])
        card: dict[str, Any] = {
            "uuid": self.uuid(),
            "summary": _truncate(
                text.fill(text.t("consolidated", topic, "summary"), count=str(len(findings)))
            ),
            "indicator": indicator,
            "detail": detail,
            "source": _source(text, topic, text.t("consolidated", topic, "title"), self.inputs.links),
        }
        # Machine-readable: which rules this card carries (feedback analytics, tests, EHR audit).
        if findings:
            card["extension"] = {
                FINDINGS_EXTENSION: [{"rule": f.rule.id, "indicator": f.indicator} for f in findings]
            }
        suggestions: list[Any] = []
        for finding in findings:
            suggestions += _confirm_hold(text, finding, self.values(finding), self.inputs, self.uuid)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "at-most-one"
        return self._finish(card, findings, topic, text.t("consolidated_version"))

    def _finish(
        self, card: dict[str, Any], findings: Sequence[Finding], topic: str, version: str
    ) -> RenderedCard:
        reasons = _override_reasons(self.text, [f.rule for f in findings], self.catalogue)
        if reasons:
            card["overrideReasons"] = reasons
        links = _links(self.text, findings, self.inputs.links)
        if links:
            card["links"] = links
        return RenderedCard(card, tuple(findings), topic, version, _fingerprint(findings))

    def summary_line(self, finding: Finding) -> str:
        return _truncate(finding.band.summary.safe_substitute(self.values(finding)), 200)

    def review_lines(self, findings: Sequence[Finding], blocking: Sequence[Finding]) -> list[str]:
        """The pharmacist's checklist: every check's status, blocking findings by name only."""
        text, situation = self.text, self.inputs.situation
        lines: list[str] = []
        by_category: dict[str, list[Finding]] = {}
        for finding in findings:
            by_category.setdefault(finding.rule.category, []).append(finding)
        for category in text.raw["review"]["order"]:
            labels = text.raw["review"]["checks"][category]
            found = by_category.get(category, [])
            blocked = [f for f in blocking if f.rule.category == category]
            if blocked:
                lines.append(text.fill(labels["blocking"], count=str(len(blocked))))
            for finding in found:
                lines.append(text.fill(labels["found"], summary=self.summary_line(finding)))
            if not found and not blocked:
                lines.append(labels["clear"])
        latest = (
            latest_blood_pressure(self.inputs.facts.blood_pressures, situation.clock_date)
            if self.inputs.facts is not None
            else None
        )
        if latest is not None and latest.taken is not None:
            lines.append(
                text.fill(
                    text.t("review", "blood_pressure"),
                    systolic=_number(latest.systolic),
                    diastolic=_number(latest.diastolic),
                    unit=self.ctx.bp_unit,
                    date=fmt_date(text, latest.taken.date(), situation.clock_date),
                )
            )
        else:
            lines.append(text.t("review", "no_blood_pressure"))
        return lines


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if value == int(value) else f"{value:g}"


def render(
    findings: Sequence[Finding],
    inputs: CardInputs,
    *,
    ctx: EngineContext,
    text: CardText,
    override_catalogue: Mapping[str, OverrideReason],
    new_uuid: Callable[[], str] = new_uuid,
    order_sign_instructions: bool = False,
) -> list[RenderedCard]:
    """Findings (most severe first) -> the cards of one response, each with the findings it carries."""
    situation = inputs.situation
    renderer = _Renderer(ctx, text, inputs, override_catalogue, new_uuid)
    shown = [
        f
        for f in findings
        if not (
            situation.hook == "order-sign" and f.rule.category == "procedure" and not order_sign_instructions
        )
    ]
    if situation.hook == "order-sign" and situation.ketamine_orders:
        blocking = [f for f in shown if f.indicator == "critical"]
        rest = [f for f in shown if f.indicator != "critical"]
        cards = [renderer.single(f) for f in blocking]
        cards.append(renderer.consolidated(PRE_SESSION_REVIEW, rest, renderer.review_lines(rest, blocking)))
        return cards
    loud = [f for f in shown if f.indicator != "info"]
    quiet = [f for f in shown if f.indicator == "info"]
    cards = [renderer.single(f) for f in loud]
    if len(quiet) == 1:
        cards.append(renderer.single(quiet[0]))
    elif quiet:
        cards.append(renderer.consolidated(ALSO_NOTED, quiet, [renderer.summary_line(f) for f in quiet]))
    return cards
