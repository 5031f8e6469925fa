"""Raw FHIR R4 JSON -> normalised facts (cds.fhir.model). Tolerant by design, never silent.

Real clients send odd shapes (docs/cds-hooks-conformance.md): a Bundle without `type`, a draft
MedicationRequest with no medication yet, `category` as an object. Everything is read defensively from
plain dicts, which keeps the hot path fast; a resource the rules would need but cannot read is kept with
`unreadable` set so the engine can say so. Partial dates resolve to the *latest* day they could mean: for
"within the last N months" checks, that is the cautious reading.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cds.fhir.model import (
    AllergyFact,
    BloodPressureFact,
    Coding,
    Concept,
    ConditionFact,
    DataGap,
    MedicationFact,
    MedicationKind,
    OnsetAge,
    PatientFacts,
    Quantity,
    ReactionFact,
    SourceRef,
    Strength,
)

# Nothing but "T" or the end may follow: "99999-01-01" or "20261122" is not the year 9999 or 2026.
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?![\d-])")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def parse_date(value: Any) -> date | None:
    """FHIR date, dateTime or instant -> date; partial dates -> the last day they cover; junk -> None."""
    if not isinstance(value, str):
        return None
    found = _DATE.match(value.strip())
    if not found:
        return None
    year, month, day = found.group(1), found.group(2), found.group(3)
    try:
        y = int(year)
        if month is None:
            return date(y, 12, 31)
        m = int(month)
        if day is None:
            return date(y, m, calendar.monthrange(y, m)[1])
        return date(y, m, int(day))
    except ValueError:
        return None


def _first_day(value: Any) -> date | None:
    """A period's start: a partial date means its first day (parse_date gives the last)."""
    day = parse_date(value)
    if day is None or not isinstance(value, str):
        return day
    text = value.strip()
    if re.match(r"^\d{4}-\d{2}(?![\d-])", text):
        return day.replace(day=1)
    if re.match(r"^\d{4}(?![\d-])", text):
        return day.replace(month=1, day=1)
    return day


def parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _DATETIME.match(text):
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    day = parse_date(text)
    return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def concept(value: Any) -> Concept:
    """A CodeableConcept (or a bare Coding, which some senders use) -> Concept with every coding."""
    if not isinstance(value, dict):
        return Concept()
    codings = []
    for item in _list(value.get("coding")):
        if isinstance(item, dict):
            code = item.get("code")
            codings.append(
                Coding(
                    system=_str(item.get("system")),
                    code=str(code) if isinstance(code, (str, int)) else None,
                    display=_str(item.get("display")),
                )
            )
    if not codings and ("code" in value or "system" in value):
        codings.append(Coding(_str(value.get("system")), _str(value.get("code")), _str(value.get("display"))))
    named = tuple(c for c in codings if c.code or c.display)  # a coding with neither names nothing
    return Concept(codings=named, text=_str(value.get("text")))


class RelevanceFilter:
    """Whether a coded element could matter to any rule, decided from the raw JSON and cached.

    Most of a chart belongs to no value set any rule reads; building facts for it is most of the cost of
    a large request. The answer depends only on the codings and text, which charts repeat heavily, so it is
    cached by their raw values. An element with nothing readable is always relevant: the data-quality rule
    must see it; so is one that `needs_review` (a code nobody knows with no name, or a condition's name the
    surrounding words leave in doubt). Anything unusual (unhashable junk) is relevant too: when in doubt,
    build the fact.
    """

    def __init__(
        self,
        memberships: Callable[[Concept], frozenset[str]],
        urls: frozenset[str],
        needs_review: Callable[[Concept], bool] = lambda _concept: False,
    ) -> None:
        self._memberships = memberships
        self._urls = urls
        self._needs_review = needs_review
        self._cache: dict[Any, bool] = {}

    def __call__(self, value: Any) -> bool:
        key = _raw_key(value)
        if key is None:
            return True
        try:
            known = self._cache.get(key)
        except TypeError:
            return True
        if known is None:
            found = concept(value)
            known = (
                not (found.codings or found.text)
                or not self._urls.isdisjoint(self._memberships(found))
                or self._needs_review(found)
            )
            if len(self._cache) >= _RELEVANCE_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = known
        return known


_RELEVANCE_CACHE_SIZE = 50_000


def _raw_key(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    codings = value.get("coding")
    parts: list[Any] = []
    if isinstance(codings, list):
        for item in codings:
            if not isinstance(item, dict):
                return None
            parts.append((item.get("system"), item.get("code"), item.get("display")))
    elif codings is not None:
        return None
    return (tuple(parts), value.get("text"), value.get("system"), value.get("code"), value.get("display"))


def _status_code(value: Any) -> str | None:
    """clinicalStatus / verificationStatus are CodeableConcepts in R4 (plain strings in older senders).

    Read directly rather than through `concept()`: it runs twice for every condition and allergy.
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    codings = value.get("coding")
    for coding in codings if isinstance(codings, list) else (codings,):
        if isinstance(coding, dict):
            code = coding.get("code")
            if isinstance(code, str) and code.strip():
                return code
    code = value.get("code")
    return code if isinstance(code, str) and code.strip() else None


def _ref(resource: Mapping[str, Any]) -> SourceRef:
    rid = resource.get("id")
    return SourceRef(
        str(resource.get("resourceType", "?")), str(rid) if isinstance(rid, (str, int)) else None
    )


# ------------------------------------------------------------------------------------------ medications


def _quantity(value: Any) -> Quantity | None:
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return None
    unit = _str(value.get("code")) or _str(value.get("unit")) or "1"
    return Quantity(float(number), unit)


def _strengths(medication: Mapping[str, Any]) -> tuple[Strength, ...]:
    strengths = []
    for item in _list(medication.get("ingredient")):
        if not isinstance(item, dict):
            continue
        name = concept(item.get("itemCodeableConcept")).label()
        ratio = item.get("strength")
        if not name or not isinstance(ratio, dict):
            continue
        numerator = _quantity(ratio.get("numerator"))
        denominator = _quantity(ratio.get("denominator"))
        if numerator is None:
            continue
        if denominator is not None and denominator.value == 1 and denominator.unit in {"1", "{tbl}", "TAB"}:
            denominator = None
        strengths.append(Strength(name.lower(), numerator, denominator))
    return tuple(strengths)


def _reference_id(reference: str) -> str | None:
    """'Medication/12', 'https://ehr/fhir/Medication/12' or 'Medication/12/_history/3' -> 'Medication/12'."""
    parts = [p for p in reference.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Medication":
        return f"Medication/{parts[-1]}"
    return None


def _medication_concept(
    resource: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]
) -> tuple[Concept, tuple[Strength, ...], str | None]:
    """(concept, strengths from Medication.ingredient, unreadable reason)."""
    if "medicationCodeableConcept" in resource:
        found = concept(resource["medicationCodeableConcept"])
        return found, (), None if (found.codings or found.text) else "medication-not-coded"
    reference = resource.get("medicationReference")
    if not isinstance(reference, dict):
        return Concept(), (), "no-medication"
    target = _str(reference.get("reference"))
    display = _str(reference.get("display"))
    medication: Mapping[str, Any] | None = None
    if target and target.startswith("#"):
        for contained in _list(resource.get("contained")):
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                medication = contained
                break
    elif target:
        key = _reference_id(target)
        medication = medications.get(key) if key else None
    if medication is not None and medication.get("resourceType") == "Medication":
        found = concept(medication.get("code"))
        if not found.codings and not found.text and display:
            found = Concept(text=display)
        return (
            found,
            _strengths(medication),
            None if (found.codings or found.text) else "medication-not-coded",
        )
    if display:
        return Concept(text=display), (), None
    return Concept(), (), "medication-reference-unresolved"


def _planned_start(resource: Mapping[str, Any]) -> date | None:
    candidates: list[date] = []
    for dosage in _list(resource.get("dosageInstruction")):
        timing = dosage.get("timing") if isinstance(dosage, dict) else None
        if not isinstance(timing, dict):
            continue
        for event in _list(timing.get("event")) if isinstance(timing.get("event"), list) else []:
            day = parse_date(event)
            if day:
                candidates.append(day)
        repeat = timing.get("repeat")
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            day = parse_date(repeat["boundsPeriod"].get("start"))
            if day:
                candidates.append(day)
    dispense = resource.get("dispenseRequest")
    if not candidates and isinstance(dispense, dict) and isinstance(dispense.get("validityPeriod"), dict):
        day = parse_date(dispense["validityPeriod"].get("start"))
        if day:
            candidates.append(day)
    return min(candidates) if candidates else None


def medication_fact(
    resource: Mapping[str, Any],
    medications: Mapping[str, Mapping[str, Any]],
    *,
    draft: bool = False,
    selected: bool = False,
) -> MedicationFact:
    kind = (
        MedicationKind.STATEMENT
        if resource.get("resourceType") == "MedicationStatement"
        else MedicationKind.REQUEST
    )
    found, strengths, unreadable = _medication_concept(resource, medications)
    end: date | None = None
    if kind is MedicationKind.STATEMENT:
        dosages = _list(resource.get("dosage"))
        effective = resource.get("effectivePeriod")
        period = effective if isinstance(effective, dict) else {}
        start = parse_date(resource.get("effectiveDateTime")) or _first_day(period.get("start"))
        end = parse_date(period.get("end"))
        dates = [
            parse_date(resource.get("dateAsserted")),
            parse_date(resource.get("effectiveDateTime")),
            parse_date(period.get("start")),
        ]
        recorded = max((d for d in dates if d), default=None)
    else:
        dosages = _list(resource.get("dosageInstruction"))
        recorded = parse_date(resource.get("authoredOn"))
        start = recorded
    derived = tuple(
        ref
        for item in _list(resource.get("derivedFrom"))
        if isinstance(item, dict) and (ref := _str(item.get("reference")))
    )
    return MedicationFact(
        source=_ref(resource),
        kind=kind,
        concept=found,
        status=_str(resource.get("status")),
        intent=_str(resource.get("intent")),
        is_draft_order=draft,
        is_selected=selected,
        recorded=recorded,
        planned_start=_planned_start(resource) if kind is MedicationKind.REQUEST else None,
        effective_start=start,
        effective_end=end,
        strengths=strengths,
        dosages=tuple(d for d in dosages if isinstance(d, dict)),
        derived_from=derived,
        unreadable=unreadable,
    )


# ----------------------------------------------------------------------------- conditions and allergies


_YEARS = frozenset({"a", "yr", "yrs", "year", "years"})
_MONTHS = frozenset({"mo", "month", "months"})


def _age_quantity(value: Any) -> tuple[float, str] | None:
    """An Age (a Quantity in years or months) -> (value, "a" | "mo"); None for anything else."""
    found = _quantity(value)
    if found is None or found.value < 0:
        return None
    unit = found.unit.strip().lower()
    if unit in _YEARS:
        return found.value, "a"
    if unit in _MONTHS:
        return found.value, "mo"
    return None


def _add_months(day: date, months: int) -> date | None:
    year, month = divmod(day.month - 1 + months, 12)
    year += day.year
    if not 1 <= year <= 9999:
        return None
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _age_window(low: float, high: float, unit: str, birth: date) -> tuple[date, date] | None:
    """The dates on which the patient was between `low` and `high` years (or months) old, inclusive."""
    per = 12 if unit == "a" else 1
    start = _add_months(birth, int(low) * per)
    after = _add_months(birth, (int(high) + 1) * per)
    if start is None or after is None or after <= start:
        return None
    return start, date.fromordinal(after.toordinal() - 1)


def _onset_age(resource: Mapping[str, Any], birth: date | None) -> OnsetAge | None:
    """onsetAge or onsetRange (of ages) -> the ages as recorded and the dates they cover."""
    if "onsetAge" in resource:
        age = _age_quantity(resource["onsetAge"])
        if age is None:
            return None
        low = high = age
    elif isinstance(resource.get("onsetRange"), dict):
        found_low = _age_quantity(resource["onsetRange"].get("low"))
        found_high = _age_quantity(resource["onsetRange"].get("high"))
        if found_low is None or found_high is None or found_low[1] != found_high[1]:
            return None
        low, high = found_low, found_high
    else:
        return None
    if high[0] < low[0]:
        return None
    window = _age_window(low[0], high[0], low[1], birth) if birth is not None else None
    return OnsetAge(low[0], high[0], low[1], *(window or (None, None)))


_MONTH_NAMES = {
    name.lower(): number
    for number in range(1, 13)
    for name in (calendar.month_name[number], calendar.month_abbr[number])
}
_MONTH_YEAR = re.compile(r"\b([A-Za-z]{3,9})\.?,?\s+(\d{4})\b")
_YEAR_MONTH = re.compile(r"\b(\d{4})-(\d{2})\b")
_MONTH_SLASH_YEAR = re.compile(r"\b(\d{1,2})/(\d{4})\b")


def _month_span(year: int, month: int) -> tuple[date, date] | None:
    if not (1 <= month <= 12 and 1 <= year <= 9999):
        return None
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def onset_text_span(text: str) -> tuple[date, date] | None:
    """A month and year written in an onsetString ("November 2025", "Nov. 2025", "2025-11", "11/2025")
    -> the first and last day of that month. Anything else (no month, two different months) -> None:
    the record is then treated as undated and the card asks for the date."""
    spans: set[tuple[date, date]] = set()
    for name, year in _MONTH_YEAR.findall(text):
        if name.lower() in _MONTH_NAMES:
            spans.add(_month_span(int(year), _MONTH_NAMES[name.lower()]) or (date.min, date.min))
    for year, month in _YEAR_MONTH.findall(text):
        spans.add(_month_span(int(year), int(month)) or (date.min, date.min))
    for month, year in _MONTH_SLASH_YEAR.findall(text):
        spans.add(_month_span(int(year), int(month)) or (date.min, date.min))
    months_named = {_MONTH_NAMES[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _MONTH_NAMES}
    if len(spans) != 1 or (date.min, date.min) in spans or len(months_named) > 1:
        return None
    return spans.pop()


def _onset_span(resource: Mapping[str, Any], age: OnsetAge | None) -> tuple[date, date] | None:
    """The days the onset can fall on when the record gives a span rather than a day."""
    period = resource.get("onsetPeriod")
    if isinstance(period, dict):
        start, end = parse_date(period.get("start")), parse_date(period.get("end"))
        if start is not None and end is not None and start <= end:
            return start, end
        return None
    if isinstance(resource.get("onsetString"), str):
        return onset_text_span(resource["onsetString"])
    if age is not None and age.earliest is not None and age.latest is not None:
        return age.earliest, age.latest
    return None


def _onset(resource: Mapping[str, Any], span: tuple[date, date] | None) -> date | None:
    """onset[x] as a date. Present but unreadable (or text without a month and year) counts as missing:
    the undated bands then ask for the date rather than guess it. A span (a period, an age, a month
    written as text) gives its latest possible date: the cautious reading for a "how recent" check."""
    if "onsetDateTime" in resource:
        return parse_date(resource["onsetDateTime"])
    if span is not None:
        return span[1]
    period = resource.get("onsetPeriod")
    if isinstance(period, dict):  # a period open at one end: the only date it gives
        return parse_date(period.get("end")) or parse_date(period.get("start"))
    return None


def dates_itself_by_age(resource: Any) -> bool:
    """Whether a record gives its onset as the patient's age (so the birth date is needed to date it)."""
    return isinstance(resource, dict) and ("onsetAge" in resource or "onsetRange" in resource)


def condition_fact(resource: Mapping[str, Any], birth: date | None) -> ConditionFact:
    code = concept(resource.get("code"))
    age = _onset_age(resource, birth)
    span = _onset_span(resource, age)
    onset = _onset(resource, span)
    onset_text = resource.get("onsetString")
    abatement = parse_date(resource.get("abatementDateTime"))
    return ConditionFact(
        source=_ref(resource),
        concept=code,
        clinical_status=_status_code(resource.get("clinicalStatus")),
        verification_status=_status_code(resource.get("verificationStatus")),
        onset=onset,
        recorded=parse_date(resource.get("recordedDate")),
        abatement=abatement,
        unreadable=None if (code.codings or code.text) else "condition-not-coded",
        onset_age=age,
        onset_span=span,
        onset_text=onset_text.strip() or None if isinstance(onset_text, str) else None,
    )


def allergy_fact(resource: Mapping[str, Any]) -> AllergyFact:
    concepts = [concept(resource.get("code"))]
    reactions: list[ReactionFact] = []
    for reaction in _list(resource.get("reaction")):
        if not isinstance(reaction, dict):
            continue
        if "substance" in reaction:
            concepts.append(concept(reaction["substance"]))
        manifestations = tuple(concept(m) for m in _list(reaction.get("manifestation")))
        reactions.append(ReactionFact(manifestations, _str(reaction.get("severity"))))
    concepts = [c for c in concepts if c.codings or c.text]
    return AllergyFact(
        source=_ref(resource),
        concepts=tuple(concepts),
        clinical_status=_status_code(resource.get("clinicalStatus")),
        verification_status=_status_code(resource.get("verificationStatus")),
        recorded=parse_date(resource.get("recordedDate")),
        criticality=_str(resource.get("criticality")),
        unreadable=None if concepts else "allergy-not-coded",
        type=_str(resource.get("type")),
        reactions=tuple(reactions),
    )


# ------------------------------------------------------------------------------------------ observations


@dataclass(frozen=True, slots=True)
class BloodPressureSpec:
    """Codes that identify a blood pressure and the range of values taken as real readings (data)."""

    panel: set[tuple[str, str]]
    systolic: set[tuple[str, str]]
    diastolic: set[tuple[str, str]]
    above: float
    below: float
    # A lone systolic and a lone diastolic Observation taken this close together are one measurement
    pair_within: timedelta = timedelta(0)

    def value(self, quantity: Any) -> float | None:
        found = _quantity(quantity)
        if found is None or not self.above < found.value < self.below:
            return None
        return found.value


def blood_pressure_fact(resource: Mapping[str, Any], spec: BloodPressureSpec) -> BloodPressureFact | None:
    """An Observation -> a reading, or None when it is not a blood pressure at all."""

    def keys(value: Any) -> set[tuple[str, str]]:
        return {(c.system or "", c.code or "") for c in concept(value).codings}

    status = _str(resource.get("status"))
    if status in {"entered-in-error", "cancelled"}:
        return None
    codes = keys(resource.get("code"))
    sys_value = dia_value = None
    half_unreadable = False  # a panel's coded pressure whose value is missing, garbled or implausible
    if codes & spec.systolic:
        sys_value = spec.value(resource.get("valueQuantity"))
    elif codes & spec.diastolic:
        dia_value = spec.value(resource.get("valueQuantity"))
    elif codes & spec.panel:
        for component in _list(resource.get("component")):
            if not isinstance(component, dict):
                continue
            component_codes = keys(component.get("code"))
            if component_codes & spec.systolic:
                sys_value = spec.value(component.get("valueQuantity"))
                half_unreadable = half_unreadable or sys_value is None
            elif component_codes & spec.diastolic:
                dia_value = spec.value(component.get("valueQuantity"))
                half_unreadable = half_unreadable or dia_value is None
    else:
        return None
    period = resource.get("effectivePeriod")
    taken = parse_datetime(resource.get("effectiveDateTime")) or (
        parse_datetime(period.get("start")) if isinstance(period, dict) else None
    )
    taken = taken or parse_datetime(resource.get("issued"))
    unreadable = None
    # A reading with one pressure unreadable is still judged on the other, and is said to be unreadable:
    # "systolic garbled, diastolic 80" must never pass as a normal reading
    if (sys_value is None and dia_value is None) or half_unreadable:
        unreadable = "bp-value-unreadable"
    elif taken is None:
        unreadable = "bp-date-unreadable"
    return BloodPressureFact(_ref(resource), taken, sys_value, dia_value, unreadable)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pair_blood_pressures(readings: Sequence[BloodPressureFact], within: timedelta) -> list[BloodPressureFact]:
    """Join a systolic-only and a diastolic-only reading taken within `within` of each other into one
    reading (EHRs often send the two values as separate Observations). Each lone value is used once,
    with the nearest partner in time; a value left without a partner stays a reading of its own."""

    def lone(reading: BloodPressureFact, systolic: bool) -> bool:
        if reading.unreadable is not None or reading.taken is None:
            return False
        if systolic:
            return reading.systolic is not None and reading.diastolic is None
        return reading.diastolic is not None and reading.systolic is None

    systolics = [r for r in readings if lone(r, systolic=True)]
    diastolics = sorted((r for r in readings if lone(r, systolic=False)), key=lambda r: r.taken or _EPOCH)
    times = [d.taken or _EPOCH for d in diastolics]
    candidates = []
    for i, s in enumerate(systolics):  # only diastolics inside the window, found by bisection
        taken = s.taken or _EPOCH
        for j in range(bisect_left(times, taken - within), bisect_right(times, taken + within)):
            candidates.append((abs(taken - times[j]), i, j))
    candidates.sort()
    paired: dict[int, BloodPressureFact] = {}  # id of a lone systolic -> the joined reading
    used: set[int] = set()  # ids of the diastolic readings joined to one
    for _gap, i, j in candidates:  # closest pairs first
        systolic, diastolic = systolics[i], diastolics[j]
        if id(systolic) in paired or id(diastolic) in used:
            continue
        used.add(id(diastolic))
        paired[id(systolic)] = replace(
            systolic, diastolic=diastolic.diastolic, partners=(*systolic.partners, diastolic.source)
        )
    return [paired.get(id(r), r) for r in readings if id(r) not in used]


# ------------------------------------------------------------------------------------------- assembling


def draft_order_resources(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """MedicationRequests from context.draftOrders (a Bundle, `type` optional)."""
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict):
        return []
    resources = []
    for entry in _list(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "MedicationRequest":
            resources.append(resource)
    return resources


def _of_type(resources: Iterable[Any], resource_type: str) -> list[Mapping[str, Any]]:
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == resource_type]


def build_facts(
    *,
    patient_ref: str | None,
    resources: Mapping[str, Sequence[Any]],
    medications: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any],
    bp_spec: BloodPressureSpec,
    gaps: Sequence[DataGap] = (),
    relevant: Callable[[Any], bool] | None = None,
) -> PatientFacts:
    """Normalise the chart. With `relevant`, chart records whose code no rule could match are skipped
    (draft orders, allergies and observations are always read: they are few and each one matters)."""
    keep = relevant or (lambda _value: True)
    patient = next(iter(_of_type(resources.get("patient", ()), "Patient")), None)
    birth = parse_date(patient.get("birthDate")) if patient else None
    selections = {s for s in _list(context.get("selections")) if isinstance(s, str)}
    meds: list[MedicationFact] = []
    draft_refs: set[str] = set()
    for resource in draft_order_resources(context):
        fact = medication_fact(
            resource,
            medications,
            draft=True,
            selected=f"MedicationRequest/{resource.get('id')}" in selections,
        )
        draft_refs.add(fact.source.reference())
        meds.append(fact)
    for key, resource_type in (
        ("medicationRequests", "MedicationRequest"),
        ("medicationStatements", "MedicationStatement"),
    ):
        for chart_entry in _of_type(resources.get(key, ()), resource_type):
            coded = chart_entry.get("medicationCodeableConcept")
            if coded is not None and not keep(coded):
                continue
            fact = medication_fact(chart_entry, medications)
            if fact.source.reference() not in draft_refs:  # a draft the EHR already saved is the draft
                meds.append(fact)
    conditions = tuple(
        condition_fact(r, birth)
        for r in _of_type(resources.get("conditions", ()), "Condition")
        if keep(r.get("code"))
    )
    allergies = tuple(allergy_fact(r) for r in _of_type(resources.get("allergies", ()), "AllergyIntolerance"))
    readings = []
    for observation in _of_type(resources.get("bloodPressure", ()), "Observation"):
        reading = blood_pressure_fact(observation, bp_spec)
        if reading is not None:
            readings.append(reading)
    readings = pair_blood_pressures(readings, bp_spec.pair_within)
    return PatientFacts(
        patient_ref=patient_ref,
        birth_date=birth,
        medications=tuple(meds),
        conditions=conditions,
        allergies=allergies,
        blood_pressures=tuple(readings),
        gaps=tuple(gaps),
    )
