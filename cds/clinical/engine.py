"""The screening engine: rules x patient facts x situation -> findings. Pure: no Flask, no I/O, no clock.

Each rule yields at most one finding (one card per problem). A rule's bands are tried against every fact
of the kind the band reads; a fact counts for the first band it satisfies, and the finding takes the most
severe band any fact reached (ties: the band listed first). Facts that could not be read are never
dropped silently: they either satisfy an "unknown" band of the rule or reach the data-quality rule.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from cds.clinical.dosing import NO_STRENGTH, DosingVocabulary, daily_dose
from cds.clinical.policy import SitePolicy
from cds.clinical.rules import DOSE_WHEN_KEYS, INDICATOR_RANK, Band, DoseSpec, Rule
from cds.clinical.schedule import months_before, months_between
from cds.clinical.situation import INTERACTION, NONE, Situation
from cds.clinical.statuses import StatusSemantics, medication_counts
from cds.clinical.terminology import METHOD_NAME, Terminology, TermMatch
from cds.fhir.model import (
    AllergyFact,
    BloodPressureFact,
    Coding,
    ConditionFact,
    DailyDose,
    DoseStatus,
    MedicationFact,
    MedicationKind,
    OnsetAge,
    PatientFacts,
    SourceRef,
)

OnsetSpan = tuple[date, date]  # the first and last day an onset can fall on


@dataclass(frozen=True, slots=True)
class Hit:
    """One record that satisfied a band: the evidence trail's row."""

    source: SourceRef
    label: str | None
    coding: Coding | None = None
    match_method: str | None = None
    date: date | None = None
    date_basis: str | None = None  # "onset", "onset-age", "recorded", "taken", "authored"
    figures: str | None = None  # dose arithmetic or a reading
    notes: tuple[str, ...] = ()  # note codes rendered by the card layer (stale, as-needed, ...)
    onset_age: OnsetAge | None = None  # the onset as recorded, when given as the patient's age
    span: OnsetSpan | None = None  # the days the onset can fall on, when the record gives a span


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    band: Band
    indicator: str
    hits: tuple[Hit, ...]
    values: Mapping[str, str]  # template values for the band's summary and detail
    parameters_used: tuple[str, ...]
    fingerprint: str
    other_hits: tuple[Hit, ...] = ()  # records that satisfied less severe bands, listed for context


@dataclass(frozen=True, slots=True)
class EngineContext:
    terminology: Terminology
    dosing: DosingVocabulary
    statuses: StatusSemantics
    policy: SitePolicy
    product_names: Mapping[str, str]  # "ketamine" -> "ketamine infusion"; "both" -> "..."
    dose_units: Mapping[str, str]  # dose basis -> how a total is written ("mg/day diazepam-equivalent")
    bp_unit: str  # the unit blood pressures are read and shown in
    treatment_valuesets: Mapping[str, str]  # product -> value set URL
    # how a date of each basis reads in card text ("$date at the latest" for an onset given as an age)
    date_values: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers


def fmt_number(value: float) -> str:
    if not math.isfinite(value):
        return "?"
    rounded = round(value, 2)
    return f"{rounded:.2f}".rstrip("0").rstrip(".") if rounded != int(rounded) else str(int(rounded))


def product_text(ctx: EngineContext, products: frozenset[str]) -> str:
    if len(products) == 1:
        return ctx.product_names[next(iter(products))]
    return ctx.product_names["both"]


def _first_match(ctx: EngineContext, urls: Sequence[str], concepts: Iterable[Any]) -> TermMatch | None:
    for concept in concepts:
        for url in urls:
            found = ctx.terminology.match(url, concept)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------- fact selection


def _condition_counts(fact: ConditionFact, rule: Rule, statuses: StatusSemantics) -> bool:
    if (fact.verification_status or "").lower() in statuses.verification_excluded:
        return False
    if rule.clinical_status == "any":
        return True
    status = (fact.clinical_status or "").lower()
    # A condition recorded with no clinical status is treated as active: absence is not evidence of cure.
    return not status or status in statuses.condition_active


def _allergy_counts(fact: AllergyFact, statuses: StatusSemantics) -> bool:
    if (fact.verification_status or "").lower() in statuses.verification_excluded:
        return False
    status = (fact.clinical_status or "").lower()
    return not status or status in statuses.allergy_active


def _stale_notes(med: MedicationFact, situation: Situation, policy: SitePolicy) -> tuple[str, ...]:
    if med.is_draft_order or med.recorded is None:
        return ()
    age = (situation.reference_date - med.recorded).days
    return ("stale",) if age > policy.stale_after_days else ()


# ------------------------------------------------------------------------------------------ evaluators


@dataclass(slots=True)
class _BandResult:
    band: Band
    hits: list[Hit] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)


def _param(ctx: EngineContext, rule: Rule, name: str) -> Any:
    return ctx.policy.value(rule.id, name)


def _condition_band_hits(
    ctx: EngineContext, rule: Rule, band: Band, fact: ConditionFact, situation: Situation
) -> Hit | None:
    found = _first_match(ctx, band.match, (fact.concept,))
    if found is None:
        return None
    when_date, basis = _condition_date(fact)
    ref = situation.reference_date
    when = band.when
    if "onset_unknown" in when and when_date is not None:
        return None
    if "onset_within_months" in when:
        window = _param(ctx, rule, when["onset_within_months"])
        if when_date is None or when_date < months_before(ref, window):
            return None
    if "onset_before_months" in when:
        window = _param(ctx, rule, when["onset_before_months"])
        if when_date is None or when_date >= months_before(ref, window):
            return None
    notes: tuple[str, ...] = ("recorded-date-fallback",) if basis == "recorded" and when_date else ()
    if fact.onset_age is not None and fact.onset_age.latest is None:
        notes += ("onset-age-without-birth-date",)
    if fact.onset_text is not None:
        notes += (
            f"onset-text:{fact.onset_text}"
            if fact.onset_span is None
            else f"onset-as-text:{fact.onset_text}",
        )
    elif basis == "onset-span" and fact.onset_span is not None:
        notes += (f"onset-span:{fact.onset_span[0].isoformat()} to {fact.onset_span[1].isoformat()}",)
    if found.method == METHOD_NAME:
        notes += ("by-name",)
    if fact.unreadable:
        notes += ("unreadable",)
    return Hit(
        source=fact.source,
        label=fact.concept.label(),
        coding=found.coding,
        match_method=found.method,
        date=when_date,
        date_basis=basis if when_date else None,
        notes=notes,
        onset_age=fact.onset_age,
        span=fact.onset_span if basis == "onset-span" else None,
    )


def _date_value(ctx: EngineContext, hit: Hit) -> str:
    assert hit.date is not None
    template = ctx.date_values.get(hit.date_basis or "")
    return (
        string.Template(template).safe_substitute(date=hit.date.isoformat())
        if template
        else hit.date.isoformat()
    )


def _condition_date(fact: ConditionFact) -> tuple[date | None, str]:
    """The date that decides how recent a condition is, and what it is: the onset; for an onset given as
    a span (a period, an age, a month in words), the latest day it allows, shown with the whole span and
    never moved to another day; else the recorded date, which the condition cannot postdate."""
    if fact.onset is None:
        return fact.recorded, "recorded"
    if fact.onset_span is not None and fact.onset == fact.onset_span[1]:
        return fact.onset, "onset-age" if fact.onset_age is not None else "onset-span"
    return fact.onset, "onset"


def _allergy_hit(ctx: EngineContext, band: Band, fact: AllergyFact) -> Hit | None:
    found = _first_match(ctx, band.match, fact.concepts)
    if found is None:
        return None
    reactions_url = band.when.get("intolerance_with_reactions_in")
    if reactions_url is not None and not _mild_intolerance(ctx, fact, str(reactions_url)):
        return None
    label = next((c.label() for c in fact.concepts if c.label()), None)
    notes: tuple[str, ...] = ()
    if (fact.verification_status or "").lower() == "unconfirmed":
        notes = ("unconfirmed",)
    return Hit(
        source=fact.source,
        label=label,
        coding=found.coding,
        match_method=found.method,
        date=fact.recorded,
        date_basis="recorded" if fact.recorded else None,
        notes=notes,
    )


def _mild_intolerance(ctx: EngineContext, fact: AllergyFact, reactions_url: str) -> bool:
    """An intolerance (not an allergy, nor of unknown type), not of high criticality, whose every recorded
    reaction is mild and shows only manifestations in `reactions_url`. Anything unrecorded fails."""
    criticality = (fact.criticality or "").lower()
    if (fact.type or "").lower() != "intolerance" or criticality == "high" or not fact.reactions:
        return False
    for reaction in fact.reactions:
        severity = (reaction.severity or "").lower()
        if not (severity == "mild" or (not severity and criticality == "low")):
            return False
        if not reaction.manifestations:
            return False
        if any(ctx.terminology.match(reactions_url, m) is None for m in reaction.manifestations):
            return False
    return True


def _reaction_text(fact: AllergyFact) -> str:
    labels = [m.label() for r in fact.reactions for m in r.manifestations]
    return "; ".join(dict.fromkeys(label for label in labels if label)) or "?"


def _medication_evidence(med: MedicationFact, found: TermMatch, notes: tuple[str, ...] = ()) -> Hit:
    return Hit(
        source=med.source,
        label=med.concept.label(),
        coding=found.coding,
        match_method=found.method,
        date=med.recorded,
        date_basis="authored" if med.recorded else None,
        notes=notes,
    )


def _medication_hit(ctx: EngineContext, band: Band, med: MedicationFact, situation: Situation) -> Hit | None:
    found = _first_match(ctx, band.match, (med.concept,))
    if found is None:
        return None
    return _medication_evidence(med, found, _stale_notes(med, situation, ctx.policy))


@dataclass(slots=True)
class _DoseSummary:
    regular_total: float = 0.0
    evidence_total: float | None = 0.0  # in the rule's evidence basis; None when a dose has no equivalent
    regular: list[Hit] = field(default_factory=list)  # one counted record per therapy
    as_needed: list[Hit] = field(default_factory=list)
    unknown: list[Hit] = field(default_factory=list)
    excluded: list[Hit] = field(default_factory=list)  # rescue / procedural forms
    with_session: list[Hit] = field(default_factory=list)  # procedural forms given with the session: listed
    merged: list[Hit] = field(default_factory=list)  # further records of a counted therapy: listed only
    ended: list[Hit] = field(default_factory=list)  # not current on the reference date: listed only
    indication: list[Hit] = field(default_factory=list)  # conditions behind the rule's dose indication
    indication_label: str | None = None
    regular_ingredients: set[str] = field(default_factory=set)  # ingredients in the regular total
    unit: str = "mg/day"
    evidence_unit: str = "mg/day"

    def in_use(self) -> bool:
        return bool(self.regular or self.unknown or self.as_needed or self.excluded)

    def records(self) -> list[Hit]:
        return [
            *self.regular,
            *self.unknown,
            *self.as_needed,
            *self.excluded,
            *self.with_session,
            *self.merged,
            *self.ended,
        ]


@dataclass(frozen=True, slots=True)
class _Counted:
    """A computed regular daily dose of one ingredient in one record, before therapies are merged."""

    med: MedicationFact
    value: float  # in the rule's basis
    evidence: float | None  # in the rule's evidence basis
    hit: Hit


def _dedupe(meds: Sequence[MedicationFact]) -> list[MedicationFact]:
    """Drop statements derived from an order that is itself present (one therapy recorded twice)."""
    present = {med.source.reference() for med in meds}
    return [
        med
        for med in meds
        if not (med.kind is MedicationKind.STATEMENT and any(ref in present for ref in med.derived_from))
    ]


def _dose_summary(
    ctx: EngineContext,
    rule: Rule,
    meds: Sequence[MedicationFact],
    situation: Situation,
    index: FactIndex,
) -> _DoseSummary:
    """The rule's class in use on the reference date: one therapy per ingredient, however many records
    hold it (statements and orders, generic or brand codes, free text); every record not added to the
    total is listed with the reason."""
    spec = rule.dose
    assert spec is not None  # guaranteed by the rule loader for dose bands
    basis = str(_param(ctx, rule, spec.basis_param))
    evidence_basis = spec.evidence_basis or basis
    class_ingredients: set[str] = set()
    for url in spec.match:
        class_ingredients |= ctx.terminology.valueset_ingredients(url)
    collector = _DoseCollector(
        ctx=ctx,
        spec=spec,
        situation=situation,
        basis=basis,
        evidence_basis=evidence_basis,
        source=_param(ctx, rule, spec.equivalence_source_param) if spec.equivalence_source_param else None,
        class_ingredients=frozenset(class_ingredients),
        summary=_DoseSummary(
            unit=ctx.dose_units.get(basis, basis),
            evidence_unit=ctx.dose_units.get(evidence_basis, evidence_basis),
        ),
    )
    matched: list[tuple[MedicationFact, TermMatch]] = []
    for med in meds:
        found = _first_match(ctx, spec.match, (med.concept,))
        if found is not None:
            matched.append((med, found))
    present = {med.source.reference() for med, _ in matched}
    for med, found in matched:
        collector.add(med, found, present)
    summary = collector.summary
    for ingredient, records in collector.counted.items():
        _count_therapy(summary, records)
        summary.regular_ingredients.add(ingredient)
    if spec.indication_conditions or spec.indication_ingredients:
        _find_indication(ctx, rule, spec.indication_conditions, index, summary)
        if not summary.indication_label:
            named = sorted(collector.seen_ingredients & spec.indication_ingredients)
            summary.indication_label = named[0] if named else None
    return summary


@dataclass(slots=True)
class _DoseCollector:
    """Sorts a dose rule's records: counted (per ingredient, merged later), as needed, unknown, rescue,
    the same therapy recorded again, or no longer current."""

    ctx: EngineContext
    spec: DoseSpec
    situation: Situation
    basis: str
    evidence_basis: str
    source: str | None
    class_ingredients: frozenset[str]
    summary: _DoseSummary
    counted: dict[str, list[_Counted]] = field(default_factory=dict)
    seen_ingredients: set[str] = field(default_factory=set)

    def add(self, med: MedicationFact, found: TermMatch, present: set[str]) -> None:
        ctx, summary = self.ctx, self.summary
        notes = _stale_notes(med, self.situation, ctx.policy)
        base = _medication_evidence(med, found)
        order = next((ref for ref in med.derived_from if ref in present), None)
        if med.kind is MedicationKind.STATEMENT and order is not None:
            summary.merged.append(replace(base, notes=(*notes, f"same-therapy-as:{order}")))
            return
        if _ended(med, self.situation):
            ended = med.effective_end.isoformat() if med.effective_end else "?"
            summary.ended.append(replace(base, notes=(*notes, f"ended:{ended}")))
            return
        if _first_match(ctx, self.spec.exclude, (med.concept,)) is not None:
            excluded_ingredients = set(ctx.terminology.ingredients(med.concept))
            self.seen_ingredients.update(excluded_ingredients)
            if excluded_ingredients and excluded_ingredients <= self.spec.given_with_session:
                summary.with_session.append(replace(base, notes=(*notes, "given-with-session")))
            else:
                summary.excluded.append(replace(base, notes=(*notes, "rescue-or-procedural")))
            return
        ingredients = [i for i in ctx.terminology.ingredients(med.concept) if i in self.class_ingredients]
        self.seen_ingredients.update(ingredients)
        if not ingredients:
            summary.unknown.append(replace(base, notes=(*notes, "dose:no-strength")))
        for ingredient in ingredients:
            self._add_dose(med, ingredient, replace(base, notes=notes))

    def _add_dose(self, med: MedicationFact, ingredient: str, base: Hit) -> None:
        summary = self.summary
        dose, source_notes = _record_dose(self.ctx, med, ingredient, self.situation.reference_date)
        if dose.status is DoseStatus.ENDED:
            summary.ended.append(replace(base, figures=dose.explanation, notes=(*base.notes, "phases-ended")))
            return
        converted, figures, problem = _convert(self.ctx, dose, self.basis, self.source)
        hit = replace(base, figures=figures, notes=(*base.notes, *source_notes))
        if dose.status is DoseStatus.AS_NEEDED:
            summary.as_needed.append(replace(hit, notes=(*hit.notes, "as-needed")))
        elif converted is None:
            summary.unknown.append(replace(hit, notes=(*hit.notes, f"dose:{problem or 'unknown'}")))
        else:
            evidence: float | None = converted
            if self.evidence_basis != self.basis:
                evidence = _convert(self.ctx, dose, self.evidence_basis, self.source)[0]
            self.counted.setdefault(ingredient, []).append(_Counted(med, converted, evidence, hit))


def _record_dose(
    ctx: EngineContext, med: MedicationFact, ingredient: str, reference: date
) -> tuple[DailyDose, tuple[str, ...]]:
    """The record's daily dose on the reference date; a product code without a name of its own is read
    through the name the value sets give that code (and the evidence says so)."""
    aliases = ctx.terminology.ingredient_names(ingredient)
    dose = daily_dose(med, ingredient, ctx.dosing, on=reference, aliases=aliases)
    if dose.status is DoseStatus.UNKNOWN and dose.problem == NO_STRENGTH:
        names = ctx.terminology.product_names(med.concept)
        if names:
            named = daily_dose(
                med, ingredient, ctx.dosing, on=reference, aliases=aliases, product_names=names
            )
            if named.status is not DoseStatus.UNKNOWN or named.problem != NO_STRENGTH:
                return named, ("strength-from-code-name",)
    return dose, ()


def _count_therapy(summary: _DoseSummary, records: Sequence[_Counted]) -> None:
    """Current records of one ingredient, counted as one therapy.

    Records of one kind that give the same daily dose are one therapy recorded again (a renewal, a
    generic and a brand code, a coded and a free-text entry): counted once. Records of one kind with
    different doses are products taken together (0.5 mg and 1 mg tablets): added. Statements and orders
    describe the same therapy from two sides: the side with the higher total is counted, the other is
    listed. Every record left out says which record it was counted with.
    """
    sides: dict[MedicationKind, list[_Counted]] = {}
    repeats: dict[int, list[_Counted]] = {}
    for record in records:
        side = sides.setdefault(record.med.kind, [])
        same = next((kept for kept in side if math.isclose(kept.value, record.value)), None)
        if same is None:
            side.append(record)
        else:
            repeats.setdefault(id(same), []).append(record)
    ranked = sorted(sides.values(), key=lambda side: -sum(r.value for r in side))
    counted, others = ranked[0], [r for side in ranked[1:] for r in side]
    for kept in counted:
        left_out = repeats.get(id(kept), [])
        notes: list[str] = []
        if others and kept is counted[0]:
            both = len(records) == 2
            notes.append("same-therapy:statement-and-order" if both else "same-therapy:mixed")
            if not math.isclose(sum(r.value for r in counted), sum(r.value for r in others)):
                notes.append("same-therapy-highest")
        elif left_out:
            kinds = "statements" if kept.med.kind is MedicationKind.STATEMENT else "orders"
            notes.append(f"same-therapy:{kinds}")
        if len(counted) > 1:
            notes.append("same-ingredient-added")
        summary.regular.append(replace(kept.hit, notes=(*kept.hit.notes, *notes)))
        summary.regular_total += kept.value
        if summary.evidence_total is not None:
            summary.evidence_total = None if kept.evidence is None else summary.evidence_total + kept.evidence
        for repeat in left_out:
            note = f"same-therapy-as:{kept.med.source.reference()}"
            summary.merged.append(replace(repeat.hit, notes=(*repeat.hit.notes, note)))
    anchor = counted[0].med.source.reference()
    for other in others:
        for record in (other, *repeats.get(id(other), ())):
            summary.merged.append(replace(record.hit, notes=(*record.hit.notes, f"same-therapy-as:{anchor}")))


def _find_indication(
    ctx: EngineContext, rule: Rule, urls: Sequence[str], index: FactIndex, summary: _DoseSummary
) -> None:
    for fact in index.candidates(index.conditions, urls):
        if not _condition_counts(fact, rule, ctx.statuses):
            continue
        found = _first_match(ctx, urls, (fact.concept,))
        if found is None:
            continue
        when = fact.onset or fact.recorded
        summary.indication.append(
            Hit(
                source=fact.source,
                label=fact.concept.label(),
                coding=found.coding,
                match_method=found.method,
                date=when,
                date_basis=("onset" if fact.onset else "recorded") if when else None,
                notes=("by-name",) if found.method == METHOD_NAME else (),
            )
        )
    if summary.indication:
        summary.indication_label = summary.indication[0].label


def _convert(
    ctx: EngineContext, dose: DailyDose, basis: str, source: str | None
) -> tuple[float | None, str | None, str | None]:
    """mg/day of one ingredient -> the rule's basis (drug mg, or diazepam-equivalent mg)."""
    if dose.status is not DoseStatus.COMPUTED or dose.mg_per_day is None:
        return None, dose.explanation, dose.problem
    if basis == "diazepam-equivalent":
        equivalent = ctx.terminology.diazepam_mg_equivalent(dose.ingredient, source)
        if not equivalent:
            return None, dose.explanation, "no-equivalence"
        value = dose.mg_per_day * ctx.terminology.diazepam_reference_mg() / equivalent
        figures = f"{dose.explanation} = {fmt_number(value)} {ctx.dose_units.get(basis, basis)}"
        return value, figures, None
    return dose.mg_per_day, dose.explanation, None


def _future_reading(bp: BloodPressureFact, today: date) -> bool:
    return bp.taken is not None and bp.taken.date() > today


def latest_blood_pressure(facts: Sequence[BloodPressureFact], today: date) -> BloodPressureFact | None:
    """The latest plausible reading. One dated after today is a data error: it must not hide a real
    reading, so it is left out here and reported by the data-quality rule instead."""
    dated = [
        bp
        for bp in facts
        if bp.taken is not None and (bp.systolic or bp.diastolic) and not _future_reading(bp, today)
    ]
    return max(dated, key=lambda bp: bp.taken.timestamp() if bp.taken else 0.0) if dated else None


# ------------------------------------------------------------------------------------------- the rule


def _ended(med: MedicationFact, situation: Situation) -> bool:
    """A record whose effective period ended before the reference date is past use, whatever its status."""
    return (
        med.effective_end is not None
        and med.effective_end < situation.reference_date
        and not med.is_draft_order
    )


@dataclass(slots=True)
class _BandInput:
    ctx: EngineContext
    rule: Rule
    band: Band
    facts: PatientFacts
    situation: Situation
    claimed: set[SourceRef]
    dose_cache: dict[str, _DoseSummary]
    index: FactIndex


@dataclass(slots=True)
class FactIndex:
    """Facts by the value sets they belong to, built once per screen: a band visits only its candidates."""

    conditions: dict[str, list[ConditionFact]] = field(default_factory=dict)
    allergies: dict[str, list[AllergyFact]] = field(default_factory=dict)
    medications: dict[str, list[MedicationFact]] = field(default_factory=dict)  # counted records only
    position: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, ctx: EngineContext, facts: PatientFacts) -> FactIndex:
        index = cls()
        terminology = ctx.terminology
        for position, condition in enumerate(facts.conditions):
            index._add(index.conditions, condition, terminology.memberships(condition.concept), position)
        for position, allergy in enumerate(facts.allergies):
            urls: frozenset[str] = frozenset()
            for concept in allergy.concepts:
                urls |= terminology.memberships(concept)
            index._add(index.allergies, allergy, urls, position)
        for position, med in enumerate(facts.medications):
            if med.unreadable is None and medication_counts(med, ctx.statuses):
                index._add(index.medications, med, terminology.memberships(med.concept), position)
        return index

    def _add(self, table: dict[str, list[Any]], fact: Any, urls: frozenset[str], position: int) -> None:
        self.position[id(fact)] = position
        for url in urls:
            table.setdefault(url, []).append(fact)

    def candidates(self, table: Mapping[str, list[Any]], urls: Sequence[str]) -> list[Any]:
        """Facts in any of `urls`, once each, in record order (deterministic evidence trails)."""
        if len(urls) == 1:
            return list(table.get(urls[0], ()))
        seen: dict[int, Any] = {}
        for url in urls:
            for fact in table.get(url, ()):
                seen.setdefault(id(fact), fact)
        return sorted(seen.values(), key=lambda fact: self.position[id(fact)])


def _collect_conditions(inp: _BandInput, result: _BandResult) -> bool:
    for fact in inp.index.candidates(inp.index.conditions, inp.band.match):
        if fact.source in inp.claimed or not _condition_counts(fact, inp.rule, inp.ctx.statuses):
            continue
        hit = _condition_band_hits(inp.ctx, inp.rule, inp.band, fact, inp.situation)
        if hit:
            result.hits.append(hit)
    first = result.hits[0] if result.hits else None
    if first is not None:
        result.values.update(
            condition=first.label or "?",
            onset=_onset_value(inp.ctx, first),
            months_ago=_months_ago(first, inp.situation.reference_date),
        )
    return True


def _onset_value(ctx: EngineContext, hit: Hit) -> str:
    """The onset as the card shows it: a day, or the first and last day of a span (never one invented day)."""
    span = hit.span or (
        (hit.onset_age.earliest, hit.onset_age.latest)
        if hit.onset_age is not None and hit.onset_age.earliest and hit.onset_age.latest
        else None
    )
    if span is not None and span[0] != span[1]:
        return f"{span[0].isoformat()} to {span[1].isoformat()}"
    return _date_value(ctx, hit) if hit.date else "?"


def _months_ago(hit: Hit, reference: date) -> str:
    """Whole months from the onset to the reference date; for a span, the range it allows ("4-10")."""
    if hit.date is None:
        return "?"
    latest = months_between(hit.date, reference)
    earliest_day = hit.span[0] if hit.span else hit.onset_age.earliest if hit.onset_age else None
    earliest = months_between(earliest_day, reference) if earliest_day else latest
    return str(latest) if earliest == latest else f"{latest}-{earliest}"


def _collect_allergies(inp: _BandInput, result: _BandResult) -> bool:
    for allergy in inp.index.candidates(inp.index.allergies, inp.band.match):
        if allergy.source in inp.claimed or not _allergy_counts(allergy, inp.ctx.statuses):
            continue
        hit = _allergy_hit(inp.ctx, inp.band, allergy)
        if hit:
            if not result.hits:
                result.values["substance"] = hit.label or "?"
                result.values["reaction"] = _reaction_text(allergy)
            result.hits.append(hit)
    return True


def _collect_medications(inp: _BandInput, result: _BandResult) -> bool:
    urls = inp.rule.dose.match if inp.rule.dose is not None else inp.band.match
    meds = inp.index.candidates(inp.index.medications, urls)
    if inp.rule.dose is not None and DOSE_WHEN_KEYS & set(inp.band.when):
        if inp.rule.id not in inp.dose_cache:
            inp.dose_cache[inp.rule.id] = _dose_summary(inp.ctx, inp.rule, meds, inp.situation, inp.index)
        summary = inp.dose_cache[inp.rule.id]
        if not _dose_band_holds(inp.ctx, inp.rule, inp.band, summary):
            return False
        result.hits = summary.records()
        if "indication" in inp.band.when:
            result.hits += summary.indication
        evidence = summary.evidence_total
        result.values.update(
            total=fmt_number(summary.regular_total),
            basis_unit=summary.unit,
            evidence_total=fmt_number(evidence) if evidence is not None else "?",
            evidence_unit=summary.evidence_unit,
            indication=summary.indication_label or "?",
        )
        if "half_life_hours_at_least" in inp.band.when:
            hours = float(_param(inp.ctx, inp.rule, inp.band.when["half_life_hours_at_least"]))
            long_acting = _long_acting(inp.ctx, summary, hours)
            result.values.update(
                long_acting=", ".join(long_acting) or "?",
                half_life_hours=fmt_number(max(long_acting.values(), default=0.0)),
            )
    else:
        kept = _dedupe(meds)
        for med in kept:
            if med.source in inp.claimed or _ended(med, inp.situation):
                continue
            hit = _medication_hit(inp.ctx, inp.band, med, inp.situation)
            if hit:
                result.hits.append(hit)
    if result.hits:
        result.values["medication"] = "; ".join(sorted({h.label for h in result.hits if h.label})) or "?"
    return True


def _collect_blood_pressure(inp: _BandInput, result: _BandResult) -> bool:
    latest = latest_blood_pressure(inp.facts.blood_pressures, inp.situation.clock_date)
    if latest is None or not _bp_band_holds(inp.ctx, inp.rule, inp.band, latest, inp.situation):
        return False
    systolic = fmt_number(latest.systolic) if latest.systolic else "?"
    diastolic = fmt_number(latest.diastolic) if latest.diastolic else "?"
    taken = latest.taken.date() if latest.taken else None
    result.hits.extend(
        Hit(
            source=source,
            label=None,
            date=taken,
            date_basis="taken",
            figures=f"{systolic}/{diastolic} {inp.ctx.bp_unit}",
        )
        for source in (latest.source, *latest.partners)
    )
    result.values.update(
        systolic=systolic, diastolic=diastolic, reading_date=taken.isoformat() if taken else "?"
    )
    return True


def _collect_orders(inp: _BandInput, result: _BandResult) -> bool:
    result.hits.extend(Hit(source=o.source, label=o.concept.label()) for o in inp.situation.ketamine_orders)
    return True


def _collect_unreadable(inp: _BandInput, result: _BandResult) -> bool:
    result.hits.extend(_unreadable(inp.ctx.terminology, inp.facts, inp.situation.clock_date))
    if inp.facts.gaps:
        result.values["categories"] = ", ".join(sorted({gap.category for gap in inp.facts.gaps}))
    result.values["count"] = str(len(result.hits))
    return bool(result.hits or inp.facts.gaps)


_COLLECTORS = {
    "condition": _collect_conditions,
    "allergy": _collect_allergies,
    "medication": _collect_medications,
    "blood-pressure": _collect_blood_pressure,
    "order": _collect_orders,
    "unreadable": _collect_unreadable,
}


def _evaluate_band(inp: _BandInput) -> _BandResult | None:
    band = inp.band
    if not band.products & inp.situation.products:
        return None
    enabled = band.when.get("enabled")
    if enabled is not None and not _param(inp.ctx, inp.rule, enabled):
        return None
    result = _BandResult(band)
    if not _COLLECTORS[band.facts](inp, result):
        return None
    if not result.hits and band.facts != "unreadable":
        return None
    if inp.situation.mode == INTERACTION and not any(h.source in inp.situation.focus for h in result.hits):
        return None
    return result


def _dose_band_holds(ctx: EngineContext, rule: Rule, band: Band, summary: _DoseSummary) -> bool:
    when = band.when
    if "total_above" in when and not summary.regular_total > float(_param(ctx, rule, when["total_above"])):
        return False
    evidence = summary.evidence_total
    if "evidence_total_above" in when and not (
        evidence is not None and evidence > float(_param(ctx, rule, when["evidence_total_above"]))
    ):
        return False
    if "evidence_total_at_most" in when and not (
        evidence is not None and evidence <= float(_param(ctx, rule, when["evidence_total_at_most"]))
    ):
        return False
    if "indication" in when and not summary.indication_label:
        return False
    if "half_life_hours_at_least" in when and not _long_acting(
        ctx, summary, float(_param(ctx, rule, when["half_life_hours_at_least"]))
    ):
        return False
    if "regular_use" in when and not summary.regular:
        return False
    if "dose_unknown" in when and not summary.unknown:
        return False
    if "as_needed_only" in when and (
        summary.regular or summary.unknown or not (summary.as_needed or summary.excluded)
    ):
        return False
    return summary.in_use()


def _long_acting(ctx: EngineContext, summary: _DoseSummary, hours: float) -> dict[str, float]:
    """Regularly taken ingredients whose longest half-life (active metabolites included) reaches `hours`."""
    found = {i: ctx.terminology.longest_half_life_hours(i) for i in sorted(summary.regular_ingredients)}
    return {i: h for i, h in found.items() if h is not None and h >= hours}


def _bp_band_holds(
    ctx: EngineContext, rule: Rule, band: Band, bp: BloodPressureFact, situation: Situation
) -> bool:
    when = band.when
    if "reading_within_days" in when and bp.taken is not None:
        days = int(_param(ctx, rule, when["reading_within_days"]))
        if bp.taken.date() < situation.reference_date - timedelta(days=days):
            return False
    high = False
    if "systolic_at_least" in when and bp.systolic is not None:
        high |= bp.systolic >= float(_param(ctx, rule, when["systolic_at_least"]))
    if "diastolic_at_least" in when and bp.diastolic is not None:
        high |= bp.diastolic >= float(_param(ctx, rule, when["diastolic_at_least"]))
    return high


def _unreadable(terminology: Terminology, facts: PatientFacts, today: date) -> list[Hit]:
    hits: list[Hit] = []
    groups: tuple[Sequence[Any], ...] = (
        facts.medications,
        facts.conditions,
        facts.allergies,
        facts.blood_pressures,
    )
    for group in groups:
        for fact in group:
            if fact.unreadable:
                hits.append(Hit(source=fact.source, label=None, notes=(f"unreadable:{fact.unreadable}",)))
    # Records that could be read but not recognised: a code nobody knows with no name, or a name the
    # words around it leave in doubt ("possible TIA"). Neither may pass as "nothing found".
    concepts: list[tuple[SourceRef, Any]] = [(c.source, c.concept) for c in facts.conditions]
    concepts += [(m.source, m.concept) for m in facts.medications if not m.is_draft_order]
    concepts += [(a.source, concept) for a in facts.allergies for concept in a.concepts]
    for source, concept in concepts:
        if terminology.unrecognised(concept):
            hits.append(Hit(source=source, label=concept.label(), notes=("unreadable:code-not-recognised",)))
        else:
            hits.extend(
                Hit(source=source, label=concept.label(), notes=(f"unconfirmed-name:{name}",))
                for name in terminology.unconfirmed_names(concept)[:1]
            )
    for reading in facts.blood_pressures:
        if reading.unreadable is None and _future_reading(reading, today):
            taken = reading.taken.date() if reading.taken else None
            hits.append(
                Hit(
                    source=reading.source,
                    label=None,
                    date=taken,
                    date_basis="taken",
                    notes=("unreadable:bp-date-in-future",),
                )
            )
    return hits


def _indicator(ctx: EngineContext, rule: Rule, band: Band) -> str:
    if band.indicator is not None:
        return band.indicator
    assert band.indicator_param is not None
    return str(_param(ctx, rule, band.indicator_param))


def _fingerprint(rule: Rule, band: Band, hits: Sequence[Hit], values: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{rule.id}|{rule.version}|{band.id}".encode())
    for hit in sorted(hits, key=lambda h: h.source.reference()):
        digest.update(f"|{hit.source.reference()}|{hit.figures}|{hit.date}".encode())
    for key in sorted(values):
        digest.update(f"|{key}={values[key]}".encode())
    return digest.hexdigest()[:32]


def evaluate_rule(
    ctx: EngineContext,
    rule: Rule,
    facts: PatientFacts,
    situation: Situation,
    index: FactIndex | None = None,
) -> Finding | None:
    index = FactIndex.build(ctx, facts) if index is None else index
    claimed: set[SourceRef] = set()
    results: list[_BandResult] = []
    dose_cache: dict[str, _DoseSummary] = {}
    for band in rule.bands:
        result = _evaluate_band(_BandInput(ctx, rule, band, facts, situation, claimed, dose_cache, index))
        if result is None:
            continue
        results.append(result)
        # Condition, allergy and presence facts count once: for the first (most specific) band they meet.
        if band.facts in {"condition", "allergy"} or (band.facts == "medication" and rule.dose is None):
            claimed.update(hit.source for hit in result.hits)
        if rule.dose is not None and band.facts == "medication":
            break  # dose bands describe one total: the first that holds is the answer
    if not results:
        return None
    best = max(results, key=lambda r: (INDICATOR_RANK[_indicator(ctx, rule, r.band)], -results.index(r)))
    shown = {hit.source for hit in best.hits}  # a record behind the card is not listed again below it
    others = tuple(
        dict.fromkeys(hit for r in results if r is not best for hit in r.hits if hit.source not in shown)
    )
    values = dict(best.values)
    values["product"] = product_text(ctx, situation.products)
    values["reference_date"] = situation.reference_date.isoformat()
    # Every parameter that decided the band or appears in its text is reported with where it came from.
    used = [  # parameters only: a when: value may also be a value set's URL
        value
        for key, value in best.band.when.items()
        if key != "enabled" and isinstance(value, str) and value in rule.parameters
    ]
    if best.band.indicator_param:
        used.append(best.band.indicator_param)
    if rule.dose is not None and best.band.facts == "medication":
        used.append(rule.dose.basis_param)
        if rule.dose.equivalence_source_param:
            used.append(rule.dose.equivalence_source_param)
    for template in (best.band.summary, best.band.detail):
        used.extend(name for name in template.get_identifiers() if name in rule.parameters)
    parameters_used = tuple(dict.fromkeys(used))
    for name in rule.parameters:
        values[name] = _format_param(_param(ctx, rule, name))
    return Finding(
        rule=rule,
        band=best.band,
        indicator=_indicator(ctx, rule, best.band),
        hits=tuple(best.hits),
        values=values,
        parameters_used=parameters_used,
        fingerprint=_fingerprint(rule, best.band, best.hits, best.values),
        other_hits=others,
    )


def _format_param(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return fmt_number(float(value))
    return str(value)


def evaluate(
    ctx: EngineContext, rules: Sequence[Rule], facts: PatientFacts, situation: Situation
) -> list[Finding]:
    """Findings in a stable order: most severe first, then by rule id."""
    if situation.mode == NONE:
        return []
    findings: list[Finding] = []
    index = FactIndex.build(ctx, facts)
    for rule in rules:
        if rule.id in ctx.policy.disabled_rules:
            continue
        if situation.mode == INTERACTION and rule.category != "interaction":
            continue
        if rule.category == "procedure" and not situation.ketamine_orders:
            continue
        finding = evaluate_rule(ctx, rule, facts, situation, index)
        if finding is not None:
            findings.append(finding)
    findings.sort(key=lambda f: (-INDICATOR_RANK[f.indicator], f.rule.id))
    return findings
