"""Which FHIR statuses make a record count as current: read from fhir_profiles/tables/status-semantics.json.

Kept apart from the engine because deciding the kind of screen (cds.clinical.situation) needs the same
answer for medications before any rule runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds.fhir.model import MedicationFact, MedicationKind


@dataclass(frozen=True, slots=True)
class StatusSemantics:
    """Which FHIR statuses count, loaded from fhir_profiles/tables/status-semantics.json."""

    statement_counts: frozenset[str]
    request_counts: frozenset[str]
    request_intents: frozenset[str]
    condition_active: frozenset[str]
    verification_excluded: frozenset[str]
    allergy_active: frozenset[str]


def medication_counts(med: MedicationFact, statuses: StatusSemantics) -> bool:
    """Whether a medication record describes current or planned use."""
    if med.is_draft_order:
        return True
    status = (med.status or "").lower()
    if med.kind is MedicationKind.STATEMENT:
        return not status or status in statuses.statement_counts
    if status and status not in statuses.request_counts:
        return False
    intent = (med.intent or "").lower()
    return not intent or intent in statuses.request_intents
