"""The value-set corpus as a whole: valid FHIR, self-explaining, complete, reproducible from its sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.valueset import ValueSet

from cds.clinical.terminology import EXT_MATCH_BRAND, EXT_MATCH_INGREDIENT, Terminology

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "fhir_profiles"
VALUESETS = PROFILES / "valuesets"
TOOL = ROOT / "tools" / "build_valuesets.py"
SOURCES = ROOT / "knowledge" / "sources"
RECIPES = ROOT / "knowledge" / "valueset-recipes.yaml"
BASE = "https://ketamine-cds.example.org/fhir/ValueSet/"
SYSTEMS = {
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://loinc.org",
}
FILES = sorted(VALUESETS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_every_recipe_has_its_set_and_every_set_a_recipe() -> None:
    recipes = yaml.safe_load(RECIPES.read_text(encoding="utf-8"))["valuesets"]
    assert {path.stem for path in FILES} == {recipe["id"] for recipe in recipes}


def test_every_value_set_a_rule_or_treatment_names_is_present(knowledge: Any) -> None:
    named = {url for rule in knowledge.rules for url in rule.valuesets()} | set(knowledge.treatments.values())
    assert named <= {BASE + path.stem for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_valid_r4b_valueset_that_explains_itself(path: Path) -> None:
    data = load(path)
    ValueSet.model_validate(data)
    assert data["id"] == path.stem
    assert data["url"] == BASE + path.stem
    for key in ("name", "title", "status", "purpose", "description", "copyright"):
        assert isinstance(data.get(key), str), key
        assert data[key].strip(), key
    assert "Sources" in data["description"] or "Codes added by hand" in data["description"]
    expansion = data["expansion"]
    assert expansion["timestamp"]
    contains = expansion["contains"]
    names = [e for e in data.get("extension", []) if e["url"].endswith("/match-name")]
    # only a condition set that matches by name alone (no code verified for it) may list no code
    assert contains or (names and "compose" not in data), "empty expansion"
    assert expansion["total"] == len(contains)
    keys = [(c["system"], c["code"]) for c in contains]
    assert len(keys) == len(set(keys)), "duplicate codes in the expansion"
    assert keys == sorted(
        keys, key=lambda k: (k[0], (0, f"{int(k[1]):020d}") if k[1].isdigit() else (1, k[1]))
    )
    for entry in contains:
        assert entry["system"] in SYSTEMS
        assert entry["code"].strip() == entry["code"]
        assert entry["display"].strip()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_medication_sets_name_their_ingredients(path: Path) -> None:
    data = load(path)
    systems = {c["system"] for c in data["expansion"]["contains"]}
    ingredients = [e["valueString"] for e in data.get("extension", []) if e["url"] == EXT_MATCH_INGREDIENT]
    brands = [e["valueString"] for e in data.get("extension", []) if e["url"] == EXT_MATCH_BRAND]
    if "http://www.nlm.nih.gov/research/umls/rxnorm" in systems:
        assert ingredients, "a medication set needs match-ingredient extensions"
    assert all(name == name.lower() for name in ingredients)
    table = load(PROFILES / "tables" / "ingredients.json")
    assert set(ingredients) <= set(table["ingredients"])
    assert set(brands) <= set(table["brands"])


def test_urls_are_unique() -> None:
    urls = [load(path)["url"] for path in FILES]
    assert len(urls) == len(set(urls))


def test_readme_lists_every_set() -> None:
    readme = (VALUESETS / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert f"| `{path.stem}` |" in readme


def test_z_drugs_are_kept_out_of_the_benzodiazepine_set() -> None:
    data = load(VALUESETS / "benzodiazepine-medications.json")
    text = " ".join(c["display"].lower() for c in data["expansion"]["contains"])
    for z_drug in ("zolpidem", "zaleplon", "zopiclone", "eszopiclone"):
        assert z_drug not in text
    ingredients = {e["valueString"] for e in data["extension"] if e["url"] == EXT_MATCH_INGREDIENT}
    assert not ingredients & {"zolpidem", "zaleplon", "zopiclone", "eszopiclone"}


def test_esketamine_products_are_not_in_the_racemic_set() -> None:
    racemic = {
        c["code"] for c in load(VALUESETS / "ketamine-racemic-medications.json")["expansion"]["contains"]
    }
    esketamine = {c["code"] for c in load(VALUESETS / "esketamine-medications.json")["expansion"]["contains"]}
    substances = {c["code"] for c in load(VALUESETS / "ketamine-substances.json")["expansion"]["contains"]}
    assert not racemic & esketamine
    assert racemic | esketamine <= substances


def test_the_corpus_loads() -> None:
    terminology = Terminology.load(PROFILES)
    assert set(terminology.urls()) == {BASE + path.stem for path in FILES}


def _build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_rebuilding_from_the_sources_reproduces_the_committed_files(tmp_path: Path) -> None:
    """The tool's defaults are the repository's own sources, recipes and rules: no path outside it."""
    result = _build("--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert built, "the tool wrote nothing"
    for relative in built:
        committed = PROFILES / relative
        assert committed.is_file(), f"{relative} is built but not committed"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), f"{relative} differs: rebuild it"
    built_sets = {p.name for p in built if p.parent.name == "valuesets"}
    assert {p.name for p in FILES} <= built_sets, "a committed value set is not produced by the tool"


def test_every_source_file_is_listed_with_its_provenance() -> None:
    provenance = (SOURCES / "PROVENANCE.md").read_text(encoding="utf-8")
    index = {entry["file"] for entry in json.loads((SOURCES / "index.json").read_text(encoding="utf-8"))}
    for path in sorted(SOURCES.glob("*.csv")):
        assert f"`{path.name}`" in provenance, f"{path.name} has no provenance entry"
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path.name} lost its provenance header"
    assert index <= {p.name for p in SOURCES.glob("*.csv")}, "index.json lists a file that is not here"


def test_ingredient_rule_ids_name_real_rules() -> None:
    rules = {path.stem for path in (ROOT / "rules").glob("*.yaml") if not path.name.startswith("_")}
    table = load(PROFILES / "tables" / "ingredients.json")
    named = {rule for entry in table["ingredients"].values() for rule in entry.get("rule_ids", [])}
    assert named, "no ingredient names a rule"
    assert named <= rules, f"rule_ids naming no rule: {sorted(named - rules)}"


def test_a_misspelt_recipe_key_stops_the_build(tmp_path: Path) -> None:
    text = RECIPES.read_text(encoding="utf-8").replace(
        "    ingredients: [lamotrigine]", "    ingredient: [lamotrigine]"
    )
    assert "ingredient: [lamotrigine]" in text
    broken = tmp_path / "recipes.yaml"
    broken.write_text(text, encoding="utf-8")
    result = _build("--recipes", str(broken), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "lamotrigine-medications" in result.stderr
    assert "'ingredient'" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when the build fails"
