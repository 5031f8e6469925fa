#!/usr/bin/env python3
"""Build the service's FHIR ValueSets and code tables from the knowledge sources in this repository.

    python tools/build_valuesets.py [--sources DIR] [--recipes FILE] [--rules DIR] [--out PROFILES_DIR]

By default it reads the source tables in knowledge/sources/ (CSV code lists with their provenance, see
knowledge/sources/PROVENANCE.md), the recipes in knowledge/valueset-recipes.yaml and the rules in rules/,
and writes into fhir_profiles/:

    valuesets/<id>.json        one FHIR R4 ValueSet per recipe (+ README.md)
    tables/ingredients.json    ingredient -> RxNorm IN, verification status, brands, class, rules
    tables/diazepam-equivalence.json
    tables/code-systems.json   canonical code-system URI -> accepted aliases
    tables/blood-pressure-codes.json

The service reads only those committed files; it never reads the sources at run time. Output is
deterministic (sorted codes, fixed key order, no build clock), so running the tool twice gives
byte-identical files and a test can check that the committed knowledge matches its sources.

All curation (which files, ICD-10-CM subtrees, hand-picked codes and names make up each value set) is data
in the recipes file; this tool only knows how to read the sources and write FHIR.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = REPO / "knowledge" / "sources"
DEFAULT_RECIPES = REPO / "knowledge" / "valueset-recipes.yaml"
DEFAULT_RULES = REPO / "rules"
DEFAULT_OUT = REPO / "fhir_profiles"

VALUESET_BASE = "https://ketamine-cds.example.org/fhir/ValueSet/"
EXT_INGREDIENT = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-ingredient"
EXT_BRAND = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-brand"
EXT_NAME = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-name"
EXT_REACTION_NAME = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-reaction-name"
EXT_NOT_NAME = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-name-excluded"
EXT_HISTORY_OF = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-history-of"
EXT_HISTORY_MENTIONS = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-history-mentions"
HISTORY_MENTIONS = frozenset({"count", "ignore"})
PUBLISHER = "ketamine-cds project"

# The code systems whose role the build knows: products (RxNorm), the prefix hierarchy of the subtree file
# (ICD-10-CM), and blood-pressure codes (LOINC). Their aliases and OIDs are data (recipes file).
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"

KINDS = frozenset({"medication", "substance", "condition", "observation", "reaction"})
SUBTREE_FILE = "icd10cm-rule-subtrees.csv"
INGREDIENT_FILE = "ingredients.csv"
EQUIVALENCE_FILE = "benzodiazepine-equivalence.csv"


class BuildError(Exception):
    pass


# ------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Pick:
    """Rows taken from one CSV value-set file."""

    file: str
    keep_display: str | None = None  # regex (case-insensitive): keep only rows whose display matches
    drop_display: str | None = None  # regex (case-insensitive): drop rows whose display matches
    drop_icd_under: tuple[str, ...] = ()  # ICD-10-CM roots whose descendants are dropped
    systems: tuple[str, ...] = ()  # canonical URIs: keep only rows of these code systems (empty: all)


@dataclass(frozen=True)
class Extra:
    """A code picked by hand, with where its display comes from."""

    system: str
    code: str
    display: str
    why: str


@dataclass(frozen=True)
class Recipe:
    id: str
    title: str
    kind: str  # "medication" | "substance" | "condition" | "observation"
    purpose: str
    picks: tuple[Pick, ...] = ()
    icd: tuple[tuple[str, tuple[str, ...] | None], ...] = ()  # (group in the subtree CSV, roots or all)
    extras: tuple[Extra, ...] = ()
    # medication and substance sets: which ingredient names belong to the set
    ingredients: tuple[str, ...] = ()  # named explicitly
    ingredient_classes: tuple[str, ...] = ()  # every table ingredient whose class starts with one of these
    ingredients_from_products: bool = False  # every ingredient named in the set's product displays ...
    not_in_class: tuple[str, ...] = ()  # ... except these co-ingredients
    extra_brands: tuple[str, ...] = ()  # brand names whose products all belong here (beyond ingredients')
    known_products_of: tuple[str, ...] = ()  # product RxCUIs listed for these ingredients in ingredients.csv
    ingredient_codes_in_expansion: bool = False  # list the ingredients' RxNorm IN codes as members
    class_label: str | None = None  # class recorded for ingredients first seen through this set
    products_name_an_ingredient: bool = True  # check: every product name mentions a set ingredient
    # condition sets: names that make a record a member when none of its codes is recognised
    names: tuple[str, ...] = ()
    not_names: tuple[str, ...] = ()  # longer phrases containing a name that do not mean the condition
    history_of: tuple[str, ...] = ()  # ids of sets whose names, said as past history, belong here
    history_mentions: str = "count"  # "ignore": a name said as past history does not make a member
    notes: tuple[str, ...] = ()  # extra sentences for the description


@dataclass(frozen=True)
class Catalogue:
    """The recipes file, checked."""

    curated_as_of: str
    icd10cm_release_date: str
    code_systems: Mapping[str, Mapping[str, Any]]
    csv_system: Mapping[str, str]  # name used in the source CSVs or the recipes -> canonical URI
    licences: Mapping[str, str]  # system URI -> licence sentence for hand-picked codes
    blood_pressure: Mapping[str, str]
    extra_ingredients: Mapping[str, str]
    salt_words: frozenset[str]
    lead_words: frozenset[str]
    recipes: tuple[Recipe, ...]

    def system_name(self, uri: str) -> str:
        return str(self.code_systems[uri]["name"])


def _strict(raw: Any, where: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BuildError(f"{where}: expected a mapping")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise BuildError(f"{where}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    missing = sorted(set(required) - set(raw))
    if missing:
        raise BuildError(f"{where}: missing keys {missing}")
    return raw


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise BuildError(f"{where}: expected a list of strings")
    return tuple(raw)


def _system(system_of: Mapping[str, str], name: str, where: str) -> str:
    if name not in system_of:
        raise BuildError(f"{where}: unknown code system {name!r}")
    return system_of[name]


def _recipe(raw: Any, where: str, system_of: Mapping[str, str]) -> Recipe:
    names = {f.name for f in fields(Recipe)} - {"picks", "icd", "extras"}
    if isinstance(raw, dict) and "id" in raw:
        where = f"{where} ({raw['id']})"
    data = _strict(
        raw,
        where,
        names | {"from_files", "icd10cm_subtrees", "hand_picked"},
        {"id", "title", "kind", "purpose"},
    )
    if data["kind"] not in KINDS:
        raise BuildError(f"{where}: kind must be one of {sorted(KINDS)}")
    name_keys = {"names", "not_names", "history_of", "history_mentions"}
    if data["kind"] not in {"condition", "reaction"} and name_keys & set(data):
        raise BuildError(f"{where}: names belong to condition and reaction sets (medicines: ingredients)")
    if data["kind"] == "reaction" and (name_keys - {"names"}) & set(data):
        raise BuildError(f"{where}: a reaction set has names only (read as written, without context)")
    for key in ("names", "not_names"):
        for name in data.get(key, []):
            if not isinstance(name, str) or name != " ".join(name.lower().split()):
                raise BuildError(f"{where}: {key} must be lower case with single spaces: {name!r}")
    if data.get("history_mentions", "count") not in HISTORY_MENTIONS:
        raise BuildError(f"{where}: history_mentions must be one of {sorted(HISTORY_MENTIONS)}")
    picks = []
    for i, item in enumerate(data.get("from_files", [])):
        pick = _strict(item, f"{where} from_files[{i}]", {f.name for f in fields(Pick)}, {"file"})
        picks.append(
            Pick(
                file=pick["file"],
                keep_display=pick.get("keep_display"),
                drop_display=pick.get("drop_display"),
                drop_icd_under=_strings(pick.get("drop_icd_under", []), f"{where} drop_icd_under"),
                systems=tuple(
                    _system(system_of, name, f"{where} from_files[{i}]")
                    for name in _strings(pick.get("systems", []), f"{where} systems")
                ),
            )
        )
    icd = []
    for i, item in enumerate(data.get("icd10cm_subtrees", [])):
        group = _strict(item, f"{where} icd10cm_subtrees[{i}]", {"group", "roots"}, {"group"})
        roots = _strings(group["roots"], f"{where} roots") if "roots" in group else None
        icd.append((str(group["group"]), roots))
    extras = []
    for i, item in enumerate(data.get("hand_picked", [])):
        extra = _strict(
            item, f"{where} hand_picked[{i}]", {"system", "code", "display", "why"}, {"system", "code", "why"}
        )
        system = _system(system_of, str(extra["system"]), f"{where} hand_picked[{i}]")
        extras.append(Extra(system, str(extra["code"]), str(extra.get("display", "")), str(extra["why"])))
    values: dict[str, Any] = {}
    for key in names - {"id", "title", "kind", "purpose"}:
        if key not in data:
            continue
        default = next(f.default for f in fields(Recipe) if f.name == key)
        if isinstance(default, bool):
            if not isinstance(data[key], bool):
                raise BuildError(f"{where}: {key} must be true or false")
            values[key] = data[key]
        elif isinstance(default, tuple):
            values[key] = _strings(data[key], f"{where} {key}")
        else:
            values[key] = str(data[key])
    return Recipe(
        id=str(data["id"]),
        title=str(data["title"]),
        kind=str(data["kind"]),
        purpose=str(data["purpose"]),
        picks=tuple(picks),
        icd=tuple(icd),
        extras=tuple(extras),
        **values,
    )


def load_catalogue(path: Path) -> Catalogue:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"{path}: cannot read: {exc}") from exc
    top = {
        "curated_as_of",
        "icd10cm_release_date",
        "code_systems",
        "licences",
        "blood_pressure",
        "extra_ingredients",
        "product_names",
        "valuesets",
    }
    data = _strict(raw, path.name, top, top)
    systems: dict[str, dict[str, Any]] = {}
    system_of: dict[str, str] = {}
    for uri, spec in data["code_systems"].items():
        entry = _strict(
            spec,
            f"code_systems.{uri}",
            {"name", "oid", "code_form", "hierarchy", "names", "other_uris"},
            {"name", "oid", "code_form", "names"},
        )
        systems[uri] = {
            "name": entry["name"],
            "oid": str(entry["oid"]),
            "code_form": entry["code_form"],
            "hierarchy": entry.get("hierarchy"),
            "names": list(_strings(entry["names"], f"code_systems.{uri}.names")),
            "other_uris": list(_strings(entry.get("other_uris", []), f"code_systems.{uri}.other_uris")),
        }
        for name in (uri, entry["name"], *entry["names"]):
            if system_of.setdefault(name, uri) != uri:
                raise BuildError(f"code_systems: {name!r} names two systems")
    for uri in (RXNORM, SNOMED, ICD10CM, LOINC):
        if uri not in systems:
            raise BuildError(f"code_systems: {uri} is required")
    words = _strict(
        data["product_names"], "product_names", {"salt_words", "lead_words"}, {"salt_words", "lead_words"}
    )
    recipes = tuple(_recipe(item, f"valuesets[{i}]", system_of) for i, item in enumerate(data["valuesets"]))
    ids = [recipe.id for recipe in recipes]
    if len(ids) != len(set(ids)):
        raise BuildError("duplicate value-set ids")
    for recipe in recipes:
        unknown = sorted(set(recipe.history_of) - set(ids))
        if unknown:
            raise BuildError(f"{recipe.id}: history_of names unknown value sets {unknown}")
    return Catalogue(
        curated_as_of=str(data["curated_as_of"]),
        icd10cm_release_date=str(data["icd10cm_release_date"]),
        code_systems=systems,
        csv_system={name: uri for uri, spec in systems.items() for name in spec["names"]},
        licences={system_of[key]: str(value) for key, value in data["licences"].items()},
        blood_pressure={str(k): str(v) for k, v in data["blood_pressure"].items()},
        extra_ingredients={str(k): str(v) for k, v in data["extra_ingredients"].items()},
        salt_words=frozenset(_strings(words["salt_words"], "salt_words")),
        lead_words=frozenset(_strings(words["lead_words"], "lead_words")),
        recipes=recipes,
    )


def _aliases(uri: str, spec: Mapping[str, Any]) -> list[str]:
    found: set[str] = set()
    for base in [uri, *spec["other_uris"]]:
        https = base.replace("http://", "https://", 1)
        found.update({base, base + "/", https, https + "/"})
    found.update({f"urn:oid:{spec['oid']}", spec["oid"], *spec["names"]})
    found.discard(uri)
    return sorted(found)


# ------------------------------------------------------------------------------------------- reading


@dataclass
class SourceFile:
    name: str
    meta: dict[str, str]
    free: list[str]
    rows: list[dict[str, str]]


def read_source(path: Path) -> SourceFile:
    """A research CSV: `# key: value` provenance lines (or free text), then a CSV header and rows."""
    meta: dict[str, str] = {}
    free: list[str] = []
    body: list[str] = []
    last_key: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not body:
            text = line[1:]
            match = re.match(r"^ ([A-Za-z_]+): (.*)$", text)
            if match:
                last_key = match.group(1).lower()
                meta[last_key] = match.group(2).strip()
            elif text.startswith("   ") and last_key:
                meta[last_key] += " " + text.strip()
            else:
                last_key = None
                free.append(text.strip())
        elif line.strip():
            body.append(line)
    rows = [
        {k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(io.StringIO("\n".join(body)))
    ]
    if not rows:
        raise BuildError(f"{path.name}: no rows")
    return SourceFile(path.name, meta, free, rows)


class Sources:
    def __init__(self, root: Path, catalogue: Catalogue) -> None:
        if not root.is_dir():
            raise BuildError(f"source directory not found: {root}")
        self.root = root
        self.catalogue = catalogue
        self._cache: dict[str, SourceFile] = {}
        self.index = {entry["file"]: entry for entry in json.loads((root / "index.json").read_text())}

    def get(self, name: str) -> SourceFile:
        if name not in self._cache:
            self._cache[name] = read_source(self.root / name)
        return self._cache[name]

    def timestamp(self, name: str) -> str:
        """The expansion date of a source file's content (see module doc for the fall-backs)."""
        source = self.get(name)
        if "expansion_timestamp" in source.meta:
            return source.meta["expansion_timestamp"]
        if name == SUBTREE_FILE:
            return self.catalogue.icd10cm_release_date
        # a derived subset: the newest of the VSAC expansions it names that are among the sources
        oids = re.findall(r"urn:oid:([\d.]+)", source.meta.get("oid_or_url", ""))
        stamps = [
            self.timestamp(entry["file"])
            for entry in self.index.values()
            if any(entry.get("oid_or_url", "").startswith(f"urn:oid:{oid} ") for oid in oids)
        ]
        return max(stamps, key=_instant) if stamps else self.catalogue.curated_as_of


def _instant(stamp: str) -> str:
    """Sort key for FHIR dateTimes of mixed precision: the date part, then the full text."""
    return stamp[:10] + "~" + stamp


# ---------------------------------------------------------------------------------------- ingredients


def parse_product_ingredients(display: str, catalogue: Catalogue) -> list[str]:
    """Base ingredient names in an RxNorm product name ('amphetamine aspartate 5 MG / ...' -> amphetamine)."""
    text = re.sub(r"\[[^\]]*\]", " ", display.lower())
    text = re.sub(r"[{}()]", " ", text)
    names: list[str] = []
    pattern = r"([a-z][a-z\- ]*?)\s+\d+(?:\.\d+)?\s+(?:mg|mcg|meq|unt|ml|%)"
    for match in re.finditer(pattern, text):
        words = match.group(1).split()
        while words and words[0] in catalogue.lead_words:
            words.pop(0)
        while len(words) > 1 and words[-1] in catalogue.salt_words:
            words.pop()
        if len(words) != 1:
            raise BuildError(f"cannot read an ingredient name from {display!r} (got {words})")
        if words[0] not in names:
            names.append(words[0])
    return names


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(";") if part.strip()]


@dataclass
class Ingredient:
    name: str
    rxnorm_in: str | None = None
    rxcui_status: str | None = None
    drug_class: str | None = None
    brands: list[str] = field(default_factory=list)
    notes: str | None = None
    source: str = ""
    products: list[tuple[str, str]] = field(default_factory=list)  # (rxcui, label) from ingredients.csv


def build_ingredients(sources: Sources) -> tuple[dict[str, Ingredient], dict[str, list[str]]]:
    """Ingredient table and brand -> ingredients map, before the value sets add product-name ingredients."""
    table: dict[str, Ingredient] = {}
    brands: dict[str, list[str]] = {}
    pending_brands: list[tuple[str, str]] = []  # (brand, ingredient) for ingredients created later
    for row in sources.get("ingredients.csv").rows:
        name = row["ingredient"].lower()
        ing = Ingredient(
            name=name,
            rxnorm_in=row["rxcui_in"] or None,
            rxcui_status=row["rxcui_status"] or None,
            drug_class=row["drug_class"] or None,
            notes=row["notes"] or None,
            source="ingredients.csv",
        )
        if ing.rxnorm_in and not ing.rxnorm_in.isdigit():
            raise BuildError(f"ingredients.csv: bad RxCUI for {name}: {ing.rxnorm_in}")
        for listed in re.finditer(r"((?:\d+;?)+)\s*\(([^)]*)\)", row["product_rxcuis_known"]):
            for code in _split_list(listed.group(1)):
                ing.products.append((code, listed.group(2).strip()))
        for raw in _split_list(row["brands"]):
            match = re.match(r"^([^()]+?)\s*(?:\(([^)]*)\))?$", raw)
            if not match:
                raise BuildError(f"ingredients.csv: cannot read brand {raw!r}")
            brand, paren = match.group(1), (match.group(2) or "").strip()
            owners = [name]
            if re.fullmatch(r"[a-z]+-", paren):  # "Focalin(dex-)": the brand is of the dex- ingredient
                owners = [paren[:-1] + name]
            elif paren.startswith("with "):
                owners.append(paren[5:].strip().lower())
            brands[brand] = sorted(set(owners))
            if owners[0] != name:
                pending_brands.append((brand, owners[0]))
        table[name] = ing
    equivalence = sources.get("benzodiazepine-equivalence.csv")
    for row in equivalence.rows:
        name = row["ingredient"].lower()
        if name not in table:
            cls = "z-drug" if "z-drug" in row["notes"].lower() else "benzodiazepine"
            table[name] = Ingredient(name=name, drug_class=cls, source="benzodiazepine-equivalence.csv")
    for name, cls in sources.catalogue.extra_ingredients.items():
        table.setdefault(name, Ingredient(name=name, drug_class=cls, source="value-set recipe"))
    for brand, owner in pending_brands:
        if owner not in table:
            raise BuildError(f"brand {brand} belongs to unknown ingredient {owner}")
    for owners in brands.values():
        for owner in owners:
            table.setdefault(
                owner, Ingredient(name=owner, source="co-ingredient named in ingredients.csv brands")
            )
    for ing in table.values():  # every ingredient of a brand lists it, combination partners included
        ing.brands = sorted((b for b, owners in brands.items() if ing.name in owners), key=str.lower)
    return table, brands


# ---------------------------------------------------------------------------------------- value sets


@dataclass
class Built:
    recipe: Recipe
    resource: dict[str, Any]
    sources: list[str]
    count: int


def _icd_key(code: str) -> str:
    return code.replace(".", "").upper()


def _covered(code: str, roots: Iterable[str]) -> bool:
    key = _icd_key(code)
    return any(key.startswith(_icd_key(root)) for root in roots)


def _pascal(identifier: str) -> str:
    return "".join(part.capitalize() for part in identifier.split("-"))


def _describe_source(sources: Sources, name: str, kept: int) -> str:
    src = sources.get(name)
    entry = sources.index.get(name, {})
    meta = src.meta
    title = meta.get("title") or entry.get("title") or name
    parts = [f'`{name}`: "{title}"']
    ident = meta.get("oid_or_url") or entry.get("oid_or_url")
    if ident:
        parts.append(f"identifier {ident}")
    if meta.get("version"):
        parts.append(f"version {meta['version']}")
    parts.append(f"content dated {sources.timestamp(name)}")
    if meta.get("publisher"):
        parts.append(f"publisher {meta['publisher']}")
    if meta.get("source"):
        parts.append(f"source {meta['source']}")
    if meta.get("derivation"):
        parts.append(f"derivation: {meta['derivation']}")
    derived = meta.get("derived") or entry.get("derived")
    if derived:
        parts.append(f"derived: {derived}")
    taken = f"Codes taken: {kept}."
    if name == "ingredients.csv":
        taken += " It also supplies the ingredient codes, ingredient names and brand names used for matching."
    return "- " + "; ".join(part.rstrip(".") for part in parts) + f". {taken}"


def _licence(sources: Sources, name: str) -> str:
    src = sources.get(name)
    if "license" in src.meta:
        return src.meta["license"]
    for line in src.free:
        if line.lower().startswith("license:"):
            return line.split(":", 1)[1].strip()
    raise BuildError(f"{name}: no licence line")


def build_valueset(
    recipe: Recipe,
    sources: Sources,
    table: dict[str, Ingredient],
    brands: dict[str, list[str]],
) -> Built:
    catalogue = sources.catalogue
    codes: dict[tuple[str, str], str] = {}
    used: dict[str, int] = {}
    stamps: list[str] = []
    licences: list[str] = []

    def add(system: str, code: str, display: str) -> bool:
        key = (system, code)
        if key in codes:
            return False
        codes[key] = display
        return True

    # ICD-10-CM subtrees first: their roots decide which listed codes need no concept entry
    roots: list[str] = []
    if recipe.icd:
        subtrees = sources.get("icd10cm-rule-subtrees.csv")
        kept = 0
        for rule_id, wanted in recipe.icd:
            rows = [r for r in subtrees.rows if r["rule_id"] == rule_id]
            rule_roots = sorted({r["root"] for r in rows})
            if not rows or (wanted and not set(wanted) <= set(rule_roots)):
                raise BuildError(f"{recipe.id}: ICD rule {rule_id} roots {wanted} not in the subtree file")
            for root in wanted or rule_roots:
                in_root = [r for r in rows if r["root"] == root]
                if "-" in root:  # a block (F20-F29): one filter per category directly under it
                    roots.extend(r["code"] for r in in_root if r["parent"] == root)
                else:
                    roots.append(root)
                for r in in_root:
                    if "-" not in r["code"] and add(ICD10CM, r["code"], r["description"]):
                        kept += 1
        used["icd10cm-rule-subtrees.csv"] = kept
        stamps.append(sources.timestamp("icd10cm-rule-subtrees.csv"))
        licences.append(_licence(sources, "icd10cm-rule-subtrees.csv"))

    for pick in recipe.picks:
        src = sources.get(pick.file)
        kept = 0
        for row in src.rows:
            system = catalogue.csv_system.get(row["system"])
            if system is None:
                raise BuildError(f"{pick.file}: unknown code system {row['system']!r}")
            display = row["display"]
            if pick.keep_display and not re.search(pick.keep_display, display, re.IGNORECASE):
                continue
            if pick.drop_display and re.search(pick.drop_display, display, re.IGNORECASE):
                continue
            if system == ICD10CM and _covered(row["code"], pick.drop_icd_under):
                continue
            if pick.systems and system not in pick.systems:
                continue
            add(system, row["code"], display)
            kept += 1
        if kept == 0:
            raise BuildError(f"{recipe.id}: nothing taken from {pick.file}")
        used[pick.file] = used.get(pick.file, 0) + kept
        stamps.append(sources.timestamp(pick.file))
        licences.append(_licence(sources, pick.file))

    extras_text: list[str] = []
    for extra in recipe.extras:
        display = extra.display or _display_from_sources(sources, extra)
        if not add(extra.system, extra.code, display):
            extras_text.append(
                f"- {catalogue.system_name(extra.system)} {extra.code}: {extra.why} (also in a source)."
            )
            continue
        extras_text.append(f'- {catalogue.system_name(extra.system)} {extra.code} "{display}": {extra.why}.')
        stamps.append(catalogue.curated_as_of)
        licence = catalogue.licences.get(extra.system)
        # a SNOMED CT source file already states the SNOMED terms
        if licence and not (extra.system == SNOMED and any("SNOMED" in text for text in licences)):
            licences.append(licence)

    # ingredient membership
    ingredients: set[str] = set(recipe.ingredients)
    for ing in table.values():
        if ing.drug_class and any(ing.drug_class.startswith(c) for c in recipe.ingredient_classes):
            ingredients.add(ing.name)
    if recipe.ingredients_from_products:
        for (system, _code), display in codes.items():
            if system == RXNORM:
                ingredients.update(parse_product_ingredients(display, catalogue))
    ingredients -= set(recipe.not_in_class)
    uses_ingredients = recipe.kind in {"medication", "substance"}
    if uses_ingredients:
        if not ingredients:
            raise BuildError(f"{recipe.id}: a medication set needs ingredients")
        for name in sorted(ingredients):
            if name not in table:
                table[name] = Ingredient(name=name, source=f"product names in {recipe.id}")
            if table[name].drug_class is None:
                table[name].drug_class = recipe.class_label
        from_table = 0
        for name in recipe.known_products_of:
            for code, label in table[name].products:
                from_table += add(RXNORM, code, _product_display(name, label))
        if recipe.ingredient_codes_in_expansion:
            for name in sorted(ingredients):
                in_code = table[name].rxnorm_in
                if in_code:
                    from_table += add(RXNORM, in_code, name)
        if from_table:
            stamps.append(catalogue.curated_as_of)
        used["ingredients.csv"] = from_table
        licences.append(_licence(sources, "ingredients.csv"))
        if recipe.products_name_an_ingredient:  # else name matching would have a hole
            names_re = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(ingredients))) + r")\b", re.I)
            missing = [d for (s, _c), d in codes.items() if s == RXNORM and not names_re.search(d)]
            if missing:
                raise BuildError(f"{recipe.id}: products naming no set ingredient: {missing[:5]}")
    set_brands: set[str] = set(recipe.extra_brands)
    if uses_ingredients:
        for brand, owners in brands.items():
            if set(owners) & ingredients:
                set_brands.add(brand)

    if not codes and not recipe.names:  # a names-only condition set is allowed: no code was verified
        raise BuildError(f"{recipe.id}: empty expansion")
    for key in codes:
        if key[0] == ICD10CM and not re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", key[1]):
            raise BuildError(f"{recipe.id}: odd ICD-10-CM code {key[1]}")

    timestamp = max(stamps, key=_instant) if stamps else catalogue.curated_as_of
    ordered = sorted(codes.items(), key=lambda item: (item[0][0], _code_sort(item[0][1])))

    # compose: hand-listed concepts per system, then one is-a filter per ICD-10-CM root
    includes: list[dict[str, Any]] = []
    by_system: dict[str, list[dict[str, str]]] = {}
    for (system, code), display in ordered:
        if system == ICD10CM and _covered(code, roots):
            continue
        by_system.setdefault(system, []).append({"code": code, "display": display})
    for system in sorted(by_system):
        includes.append({"system": system, "concept": by_system[system]})
    for root in sorted(set(roots), key=_code_sort):
        includes.append({"system": ICD10CM, "filter": [{"property": "concept", "op": "is-a", "value": root}]})

    description = _description(recipe, sources, used, extras_text, ingredients, set_brands, roots, timestamp)
    resource: dict[str, Any] = {"resourceType": "ValueSet", "id": recipe.id}
    extensions = [{"url": EXT_INGREDIENT, "valueString": name} for name in sorted(ingredients)]
    extensions += [{"url": EXT_BRAND, "valueString": brand} for brand in sorted(set_brands, key=str.lower)]
    if uses_ingredients:
        resource["extension"] = extensions
    elif recipe.names or recipe.history_of:
        resource["extension"] = _name_extensions(recipe)
    resource.update(
        {
            "url": VALUESET_BASE + recipe.id,
            "name": _pascal(recipe.id),
            "title": recipe.title,
            "status": "active",
            "experimental": False,
            "date": timestamp,
            "publisher": PUBLISHER,
            "description": description,
            "purpose": recipe.purpose,
            "copyright": " ".join(_unique(licences))
            or "No third-party codes; the names are the project's own.",
            # compose needs at least one include: a names-only set (no code verified) has none
            **({"compose": {"include": includes}} if includes else {}),
            "expansion": {
                "timestamp": timestamp,
                "total": len(ordered),
                "contains": [
                    {"system": system, "code": code, "display": display}
                    for (system, code), display in ordered
                ],
            },
        }
    )
    return Built(recipe, resource, sorted(used), len(ordered))


def _display_from_sources(sources: Sources, extra: Extra) -> str:
    for name in sorted(sources.index):
        if not name.endswith(".csv") or name in {"ingredients.csv", "benzodiazepine-equivalence.csv"}:
            continue
        if name == "icd10cm-rule-subtrees.csv":
            continue
        for row in sources.get(name).rows:
            if (
                sources.catalogue.csv_system.get(row.get("system", "")) == extra.system
                and row.get("code") == extra.code
            ):
                return row["display"]
    raise BuildError(f"no display found for {extra.system} {extra.code}")


def _product_display(ingredient: str, label: str) -> str:
    """A display for a product RxCUI listed in ingredients.csv ('SCDF esketamine Nasal Spray' etc.)."""
    match = re.match(r"^(?:SCDF|SBDF|SCD|SBD|GPCK|BPCK)\s+(.*)$", label)
    if match and re.search(rf"\b{re.escape(ingredient)}\b", match.group(1), re.IGNORECASE):
        return match.group(1)
    return f"{ingredient} product ({label}; RxNorm name not verified in the sources)"


def _code_sort(code: str) -> tuple[int, str]:
    return (0, f"{int(code):020d}") if code.isdigit() else (1, code)


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _name_extensions(recipe: Recipe) -> list[dict[str, str]]:
    name_url = EXT_REACTION_NAME if recipe.kind == "reaction" else EXT_NAME
    extensions = [{"url": name_url, "valueString": name} for name in sorted(set(recipe.names))]
    extensions += [{"url": EXT_NOT_NAME, "valueString": name} for name in sorted(set(recipe.not_names))]
    extensions += [
        {"url": EXT_HISTORY_OF, "valueCanonical": VALUESET_BASE + other}
        for other in sorted(recipe.history_of)
    ]
    if recipe.history_mentions != "count":
        extensions.append({"url": EXT_HISTORY_MENTIONS, "valueCode": recipe.history_mentions})
    return extensions


def _description(
    recipe: Recipe,
    sources: Sources,
    used: Mapping[str, int],
    extras_text: list[str],
    ingredients: set[str],
    set_brands: set[str],
    roots: list[str],
    timestamp: str,
) -> str:
    lines = [recipe.purpose, ""]
    lines.extend(recipe.notes)
    if recipe.notes:
        lines.append("")
    if used:
        lines.append("Sources (built by tools/build_valuesets.py from the project's research tables):")
    elif not extras_text and not roots:
        lines.append("Sources: none; the set lists no code and matches by the names below only.")
    for name in sorted(used):
        lines.append(_describe_source(sources, name, used[name]))
    if roots:
        lines.append(
            "- ICD-10-CM subtrees (is-a filters; a code matches when it starts with the root, dots ignored): "
            + ", ".join(sorted(set(roots), key=_code_sort))
            + "."
        )
    if extras_text:
        lines.append("")
        lines.append("Codes added by hand:")
        lines.extend(extras_text)
    if ingredients:
        lines.append("")
        lines.append(
            "A product whose code is not listed still matches through the RxNorm ingredient (IN) code or "
            "the name of any of these ingredients: "
            + ", ".join(sorted(ingredients))
            + (
                f"; or through these brand names: {', '.join(sorted(set_brands, key=str.lower))}"
                if set_brands
                else ""
            )
            + " (the match-ingredient and match-brand extensions; codes in tables/ingredients.json)."
        )
    if recipe.names or recipe.history_of:
        lines.append("")
    if recipe.names and recipe.kind == "reaction":
        lines.append(
            "A reaction also matches when its text or a coding's display contains one of these names as "
            "whole words (the match-reaction-name extension): " + "; ".join(sorted(set(recipe.names))) + "."
        )
    elif recipe.names:
        lines.append(
            "A record none of whose codes is recognised still matches when its text or a coding's display "
            "names the condition (the match-name extension; cards then ask to confirm it): "
            + "; ".join(sorted(set(recipe.names)))
            + "."
        )
    if recipe.not_names:
        lines.append("These phrases do not count: " + "; ".join(sorted(set(recipe.not_names))) + ".")
    if recipe.history_of:
        lines.append(
            "A name of "
            + ", ".join(sorted(recipe.history_of))
            + " said as past history (for example 'history of', 'old', 'previous') counts here instead."
        )
    if recipe.history_mentions == "ignore":
        lines.append("A name said as past history does not count.")
    lines.append("")
    lines.append(
        f"Expansion timestamp {timestamp}: the date of the newest source content, not the build date. "
        "Derived: yes - this set is the project's grouping of the sources above, not an official "
        "value set. Licences: see copyright."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tables


def ingredients_json(
    table: Mapping[str, Ingredient],
    brands: Mapping[str, list[str]],
    sources: Sources,
    rules_by_ingredient: Mapping[str, list[str]],
) -> Any:
    src = sources.get("ingredients.csv")
    entries: dict[str, Any] = {}
    for name in sorted(table):
        ing = table[name]
        entry: dict[str, Any] = {}
        if ing.rxnorm_in:
            entry["rxnorm_in"] = ing.rxnorm_in
        entry["rxcui_status"] = ing.rxcui_status or "no RxNorm ingredient code in the sources"
        if ing.drug_class:
            entry["class"] = ing.drug_class
        entry["brands"] = sorted(ing.brands, key=str.lower)
        if rules_by_ingredient.get(name):
            entry["rule_ids"] = rules_by_ingredient[name]
        if ing.notes:
            entry["notes"] = ing.notes
        entry["source"] = ing.source
        entries[name] = entry
    return {
        "title": "Ingredients: RxNorm ingredient codes, brands and classes",
        "description": (
            "One entry per lower-case ingredient name the service can recognise. rxnorm_in is the RxNorm "
            "ingredient (TTY=IN) RxCUI when the sources give one; rxcui_status says whether it was "
            "verified (VERIFIED-<source>) or only recalled (MEMORY: confirm with RxNav before relying on "
            "it). brands lists brand names of the ingredient; the brands map below gives every ingredient "
            "of a brand (combination brands name more than one). source says where the entry came from: "
            "the curated ingredients table, the equivalence table, a value-set recipe, or the product "
            "names of a value set."
        ),
        "provenance": {
            "built_by": "tools/build_valuesets.py",
            "source_files": ["ingredients.csv", "benzodiazepine-equivalence.csv", "value-set product names"],
            "as_of": sources.catalogue.curated_as_of,
            "notes": [line for line in src.free if line]
            + [f"{key}: {value}" for key, value in src.meta.items() if key != "license"],
            "licence": src.meta.get("license", ""),
        },
        "code_system": RXNORM,
        "ingredients": entries,
        "brands": {brand: brands[brand] for brand in sorted(brands, key=str.lower)},
    }


def equivalence_json(sources: Sources, table: Mapping[str, Ingredient]) -> Any:
    src = sources.get("benzodiazepine-equivalence.csv")
    entries: dict[str, Any] = {}
    for row in sorted(src.rows, key=lambda r: r["ingredient"]):
        name = row["ingredient"].lower()
        entry: dict[str, Any] = {"class": table[name].drug_class}
        if row["ashton_mg_eq_10mg_diazepam"]:
            ashton = float(row["ashton_mg_eq_10mg_diazepam"])
            entry["ashton"] = ashton
            if row["ashton_range"]:
                low, high = (float(x) for x in row["ashton_range"].split("-"))
                if abs((low + high) / 2 - ashton) > 1e-9:
                    raise BuildError(f"equivalence: {name} Ashton value is not the midpoint of its range")
                entry["ashton_range"] = [low, high]
        if row["va_dod_2021_mg_eq_10mg_diazepam"]:
            entry["va_dod"] = float(row["va_dod_2021_mg_eq_10mg_diazepam"])
        entry["us_marketed"] = row["us_marketed"] == "Y"
        half_life = row["half_life_h_parent_[active_metabolite]"]
        if half_life:
            entry["half_life_h"] = half_life
        if row["notes"]:
            entry["notes"] = row["notes"]
        entries[name] = entry
    return {
        "title": "Diazepam equivalents: mg of each drug taken as roughly equal to 10 mg oral diazepam",
        "reference": {"ingredient": "diazepam", "mg": 10, "route": "oral"},
        "default_source": "ashton",
        "sources": {
            "ashton": (
                "Ashton CH, Benzodiazepine Equivalence Table, revised April 2007 "
                "(https://www.benzo.org.uk/bzequiv.htm); where Ashton gives a range the midpoint is used "
                "and the range is kept in ashton_range."
            ),
            "va_dod": (
                "VA/DoD Clinical Practice Guideline for the Management of Substance Use Disorders (2021), "
                "as printed beside Ashton in Table 7 of the 2025 Joint Clinical Practice Guideline on "
                "Benzodiazepine Tapering; absent where that table has no value."
            ),
        },
        "caveat": (
            "These equivalences are rough clinical conventions and the two references disagree for several "
            "drugs (alprazolam, clonazepam, lorazepam, oxazepam, quazepam, temazepam, triazolam). They are "
            "fit only for screening a daily dose against a threshold, never for prescribing or switching "
            "drugs. Ashton is the default because it gives the higher diazepam equivalent for "
            "high-potency drugs, which flags more conservatively. Midazolam and remimazolam have no value: "
            "they are procedural or rescue drugs and are not part of a regular daily dose."
        ),
        "provenance": {
            "built_by": "tools/build_valuesets.py",
            "source_file": "benzodiazepine-equivalence.csv",
            "as_of": sources.catalogue.curated_as_of,
            "source_notes": [
                f"{key}: {value}" for key, value in src.meta.items() if key in {"sources", "caveats"}
            ],
            "licence": src.meta.get("license", ""),
        },
        "ingredients": entries,
    }


def code_systems_json(catalogue: Catalogue) -> Any:
    systems = {}
    for uri in sorted(catalogue.code_systems):
        spec = catalogue.code_systems[uri]
        entry: dict[str, Any] = {
            "name": spec["name"],
            "aliases": _aliases(uri, spec),
            "code_form": spec["code_form"],
        }
        if spec["hierarchy"]:
            entry["hierarchy"] = spec["hierarchy"]
        systems[uri] = entry
    return {
        "title": "Code systems: canonical URIs and the aliases accepted for them",
        "description": (
            "Codings are compared after mapping their system to the canonical URI: an exact alias match, "
            "else a case-insensitive match ignoring a trailing slash. code_form says how codes are "
            "normalised before comparison (trim: surrounding spaces removed; upper-without-dots: "
            "upper-cased and dots removed, so I21.4 equals I214). hierarchy code-prefix means an is-a "
            "filter matches every code that starts with the root code."
        ),
        "provenance": {
            "built_by": "tools/build_valuesets.py",
            "notes": (
                "OIDs are the HL7 registrations for each code system; the other aliases are spellings seen "
                "in EHR exports and in the project's research tables."
            ),
        },
        "systems": systems,
    }


def blood_pressure_json(valueset: Mapping[str, Any], catalogue: Catalogue) -> Any:
    displays = {c["code"]: c["display"] for c in valueset["expansion"]["contains"]}
    parts = {}
    for part, code in catalogue.blood_pressure.items():
        if code not in displays:
            raise BuildError(f"blood pressure {part} code {code} is not in the value set")
        parts[part] = {"system": LOINC, "code": code, "display": displays[code]}
    return {
        "title": "Blood pressure: which LOINC code is the panel and which the components",
        "valueset": valueset["url"],
        **parts,
        "provenance": {
            "built_by": "tools/build_valuesets.py",
            "notes": (
                "The panel Observation carries the systolic and diastolic values as components; a "
                "systolic or diastolic Observation may also stand alone. " + catalogue.licences[LOINC]
            ),
        },
    }


def readme(built: list[Built]) -> str:
    lines = [
        "# Value sets",
        "",
        "Generated by `tools/build_valuesets.py` from the source tables in `knowledge/sources/` "
        "(provenance in `knowledge/sources/PROVENANCE.md`) and the recipes in "
        "`knowledge/valueset-recipes.yaml`; do not edit the JSON by hand: change the recipe or the "
        "sources and rebuild. Each ValueSet's `description` gives its sources (files, OIDs/URLs, versions, "
        "dates), `copyright` the licences, and `expansion.timestamp` the date of its newest source "
        "content. Medication and substance sets also list the ingredient names (`match-ingredient`) and "
        "brand names (`match-brand`) that make a product a member when its code is not listed.",
        "",
        "| id | title | what it is for | sources | codes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for item in built:
        sources = [f"`{name}`" for name in item.sources]
        if item.recipe.extras:
            sources.append("hand-picked codes")
        cell = ", ".join(sources)
        purpose = item.recipe.purpose.split(". ")[0].rstrip(".") + "."
        lines.append(f"| `{item.recipe.id}` | {item.recipe.title} | {purpose} | {cell} | {item.count} |")
    lines += [
        "",
        f"Canonical URL of each set: `{VALUESET_BASE}<id>`.",
        "",
        "Code-system aliases (OIDs, trailing slashes) are in `../tables/code-systems.json`; ingredients, "
        "brands and RxNorm ingredient codes in `../tables/ingredients.json`; diazepam equivalents in "
        "`../tables/diazepam-equivalence.json`; the blood-pressure LOINC roles in "
        "`../tables/blood-pressure-codes.json`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def rules_by_ingredient(rules_dir: Path, built: Iterable[Built]) -> dict[str, list[str]]:
    """Ingredient -> ids of the rules that read a value set naming it (so the table names real rules)."""
    ingredients_of = {
        VALUESET_BASE + item.recipe.id: [
            ext["valueString"] for ext in item.resource.get("extension", []) if ext["url"] == EXT_INGREDIENT
        ]
        for item in built
    }
    found: dict[str, set[str]] = {}
    paths = sorted(rules_dir.glob("*.yaml"))
    if not paths:
        raise BuildError(f"no rules found in {rules_dir}")
    for path in paths:
        if path.name.startswith(("_", "site-policy", "card-text")):
            continue
        rule = yaml.safe_load(path.read_text(encoding="utf-8"))
        urls = {url for band in rule.get("bands", []) for url in band.get("match", [])}
        dose = rule.get("dose") or {}
        urls.update(dose.get("match", []), dose.get("exclude", []))
        for url in urls:
            if url not in ingredients_of:
                raise BuildError(f"rules/{path.name}: value set {url} is not built by the recipes")
            for name in ingredients_of[url]:
                found.setdefault(name, set()).add(str(rule["id"]))
    return {name: sorted(ids) for name, ids in found.items()}


def build(
    source_dir: Path = DEFAULT_SOURCES, recipes: Path = DEFAULT_RECIPES, rules_dir: Path = DEFAULT_RULES
) -> Iterator[tuple[str, str]]:
    """Every output file as (path relative to the profiles directory, text)."""
    catalogue = load_catalogue(recipes)
    sources = Sources(source_dir, catalogue)
    table, brands = build_ingredients(sources)
    built = [build_valueset(recipe, sources, table, brands) for recipe in catalogue.recipes]
    for item in built:  # every other ingredient named in a product, so ingredients() can report it
        for entry in item.resource["expansion"]["contains"]:
            if entry["system"] == RXNORM:
                for name in parse_product_ingredients(entry["display"], catalogue):
                    table.setdefault(
                        name,
                        Ingredient(name=name, source=f"co-ingredient in product names of {item.recipe.id}"),
                    )
    for item in built:
        yield f"valuesets/{item.recipe.id}.json", dump(item.resource)
    yield "valuesets/README.md", readme(built)
    yield (
        "tables/ingredients.json",
        dump(ingredients_json(table, brands, sources, rules_by_ingredient(rules_dir, built))),
    )
    yield "tables/diazepam-equivalence.json", dump(equivalence_json(sources, table))
    yield "tables/code-systems.json", dump(code_systems_json(catalogue))
    bp = next(b for b in built if b.recipe.id == "blood-pressure-observations")
    yield "tables/blood-pressure-codes.json", dump(blood_pressure_json(bp.resource, catalogue))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="source table directory")
    parser.add_argument("--recipes", type=Path, default=DEFAULT_RECIPES, help="value-set recipes (YAML)")
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="rules directory (rule ids)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fhir_profiles directory to write")
    args = parser.parse_args(argv)
    try:
        outputs = list(build(args.sources, args.recipes, args.rules))
    except (BuildError, OSError, KeyError, ValueError, yaml.YAMLError) as exc:
        print(f"build_valuesets: {exc}", file=sys.stderr)
        return 1
    written = set()
    for relative, text in outputs:
        path = args.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.add(path.resolve())
    stale = [p for p in sorted((args.out / "valuesets").glob("*.json")) if p.resolve() not in written]
    for path in stale:
        print(f"build_valuesets: note: {path} was not produced by this build", file=sys.stderr)
    print(f"build_valuesets: wrote {len(outputs)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
