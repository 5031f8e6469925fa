"""The value-set corpus as a whole: valid FHIR, self-explaining, complete, reproducible from its sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.valueset import ValueSet

from cds.clinical.terminology import EXT_MATCH_BRAND, EXT_MATCH_INGREDIENT, Terminology

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "fhir_profiles"
VALUESETS = PROFILES / "valuesets"
TOOL = ROOT / "tools" / "build_valuesets.py"
SHARED_SOURCES = ROOT.parent / "shared" / "clinical" / "valuesets"
BASE = "https://ketamine-cds.example.org/fhir/ValueSet/"
SYSTEMS = {
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://loinc.org",
}
REQUIRED_IDS = {
    "ketamine-racemic-medications",
    "esketamine-medications",
    "ketamine-substances",
    "benzodiazepine-medications",
    "benzodiazepine-rescue-procedural",
    "lamotrigine-medications",
    "risperidone-olanzapine-medications",
    "other-antipsychotic-medications",
    "maoi-medications",
    "psychostimulant-medications",
    "naltrexone-medications",
    "theophylline-medications",
    "mi-acute",
    "mi-history",
    "stroke",
    "intracerebral-hemorrhage",
    "stroke-history-tia",
    "aneurysm-avm",
    "hypertensive-crisis",
    "unstable-cardiac",
    "raised-intracranial-pressure",
    "raised-intraocular-pressure",
    "psychotic-disorder",
    "bipolar-disorder",
    "seizure-disorder",
    "substance-use-disorder",
    "ketamine-use-disorder",
    "pregnancy",
    "hyperthyroidism",
    "severe-hepatic-impairment",
    "interstitial-cystitis",
    "anaesthetic-allergy-history",
    "blood-pressure-observations",
}
FILES = sorted(VALUESETS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_every_required_set_is_present() -> None:
    assert {path.stem for path in FILES} == REQUIRED_IDS


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
    assert contains, "empty expansion"
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


@pytest.mark.skipif(
    not SHARED_SOURCES.is_dir(),
    reason=f"research CSVs not found at {SHARED_SOURCES}; the rebuild check needs ../shared beside the repo",
)
def test_rebuilding_from_the_sources_reproduces_the_committed_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), str(SHARED_SOURCES), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert built, "the tool wrote nothing"
    for relative in built:
        committed = PROFILES / relative
        assert committed.is_file(), f"{relative} is built but not committed"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), f"{relative} differs: rebuild it"
    built_sets = {p.name for p in built if p.parent.name == "valuesets"}
    assert {p.name for p in FILES} <= built_sets, "a committed value set is not produced by the tool"
