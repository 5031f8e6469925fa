"""Normalised patient facts: the narrow interface between the FHIR edge and the screening engine.

Everything here is plain, frozen data built from raw FHIR dicts by `cds.fhir.facts`. The engine reads only
these types, never FHIR JSON, so rules stay independent of how an EHR shapes its resources. A fact that
could not be read carries the reason in `unreadable` instead of disappearing: the engine must be able to
say "could not check" rather than "nothing found".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Concept:
    """A CodeableConcept flattened: every coding is kept (never only coding[0]) plus the free text."""

    codings: tuple[Coding, ...] = ()
    text: str | None = None

    def label(self) -> str | None:
        """The most readable name: text, else the first display, else the first code."""
        if self.text:
            return self.text
        for coding in self.codings:
            if coding.display:
                return coding.display
        for coding in self.codings:
            if coding.code:
                return coding.code
        return None


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a fact came from, for the evidence trail (never patient-identifying beyond type/id)."""

    resource_type: str
    id: str | None

    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}" if self.id else f"{self.resource_type}/(no id)"


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str  # UCUM code where known ("mg", "mL", "{tbl}"), else the sender's unit text


@dataclass(frozen=True, slots=True)
class Strength:
    """Amount of one ingredient per unit of product: `numerator` per `denominator` (e.g. 2 mg / 1 mL)."""

    ingredient: str  # lower-case ingredient name, e.g. "clonazepam"
    numerator: Quantity
    denominator: Quantity | None = None  # None means "per tablet/capsule/unit"


class DoseStatus(StrEnum):
    COMPUTED = "computed"  # a regular daily amount was computed
    AS_NEEDED = "as-needed"  # PRN; `amount_per_day` is the maximum when one could be computed
    UNKNOWN = "unknown"  # no daily amount could be computed; `problem` says why
    ENDED = "ended"  # every dated dosage instruction ended before the day the dose was asked for


@dataclass(frozen=True, slots=True)
class DailyDose:
    """Daily amount of one ingredient in mg (the engine converts to class equivalents)."""

    ingredient: str
    status: DoseStatus
    mg_per_day: float | None = None
    explanation: str | None = None  # the arithmetic in words, e.g. "1 tablet x 2/day x 0.5 mg = 1 mg/day"
    problem: str | None = None  # why it could not be computed (status UNKNOWN)


class MedicationKind(StrEnum):
    STATEMENT = "MedicationStatement"
    REQUEST = "MedicationRequest"


@dataclass(frozen=True, slots=True)
class MedicationFact:
    source: SourceRef
    kind: MedicationKind
    concept: Concept  # the medication code, from medicationCodeableConcept or the resolved Medication.code
    status: str | None
    intent: str | None = None
    is_draft_order: bool = False  # came from context.draftOrders
    is_selected: bool = False  # named in order-select context.selections
    recorded: date | None = None  # authoredOn / dateAsserted / effective start (for staleness)
    planned_start: date | None = None  # when an order says when it is meant to start
    effective_start: date | None = None  # statement: effective period start; order: authoredOn
    effective_end: date | None = None  # statement: effectivePeriod.end (an elapsed end is not current use)
    strengths: tuple[Strength, ...] = ()  # from Medication.ingredient, or parsed from the product name
    dosages: tuple[dict[str, object], ...] = ()  # raw Dosage dicts, read by cds.clinical.dosing
    derived_from: tuple[str, ...] = ()  # "MedicationRequest/123" references (statement derived from an order)
    unreadable: str | None = None  # why the medication could not be identified (e.g. unresolved reference)


@dataclass(frozen=True, slots=True)
class ConditionFact:
    source: SourceRef
    concept: Concept
    clinical_status: str | None
    verification_status: str | None
    onset: date | None  # onset[x] as a date (an age: its latest possible day); None if absent or unreadable
    recorded: date | None  # recordedDate
    abatement: date | None = None
    unreadable: str | None = None
    onset_age: OnsetAge | None = None  # set when the onset is given as an age (onsetAge, onsetRange)
    # The first and last day the onset can fall on, when the record gives a span (onsetPeriod, an age,
    # a month written as text); `onset` is then its last day, the cautious one for "how recent".
    onset_span: tuple[date, date] | None = None
    onset_text: str | None = None  # onsetString as written (quoted on the card; dated only if readable)


@dataclass(frozen=True, slots=True)
class OnsetAge:
    """An onset recorded as the patient's age: the ages as written, and the dates they span.

    `earliest` and `latest` are None when the birth date is unknown (the record cannot then be dated).
    """

    low: float  # the youngest age the record allows (equal to `high` for a single age)
    high: float
    unit: str  # "a" (years) or "mo" (months), the UCUM codes
    earliest: date | None
    latest: date | None


@dataclass(frozen=True, slots=True)
class ReactionFact:
    """One AllergyIntolerance.reaction: what it looked like and how bad it was."""

    manifestations: tuple[Concept, ...]
    severity: str | None  # mild | moderate | severe, as recorded


@dataclass(frozen=True, slots=True)
class AllergyFact:
    source: SourceRef
    concepts: tuple[Concept, ...]  # code plus every reaction.substance
    clinical_status: str | None
    verification_status: str | None
    recorded: date | None = None
    criticality: str | None = None
    unreadable: str | None = None
    type: str | None = None  # allergy | intolerance, as recorded (absent: unknown)
    reactions: tuple[ReactionFact, ...] = ()


@dataclass(frozen=True, slots=True)
class BloodPressureFact:
    source: SourceRef
    taken: datetime | None
    systolic: float | None
    diastolic: float | None
    unreadable: str | None = None
    # Separate systolic and diastolic Observations of one measurement, paired: the other record(s)
    partners: tuple[SourceRef, ...] = ()


@dataclass(frozen=True, slots=True)
class DataGap:
    """A category of data the service needed and could not obtain or read."""

    category: str  # "MedicationStatement", "Condition", ...
    reason: str


@dataclass(frozen=True, slots=True)
class PatientFacts:
    patient_ref: str | None  # "Patient/<id>" only for hashing in the audit log; never shown or logged raw
    birth_date: date | None = None
    medications: tuple[MedicationFact, ...] = ()
    conditions: tuple[ConditionFact, ...] = ()
    allergies: tuple[AllergyFact, ...] = ()
    blood_pressures: tuple[BloodPressureFact, ...] = ()
    gaps: tuple[DataGap, ...] = field(default_factory=tuple)
