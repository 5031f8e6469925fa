"""FHIR Dosage + product strength -> daily amount of one ingredient in mg.

The engine asks one question: "how many mg of <ingredient> a day does this medication record say?".
The answer is a `DailyDose`: COMPUTED with the arithmetic spelt out, AS_NEEDED (with the maximum a day
when `maxDosePerPeriod` allows one), or UNKNOWN with a short problem code. Nothing here guesses: a
missing frequency is never read as "once a day", a dose range is read at its high end, `frequencyMax`
wins over `frequency`, and a mass dose of a combination product is not attributed to one ingredient.

Units, timing abbreviations, EventTiming codes and the salt words stripped from ingredient names are
data (`fhir_profiles/tables/dosing-vocabulary.json`, loaded once as a `DosingVocabulary`).

Problem codes (`DailyDose.problem`; stable identifiers, the card layer turns them into sentences):

    no-dosage               the record has no dosage instruction at all
    no-dose-quantity        a dosage without doseQuantity / doseRange (text only, rate only, open range)
    no-frequency            no usable timing: no frequency, period, when, timeOfDay, event or known code
    no-strength             the product's strength of the ingredient is unknown (or the product lacks it)
    unit-not-convertible    a dose or strength unit that cannot be brought to mg (drops, IU, mL of a
                            tablet, tablets of a liquid, per-hour patches)
    ambiguous-combination   a mass dose of a multi-ingredient product, or several different strengths
                            of the ingredient in one product (phased packs)
    unreadable-dosage       a field of the wrong type, a zero/negative/non-finite/implausible value

Several dosage entries: entries sharing a `sequence` (or without one) apply together and are summed
(1 mg morning + 2 mg night = 3 mg/day); different sequences follow each other (tapers) and the highest
daily amount is taken. Entries without a sequence are counted with every numbered sequence. As-needed
entries next to regular ones are reported in the explanation, not added to the regular total.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cds.errors import ConfigError
from cds.fhir.model import DailyDose, DoseStatus, MedicationFact, Quantity, Strength
from cds.paths import knowledge_root

__all__ = [
    "NO_STRENGTH",
    "PROBLEMS",
    "DosingVocabulary",
    "daily_dose",
    "default_vocabulary",
    "default_vocabulary_path",
    "parse_strengths",
]

NO_DOSAGE = "no-dosage"
NO_DOSE_QUANTITY = "no-dose-quantity"
NO_FREQUENCY = "no-frequency"
NO_STRENGTH = "no-strength"
UNIT_NOT_CONVERTIBLE = "unit-not-convertible"
AMBIGUOUS_COMBINATION = "ambiguous-combination"
UNREADABLE = "unreadable-dosage"

PROBLEMS: frozenset[str] = frozenset(
    {
        NO_DOSAGE,
        NO_DOSE_QUANTITY,
        NO_FREQUENCY,
        NO_STRENGTH,
        UNIT_NOT_CONVERTIBLE,
        AMBIGUOUS_COMBINATION,
        UNREADABLE,
    }
)

_MG = "mg"
_ML = "mL"
_MAX_NAME_CHARS = 2000  # product names longer than this are not parsed (regex cost guard)
_MAX_ENTRIES = 100  # dosage instructions / doseAndRate items / when codes read per record

_VOCABULARY_RELATIVE = Path("fhir_profiles") / "tables" / "dosing-vocabulary.json"


# ------------------------------------------------------------------------------------------ vocabulary


@dataclass(frozen=True, slots=True)
class _TimingCode:
    frequency: float
    period: float
    period_unit: str


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _positive_number(value: object) -> float | None:
    """A finite number > 0 (never a bool or a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


def _unit_key(unit: str) -> str:
    return " ".join(unit.split()).lower()


def _section(data: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict) or not value:
        raise _fail(path, f"'{key}' must be a non-empty object")
    return {k: v for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}


def _factor_table(data: Mapping[str, Any], key: str, path: Path) -> Mapping[str, float]:
    table: dict[str, float] = {}
    for unit, factor in _section(data, key, path).items():
        number = _positive_number(factor)
        if number is None:
            raise _fail(path, f"'{key}.{unit}' must be a positive number")
        norm = _unit_key(unit)
        if norm in table and table[norm] != number:
            raise _fail(path, f"'{key}' has conflicting entries for {norm!r}")
        table[norm] = number
    return MappingProxyType(table)


def _string_list(value: object, where: str, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, f"'{where}' must be a list of non-empty strings")
    return tuple(" ".join(v.split()).lower() for v in value)


@dataclass(frozen=True, slots=True, eq=False)
class DosingVocabulary:
    """Unit, timing and product-name vocabularies (frozen; loaded once at start-up with `load`)."""

    mass_to_mg: Mapping[str, float]
    volume_to_ml: Mapping[str, float]
    count_units: Mapping[str, str]  # unit (lower-case) -> label used in explanations
    period_to_days: Mapping[str, float]
    timing_codes: Mapping[str, _TimingCode]  # upper-case abbreviation -> repeat
    when_administrations: Mapping[str, int]  # lower-case EventTiming code -> administrations a day
    days_of_week: frozenset[str]
    strength_units: Mapping[str, tuple[str, float]]  # upper-case RxNorm unit -> (unit, factor)
    denominator_units: Mapping[str, str]  # upper-case RxNorm unit -> unit
    salt_words: frozenset[str]
    keep_names: frozenset[str]
    max_quantity_value: float
    max_administrations_per_day: float
    strength_pattern: re.Pattern[str]

    # -------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: Path) -> DosingVocabulary:
        """Read and validate the vocabulary JSON. Raises ConfigError naming the file and the field."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fail(path, f"cannot read dosing vocabulary: {exc}") from exc
        if not isinstance(data, dict):
            raise _fail(path, "the dosing vocabulary must be a JSON object")
        return cls._from_dict(data, Path(path))

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], path: Path) -> DosingVocabulary:
        mass = _factor_table(data, "mass_units_to_mg", path)
        volume = _factor_table(data, "volume_units_to_ml", path)
        periods = _factor_table(data, "period_units_to_days", path)

        counts: dict[str, str] = {}
        for unit, label in _section(data, "count_units", path).items():
            if not isinstance(label, str) or not label.strip():
                raise _fail(path, f"'count_units.{unit}' must name a label")
            counts[_unit_key(unit)] = label.strip()
        overlap = (set(mass) & set(volume)) | (set(mass) & set(counts)) | (set(volume) & set(counts))
        if overlap:
            raise _fail(path, f"units listed as more than one kind: {sorted(overlap)}")

        codes: dict[str, _TimingCode] = {}
        for code, repeat in _section(data, "timing_codes", path).items():
            if not isinstance(repeat, dict):
                raise _fail(path, f"'timing_codes.{code}' must be a Timing.repeat object")
            frequency = _positive_number(repeat.get("frequency"))
            period = _positive_number(repeat.get("period"))
            period_unit = repeat.get("periodUnit")
            if frequency is None or period is None or not isinstance(period_unit, str):
                raise _fail(path, f"'timing_codes.{code}' needs frequency, period and periodUnit")
            if _unit_key(period_unit) not in periods:
                raise _fail(path, f"'timing_codes.{code}.periodUnit' {period_unit!r} is not a period unit")
            codes[code.strip().upper()] = _TimingCode(frequency, period, _unit_key(period_unit))

        when: dict[str, int] = {}
        for code, count in _section(data, "event_timing_administrations", path).items():
            if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
                raise _fail(path, f"'event_timing_administrations.{code}' must be a positive whole number")
            when[code.strip().lower()] = count

        days = frozenset(_string_list(data.get("days_of_week"), "days_of_week", path))
        if len(days) != 7:
            raise _fail(path, "'days_of_week' must list the seven FHIR day codes")

        names = data.get("product_names")
        if not isinstance(names, dict):
            raise _fail(path, "'product_names' must be an object")
        strength_units: dict[str, tuple[str, float]] = {}
        for unit, spec in _section(names, "strength_units", path).items():
            if (
                not isinstance(spec, list)
                or len(spec) != 2
                or not isinstance(spec[0], str)
                or _positive_number(spec[1]) is None
            ):
                raise _fail(path, f"'product_names.strength_units.{unit}' must be [unit, factor]")
            strength_units[unit.strip().upper()] = (spec[0], float(spec[1]))
        denominators: dict[str, str] = {}
        for unit, target in _section(names, "denominator_units", path).items():
            if not isinstance(target, str) or not target:
                raise _fail(path, f"'product_names.denominator_units.{unit}' must be a unit")
            denominators[unit.strip().upper()] = target
        salts = frozenset(_string_list(names.get("salt_words"), "product_names.salt_words", path))
        keep = frozenset(_string_list(names.get("keep_names", []), "product_names.keep_names", path))

        limits = data.get("limits")
        if not isinstance(limits, dict):
            raise _fail(path, "'limits' must be an object")
        max_value = _positive_number(limits.get("max_quantity_value"))
        max_per_day = _positive_number(limits.get("max_administrations_per_day"))
        if max_value is None or max_per_day is None:
            raise _fail(path, "'limits' needs positive max_quantity_value and max_administrations_per_day")

        return cls(
            mass_to_mg=mass,
            volume_to_ml=volume,
            count_units=MappingProxyType(counts),
            period_to_days=periods,
            timing_codes=MappingProxyType(codes),
            when_administrations=MappingProxyType(when),
            days_of_week=days,
            strength_units=MappingProxyType(strength_units),
            denominator_units=MappingProxyType(denominators),
            salt_words=salts,
            keep_names=keep,
            max_quantity_value=max_value,
            max_administrations_per_day=max_per_day,
            strength_pattern=_strength_pattern(strength_units, denominators),
        )

    # -------------------------------------------------------------------------------------- lookups

    def normalise_ingredient(self, name: str) -> str:
        """Lower-case, single-spaced, trailing salt/ester words stripped ('oxycodone hydrochloride')."""
        words = name.lower().replace(",", " ").split()
        if " ".join(words) in self.keep_names:
            return " ".join(words)
        while len(words) > 1 and words[-1] in self.salt_words:
            words.pop()
        return " ".join(words)

    def parse_strengths(self, product_name: str) -> tuple[Strength, ...]:
        """Strengths named in an RxNorm-style product name (see the module-level `parse_strengths`)."""
        if not isinstance(product_name, str) or not product_name.strip():
            return ()
        text = re.sub(r"\[[^\[\]]*\]", " ", product_name[:_MAX_NAME_CHARS])  # [Brand], [Kit name]
        parts = re.findall(r"\(([^()]*)\)", text) if "{" in text else []
        found: list[Strength] = []
        for part in parts or [text]:
            for strength in self._parse_product(part):
                if strength not in found:
                    found.append(strength)
        return tuple(found)

    def _parse_product(self, text: str) -> list[Strength]:
        """One clinical drug: ' / '-separated components, each '<ingredient> <n> <UNIT>[/<UNIT>]'."""
        totals: dict[tuple[str, str, float | None, str | None], float] = {}
        for component in re.split(r"\s+/\s+", text):
            for match in self.strength_pattern.finditer(component):
                ingredient = self._ingredient_before(component[: match.start()])
                if ingredient is None:
                    continue
                number = _positive_number(float(match["num"]))
                unit, factor = self.strength_units[match["unit"].upper()]
                den_value: float | None = None
                den_unit: str | None = None
                if match["den"]:
                    den_value = _positive_number(float(match["dnum"])) if match["dnum"] else 1.0
                    den_unit = self.denominator_units[match["den"].upper()]
                if number is None or (den_unit is not None and den_value is None):
                    break
                key = (ingredient, unit, den_value, den_unit)
                totals[key] = totals.get(key, 0.0) + number * factor  # mixed salts of one moiety add up
                break
        strengths: list[Strength] = []
        for (ingredient, unit, den_value, den_unit), value in totals.items():
            if not math.isfinite(value):
                continue
            denominator = Quantity(den_value, den_unit) if den_value is not None and den_unit else None
            strengths.append(Strength(ingredient, Quantity(_tidy(value), unit), denominator))
        return strengths

    def _ingredient_before(self, text: str) -> str | None:
        # drop a leading quantity or duration: "0.7 ML ", "24 HR ", "Abuse-Deterrent 12 HR ", "60 ACTUAT "
        text = re.sub(r"^.*(?:^|\s)\d+(?:\.\d+)?\s*[A-Za-z]+\s+", "", text).strip(" {(,-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 ,'\-]{0,118}[A-Za-z0-9]|[A-Za-z]", text):
            return None
        name = self.normalise_ingredient(text)
        return name or None

    def mass_factor(self, unit: str) -> float | None:
        return self.mass_to_mg.get(_unit_key(unit))

    def volume_factor(self, unit: str) -> float | None:
        return self.volume_to_ml.get(_unit_key(unit))

    def count_label(self, unit: str) -> str | None:
        return self.count_units.get(_unit_key(unit))

    def period_days(self, unit: str) -> float | None:
        return self.period_to_days.get(_unit_key(unit))


def _strength_pattern(units: Mapping[str, object], denominators: Mapping[str, object]) -> re.Pattern[str]:
    def alternation(keys: Iterable[str]) -> str:
        return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))

    return re.compile(
        r"(?<![\w./])(?P<num>\d{1,12}(?:\.\d{1,12})?|\.\d{1,12})\s*(?P<unit>"
        + alternation(units)
        + r")(?:/(?P<dnum>\d{1,6}(?:\.\d{1,6})?)?\s*(?P<den>"
        + alternation(denominators)
        + r"))?(?![\w/])",
        re.IGNORECASE,
    )


def _tidy(value: float) -> float:
    """Drop binary noise from unit conversions (0.25 * 0.001 -> 0.00025)."""
    return float(f"{value:.12g}")


def default_vocabulary_path() -> Path:
    """The shipped vocabulary (see cds.paths for where the knowledge lives)."""
    return knowledge_root() / _VOCABULARY_RELATIVE


@lru_cache(maxsize=1)
def default_vocabulary() -> DosingVocabulary:
    """The shipped vocabulary, read once (for callers without an app context, e.g. `parse_strengths`)."""
    return DosingVocabulary.load(default_vocabulary_path())


def parse_strengths(product_name: str, vocabulary: DosingVocabulary | None = None) -> tuple[Strength, ...]:
    """Ingredient strengths named in an RxNorm normalised product name.

    "clonazePAM 0.25 MG Oral Tablet" -> clonazepam 0.25 mg (per unit); "diazepam 5 MG/ML Oral Solution" ->
    diazepam 5 mg per 1 mL; "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet" -> two
    strengths, salts stripped; packs "{30 (clonazepam 0.5 MG Oral Tablet) } Pack" read inside the
    parentheses; "[Brand]" suffixes ignored; MCG/G converted to mg; MG/HR -> per 1 h. Names that do not
    parse give (). Uses the shipped vocabulary unless one is given.
    """
    return (vocabulary or default_vocabulary()).parse_strengths(product_name)


# ------------------------------------------------------------------------------------------ daily dose


class _Unknown(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _fmt(value: float) -> str:
    """Numbers for explanations: no trailing zeros, no exponent, 6 significant digits."""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.6g}"
    if "e" in text:
        text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True, slots=True)
class _Product:
    """What is known about the product's content of the asked ingredient."""

    ingredient: str
    strengths: tuple[Strength, ...]  # strengths of this ingredient
    ingredient_count: int  # distinct ingredients in the product (1 when unknown and no ' / ' in its name)
    known: bool  # any strength information at all (for any ingredient)


@dataclass(frozen=True, slots=True)
class _Amount:
    mg: float  # mg of the ingredient per administration (or per maxDosePerPeriod numerator)
    dose: str  # "1 tablet", "0.5 mL", "500 mcg (0.5 mg)"
    strength: str | None  # "0.5 mg/tablet", "2 mg/mL"; None for a mass dose


@dataclass(frozen=True, slots=True)
class _Rate:
    per_day: float
    label: str  # "2/day", "1 per 12 h (2/day)", "BID (2/day)"


@dataclass(frozen=True, slots=True)
class _Entry:
    as_needed: bool
    mg_per_day: float | None
    text: str | None
    problem: str | None


def daily_dose(
    med: MedicationFact,
    ingredient: str,
    vocabulary: DosingVocabulary,
    *,
    on: date | None = None,
    aliases: Iterable[str] = (),
    product_names: Sequence[str] = (),
) -> DailyDose:
    """Daily mg of `ingredient` in `med`, never raising: junk gives UNKNOWN with a problem code.

    `on` is the date the dose is wanted for: when dosage instructions carry dates (`boundsPeriod`, or
    `boundsDuration` chained from the record's start), only the phase in force that day counts, and a
    schedule whose every phase ended before it is ENDED. Without `on` (or without dates) phases that follow
    each other are read at the highest. `aliases` are other names of the ingredient (single-ingredient
    brands) so that "Klonopin 0.5 mg tablet" gives a clonazepam strength; `product_names` are names known
    for the record's codes elsewhere (a value set's display), read when the record's own names give none.
    """
    name = vocabulary.normalise_ingredient(ingredient) if isinstance(ingredient, str) else ""
    try:
        names = frozenset(vocabulary.normalise_ingredient(a) for a in aliases if isinstance(a, str))
        extra = tuple(n for n in product_names if isinstance(n, str))
        return _daily_dose(med, name, vocabulary, on, names | {name}, extra)
    except _Unknown as unknown:
        return DailyDose(name, DoseStatus.UNKNOWN, problem=unknown.problem)
    except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError):
        return DailyDose(name, DoseStatus.UNKNOWN, problem=UNREADABLE)


def _daily_dose(
    med: MedicationFact,
    ingredient: str,
    vocabulary: DosingVocabulary,
    on: date | None,
    names: frozenset[str],
    product_names: Sequence[str],
) -> DailyDose:
    if not ingredient:
        raise _Unknown(NO_STRENGTH)
    dosages: object = med.dosages
    if dosages is None or (isinstance(dosages, (list, tuple)) and not dosages):
        raise _Unknown(NO_DOSAGE)
    if not isinstance(dosages, (list, tuple)) or len(dosages) > _MAX_ENTRIES:
        raise _Unknown(UNREADABLE)
    if not all(isinstance(dosage, dict) for dosage in dosages):
        raise _Unknown(UNREADABLE)
    product = _product(med, ingredient, names, product_names, vocabulary)

    chosen, when = _in_force(list(dosages), med, on, vocabulary)
    if not chosen:
        return DailyDose(ingredient, DoseStatus.ENDED, explanation=when)
    groups: dict[int, list[_Entry]] = {}
    unsequenced: list[_Entry] = []
    for dosage in chosen:
        entry = _entry(dosage, product, vocabulary)
        if not entry.as_needed and entry.problem is not None:
            raise _Unknown(entry.problem)  # one unreadable regular instruction: no total can be trusted
        sequence = _sequence(dosage)
        if sequence is not None:
            groups.setdefault(sequence, []).append(entry)
        else:
            unsequenced.append(entry)
    phases: list[tuple[int | None, list[_Entry]]]
    if groups:
        phases = [(key, entries + unsequenced) for key, entries in sorted(groups.items())]
    else:
        phases = [(None, unsequenced)]
    dose = _combine(ingredient, phases)
    if when and dose.explanation:
        return replace(dose, explanation=f"{when}: {dose.explanation}")
    return dose


def _combine(ingredient: str, phases: Sequence[tuple[int | None, list[_Entry]]]) -> DailyDose:
    regular_totals: list[float] = []
    prn_totals: list[float | None] = []
    texts: list[str] = []
    prn_problem: str | None = None
    for key, entries in phases:
        regular = [e for e in entries if not e.as_needed]
        prn = [e for e in entries if e.as_needed]
        parts = [e.text for e in regular if e.text] + [e.text for e in prn if e.text]
        if regular:
            total = sum(e.mg_per_day or 0.0 for e in regular)
            regular_totals.append(total)
            if len(regular) > 1:
                parts.append(f"total {_fmt(total)} mg/day")
        if prn:
            values = [e.mg_per_day for e in prn]
            prn_totals.append(None if None in values else sum(v or 0.0 for v in values))
            prn_problem = prn_problem or next((e.problem for e in prn if e.problem), None)
        text = "; ".join(parts)
        texts.append(text if key is None or len(phases) == 1 else f"sequence {key}: {text}")

    explanation = " | ".join(texts)
    if regular_totals:
        highest = max(regular_totals)
        if len(phases) > 1:
            explanation += f"; no dates say which applies: highest {_fmt(highest)} mg/day"
        return _checked(DailyDose(ingredient, DoseStatus.COMPUTED, highest, explanation))
    if prn_totals and None not in prn_totals:
        highest_prn = max(v or 0.0 for v in prn_totals)
        if len(phases) > 1:
            explanation += f"; no dates say which applies: highest {_fmt(highest_prn)} mg/day"
        return _checked(DailyDose(ingredient, DoseStatus.AS_NEEDED, highest_prn, explanation))
    return DailyDose(ingredient, DoseStatus.AS_NEEDED, None, explanation or None, prn_problem)


# ------------------------------------------------------------------------------------------ phases


@dataclass(frozen=True, slots=True)
class _Window:
    """The days one dosage instruction applies, both ends included; None = open."""

    start: date | None
    end: date | None

    def holds(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)

    def text(self) -> str:
        if self.start and self.end:
            return f"{self.start.isoformat()} to {self.end.isoformat()}"
        if self.start:
            return f"from {self.start.isoformat()}"
        return f"until {self.end.isoformat()}" if self.end else "undated"


def _in_force(
    dosages: list[dict[str, Any]], med: MedicationFact, on: date | None, vocabulary: DosingVocabulary
) -> tuple[list[dict[str, Any]], str | None]:
    """The dosage instructions in force `on`, and how that was decided (None when dates played no part).

    Undated instructions apply throughout. When no dated instruction holds that day: the next one to start
    is taken (planned use) if any; otherwise the schedule is over and nothing is returned.
    """
    if on is None:
        return dosages, None
    windows = _windows(dosages, med, vocabulary)
    if all(window is None for window in windows):
        return dosages, None
    current = [d for d, w in zip(dosages, windows, strict=True) if w is None or w.holds(on)]
    dated_current = [w for w in windows if w is not None and w.holds(on)]
    if dated_current:
        return current, f"in force on {on.isoformat()} ({_span(dated_current).text()})"
    upcoming = [w for w in windows if w is not None and w.start is not None and w.start > on]
    if upcoming:
        first = min(w.start for w in upcoming if w.start is not None)
        chosen = [d for d, w in zip(dosages, windows, strict=True) if w is None or w.start == first]
        return chosen, f"not started on {on.isoformat()}; first phase from {first.isoformat()}"
    ended = max((w.end for w in windows if w is not None and w.end is not None), default=None)
    ended_text = f"every phase ended by {ended.isoformat()}" if ended else "every phase ended"
    if current:
        return current, f"{ended_text}; undated instructions only"
    return [], ended_text


def _span(windows: Sequence[_Window]) -> _Window:
    """The days every one of `windows` holds: the latest start and the earliest end (an open side of
    one window does not open the others)."""
    starts = [w.start for w in windows if w.start is not None]
    ends = [w.end for w in windows if w.end is not None]
    return _Window(max(starts, default=None), min(ends, default=None))


def _windows(
    dosages: Sequence[Mapping[str, Any]], med: MedicationFact, vocabulary: DosingVocabulary
) -> list[_Window | None]:
    """Each instruction's window: its boundsPeriod, else its sequence's place in a chain of
    boundsDuration phases that starts on the record's start date."""
    windows: list[_Window | None] = []
    durations: dict[int, float] = {}
    for dosage in dosages:
        repeat = _repeat(dosage)
        period = repeat.get("boundsPeriod")
        window = None
        if isinstance(period, dict):
            start, end = _day(period.get("start"), last=False), _day(period.get("end"), last=True)
            if start or end:
                window = _Window(start, end)
        windows.append(window)
        sequence = _sequence(dosage)
        days = _duration_days(repeat.get("boundsDuration"), vocabulary)
        if window is None and days is not None and sequence is not None:
            durations[sequence] = max(durations.get(sequence, 0.0), days)
    start = med.effective_start
    if start is None or not durations:
        return windows
    chained: dict[int, _Window] = {}
    for sequence in sorted({s for s in map(_sequence, dosages) if s is not None}):
        days = durations.get(sequence)
        if days is None:  # a phase of unknown length: it starts, and nothing after it can be placed
            chained[sequence] = _Window(start, None)
            break
        end = start + timedelta(days=math.ceil(days) - 1)
        chained[sequence] = _Window(start, end)
        start = end + timedelta(days=1)
    placed: list[_Window | None] = []
    for dosage, window in zip(dosages, windows, strict=True):
        sequence = _sequence(dosage)
        placed.append(window or (chained.get(sequence) if sequence is not None else None))
    return placed


def _sequence(dosage: Mapping[str, Any]) -> int | None:
    value = dosage.get("sequence")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _repeat(dosage: Mapping[str, Any]) -> Mapping[str, Any]:
    timing = dosage.get("timing")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    return repeat if isinstance(repeat, dict) else {}


def _duration_days(duration: object, vocabulary: DosingVocabulary) -> float | None:
    if not isinstance(duration, dict):
        return None
    value = _positive_number(duration.get("value"))
    unit = duration.get("code") or duration.get("unit")
    days = vocabulary.period_days(unit) if isinstance(unit, str) else None
    if value is None or days is None or value * days > 36525:
        return None
    return value * days


def _day(value: object, *, last: bool) -> date | None:
    """A FHIR date/dateTime -> date; a partial date is its first day as a start and its last as an end."""
    if not isinstance(value, str):
        return None
    found = re.match(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?", value.strip())
    if not found:
        return None
    try:
        year = int(found[1])
        if found[2] is None:
            return date(year, 12, 31) if last else date(year, 1, 1)
        month = int(found[2])
        if found[3] is None:
            return date(year, month, calendar.monthrange(year, month)[1] if last else 1)
        return date(year, month, int(found[3]))
    except ValueError:
        return None


def _checked(dose: DailyDose) -> DailyDose:
    if dose.mg_per_day is not None and not (math.isfinite(dose.mg_per_day) and dose.mg_per_day > 0):
        raise _Unknown(UNREADABLE)
    return dose


# ------------------------------------------------------------------------------------------ product


def _product(
    med: MedicationFact,
    ingredient: str,
    names: frozenset[str],
    product_names: Sequence[str],
    vocabulary: DosingVocabulary,
) -> _Product:
    """The product's strengths of `ingredient` (known under any of `names`): Medication.ingredient
    first, then the names the record carries, then `product_names` known for its codes elsewhere."""
    own = tuple(s for s in (med.strengths or ()) if isinstance(s, Strength))

    def matching(strengths: Sequence[Strength]) -> tuple[Strength, ...]:
        return tuple(
            s
            for s in strengths
            if isinstance(s.ingredient, str) and vocabulary.normalise_ingredient(s.ingredient) in names
        )

    def distinct(strengths: Sequence[Strength]) -> int:
        return len({vocabulary.normalise_ingredient(s.ingredient) for s in strengths})

    candidates: list[object] = [med.concept.text, *(c.display for c in med.concept.codings)]
    own_names = [n for n in candidates if isinstance(n, str) and n.strip()]
    if matching(own):
        return _Product(ingredient, matching(own), distinct(own), True)
    known = bool(own)
    combination = distinct(own) > 1 or any(re.search(r"\s/\s", n) for n in own_names)
    for name in [*own_names, *(n for n in product_names if n.strip() and n not in own_names)]:
        parsed = vocabulary.parse_strengths(name)
        known = known or bool(parsed)
        combination = combination or distinct(parsed) > 1
        if matching(parsed):
            return _Product(ingredient, matching(parsed), distinct(parsed), True)
    return _Product(ingredient, (), 2 if combination else 1, known)


# ------------------------------------------------------------------------------------------ one dosage


def _entry(dosage: Mapping[str, Any], product: _Product, vocabulary: DosingVocabulary) -> _Entry:
    try:
        if _as_needed(dosage):
            return _as_needed_entry(dosage, product, vocabulary)
        amount = _dose_amount(dosage, product, vocabulary)
        rate = _rate(dosage.get("timing"), vocabulary)
        per_day = amount.mg * rate.per_day
        if not math.isfinite(per_day) or per_day <= 0:
            raise _Unknown(UNREADABLE)
        factors = [amount.dose, rate.label] + ([amount.strength] if amount.strength else [])
        return _Entry(False, per_day, f"{' x '.join(factors)} = {_fmt(per_day)} mg/day", None)
    except _Unknown as unknown:
        return _Entry(False, None, None, unknown.problem)


def _as_needed(dosage: Mapping[str, Any]) -> bool:
    flag = dosage.get("asNeededBoolean", dosage.get("asNeeded"))  # R5 renamed it asNeeded
    if flag is not None and not isinstance(flag, bool):
        raise _Unknown(UNREADABLE)
    concept = dosage.get("asNeededCodeableConcept")
    if concept is not None and not isinstance(concept, dict):
        raise _Unknown(UNREADABLE)
    reasons = dosage.get("asNeededFor")  # R5
    return flag is True or concept is not None or (isinstance(reasons, list) and bool(reasons))


def _as_needed_entry(dosage: Mapping[str, Any], product: _Product, vocabulary: DosingVocabulary) -> _Entry:
    limit = dosage.get("maxDosePerPeriod")
    if limit is None:
        return _Entry(True, None, "as needed, no maxDosePerPeriod", None)
    try:
        ratios = limit if isinstance(limit, list) else [limit]  # R5 allows several limits
        best: tuple[float, str] | None = None
        problem: str | None = None
        for ratio in ratios[:_MAX_ENTRIES]:
            try:
                found = _max_per_day(ratio, product, vocabulary)
            except _Unknown as unknown:
                problem = problem or unknown.problem
                continue
            if best is None or found[0] < best[0]:  # every limit applies: the smallest one binds
                best = found
        if best is None:
            raise _Unknown(problem or UNREADABLE)
        return _Entry(True, best[0], best[1], None)
    except _Unknown as unknown:
        return _Entry(True, None, "as needed, maxDosePerPeriod not computable", unknown.problem)


def _max_per_day(ratio: object, product: _Product, vocabulary: DosingVocabulary) -> tuple[float, str]:
    if not isinstance(ratio, dict):
        raise _Unknown(UNREADABLE)
    numerator = ratio.get("numerator")
    denominator = ratio.get("denominator")
    if numerator is None or denominator is None:
        raise _Unknown(NO_DOSE_QUANTITY)
    value, quantity = _quantity_value(numerator, vocabulary)
    amount = _amount(value, quantity, product, vocabulary)
    if not isinstance(denominator, dict):
        raise _Unknown(UNREADABLE)
    period = _checked_value(denominator.get("value", 1), vocabulary)
    unit = _unit_text(denominator)
    days = vocabulary.period_days(unit[0]) if unit else None
    if days is None and len(unit) > 1:
        days = vocabulary.period_days(unit[1])
    if days is None:
        raise _Unknown(UNIT_NOT_CONVERTIBLE)
    per_day = amount.mg / (period * days)
    if not math.isfinite(per_day) or per_day <= 0:
        raise _Unknown(UNREADABLE)
    unit_label = next((u for u in unit if vocabulary.period_days(u) is not None), "")
    parts = [f"as needed, at most {amount.dose} per {_fmt(period)} {unit_label}"]
    if amount.strength:
        parts.append(amount.strength)
    return per_day, f"{' x '.join(parts)} = {_fmt(per_day)} mg/day"


def _dose_amount(dosage: Mapping[str, Any], product: _Product, vocabulary: DosingVocabulary) -> _Amount:
    """mg per administration; the highest when doseAndRate carries several doses."""
    items = dosage.get("doseAndRate")
    if items is None:
        raise _Unknown(NO_DOSE_QUANTITY)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise _Unknown(UNREADABLE)
    best: _Amount | None = None
    problem: str | None = None
    for item in items[:_MAX_ENTRIES]:
        try:
            if not isinstance(item, dict):
                raise _Unknown(UNREADABLE)
            amount = _item_amount(item, product, vocabulary)
        except _Unknown as unknown:
            problem = problem or unknown.problem
            continue
        if amount is not None and (best is None or amount.mg > best.mg):
            best = amount
    if best is None:
        raise _Unknown(problem or NO_DOSE_QUANTITY)
    return best


def _item_amount(item: Mapping[str, Any], product: _Product, vocabulary: DosingVocabulary) -> _Amount | None:
    quantity = item.get("doseQuantity")
    if quantity is not None:
        value, quantity = _quantity_value(quantity, vocabulary)
        return _amount(value, quantity, product, vocabulary)
    dose_range = item.get("doseRange")
    if dose_range is None:
        return None  # a rate only: not a dose
    if not isinstance(dose_range, dict):
        raise _Unknown(UNREADABLE)
    high = dose_range.get("high")
    low = dose_range.get("low")
    if high is None:
        raise _Unknown(NO_DOSE_QUANTITY)  # "at least n" has no upper end to screen against
    value, high_q = _quantity_value(high, vocabulary)
    if not _unit_text(high_q) and isinstance(low, dict):
        high_q = {**high_q, **{k: low[k] for k in ("unit", "code", "system") if k in low}}
    amount = _amount(value, high_q, product, vocabulary)
    low_text = ""
    if isinstance(low, dict):
        low_value = _positive_number(low.get("value"))
        if low_value is not None:
            low_text = f" of {_fmt(low_value)}-{_fmt(value)}"
    return _Amount(amount.mg, f"{amount.dose} (high end of dose range{low_text})", amount.strength)


def _quantity_value(quantity: object, vocabulary: DosingVocabulary) -> tuple[float, Mapping[str, Any]]:
    if not isinstance(quantity, dict):
        raise _Unknown(UNREADABLE)
    if "value" not in quantity or quantity["value"] is None:
        raise _Unknown(NO_DOSE_QUANTITY)
    comparator = quantity.get("comparator")
    if comparator is not None and comparator not in ("<", "<="):
        raise _Unknown(UNREADABLE)  # ">= n" has no upper end
    return _checked_value(quantity["value"], vocabulary), quantity


def _checked_value(value: object, vocabulary: DosingVocabulary) -> float:
    number = _positive_number(value)
    if number is None or number > vocabulary.max_quantity_value:
        raise _Unknown(UNREADABLE)
    return number


def _unit_text(quantity: Mapping[str, Any]) -> list[str]:
    """The quantity's unit candidates, UCUM code first: [] when it has none."""
    found: list[str] = []
    for key in ("code", "unit"):
        value = quantity.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _Unknown(UNREADABLE)
        if value.strip():
            found.append(value.strip())
    return found


def _amount(
    value: float, quantity: Mapping[str, Any], product: _Product, vocabulary: DosingVocabulary
) -> _Amount:
    units = _unit_text(quantity) or [""]
    for unit in units:
        factor = vocabulary.mass_factor(unit)
        if factor is not None:
            return _mass_amount(value, unit, factor, quantity, product)
        label = vocabulary.count_label(unit)
        if label is not None:
            per_unit = _strength_per(product, vocabulary, "count")
            return _Amount(
                value * per_unit,
                f"{_fmt(value)} {label}",
                f"{_fmt(per_unit)} mg/{label}",
            )
        ml_factor = vocabulary.volume_factor(unit)
        if ml_factor is not None:
            per_ml = _strength_per(product, vocabulary, "volume")
            ml = value * ml_factor
            dose = f"{_fmt(value)} mL" if ml_factor == 1 else f"{_fmt(value)} {unit} ({_fmt(ml)} mL)"
            return _Amount(ml * per_ml, dose, f"{_fmt(per_ml)} mg/mL")
    raise _Unknown(UNIT_NOT_CONVERTIBLE)


def _mass_amount(
    value: float, unit: str, factor: float, quantity: Mapping[str, Any], product: _Product
) -> _Amount:
    unit_texts = " ".join(_unit_text(quantity)).lower()
    names_ingredient = bool(product.ingredient) and product.ingredient in unit_texts
    if product.known and not product.strengths and not names_ingredient:
        raise _Unknown(NO_STRENGTH)  # the product's strengths are known and this ingredient is not one
    if product.ingredient_count > 1 and not names_ingredient:
        raise _Unknown(AMBIGUOUS_COMBINATION)
    mg = value * factor
    dose = f"{_fmt(value)} mg" if factor == 1 else f"{_fmt(value)} {unit} ({_fmt(mg)} mg)"
    return _Amount(mg, dose, None)


def _strength_per(product: _Product, vocabulary: DosingVocabulary, kind: str) -> float:
    """mg of the ingredient per unit of product ("count") or per mL ("volume")."""
    if not product.strengths:
        raise _Unknown(NO_STRENGTH)
    values: set[float] = set()
    other_kinds = False
    for strength in product.strengths:
        numerator = strength.numerator
        if not isinstance(numerator, Quantity) or not isinstance(numerator.unit, str):
            raise _Unknown(UNREADABLE)
        mg_factor = vocabulary.mass_factor(numerator.unit)
        amount = _positive_number(numerator.value)
        if amount is None:
            raise _Unknown(UNREADABLE)
        denominator = strength.denominator
        if denominator is None:
            den_kind, den_amount = "count", 1.0
        else:
            if not isinstance(denominator, Quantity) or not isinstance(denominator.unit, str):
                raise _Unknown(UNREADABLE)
            den_value = _positive_number(denominator.value)
            if den_value is None:
                raise _Unknown(UNREADABLE)
            ml_factor = vocabulary.volume_factor(denominator.unit)
            if vocabulary.count_label(denominator.unit) is not None:
                den_kind, den_amount = "count", den_value
            elif ml_factor is not None:
                den_kind, den_amount = "volume", den_value * ml_factor
            else:
                den_kind, den_amount = "other", den_value  # per hour (patches), per gram (creams)
        if den_kind != kind:
            other_kinds = True
            continue
        if mg_factor is None:
            raise _Unknown(UNIT_NOT_CONVERTIBLE)
        per = amount * mg_factor / den_amount
        if not math.isfinite(per) or per <= 0:
            raise _Unknown(UNREADABLE)
        values.add(_tidy(per))
    if not values:
        raise _Unknown(UNIT_NOT_CONVERTIBLE if other_kinds else NO_STRENGTH)
    if len(values) > 1:
        raise _Unknown(AMBIGUOUS_COMBINATION)
    return values.pop()


# ------------------------------------------------------------------------------------------ timing


def _rate(timing: object, vocabulary: DosingVocabulary) -> _Rate:
    """Administrations a day; the highest reading when the timing says it several ways."""
    if timing is None:
        raise _Unknown(NO_FREQUENCY)
    if not isinstance(timing, dict):
        raise _Unknown(UNREADABLE)
    candidates: list[_Rate] = []
    repeat = timing.get("repeat")
    if repeat is not None:
        if not isinstance(repeat, dict):
            raise _Unknown(UNREADABLE)
        week_share = _week_share(repeat.get("dayOfWeek"), vocabulary)
        candidates += _repeat_rate(repeat, week_share, vocabulary)
        candidates += _event_rate(repeat, week_share, vocabulary)
    candidates += _code_rate(timing.get("code"), vocabulary)
    if not candidates:
        candidates += _dated_events_rate(timing.get("event"))
    if not candidates:
        raise _Unknown(NO_FREQUENCY)
    best = max(candidates, key=lambda r: r.per_day)
    if not math.isfinite(best.per_day) or best.per_day <= 0:
        raise _Unknown(UNREADABLE)
    if best.per_day > vocabulary.max_administrations_per_day:
        raise _Unknown(UNREADABLE)
    return best


def _week_share(days: object, vocabulary: DosingVocabulary) -> float:
    """repeat.dayOfWeek: the share of the week the schedule runs on (1 when absent)."""
    if days is None:
        return 1.0
    if not isinstance(days, list) or not all(isinstance(d, str) for d in days):
        raise _Unknown(UNREADABLE)
    valid = {d.strip().lower() for d in days} & vocabulary.days_of_week
    if days and not valid:
        raise _Unknown(UNREADABLE)
    return len(valid) / 7 if valid else 1.0


def _repeat_rate(repeat: Mapping[str, Any], week_share: float, vocabulary: DosingVocabulary) -> list[_Rate]:
    raw_frequency = repeat.get("frequency")
    raw_max = repeat.get("frequencyMax")
    raw_period = repeat.get("period")
    raw_unit = repeat.get("periodUnit")
    if raw_frequency is None and raw_max is None and raw_period is None:
        return []
    frequency = _optional_positive(raw_frequency, vocabulary)
    frequency_max = _optional_positive(raw_max, vocabulary)
    if raw_period is None and raw_unit is None:
        raise _Unknown(NO_FREQUENCY)  # "3 times" per what? Never assumed to be a day.
    period = _optional_positive(raw_period, vocabulary) or 1.0
    if not isinstance(raw_unit, str):
        raise _Unknown(UNREADABLE)
    days = vocabulary.period_days(raw_unit)
    if days is None:
        raise _Unknown(UNREADABLE)
    times = max(frequency or 0.0, frequency_max or 0.0) or 1.0  # a bare period: once per period
    span = period * days
    per_day = times / span
    if span <= 1:
        per_day *= week_share
    suffix = " (frequencyMax)" if frequency_max is not None and frequency_max > (frequency or 0.0) else ""
    if span == 1 and week_share == 1:
        label = f"{_fmt(times)}/day{suffix}"
    else:
        label = f"{_fmt(times)} per {_fmt(period)} {raw_unit.strip()}{suffix} ({_fmt(per_day)}/day)"
    return [_Rate(per_day, label)]


def _optional_positive(value: object, vocabulary: DosingVocabulary) -> float | None:
    if value is None:
        return None
    return _checked_value(value, vocabulary)


def _event_rate(repeat: Mapping[str, Any], week_share: float, vocabulary: DosingVocabulary) -> list[_Rate]:
    rates: list[_Rate] = []
    when = repeat.get("when")
    if when is not None:
        when = _strings(when)
        codes = sorted({w.strip() for w in when if w.strip()})
        count = sum(vocabulary.when_administrations.get(c.lower(), 1) for c in codes)
        if count:
            rates.append(_Rate(count * week_share, _events_label(count, week_share, ", ".join(codes))))
    times = repeat.get("timeOfDay")
    if times is not None:
        times = _strings(times)
        distinct = sorted({t.strip()[:5] for t in times if re.match(r"\s*\d{2}:\d{2}", t)})
        if times and not distinct:
            raise _Unknown(UNREADABLE)
        if distinct:
            label = _events_label(len(distinct), week_share, ", ".join(distinct))
            rates.append(_Rate(len(distinct) * week_share, label))
    return rates


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > _MAX_ENTRIES:
        raise _Unknown(UNREADABLE)
    if not all(isinstance(v, str) for v in value):
        raise _Unknown(UNREADABLE)
    return [str(v) for v in value]


def _events_label(count: int, week_share: float, what: str) -> str:
    if week_share == 1:
        return f"{count}/day ({what})"
    days = round(week_share * 7)
    return f"{count}/day ({what}) on {days} of 7 days ({_fmt(count * week_share)}/day)"


def _code_rate(code: object, vocabulary: DosingVocabulary) -> list[_Rate]:
    if code is None:
        return []
    if not isinstance(code, dict):
        raise _Unknown(UNREADABLE)
    codings = code.get("coding", [])
    if not isinstance(codings, list):
        raise _Unknown(UNREADABLE)
    words = [c.get("code") for c in codings[:_MAX_ENTRIES] if isinstance(c, dict)]
    words.append(code.get("text"))
    rates: list[_Rate] = []
    for word in words:
        if not isinstance(word, str):
            continue
        spec = vocabulary.timing_codes.get(word.strip().upper())
        if spec is None:
            continue
        days = vocabulary.period_days(spec.period_unit)
        if days is None:  # checked at load; kept for type narrowing
            continue
        per_day = spec.frequency / (spec.period * days)
        rates.append(_Rate(per_day, f"{word.strip().upper()} ({_fmt(per_day)}/day)"))
    return rates


def _dated_events_rate(events: object) -> list[_Rate]:
    """timing.event only: the most administrations listed on one calendar day."""
    if events is None:
        return []
    if not isinstance(events, list):
        raise _Unknown(UNREADABLE)
    per_date: dict[str, int] = {}
    for event in events[: _MAX_ENTRIES * 10]:
        if not isinstance(event, str) or not re.match(r"\d{4}-\d{2}-\d{2}", event):
            raise _Unknown(UNREADABLE)
        per_date[event[:10]] = per_date.get(event[:10], 0) + 1
    if not per_date:
        return []
    most = max(per_date.values())
    return [_Rate(float(most), f"{most}/day (timing.event)")]
