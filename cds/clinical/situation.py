"""What kind of screen a hook call asks for: a full screen, an interaction review, or nothing.

- order-select: a selected ketamine/esketamine order -> full screen of that treatment; a selected
  medicine that some interaction rule recognises, while ketamine is in the drafts or the chart -> review of
  that medicine only; anything else -> no cards.
- order-sign: the same over every draft order (pharmacists review at signing).
- patient-view: the chart, for the treatments in it, else the site's treatments (scope is site policy).
Windows run from the earliest planned start on a ketamine order, else from today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from cds.clinical.policy import SitePolicy
from cds.clinical.statuses import StatusSemantics, medication_counts
from cds.clinical.terminology import Terminology
from cds.fhir.model import MedicationFact, SourceRef

FULL = "full"
INTERACTION = "interaction"
NONE = "none"


@dataclass(frozen=True, slots=True)
class Situation:
    mode: str  # FULL, INTERACTION or NONE
    hook: str
    products: frozenset[str]  # treatments the screen is about
    reference_date: date  # planned start of treatment, else today
    reference_from_order: bool
    focus: frozenset[SourceRef] = frozenset()  # INTERACTION: the ordered medicines under review
    ketamine_orders: tuple[MedicationFact, ...] = ()
    today: date | None = None  # the screen's clock date; None means reference_date

    @property
    def clock_date(self) -> date:
        return self.today or self.reference_date


def treatment_of(med: MedicationFact, terminology: Terminology, treatments: Mapping[str, str]) -> str | None:
    for product, url in treatments.items():
        if terminology.match(url, med.concept) is not None:
            return product
    return None


def recognised_by(med: MedicationFact, terminology: Terminology, urls: Sequence[str]) -> bool:
    return any(terminology.match(url, med.concept) is not None for url in urls)


def drafts_in_focus(hook: str, drafts: Sequence[MedicationFact]) -> list[MedicationFact]:
    if hook == "order-select":
        return [d for d in drafts if d.is_selected]
    return list(drafts)


def decide(
    *,
    hook: str,
    medications: Sequence[MedicationFact],
    chart_loaded: bool,
    terminology: Terminology,
    treatments: Mapping[str, str],
    interaction_valuesets: Sequence[str],
    statuses: StatusSemantics,
    policy: SitePolicy,
    today: date,
) -> Situation | None:
    """The situation, or None when the chart's medications are needed before deciding."""
    drafts = [m for m in medications if m.is_draft_order]
    chart = [m for m in medications if not m.is_draft_order and medication_counts(m, statuses)]
    focus = drafts_in_focus(hook, drafts)
    ordered = [(m, p) for m in focus if (p := treatment_of(m, terminology, treatments))]
    in_chart = {p for m in chart if (p := treatment_of(m, terminology, treatments))}

    if hook == "patient-view":
        if policy.patient_view_scope == "ketamine-course":
            if not chart_loaded:
                return None
            if not in_chart:
                return Situation(NONE, hook, frozenset(), today, False, today=today)
        products = frozenset(in_chart) or policy.treatments
        return Situation(FULL, hook, products, today, False, today=today)

    if ordered:
        starts = [m.planned_start for m, _ in ordered if m.planned_start]
        reference = min(starts) if starts else today
        return Situation(
            FULL,
            hook,
            frozenset(p for _, p in ordered),
            reference,
            bool(starts),
            ketamine_orders=tuple(m for m, _ in ordered),
            today=today,
        )
    interacting = [m for m in focus if recognised_by(m, terminology, interaction_valuesets)]
    if not interacting:
        return Situation(NONE, hook, frozenset(), today, False, today=today)
    other_drafts = {p for m in drafts if (p := treatment_of(m, terminology, treatments))}
    if not other_drafts and not chart_loaded:
        return None
    course = other_drafts | in_chart
    if not course:
        return Situation(NONE, hook, frozenset(), today, False, today=today)
    return Situation(
        INTERACTION,
        hook,
        frozenset(course),
        today,
        False,
        focus=frozenset(m.source for m in interacting),
        today=today,
    )
