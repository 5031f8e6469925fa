"""Value-set membership over every coding, plus ingredient, brand and free-text matching.

All knowledge comes from `fhir_profiles/` (built by `tools/build_valuesets.py`): the ValueSets in
`valuesets/*.json` and the tables `ingredients.json`, `code-systems.json`, `diazepam-equivalence.json`
and `blood-pressure-codes.json` in `tables/`. This module holds no codes, names or thresholds.

A concept belongs to a value set when, in this order of precedence:

1. ``code``: one of its codings (any of them, never only the first) is in the set's expansion, or falls
   under one of the set's is-a filters (ICD-10-CM: the code, without dots and upper-cased, starts with
   the filter's root), after the coding's system has been mapped to its canonical URI;
2. ``ingredient-code``: one of its codings is the RxNorm ingredient (IN) code of an ingredient the set
   names in its ``match-ingredient`` extension;
3. ``name``: an ingredient or brand name of the set appears as a whole word, case-insensitively, in the
   concept's text or in any coding's display (so "esketamine" is not "ketamine"); or, for condition sets
   and only when none of the concept's codes is recognised by any set, one of the set's condition names
   (``match-name``) appears there with words around it that affirm it (see `cds.clinical.mentions`:
   "no history of stroke", "family history of stroke" and "ruled out MI" never count, "possible TIA" is a
   near-match for a person to check, "old MI" counts for the set that takes the MI's history).

Everything is indexed once at load: (system, normalised code) -> value-set URLs, one compiled regular
expression for every name, and memoised normalisation and name scans, so a code hit costs a couple
of dictionary look-ups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cds.clinical.mentions import MentionReader, counts, owners_of
from cds.errors import ConfigError
from cds.fhir.model import Coding, Concept

EXT_MATCH_INGREDIENT = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-ingredient"
EXT_MATCH_BRAND = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-brand"
EXT_MATCH_NAME = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-name"
EXT_MATCH_REACTION_NAME = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-reaction-name"
EXT_MATCH_NAME_EXCLUDED = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-name-excluded"
EXT_MATCH_HISTORY_OF = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-history-of"
EXT_MATCH_HISTORY_MENTIONS = (
    "https://ketamine-cds.example.org/fhir/StructureDefinition/match-history-mentions"
)

METHOD_CODE = "code"
METHOD_INGREDIENT_CODE = "ingredient-code"
METHOD_NAME = "name"

_TABLE_INGREDIENTS = "ingredients.json"
_TABLE_EQUIVALENCE = "diazepam-equivalence.json"
_MEMBERSHIP_CACHE_SIZE = 50_000
_TABLE_SYSTEMS = "code-systems.json"
_TABLE_BLOOD_PRESSURE = "blood-pressure-codes.json"
_TABLE_CUES = "mention-cues.json"

_CODE_FORMS = frozenset({"trim", "upper-without-dots"})
_HIERARCHIES = frozenset({"code-prefix"})

_Key = tuple[str, str]  # (canonical system URI, normalised code)


@dataclass(frozen=True, slots=True)
class TermMatch:
    valueset: str  # canonical URL of the set that matched
    method: str  # "code" | "ingredient-code" | "name"
    coding: Coding | None  # the coding that matched (code methods)
    term: str | None  # the lower-case name that matched (name method)


@dataclass(frozen=True, slots=True)
class BloodPressureCodes:
    """The codings of a blood-pressure panel and of its systolic and diastolic components.

    Each part is a tuple: the canonical coding first (with its display), then the same code under every
    accepted alias of its system, so a caller can compare raw (system, code) pairs without normalising.
    """

    panel: tuple[Coding, ...]
    systolic: tuple[Coding, ...]
    diastolic: tuple[Coding, ...]


@dataclass(frozen=True, slots=True)
class _ValueSet:
    url: str
    title: str
    ingredients: frozenset[str]
    names: frozenset[str]  # lower-case ingredient and brand names that make a concept a member
    roots: Mapping[str, tuple[str, ...]]  # system -> normalised is-a roots (code-prefix systems)
    condition_names: frozenset[str] = frozenset()  # names that make a record without a known code a member
    excluded_names: frozenset[str] = frozenset()  # longer phrases that contain a name but mean otherwise
    history_of: tuple[str, ...] = ()  # urls of sets whose names, said as past history, belong here
    history_ignored: bool = False  # a name of this set said as past history makes no member
    reaction_names: re.Pattern[str] | None = None  # reaction sets: names read as written, whole words


# --------------------------------------------------------------------------------- JSON checking


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read JSON: {exc}") from exc


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: expected a positive number")
    return float(value)


# ------------------------------------------------------------------------------------ code systems


class _Systems:
    """Maps a coding's system and code to the canonical, comparable form."""

    def __init__(self, data: Any, where: str) -> None:
        systems = _obj(_obj(data, where).get("systems"), f"{where}: systems")
        self.exact: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        self.forms: dict[str, str] = {}
        self.hierarchies: dict[str, str] = {}
        self.aliases: dict[str, tuple[str, ...]] = {}
        for uri, raw in systems.items():
            spec = _obj(raw, f"{where}: systems.{uri}")
            form = spec.get("code_form", "trim")
            if form not in _CODE_FORMS:
                raise ConfigError(
                    f"{where}: systems.{uri}.code_form {form!r} is not one of {sorted(_CODE_FORMS)}"
                )
            self.forms[uri] = form
            hierarchy = spec.get("hierarchy")
            if hierarchy is not None:
                if hierarchy not in _HIERARCHIES:
                    raise ConfigError(f"{where}: systems.{uri}.hierarchy {hierarchy!r} is not supported")
                self.hierarchies[uri] = hierarchy
            raw_aliases = _list(spec.get("aliases", []), f"{where}: systems.{uri}.aliases")
            self.aliases[uri] = tuple(_text(a, f"{where}: systems.{uri}.aliases") for a in raw_aliases)
            for alias in (uri, *self.aliases[uri]):
                for table, key in ((self.exact, alias), (self.folded, _fold(alias))):
                    if table.get(key, uri) != uri:
                        raise ConfigError(f"{where}: alias {alias!r} names two code systems")
                    table[key] = uri

    def canonical(self, system: str) -> str | None:
        return self.exact.get(system) or self.folded.get(_fold(system))

    def key(self, system: str | None, code: str | None) -> _Key | None:
        if not system or not code:
            return None
        uri = self.canonical(system)
        if uri is None:
            return None
        code = code.strip()
        if self.forms[uri] == "upper-without-dots":
            code = code.replace(".", "").upper()
        return (uri, code) if code else None


def _fold(system: str) -> str:
    return system.strip().rstrip("/").lower()


# ------------------------------------------------------------------------------------- terminology


class Terminology:
    """Value sets, ingredient tables and code-system aliases, indexed for fast matching."""

    def __init__(
        self,
        *,
        systems: _Systems,
        sets: Mapping[str, _ValueSet],
        code_index: Mapping[_Key, frozenset[str]],
        ingredient_index: Mapping[_Key, frozenset[str]],
        ingredient_codes: Mapping[_Key, str],
        displays: Mapping[_Key, str],
        name_ingredients: Mapping[str, tuple[str, ...]],
        equivalence: Mapping[str, Mapping[str, float]],
        equivalence_sources: frozenset[str],
        equivalence_reference_mg: float,
        equivalence_default_source: str,
        blood_pressure: BloodPressureCodes,
        cue_table: Any,
        half_lives: Mapping[str, float] | None = None,
    ) -> None:
        self._systems = systems
        self._sets = dict(sets)
        self._code_index = dict(code_index)
        self._ingredient_index = dict(ingredient_index)
        self._ingredient_codes = dict(ingredient_codes)
        self._displays = dict(displays)
        self._name_ingredients = dict(name_ingredients)
        self._equivalence = {k: dict(v) for k, v in equivalence.items()}
        self._equivalence_sources = equivalence_sources
        self._equivalence_reference_mg = equivalence_reference_mg
        self._equivalence_default_source = equivalence_default_source
        self._half_lives: dict[str, float] = dict(half_lives or {})
        self._blood_pressure = blood_pressure
        self._names_re = _names_pattern(self._name_ingredients)
        alone: dict[str, set[str]] = {}
        for name, owners in self._name_ingredients.items():
            if len(owners) == 1:
                alone.setdefault(owners[0], set()).add(name)
        self._alone = {ingredient: frozenset(names) for ingredient, names in alone.items()}
        # Reverse indexes so that `memberships` finds every set a concept belongs to in one pass.
        roots_by_system: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        name_owners: dict[str, set[str]] = {}
        for valueset in self._sets.values():
            for system, roots in valueset.roots.items():
                roots_by_system.setdefault(system, []).append((valueset.url, roots))
            for name in valueset.names:
                name_owners.setdefault(name, set()).add(valueset.url)
        self._roots_by_system = {k: tuple(v) for k, v in roots_by_system.items()}
        self._name_owners = {k: frozenset(v) for k, v in name_owners.items()}
        self._membership_cache: dict[Concept, tuple[frozenset[str], frozenset[str]]] = {}
        condition_owners: dict[str, set[str]] = {}
        excluded: set[str] = set()
        self._history_of: dict[str, str] = {}
        for valueset in self._sets.values():
            for name in valueset.condition_names:
                condition_owners.setdefault(name, set()).add(valueset.url)
            excluded |= valueset.excluded_names
            for other in valueset.history_of:
                claimed = self._history_of.setdefault(other, valueset.url)
                if other not in self._sets or claimed != valueset.url:
                    raise ConfigError(f"{valueset.url}: match-history-of {other} is unknown or claimed twice")
        self._condition_owners = {k: frozenset(v) for k, v in condition_owners.items()}
        self._history_ignored = frozenset(v.url for v in self._sets.values() if v.history_ignored)
        self._mentions = MentionReader(condition_owners, excluded, cue_table, f"tables/{_TABLE_CUES}")
        self._key: Callable[[str | None, str | None], _Key | None] = lru_cache(maxsize=16384)(systems.key)
        self._scan: Callable[[str], tuple[str, ...]] = lru_cache(maxsize=32768)(self._scan_text)

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, profiles_dir: Path) -> Terminology:
        """Read `profiles_dir/valuesets/*.json` and the tables in `profiles_dir/tables/`.

        Raises ConfigError naming the file and the problem when anything is missing or malformed.
        """
        tables = profiles_dir / "tables"
        systems = _Systems(_read(tables / _TABLE_SYSTEMS), _TABLE_SYSTEMS)
        rx_system, ingredients, brands = _load_ingredients(_read(tables / _TABLE_INGREDIENTS), systems)
        equivalence_data = _read(tables / _TABLE_EQUIVALENCE)
        equivalence, sources, reference_mg, default_source = _load_equivalence(equivalence_data)
        half_lives = _load_half_lives(equivalence_data)
        blood_pressure = _load_blood_pressure(_read(tables / _TABLE_BLOOD_PRESSURE), systems)

        files = sorted((profiles_dir / "valuesets").glob("*.json"))
        if not files:
            raise ConfigError(f"{profiles_dir / 'valuesets'}: no value sets found")
        sets: dict[str, _ValueSet] = {}
        code_index: dict[_Key, set[str]] = {}
        ingredient_index: dict[_Key, set[str]] = {}
        displays: dict[_Key, str] = {}
        for path in files:
            where = f"valuesets/{path.name}"
            valueset, members = _load_valueset(_read(path), where, systems)
            if valueset.url in sets:
                raise ConfigError(f"{where}: url {valueset.url} is used by two value sets")
            for name in valueset.ingredients:
                if name not in ingredients:
                    raise ConfigError(f"{where}: ingredient {name!r} is not in tables/{_TABLE_INGREDIENTS}")
            for name in valueset.names - valueset.ingredients:
                if name not in brands:
                    raise ConfigError(f"{where}: brand {name!r} is not in tables/{_TABLE_INGREDIENTS}")
            sets[valueset.url] = valueset
            for key, display in members.items():
                code_index.setdefault(key, set()).add(valueset.url)
                if valueset.ingredients and display:
                    displays.setdefault(key, display)
            for name in valueset.ingredients:
                code = ingredients[name]
                if code is not None:
                    ingredient_index.setdefault((rx_system, code), set()).add(valueset.url)

        name_ingredients: dict[str, tuple[str, ...]] = {name: (name,) for name in ingredients}
        for brand, owners in brands.items():
            name_ingredients[brand] = tuple(sorted(set(owners) | set(name_ingredients.get(brand, ()))))
        return cls(
            systems=systems,
            sets=sets,
            code_index={k: frozenset(v) for k, v in code_index.items()},
            ingredient_index={k: frozenset(v) for k, v in ingredient_index.items()},
            ingredient_codes={(rx_system, code): name for name, code in ingredients.items() if code},
            displays=displays,
            name_ingredients=name_ingredients,
            equivalence=equivalence,
            equivalence_sources=sources,
            equivalence_reference_mg=reference_mg,
            equivalence_default_source=default_source,
            blood_pressure=blood_pressure,
            cue_table=_read(tables / _TABLE_CUES),
            half_lives=half_lives,
        )

    # ---------------------------------------------------------------------------- questions

    def known(self, url: str) -> bool:
        return self._lookup(url) is not None

    def urls(self) -> tuple[str, ...]:
        return tuple(sorted(self._sets))

    def title(self, url: str) -> str:
        return self._get(url).title

    def valueset_ingredients(self, url: str) -> frozenset[str]:
        """The lower-case ingredient names whose products belong to the set (empty for condition sets)."""
        return self._get(url).ingredients

    def coding_key(self, coding: Coding) -> tuple[str, str] | None:
        """(canonical system URI, normalised code); None for an unknown system or a missing part."""
        return self._key(coding.system, coding.code)

    def memberships(self, concept: Concept) -> frozenset[str]:
        """Every value set `concept` belongs to, by any method. Cached: charts repeat the same codes."""
        return self._memberships(concept)[1]

    def _memberships(self, concept: Concept) -> tuple[frozenset[str], frozenset[str]]:
        """(sets matched by a code, sets matched by any method)."""
        cached = self._membership_cache.get(concept)
        if cached is not None:
            return cached
        urls: set[str] = set()
        for coding in concept.codings:
            key = self._key(coding.system, coding.code)
            if key is None:
                continue
            urls |= self._code_index.get(key, frozenset())
            urls |= self._ingredient_index.get(key, frozenset())
            for url, roots in self._roots_by_system.get(key[0], ()):
                if key[1].startswith(roots):
                    urls.add(url)
        by_code = frozenset(urls)
        for text in _texts(concept):
            for name in self._scan(text):
                urls |= self._name_owners.get(name, frozenset())
            if not by_code:  # condition names only speak for records whose codes say nothing
                for mention in self._mentions.read(text):
                    if counts(mention):
                        urls |= self._mention_owners(mention)
        found = (by_code, frozenset(urls))
        if len(self._membership_cache) >= _MEMBERSHIP_CACHE_SIZE:
            self._membership_cache.clear()  # crude but bounded; a warm working set refills quickly
        self._membership_cache[concept] = found
        return found

    def _mention_owners(self, mention: Any) -> frozenset[str]:
        return owners_of(mention, self._condition_owners, self._history_of, self._history_ignored)

    def _reaction_match(self, valueset: _ValueSet, concept: Concept) -> TermMatch | None:
        """Reaction sets also match by a name anywhere in the words (no mention rules: a reaction's
        manifestation is a short description of what happened, not a problem-list entry)."""
        if valueset.reaction_names is None:
            return None
        for text in _texts(concept):
            found = valueset.reaction_names.search(text)
            if found:
                return TermMatch(valueset.url, METHOD_NAME, None, " ".join(found.group(0).lower().split()))
        return None

    def unconfirmed_names(self, concept: Concept) -> tuple[str, ...]:
        """Names of screened conditions the record nearly states but does not confirm ("possible TIA",
        "aneurysym"), when nothing else about it is recognised: a person has to check them."""
        if self.memberships(concept):
            return ()
        found: list[str] = []
        for text in _texts(concept):
            found.extend(m.name for m in self._mentions.read(text) if m.status == "uncertain")
            if not found:
                found.extend(self._mentions.near(text))
        return tuple(dict.fromkeys(found))

    def needs_review(self, concept: Concept) -> bool:
        """Whether the data-completeness statement must list the record (see the two methods below)."""
        return self.unrecognised(concept) or bool(self.unconfirmed_names(concept))

    def unrecognised(self, concept: Concept) -> bool:
        """A record with codes the service does not know and no name to read it by."""
        named = any(True for _ in _texts(concept))
        return bool(concept.codings) and not named and not self.memberships(concept)

    def match(self, url: str, concept: Concept) -> TermMatch | None:
        """How `concept` belongs to the value set `url` (code > ingredient-code > name), or None."""
        valueset = self._get(url)
        if valueset.url not in self.memberships(concept):
            return self._reaction_match(valueset, concept)
        codings = concept.codings
        keys = [self._key(coding.system, coding.code) for coding in codings]
        for coding, key in zip(codings, keys, strict=True):
            if key is None:
                continue
            owners = self._code_index.get(key)
            if owners is not None and valueset.url in owners:
                return TermMatch(valueset.url, METHOD_CODE, coding, None)
            roots = valueset.roots.get(key[0])
            if roots and key[1].startswith(roots):
                return TermMatch(valueset.url, METHOD_CODE, coding, None)
        if valueset.ingredients:
            for coding, key in zip(codings, keys, strict=True):
                owners = self._ingredient_index.get(key) if key is not None else None
                if owners is not None and valueset.url in owners:
                    return TermMatch(valueset.url, METHOD_INGREDIENT_CODE, coding, None)
        if valueset.names:
            for text in _texts(concept):
                for name in self._scan(text):
                    if name in valueset.names:
                        return TermMatch(valueset.url, METHOD_NAME, None, name)
        if not self._memberships(concept)[0]:
            for text in _texts(concept):
                for mention in self._mentions.read(text):
                    if counts(mention) and valueset.url in self._mention_owners(mention):
                        return TermMatch(valueset.url, METHOD_NAME, None, mention.name)
        return None

    def ingredients(self, concept: Concept) -> tuple[str, ...]:
        """Lower-case ingredient names in `concept`, sorted and unique.

        From ingredient (IN) codes, from the value-set display of product codes, and from ingredient or
        brand names in the text and in every display (a brand gives all of its ingredients).
        """
        found: set[str] = set()
        for coding in concept.codings:
            key = self._key(coding.system, coding.code)
            if key is not None:
                ingredient = self._ingredient_codes.get(key)
                if ingredient is not None:
                    found.add(ingredient)
                display = self._displays.get(key)
                if display is not None:
                    found.update(self._ingredients_in(display))
        for text in _texts(concept):
            found.update(self._ingredients_in(text))
        return tuple(sorted(found))

    def product_names(self, concept: Concept) -> tuple[str, ...]:
        """The value sets' names (RxNorm product names) of the concept's codes, for codings that carry
        no display of their own: a product code alone still says its strength."""
        names: list[str] = []
        for coding in concept.codings:
            key = self._key(coding.system, coding.code)
            display = self._displays.get(key) if key is not None else None
            if display and display != coding.display and display not in names:
                names.append(display)
        return tuple(names)

    def ingredient_names(self, ingredient: str) -> frozenset[str]:
        """The lower-case names that stand for `ingredient` alone: itself and its single-ingredient brands."""
        name = " ".join(ingredient.lower().split())
        return self._alone.get(name, frozenset()) | {name}

    def diazepam_mg_equivalent(self, ingredient: str, source: str | None = None) -> float | None:
        """mg of `ingredient` taken as roughly equal to 10 mg oral diazepam by `source` ("ashton" | "va_dod").

        None when the source gives no value for the ingredient; ConfigError for an unknown source. Without a
        source, the table's own default is used.
        """
        source = source or self._equivalence_default_source
        if source not in self._equivalence_sources:
            raise ConfigError(
                f"unknown diazepam-equivalence source {source!r}; known: {sorted(self._equivalence_sources)}"
            )
        return self._equivalence.get(ingredient.strip().lower(), {}).get(source)

    def longest_half_life_hours(self, ingredient: str) -> float | None:
        """The longest elimination half-life the equivalence table gives for `ingredient`, its active
        metabolites included (hours), or None when the table gives none."""
        return self._half_lives.get(ingredient.strip().lower())

    def diazepam_reference_mg(self) -> float:
        """The diazepam dose the equivalence table is written against (mg of oral diazepam)."""
        return self._equivalence_reference_mg

    def blood_pressure_codes(self) -> BloodPressureCodes:
        return self._blood_pressure

    # ------------------------------------------------------------------------------ helpers

    def _lookup(self, url: str) -> _ValueSet | None:
        found = self._sets.get(url)
        if found is None and "|" in url:  # a versioned canonical reference
            found = self._sets.get(url.split("|", 1)[0])
        return found

    def _get(self, url: str) -> _ValueSet:
        found = self._lookup(url)
        if found is None:
            raise ConfigError(f"unknown value set {url!r}")
        return found

    def _scan_text(self, text: str) -> tuple[str, ...]:
        found: list[str] = []
        if self._names_re is None:
            return ()
        for match in self._names_re.finditer(text):
            name = " ".join(match.group(0).lower().split())
            if name not in found:
                found.append(name)
        return tuple(found)

    def _ingredients_in(self, text: str) -> Iterator[str]:
        for name in self._scan(text):
            yield from self._name_ingredients.get(name, ())


def _texts(concept: Concept) -> Iterator[str]:
    if concept.text:
        yield concept.text
    for coding in concept.codings:
        if coding.display:
            yield coding.display


def _names_pattern(names: Mapping[str, object]) -> re.Pattern[str] | None:
    """One case-insensitive, whole-word pattern for every name (longest first, so "xanax xr" wins).

    A name joined to "-free" ("ketamine-free anaesthesia") says the substance is absent: not a mention.
    """
    if not names:
        return None
    ordered = sorted(names, key=lambda name: (-len(name), name))
    body = "|".join(r"\s+".join(re.escape(word) for word in name.split()) for name in ordered)
    return re.compile(rf"\b(?:{body})\b(?!\s*-\s*free\b)", re.IGNORECASE)


# ----------------------------------------------------------------------------------------- loaders


def _load_ingredients(
    data: Any, systems: _Systems
) -> tuple[str, dict[str, str | None], dict[str, list[str]]]:
    where = f"tables/{_TABLE_INGREDIENTS}"
    root = _obj(data, where)
    system = systems.canonical(_text(root.get("code_system"), f"{where}: code_system"))
    if system is None:
        raise ConfigError(f"{where}: code_system is not in tables/{_TABLE_SYSTEMS}")
    ingredients: dict[str, str | None] = {}
    for name, raw in _obj(root.get("ingredients"), f"{where}: ingredients").items():
        entry = _obj(raw, f"{where}: ingredients.{name}")
        if name != name.strip().lower() or not name:
            raise ConfigError(f"{where}: ingredient names must be lower case: {name!r}")
        code = entry.get("rxnorm_in")
        if code is not None:
            code = _text(code, f"{where}: ingredients.{name}.rxnorm_in").strip()
        ingredients[name] = code
    brands: dict[str, list[str]] = {}
    for brand, raw in _obj(root.get("brands", {}), f"{where}: brands").items():
        owners = [_text(o, f"{where}: brands.{brand}") for o in _list(raw, f"{where}: brands.{brand}")]
        missing = [o for o in owners if o not in ingredients]
        if not owners or missing:
            raise ConfigError(f"{where}: brand {brand!r} needs known ingredients (unknown: {missing})")
        brands[" ".join(brand.lower().split())] = owners
    return system, ingredients, brands


def _load_equivalence(data: Any) -> tuple[dict[str, dict[str, float]], frozenset[str], float, str]:
    where = f"tables/{_TABLE_EQUIVALENCE}"
    root = _obj(data, where)
    reference_mg = _number(
        _obj(root.get("reference"), f"{where}: reference").get("mg"), f"{where}: reference.mg"
    )
    sources = frozenset(_obj(root.get("sources"), f"{where}: sources"))
    if not sources:
        raise ConfigError(f"{where}: no sources")
    table: dict[str, dict[str, float]] = {}
    for name, raw in _obj(root.get("ingredients"), f"{where}: ingredients").items():
        entry = _obj(raw, f"{where}: ingredients.{name}")
        table[name.lower()] = {
            source: _number(entry[source], f"{where}: ingredients.{name}.{source}")
            for source in sources
            if entry.get(source) is not None
        }
    default_source = _text(root.get("default_source"), f"{where}: default_source")
    if default_source not in sources:
        raise ConfigError(f"{where}: default_source {default_source!r} is not one of the sources")
    return table, sources, reference_mg, default_source


def _load_half_lives(data: Any) -> dict[str, float]:
    """half_life_h ("20-100 [36-200]": the parent drug, then its active metabolite) -> the longest, hours."""
    longest: dict[str, float] = {}
    for name, entry in _obj(data, f"tables/{_TABLE_EQUIVALENCE}").get("ingredients", {}).items():
        text = entry.get("half_life_h") if isinstance(entry, dict) else None
        hours = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)] if isinstance(text, str) else []
        if hours:
            longest[name.lower()] = max(hours)
    return longest


def _load_blood_pressure(data: Any, systems: _Systems) -> BloodPressureCodes:
    where = f"tables/{_TABLE_BLOOD_PRESSURE}"
    root = _obj(data, where)
    parts: dict[str, tuple[Coding, ...]] = {}
    for part in ("panel", "systolic", "diastolic"):
        entry = _obj(root.get(part), f"{where}: {part}")
        system = systems.canonical(_text(entry.get("system"), f"{where}: {part}.system"))
        if system is None:
            raise ConfigError(f"{where}: {part}.system is not in tables/{_TABLE_SYSTEMS}")
        code = _text(entry.get("code"), f"{where}: {part}.code").strip()
        display = entry.get("display")
        canonical = Coding(system, code, display if isinstance(display, str) else None)
        parts[part] = (canonical, *(Coding(alias, code) for alias in systems.aliases[system]))
    return BloodPressureCodes(**parts)


def _match_extensions(resource: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ValueSet's matching extensions as `_ValueSet` fields (names, ingredients, history handling)."""
    ingredients: set[str] = set()
    names: set[str] = set()
    condition_names: set[str] = set()
    excluded_names: set[str] = set()
    history_of: list[str] = []
    history_ignored = False
    reaction_names: set[str] = set()
    for i, raw in enumerate(_list(resource.get("extension", []), f"{where}: extension")):
        ext = _obj(raw, f"{where}: extension[{i}]")
        ext_url = ext.get("url")
        if ext_url in {EXT_MATCH_INGREDIENT, EXT_MATCH_BRAND, EXT_MATCH_NAME, EXT_MATCH_NAME_EXCLUDED}:
            value = " ".join(
                _text(ext.get("valueString"), f"{where}: extension[{i}].valueString").lower().split()
            )
            if ext_url == EXT_MATCH_NAME:
                condition_names.add(value)
            elif ext_url == EXT_MATCH_NAME_EXCLUDED:
                excluded_names.add(value)
            else:
                names.add(value)
            if ext_url == EXT_MATCH_INGREDIENT:
                ingredients.add(value)
        elif ext_url == EXT_MATCH_REACTION_NAME:
            value = _text(ext.get("valueString"), f"{where}: extension[{i}].valueString")
            reaction_names.add(" ".join(value.lower().split()))
        elif ext_url == EXT_MATCH_HISTORY_OF:
            history_of.append(_text(ext.get("valueCanonical"), f"{where}: extension[{i}].valueCanonical"))
        elif ext_url == EXT_MATCH_HISTORY_MENTIONS:
            code = ext.get("valueCode")
            if code not in {"count", "ignore"}:
                raise ConfigError(f"{where}: extension[{i}].valueCode must be count or ignore")
            history_ignored = code == "ignore"

    return {
        "ingredients": frozenset(ingredients),
        "names": frozenset(names),
        "condition_names": frozenset(condition_names),
        "excluded_names": frozenset(excluded_names),
        "history_of": tuple(history_of),
        "history_ignored": history_ignored,
        "reaction_names": _names_pattern(dict.fromkeys(reaction_names)) if reaction_names else None,
    }


def _load_valueset(data: Any, where: str, systems: _Systems) -> tuple[_ValueSet, dict[_Key, str]]:
    resource = _obj(data, where)
    if resource.get("resourceType") != "ValueSet":
        raise ConfigError(f"{where}: resourceType must be ValueSet")
    url = _text(resource.get("url"), f"{where}: url")
    title = _text(resource.get("title"), f"{where}: title")

    matching = _match_extensions(resource, where)

    def key_of(entry: dict[str, Any], path: str) -> _Key:
        system = _text(entry.get("system"), f"{path}.system")
        key = systems.key(system, _text(entry.get("code"), f"{path}.code"))
        if key is None:
            raise ConfigError(f"{path}: code system {system!r} is not in tables/{_TABLE_SYSTEMS}")
        return key

    expansion = _obj(resource.get("expansion"), f"{where}: expansion")
    _text(expansion.get("timestamp"), f"{where}: expansion.timestamp")
    contains = _list(expansion.get("contains"), f"{where}: expansion.contains")
    if not contains and not matching["condition_names"]:  # a names-only condition set may list no code
        raise ConfigError(f"{where}: expansion.contains is empty")
    members: dict[_Key, str] = {}
    for i, raw in enumerate(contains):
        path = f"{where}: expansion.contains[{i}]"
        entry = _obj(raw, path)
        display = entry.get("display")
        members[key_of(entry, path)] = display if isinstance(display, str) else ""

    roots: dict[str, list[str]] = {}
    compose = _obj(resource.get("compose", {}), f"{where}: compose")
    for i, raw in enumerate(_list(compose.get("include", []), f"{where}: compose.include")):
        path = f"{where}: compose.include[{i}]"
        include = _obj(raw, path)
        for j, concept in enumerate(_list(include.get("concept", []), f"{path}.concept")):
            key = key_of({"system": include.get("system"), **_obj(concept, f"{path}.concept[{j}]")}, path)
            if key not in members:
                raise ConfigError(f"{path}.concept[{j}]: code {key[1]} is missing from the expansion")
        for j, raw_filter in enumerate(_list(include.get("filter", []), f"{path}.filter")):
            rule = _obj(raw_filter, f"{path}.filter[{j}]")
            key = key_of({"system": include.get("system"), "code": rule.get("value")}, f"{path}.filter[{j}]")
            if rule.get("property") != "concept" or rule.get("op") != "is-a":
                raise ConfigError(f"{path}.filter[{j}]: only 'concept is-a' filters are supported")
            if systems.hierarchies.get(key[0]) != "code-prefix":
                raise ConfigError(f"{path}.filter[{j}]: is-a is not supported for {key[0]}")
            roots.setdefault(key[0], []).append(key[1])
    valueset = _ValueSet(
        url=url,
        title=title,
        roots={system: tuple(sorted(set(values))) for system, values in roots.items()},
        **matching,
    )
    return valueset, members
