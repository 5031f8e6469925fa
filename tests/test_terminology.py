"""Value-set matching over every coding, ingredient and brand names, equivalents: both directions."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cds.clinical import terminology
from cds.clinical.terminology import Terminology
from cds.errors import ConfigError
from cds.fhir.model import Coding, Concept

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "fhir_profiles"
BASE = "https://ketamine-cds.example.org/fhir/ValueSet/"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"

BENZO = BASE + "benzodiazepine-medications"
RESCUE = BASE + "benzodiazepine-rescue-procedural"
KETAMINE = BASE + "ketamine-racemic-medications"
ESKETAMINE = BASE + "esketamine-medications"
SUBSTANCES = BASE + "ketamine-substances"
MI_ACUTE = BASE + "mi-acute"
MI_HISTORY = BASE + "mi-history"


@pytest.fixture(scope="module")
def term() -> Terminology:
    return Terminology.load(PROFILES)


def expansion_codes(set_id: str) -> set[tuple[str, str]]:
    data = json.loads((PROFILES / "valuesets" / f"{set_id}.json").read_text(encoding="utf-8"))
    return {(c["system"], c["code"]) for c in data["expansion"]["contains"]}


def rx(code: str, display: str | None = None) -> Coding:
    return Coding(RXNORM, code, display)


def concept(*codings: Coding, text: str | None = None) -> Concept:
    return Concept(codings=codings, text=text)


# ------------------------------------------------------------------------------------- code matches


def test_every_coding_is_examined_not_only_the_first(term: Terminology) -> None:
    unrelated = Coding(SNOMED, "38341003", "Hypertensive disorder")
    stemi = Coding(ICD, "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction")
    found = term.match(MI_ACUTE, concept(unrelated, stemi))
    assert found is not None
    assert (found.method, found.coding, found.term) == ("code", stemi, None)
    assert found.valueset == MI_ACUTE
    assert term.match(MI_ACUTE, concept(unrelated)) is None


@pytest.mark.parametrize("code", ["I21.4", "I214", "i21.4", " I21.4 "])
def test_icd_codes_compare_without_dots_and_case(term: Terminology, code: str) -> None:
    found = term.match(MI_ACUTE, concept(Coding(ICD, code)))
    assert found is not None
    assert found.method == "code"


def test_icd_subtree_code_not_listed_in_the_expansion_matches(term: Terminology) -> None:
    assert (ICD, "I21.A3") not in expansion_codes("mi-acute")  # a future code under I21
    assert term.match(MI_ACUTE, concept(Coding(ICD, "I21.A3"))) is not None
    assert (ICD, "T41.295D") in expansion_codes("anaesthetic-allergy-history")
    assert term.match(BASE + "anaesthetic-allergy-history", concept(Coding(ICD, "T41295D"))) is not None


@pytest.mark.parametrize("code", ["I25.2", "I2", "I20.9", "I12.0"])
def test_icd_codes_outside_the_subtrees_do_not_match(term: Terminology, code: str) -> None:
    assert term.match(MI_ACUTE, concept(Coding(ICD, code))) is None


def test_icd_filter_is_not_applied_to_other_code_systems(term: Terminology) -> None:
    assert term.match(MI_ACUTE, concept(Coding(SNOMED, "I21"))) is None


@pytest.mark.parametrize(
    "system",
    [
        "urn:oid:2.16.840.1.113883.6.90",
        "http://hl7.org/fhir/sid/icd-10-cm/",
        "HTTP://HL7.ORG/fhir/sid/icd-10-cm",
    ],
)
def test_icd_system_aliases(term: Terminology, system: str) -> None:
    assert term.match(MI_ACUTE, concept(Coding(system, "I22.1"))) is not None


@pytest.mark.parametrize(
    "system",
    [
        "urn:oid:2.16.840.1.113883.6.88",
        "http://www.nlm.nih.gov/research/umls/rxnorm/",
        "https://www.nlm.nih.gov/research/umls/rxnorm",
    ],
)
def test_rxnorm_system_aliases(term: Terminology, system: str) -> None:
    found = term.match(BENZO, concept(Coding(system, "197591")))  # diazepam 5 MG Oral Tablet
    assert found is not None
    assert found.method == "code"


def test_snomed_oid_alias(term: Terminology) -> None:
    assert term.match(MI_ACUTE, concept(Coding("urn:oid:2.16.840.1.113883.6.96", "22298006"))) is not None


def test_same_code_in_another_system_does_not_match(term: Terminology) -> None:
    assert term.match(BENZO, concept(Coding("http://hl7.org/fhir/sid/ndc", "197591"))) is None
    assert term.match(BENZO, concept(Coding(None, "197591"))) is None
    assert term.match(BENZO, concept(Coding(RXNORM, None))) is None


def test_synthea_condition_codes(term: Terminology) -> None:
    mi = concept(Coding(SNOMED, "22298006", "Myocardial infarction (disorder)"))
    history = concept(Coding(SNOMED, "399211009", "History of myocardial infarction (situation)"))
    stroke = concept(Coding(SNOMED, "230690007", "Cerebrovascular accident (disorder)"))
    assert term.match(MI_ACUTE, mi) is not None
    assert term.match(MI_HISTORY, mi) is None
    assert term.match(MI_HISTORY, history) is not None
    assert term.match(MI_ACUTE, history) is None
    assert term.match(BASE + "stroke", stroke) is not None
    assert term.match(BASE + "seizure-disorder", concept(Coding(SNOMED, "84757009"))) is not None
    assert term.match(BASE + "seizure-disorder", stroke) is None


def test_condition_sets_match_by_name_only_where_no_code_is_known_and_the_words_affirm_it(
    term: Terminology,
) -> None:
    found = term.match(MI_ACUTE, concept(text="myocardial infarction"))
    assert found is not None
    assert (found.method, found.term) == ("name", "myocardial infarction")
    assert term.match(MI_ACUTE, concept(text="No history of myocardial infarction")) is None
    assert term.match(MI_ACUTE, concept(text="myocardial infarction ruled out")) is None
    # a recognised code speaks for the record: its display's words do not add another condition
    sequela = concept(Coding(ICD, "I69.30", "Unspecified sequelae of cerebral infarction"))
    assert term.match(BASE + "stroke", sequela) is None
    assert term.match(BASE + "stroke-history-tia", sequela) is not None


@pytest.mark.parametrize(
    ("text", "set_id", "name"),
    [
        ("Heat stroke", "stroke", "stroke"),
        ("Aneurysmal bone cyst of the tibia", "aneurysm-avm", "aneurysmal"),
        ("Febrile seizures as a child", "seizure-disorder", "seizures"),
        ("Pregnancy test", "pregnancy", "pregnancy"),
        ("Mild MI on echo", "mi-acute", "mi"),  # mild mitral insufficiency, not an infarction
    ],
)
def test_a_longer_phrase_a_set_excludes_does_not_name_its_condition(
    term: Terminology, text: str, set_id: str, name: str
) -> None:
    # each set's match-name-excluded phrases hold one of its names but mean something else
    assert term.match(BASE + set_id, concept(text=text)) is None
    assert BASE + set_id not in term.memberships(concept(text=text))
    found = term.match(BASE + set_id, concept(text=name))  # the name on its own is the condition
    assert found is not None
    assert (found.method, found.term) == ("name", name)


def test_a_name_said_as_past_history_goes_where_its_set_says(term: Terminology) -> None:
    """A past infarction belongs to the history set, a past pregnancy to none (the pregnancy set ignores past
    mentions), and a past epilepsy stays a seizure disorder (its set neither moves nor ignores them)."""
    past_mi = concept(text="history of myocardial infarction")
    assert term.match(MI_ACUTE, past_mi) is None
    assert term.match(MI_HISTORY, past_mi) is not None
    assert term.match(BASE + "pregnancy", concept(text="pregnancy")) is not None
    assert term.match(BASE + "pregnancy", concept(text="history of pregnancy")) is None
    found = term.match(BASE + "seizure-disorder", concept(text="history of epilepsy"))
    assert found is not None
    assert (found.method, found.term) == ("name", "epilepsy")


def test_substance_use_excludes_nicotine_and_ketamine_use_is_its_own_set(term: Terminology) -> None:
    sud = BASE + "substance-use-disorder"
    ketamine_use = BASE + "ketamine-use-disorder"
    assert term.match(sud, concept(Coding(ICD, "F17.210"))) is None
    assert term.match(sud, concept(Coding(ICD, "F10.20"))) is not None
    assert term.match(ketamine_use, concept(Coding(SNOMED, "724713006"))) is not None
    assert term.match(ketamine_use, concept(Coding(ICD, "F16.20"))) is not None
    assert term.match(ketamine_use, concept(Coding(ICD, "F10.20"))) is None


def test_psychosis_block_is_expanded_into_categories(term: Terminology) -> None:
    psychosis = BASE + "psychotic-disorder"
    assert term.match(psychosis, concept(Coding(ICD, "F25.0"))) is not None
    assert term.match(psychosis, concept(Coding(ICD, "F32.3"))) is not None
    assert term.match(psychosis, concept(Coding(ICD, "F32.2"))) is None  # severe, without psychosis


def test_hypertensive_crisis_is_only_i16(term: Terminology) -> None:
    crisis = BASE + "hypertensive-crisis"
    assert term.match(crisis, concept(Coding(ICD, "I16.1"))) is not None
    assert term.match(crisis, concept(Coding(ICD, "I10"))) is None


# ------------------------------------------------------------------------------ ingredients and names


def test_synthea_clonazepam_is_found_by_name(term: Terminology) -> None:
    coding = rx("204892", "clonazePAM 0.25 MG Oral Tablet")
    assert (RXNORM, "204892") not in expansion_codes("benzodiazepine-medications")
    found = term.match(BENZO, concept(coding))
    assert found is not None
    assert (found.method, found.term, found.coding) == ("name", "clonazepam", None)
    assert term.ingredients(concept(coding)) == ("clonazepam",)


def test_brand_only_text(term: Terminology) -> None:
    klonopin = concept(text="Klonopin 1 mg")
    found = term.match(BENZO, klonopin)
    assert found is not None
    assert (found.method, found.term) == ("name", "klonopin")
    assert term.ingredients(klonopin) == ("clonazepam",)
    assert term.match(BASE + "lamotrigine-medications", klonopin) is None


@pytest.mark.parametrize(
    ("brand", "ingredient"),
    [
        ("Rivotril", "clonazepam"),
        ("Niravam", "alprazolam"),
        ("Temesta", "lorazepam"),
        ("Normison", "temazepam"),
        ("Frisium", "clobazam"),
        ("Serax", "oxazepam"),
        ("Serepax", "oxazepam"),
        ("ProSom", "estazolam"),
        ("Dalmane", "flurazepam"),
        ("Mogadon", "nitrazepam"),
        ("Lexotan", "bromazepam"),
        ("Lexomil", "bromazepam"),
        ("Rohypnol", "flunitrazepam"),
        ("Dormonoct", "loprazolam"),
        ("Noctamid", "lormetazepam"),
        ("Centrax", "prazepam"),
        ("Tranxene", "clorazepate"),
        ("Librium", "chlordiazepoxide"),
        ("Doral", "quazepam"),
        ("Halcion", "triazolam"),
        ("Restoril", "temazepam"),
        ("Valium", "diazepam"),
    ],
)
def test_every_benzodiazepine_in_the_equivalence_table_has_a_brand_read_in_text(
    term: Terminology, brand: str, ingredient: str
) -> None:
    written = concept(text=f"{brand} 1 mg tablet")
    found = term.match(BENZO, written)
    assert found is not None
    assert found.method == "name"
    assert term.ingredients(written) == (ingredient,)
    assert brand.lower() in term.ingredient_names(ingredient)


def test_each_equivalence_table_benzodiazepine_is_covered_by_a_brand_case() -> None:
    table = json.loads((PROFILES / "tables" / "diazepam-equivalence.json").read_text(encoding="utf-8"))
    dosed = {n for n, e in table["ingredients"].items() if e["class"] == "benzodiazepine" and e.get("ashton")}
    cases = test_every_benzodiazepine_in_the_equivalence_table_has_a_brand_read_in_text.pytestmark[0].args[1]
    assert dosed <= {ingredient for _, ingredient in cases}


def test_names_that_stand_for_one_ingredient(term: Terminology) -> None:
    assert term.ingredient_names("clonazepam") == {"clonazepam", "klonopin", "rivotril"}
    assert "limbitrol" not in term.ingredient_names("chlordiazepoxide")  # with amitriptyline: not alone
    assert term.ingredient_names("Lorazepam ") >= {"lorazepam", "ativan", "loreev xr", "temesta"}


def test_product_names_for_codes_without_display(term: Terminology) -> None:
    assert term.product_names(concept(rx("197528"))) == ("clonazepam 1 MG Oral Tablet",)
    assert term.product_names(concept(rx("197528", "clonazepam 1 MG Oral Tablet"))) == ()  # has its own
    assert term.product_names(concept(rx("999999999"))) == ()  # in no value set
    assert term.product_names(concept(Coding(SNOMED, "197528"))) == ()  # same digits, another system


def test_name_in_a_later_display(term: Terminology) -> None:
    found = term.match(
        BENZO, concept(Coding("urn:example:local", "X1", "house formulary 17"), rx("1", "LORazepam"))
    )
    assert found is not None
    assert found.term == "lorazepam"


def test_ingredient_code_matches_and_code_takes_precedence(term: Terminology) -> None:
    clonazepam_in = rx("2598", "clonazepam")
    found = term.match(BENZO, concept(clonazepam_in))
    assert found is not None
    assert (found.method, found.coding) == ("ingredient-code", clonazepam_in)
    product = rx("197591", "diazepam 5 MG Oral Tablet")
    found = term.match(BENZO, concept(clonazepam_in, product))
    assert found is not None
    assert (found.method, found.coding) == ("code", product)
    found = term.match(BENZO, concept(clonazepam_in, text="clonazepam"))
    assert found is not None
    assert found.method == "ingredient-code"
    assert term.match(BASE + "lamotrigine-medications", concept(clonazepam_in)) is None
    lamotrigine_in = rx("28439")
    found = term.match(BASE + "lamotrigine-medications", concept(lamotrigine_in))
    assert found is not None
    assert found.method == "ingredient-code"


def test_z_drugs_are_not_benzodiazepines(term: Terminology) -> None:
    assert term.match(BENZO, concept(rx("39993", "zolpidem"), text="zolpidem 10 mg at night")) is None
    assert term.match(BENZO, concept(text="Ambien 5 mg")) is None
    assert "zolpidem" not in term.valueset_ingredients(BENZO)


def test_esketamine_is_not_racemic_ketamine(term: Terminology) -> None:
    spravato = concept(rx("2201625", "esketamine Nasal Spray [Spravato]"))
    assert term.match(KETAMINE, spravato) is None
    assert term.match(KETAMINE, concept(text="esketamine 56 mg intranasal")) is None
    assert term.match(KETAMINE, concept(text="Spravato 84 mg")) is None
    found = term.match(ESKETAMINE, spravato)
    assert found is not None
    assert found.method == "code"
    found = term.match(ESKETAMINE, concept(text="Spravato 84 mg"))
    assert found is not None
    assert found.term == "spravato"
    assert term.ingredients(spravato) == ("esketamine",)


def test_ketamine_is_not_esketamine(term: Terminology) -> None:
    ketamine_text = concept(text="Ketamine 0.5 mg/kg IV over 40 minutes")
    assert term.match(ESKETAMINE, ketamine_text) is None
    assert term.match(ESKETAMINE, concept(rx("6130", "ketamine"))) is None
    found = term.match(KETAMINE, ketamine_text)
    assert found is not None
    assert (found.method, found.term) == ("name", "ketamine")
    found = term.match(KETAMINE, concept(text="KETALAR 500 mg/10 mL"))
    assert found is not None
    assert found.term == "ketalar"
    assert term.ingredients(ketamine_text) == ("ketamine",)


def test_ketamine_allergy_substances(term: Terminology) -> None:
    assert term.match(SUBSTANCES, concept(Coding(SNOMED, "373464007", "Ketamine (substance)"))) is not None
    assert term.match(SUBSTANCES, concept(rx("6130"))) is not None
    for text in ("ketamine", "Esketamine", "Spravato", "Ketalar"):
        assert term.match(SUBSTANCES, concept(text=text)) is not None, text
    assert term.match(SUBSTANCES, concept(Coding(SNOMED, "373476007", "Midazolam (substance)"))) is None
    assert term.match(SUBSTANCES, concept(text="penicillin")) is None


def test_multi_ingredient_product_gives_every_ingredient(term: Terminology) -> None:
    display = "amitriptyline hydrochloride 12.5 MG / chlordiazepoxide 5 MG Oral Tablet"
    assert term.ingredients(concept(rx("856769", display))) == ("amitriptyline", "chlordiazepoxide")
    assert term.ingredients(concept(rx("856769"))) == ("amitriptyline", "chlordiazepoxide")  # from the set
    assert term.ingredients(concept(text="Lybalvi 10 mg/10 mg")) == ("olanzapine", "samidorphan")
    assert term.ingredients(concept(rx("2598"))) == ("clonazepam",)
    assert term.ingredients(concept(text="paracetamol 500 mg")) == ()


def test_word_boundaries(term: Terminology) -> None:
    assert (
        term.match(BASE + "psychostimulant-medications", concept(text="dextroamphetamine 5 mg")) is not None
    )
    assert term.ingredients(concept(text="dextroamphetamine 5 mg")) == ("dextroamphetamine",)
    assert term.ingredients(concept(text="lisdexamfetamine 30 mg")) == ("lisdexamfetamine",)
    assert term.ingredients(concept(text="armodafinil 150 mg")) == ("armodafinil",)
    assert term.ingredients(concept(text="Xanax XR 1 mg")) == ("alprazolam",)


@pytest.mark.parametrize(
    ("text", "valueset", "term_found"),
    [
        ("Xanax XR 1 mg", BENZO, "xanax xr"),
        ("XANAX  XR 0.5 mg tablet", BENZO, "xanax xr"),  # any case, any run of spaces between the words
        ("Xanax 1 mg", BENZO, "xanax"),
        ("MS Contin 30 mg", BASE + "opioid-medications", "ms contin"),
        ("Risperdal Consta 25 mg injection", BASE + "risperidone-olanzapine-medications", "risperdal consta"),
    ],
)
def test_the_longest_name_written_is_the_one_matched(
    term: Terminology, text: str, valueset: str, term_found: str
) -> None:
    # "Xanax XR" is its own brand name: the match names it whole, not the "Xanax" it begins with
    found = term.match(valueset, concept(text=text))
    assert found is not None
    assert (found.method, found.term) == ("name", term_found)


def test_rescue_and_procedural_benzodiazepines(term: Terminology) -> None:
    valtoco = concept(rx("2272619", "diazepam 100 MG/ML Nasal Spray [Valtoco]"))
    oral = concept(rx("197591", "Diazepam 5 MG Oral Tablet"))
    assert term.match(RESCUE, valtoco) is not None
    assert term.match(BENZO, valtoco) is not None
    assert term.match(RESCUE, oral) is None
    assert term.match(BENZO, oral) is not None
    assert term.match(RESCUE, concept(text="Valtoco 10 mg")) is not None
    assert term.match(RESCUE, concept(text="midazolam 2 mg IV")) is not None
    assert term.match(RESCUE, concept(text="diazepam 5 mg tablet")) is None


def test_antipsychotic_sets_split_cleanly(term: Terminology) -> None:
    risp_olanz = BASE + "risperidone-olanzapine-medications"
    other = BASE + "other-antipsychotic-medications"
    naltrexone = BASE + "naltrexone-medications"
    quetiapine = concept(rx("312743", "quetiapine 100 MG Oral Tablet"))
    assert term.match(other, quetiapine) is not None
    assert term.match(risp_olanz, quetiapine) is None
    lybalvi = concept(text="Lybalvi")
    assert term.match(risp_olanz, lybalvi) is not None
    assert term.match(naltrexone, lybalvi) is not None
    assert term.match(other, lybalvi) is None
    assert term.match(other, concept(text="risperidone 2 mg")) is None
    assert term.match(naltrexone, concept(text="Vivitrol 380 mg")) is not None
    assert term.match(naltrexone, concept(text="naloxone 0.4 mg")) is None


def test_theophylline_and_stimulants(term: Terminology) -> None:
    assert term.match(BASE + "theophylline-medications", concept(text="Theo-24 300 mg")) is not None
    found = term.match(BASE + "theophylline-medications", concept(rx("689")))
    assert found is not None
    assert found.method == "code"
    stimulants = BASE + "psychostimulant-medications"
    assert term.match(stimulants, concept(text="Focalin XR 10 mg")) is not None
    assert term.match(stimulants, concept(rx("6901"))) is not None
    assert term.match(stimulants, concept(text="topiramate 50 mg")) is None


def test_valueset_ingredients(term: Terminology) -> None:
    assert term.valueset_ingredients(KETAMINE) == frozenset({"ketamine"})
    assert term.valueset_ingredients(SUBSTANCES) == frozenset({"ketamine", "esketamine"})
    assert term.valueset_ingredients(MI_ACUTE) == frozenset()
    assert {"clonazepam", "alprazolam", "midazolam"} <= term.valueset_ingredients(BENZO)


@pytest.mark.parametrize(
    "text",
    [
        "deschloroketamine 5 mg",  # a designer analogue: "ketamine" is only the end of the word
        "2-fluorodeschloroketamine",
        "norketamine level 40 ng/mL",  # the metabolite
        "hydroxynorketamine",
        "ketamine-free anaesthesia",  # says ketamine was not used
        "Ketamine - free TIVA",
    ],
)
def test_words_that_contain_ketamine_or_deny_it_are_not_ketamine(term: Terminology, text: str) -> None:
    written = concept(text=text)
    for url in (KETAMINE, ESKETAMINE, SUBSTANCES):
        assert term.match(url, written) is None, url
    assert term.ingredients(written) == ()


def test_a_denied_mention_does_not_hide_a_real_one(term: Terminology) -> None:
    found = term.match(KETAMINE, concept(text="ketamine-free induction; then ketamine 0.5 mg/kg IV"))
    assert found is not None
    assert (found.method, found.term) == ("name", "ketamine")


@pytest.mark.parametrize(
    ("text", "brand", "ingredient"),
    [
        ("equilibrium", "Librium", "chlordiazepoxide"),
        ("confident", "Onfi", "clobazam"),
        ("abbreviation", "Revia", "naltrexone"),
        ("ultramarathon", "Ultram", "tramadol"),
    ],
)
def test_a_brand_inside_another_word_is_no_brand(
    term: Terminology, text: str, brand: str, ingredient: str
) -> None:
    assert term.memberships(concept(text=f"patient {text}")) == frozenset()
    assert term.ingredients(concept(text=f"patient {text}")) == ()
    assert term.ingredients(concept(text=f"{brand} 10 mg")) == (ingredient,)  # the brand as a word


def test_ketamine_codes_under_another_system_are_not_ketamine(term: Terminology) -> None:
    # RxNorm 6130 is the ketamine ingredient and 2201625 an esketamine product; the same digits under
    # SNOMED CT, NDC or ICD-10-CM (or an unknown system) name something else
    for system in (SNOMED, "http://hl7.org/fhir/sid/ndc", ICD, "urn:example:local"):
        for code, url in (("6130", KETAMINE), ("6130", SUBSTANCES), ("2201625", ESKETAMINE)):
            assert term.match(url, concept(Coding(system, code))) is None, (system, code)
        assert term.ingredients(concept(Coding(system, "6130"))) == ()
    assert term.match(KETAMINE, concept(rx("6130"))) is not None
    assert term.match(ESKETAMINE, concept(rx("2201625"))) is not None


def test_a_coding_of_an_unknown_system_leaves_the_text_to_read(term: Terminology) -> None:
    written = concept(Coding("urn:example:local", "6130"), text="clonazepam 0.5 mg at night")
    assert term.ingredients(written) == ("clonazepam",)
    found = term.match(BENZO, written)
    assert found is not None
    assert (found.method, found.term) == ("name", "clonazepam")


def test_another_set_s_name_before_the_set_s_own_name(term: Terminology) -> None:
    both = concept(text="zolpidem 10 mg at night, clonazepam 0.5 mg twice a day, clonazepam as needed")
    found = term.match(BENZO, both)
    assert found is not None
    assert found.term == "clonazepam"
    assert term.ingredients(both) == ("clonazepam", "zolpidem")


def test_a_condition_named_after_a_denied_one_or_only_in_a_display(term: Terminology) -> None:
    # "no history of stroke" does not count; the myocardial infarction after it does
    written = concept(text="No history of stroke, myocardial infarction in 2024")
    found = term.match(MI_ACUTE, written)
    assert found is not None
    assert (found.method, found.term) == ("name", "myocardial infarction")
    assert term.match(BASE + "stroke", written) is None
    # the text says nothing; the display of a local code names the condition
    local = concept(Coding("urn:example:local", "X7", "Myocardial infarction"), text="seen in clinic")
    found = term.match(MI_ACUTE, local)
    assert found is not None
    assert found.term == "myocardial infarction"


# ------------------------------------------------------------------------------ tables and lookups


def test_diazepam_equivalents(term: Terminology) -> None:
    assert term.diazepam_mg_equivalent("clonazepam", "ashton") == 0.5
    assert term.diazepam_mg_equivalent("clonazepam", "va_dod") == 1.0
    assert term.diazepam_mg_equivalent("Clonazepam", "ashton") == 0.5
    assert term.diazepam_mg_equivalent("bromazepam", "ashton") == 5.5  # midpoint of 5-6
    assert term.diazepam_mg_equivalent("bromazepam", "va_dod") is None
    assert term.diazepam_mg_equivalent("lorazepam", "va_dod") == 2.0
    assert term.diazepam_mg_equivalent("midazolam", "ashton") is None
    assert term.diazepam_mg_equivalent("lamotrigine", "ashton") is None
    with pytest.raises(ConfigError):
        term.diazepam_mg_equivalent("clonazepam", "who")


def test_without_a_source_the_table_s_default_source_is_used(term: Terminology) -> None:
    # diazepam-equivalence.json names Ashton as its default: clonazepam 0.5 mg (VA/DoD would say 1 mg)
    assert term.diazepam_mg_equivalent("clonazepam") == 0.5
    assert term.diazepam_mg_equivalent("bromazepam") == 5.5
    assert term.diazepam_mg_equivalent("midazolam") is None


def test_blood_pressure_codes(term: Terminology) -> None:
    codes = term.blood_pressure_codes()
    assert (codes.panel[0].system, codes.panel[0].code) == (LOINC, "85354-9")
    assert (codes.systolic[0].system, codes.systolic[0].code) == (LOINC, "8480-6")
    assert (codes.diastolic[0].system, codes.diastolic[0].code) == (LOINC, "8462-4")
    assert codes.systolic[0].display == "Systolic blood pressure"
    systolic_pairs = {(c.system, c.code) for c in codes.systolic}
    assert ("urn:oid:2.16.840.1.113883.6.1", "8480-6") in systolic_pairs  # the OID alias, for raw comparison
    assert {c.code for c in codes.panel} == {"85354-9"}
    assert not systolic_pairs & {(c.system, c.code) for c in codes.diastolic}
    bp = BASE + "blood-pressure-observations"
    assert term.match(bp, concept(Coding("urn:oid:2.16.840.1.113883.6.1", "8480-6"))) is not None
    assert term.match(bp, concept(Coding(LOINC, "8867-4"))) is None  # heart rate


def test_unknown_value_set_is_a_config_error(term: Terminology) -> None:
    assert not term.known(BASE + "no-such-set")
    assert term.known(MI_ACUTE)
    assert term.known(MI_ACUTE + "|1.0")
    assert MI_ACUTE in term.urls()
    assert term.title(MI_ACUTE) == "Myocardial infarction (acute or recent)"
    with pytest.raises(ConfigError):
        term.match(BASE + "no-such-set", concept(text="x"))
    with pytest.raises(ConfigError):
        term.title(BASE + "no-such-set")


def test_coding_key(term: Terminology) -> None:
    assert term.coding_key(Coding("urn:oid:2.16.840.1.113883.6.90", "i21.4")) == (ICD, "I214")
    assert term.coding_key(Coding("http://example.org/unknown", "1")) is None


def test_code_match_is_memoised(term: Terminology) -> None:
    """Charts repeat the same codes: the second look-up is the cached answer, not a second scan. (How fast
    a match is belongs to the benchmark, bench/, not to a wall-clock ceiling here.)"""
    hit = concept(Coding(SNOMED, "38341003"), Coding(ICD, "I21.4"))
    first = term.memberships(hit)
    assert MI_ACUTE in first
    assert term.memberships(concept(Coding(SNOMED, "38341003"), Coding(ICD, "I21.4"))) is first
    assert term.match(MI_ACUTE, hit) == term.match(MI_ACUTE, hit)


def test_longest_half_life(term: Terminology) -> None:
    assert term.longest_half_life_hours("clonazepam") == 50.0  # "18-50" h
    assert term.longest_half_life_hours("Diazepam ") == 200.0  # "20-100 [36-200]": its metabolite's
    assert term.longest_half_life_hours("lamotrigine") is None


def test_the_membership_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = Terminology.load(PROFILES)
    monkeypatch.setattr(terminology, "_MEMBERSHIP_CACHE_SIZE", 2)
    mi, benzo, stroke = concept(Coding(ICD, "I21.4")), concept(text="clonazepam"), concept(text="stroke")
    first = fresh.memberships(mi)
    assert BENZO in fresh.memberships(benzo)
    assert fresh.memberships(mi) is first  # two answers kept
    assert BASE + "stroke" in fresh.memberships(stroke)  # a third: the full cache is emptied first
    again = fresh.memberships(mi)
    assert again == first
    assert again is not first  # worked out anew


# ------------------------------------------------------------------------------------ load errors


@pytest.fixture
def profiles_copy(tmp_path: Path) -> Path:
    target = tmp_path / "fhir_profiles"
    (target / "tables").mkdir(parents=True)
    shutil.copytree(PROFILES / "valuesets", target / "valuesets")
    for name in (
        "ingredients.json",
        "code-systems.json",
        "diazepam-equivalence.json",
        "blood-pressure-codes.json",
        "mention-cues.json",
    ):
        shutil.copy(PROFILES / "tables" / name, target / "tables" / name)
    return target


def edit(path: Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_copy_loads(profiles_copy: Path) -> None:
    assert Terminology.load(profiles_copy).known(MI_ACUTE)


def _set_op(data: Any) -> None:
    data["compose"]["include"][-1]["filter"][0]["op"] = "descendent-of"


def _unknown_system(data: Any) -> None:
    data["expansion"]["contains"][0]["system"] = "http://example.org/unknown"


def _empty_expansion(data: Any) -> None:
    data["expansion"]["contains"] = []


def _compose_not_expanded(data: Any) -> None:
    data["compose"]["include"][0]["concept"].append({"code": "99999999"})


def _no_title(data: Any) -> None:
    del data["title"]


def _unknown_brand(data: Any) -> None:
    data["extension"].append(
        {
            "url": "https://ketamine-cds.example.org/fhir/StructureDefinition/match-brand",
            "valueString": "Nope",
        }
    )


@pytest.mark.parametrize(
    ("file", "change"),
    [
        ("mi-acute.json", _set_op),
        ("mi-acute.json", _unknown_system),
        ("mi-acute.json", _empty_expansion),
        ("benzodiazepine-medications.json", _compose_not_expanded),
        ("pregnancy.json", _no_title),
        ("benzodiazepine-medications.json", _unknown_brand),
    ],
)
def test_malformed_value_sets_stop_loading(
    profiles_copy: Path, file: str, change: Callable[[Any], None]
) -> None:
    edit(profiles_copy / "valuesets" / file, change)
    with pytest.raises(ConfigError, match=re.escape(file)):
        Terminology.load(profiles_copy)


def test_duplicate_url_stops_loading(profiles_copy: Path) -> None:
    shutil.copy(profiles_copy / "valuesets" / "mi-acute.json", profiles_copy / "valuesets" / "zz-copy.json")
    with pytest.raises(ConfigError, match="two value sets"):
        Terminology.load(profiles_copy)


def test_broken_json_and_missing_tables_stop_loading(profiles_copy: Path) -> None:
    (profiles_copy / "valuesets" / "stroke.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"stroke\.json"):
        Terminology.load(profiles_copy)
    (profiles_copy / "tables" / "code-systems.json").unlink()
    with pytest.raises(ConfigError, match=r"code-systems\.json"):
        Terminology.load(profiles_copy)


def test_bad_tables_stop_loading(profiles_copy: Path) -> None:
    edit(
        profiles_copy / "tables" / "diazepam-equivalence.json",
        lambda d: d["ingredients"]["clonazepam"].update(ashton="half"),
    )
    with pytest.raises(ConfigError, match="clonazepam"):
        Terminology.load(profiles_copy)


def test_brand_of_unknown_ingredient_stops_loading(profiles_copy: Path) -> None:
    edit(profiles_copy / "tables" / "ingredients.json", lambda d: d["brands"].update(Foo=["nothing"]))
    with pytest.raises(ConfigError, match="Foo"):
        Terminology.load(profiles_copy)


def test_ambiguous_alias_stops_loading(profiles_copy: Path) -> None:
    def clash(data: Any) -> None:
        data["systems"]["http://loinc.org"]["aliases"].append("urn:oid:2.16.840.1.113883.6.96")

    edit(profiles_copy / "tables" / "code-systems.json", clash)
    with pytest.raises(ConfigError, match="two code systems"):
        Terminology.load(profiles_copy)


def _add_include(data: Any) -> None:
    data["compose"]["include"].append(
        {"system": SNOMED, "filter": [{"property": "concept", "op": "is-a", "value": "22298006"}]}
    )


def _extension(url: str, **value: str) -> Callable[[Any], None]:
    return lambda data: data.setdefault("extension", []).append(
        {"url": "https://ketamine-cds.example.org/fhir/StructureDefinition/" + url, **value}
    )


def _rename_ingredient(data: Any) -> None:
    data["ingredients"]["Clonazepam"] = data["ingredients"].pop("clonazepam")


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "tables/code-systems.json",
            lambda d: d["systems"][ICD].update(code_form="lower"),
            "code_form 'lower' is not one of",
        ),
        (
            "tables/code-systems.json",
            lambda d: d["systems"][ICD].update(hierarchy="prefix"),
            f"systems.{ICD}.hierarchy 'prefix' is not supported",
        ),
        (
            "tables/code-systems.json",
            lambda d: d["systems"][ICD].update(aliases="ICD10"),
            f"systems.{ICD}.aliases: expected a list",
        ),
        (
            "tables/code-systems.json",
            lambda d: d["systems"].update({LOINC: "LOINC"}),
            f"systems.{LOINC}: expected an object",
        ),
        (
            "tables/ingredients.json",
            lambda d: d.update(code_system="http://example.org/drugs"),
            "code_system is not in tables/code-systems.json",
        ),
        ("tables/ingredients.json", _rename_ingredient, "ingredient names must be lower case: 'Clonazepam'"),
        ("tables/diazepam-equivalence.json", lambda d: d.update(sources={}), "no sources"),
        (
            "tables/diazepam-equivalence.json",
            lambda d: d.update(default_source="who"),
            "default_source 'who' is not one of the sources",
        ),
        (
            "tables/blood-pressure-codes.json",
            lambda d: d["systolic"].update(system="http://example.org/vitals"),
            "systolic.system is not in tables/code-systems.json",
        ),
        (
            "tables/mention-cues.json",
            lambda d: d.pop("window_words"),
            "tables/mention-cues.json: malformed cue table",
        ),
        (
            "valuesets/mi-acute.json",
            lambda d: d.update(resourceType="CodeSystem"),
            "resourceType must be ValueSet",
        ),
        ("valuesets/mi-acute.json", _add_include, f"is-a is not supported for {SNOMED}"),
        ("valuesets/benzodiazepine-medications.json", _empty_expansion, "expansion.contains is empty"),
        (
            "valuesets/benzodiazepine-medications.json",
            _extension("match-ingredient", valueString="unobtainium"),
            "ingredient 'unobtainium' is not in tables/ingredients.json",
        ),
        (
            "valuesets/pregnancy.json",
            _extension("match-history-mentions", valueCode="skip"),
            "valueCode must be count or ignore",
        ),
        (
            "valuesets/stroke-history-tia.json",
            _extension("match-history-of", valueCanonical=MI_ACUTE),
            f"match-history-of {MI_ACUTE} is unknown or claimed twice",
        ),
        (
            "valuesets/mi-history.json",
            _extension("match-history-of", valueCanonical=BASE + "no-such-set"),
            f"match-history-of {BASE}no-such-set is unknown or claimed twice",
        ),
    ],
)
def test_each_malformed_table_or_set_is_named(
    profiles_copy: Path, file: str, change: Callable[[Any], None], message: str
) -> None:
    edit(profiles_copy / file, change)
    with pytest.raises(ConfigError) as raised:
        Terminology.load(profiles_copy)
    assert message in str(raised.value)


def test_no_value_sets_stop_loading(profiles_copy: Path) -> None:
    for path in (profiles_copy / "valuesets").glob("*.json"):
        path.unlink()
    with pytest.raises(ConfigError, match="no value sets found"):
        Terminology.load(profiles_copy)


def test_unknown_extensions_and_unreadable_half_lives_are_left_alone(profiles_copy: Path) -> None:
    edit(
        profiles_copy / "valuesets" / "mi-acute.json", lambda d: d["extension"].append({"url": "urn:x:other"})
    )
    edit(
        profiles_copy / "tables" / "diazepam-equivalence.json",
        lambda d: d["ingredients"]["clonazepam"].update(half_life_h="not established"),
    )
    loaded = Terminology.load(profiles_copy)
    assert loaded.match(MI_ACUTE, concept(Coding(ICD, "I21.4"))) is not None
    assert loaded.longest_half_life_hours("clonazepam") is None
    assert loaded.longest_half_life_hours("diazepam") == 200.0


# ------------------------------------------------------- where a malformed part is, and what loads as written

EXT = "https://ketamine-cds.example.org/fhir/StructureDefinition/"


def _set_item(*path: str | int, value: Any) -> Callable[[Any], None]:
    """A change that puts `value` at `path` (keys and list indexes) inside the JSON document."""

    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        data[path[-1]] = value

    return change


def _drop(*path: str | int) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        del data[path[-1]]

    return change


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "tables/blood-pressure-codes.json",
            _set_item("panel", value=None),
            "tables/blood-pressure-codes.json: panel: expected an object",
        ),
        (
            "tables/blood-pressure-codes.json",
            _set_item("diastolic", "system", value=" "),
            "tables/blood-pressure-codes.json: diastolic.system: expected a non-empty string",
        ),
        (
            "tables/blood-pressure-codes.json",
            _set_item("systolic", "system", value="http://example.org/vitals"),
            "tables/blood-pressure-codes.json: systolic.system is not in tables/code-systems.json",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("extension", value={"url": EXT + "match-name"}),
            "valuesets/mi-acute.json: extension: expected a list",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("extension", value=["match-name"]),
            "valuesets/mi-acute.json: extension[0]: expected an object",
        ),
        (
            "valuesets/benzodiazepine-medications.json",
            _set_item(
                "extension",
                value=[
                    {"url": EXT + "match-ingredient", "valueString": "clonazepam"},
                    {"url": EXT + "match-brand"},
                ],
            ),
            "benzodiazepine-medications.json: extension[1].valueString: expected a non-empty string",
        ),
        (
            "valuesets/non-immune-reactions.json",
            _set_item("extension", value=[{"url": EXT + "match-reaction-name", "valueString": "   "}]),
            "valuesets/non-immune-reactions.json: extension[0].valueString: expected a non-empty string",
        ),
        (
            "valuesets/mi-history.json",
            _set_item("extension", value=[{"url": EXT + "match-history-of"}]),
            "valuesets/mi-history.json: extension[0].valueCanonical: expected a non-empty string",
        ),
        (
            "valuesets/stroke.json",
            _set_item("url", value=""),
            "valuesets/stroke.json: url: expected a non-empty string",
        ),
        (
            "valuesets/mi-acute.json",
            _drop("expansion", "contains", 0, "system"),
            "valuesets/mi-acute.json: expansion.contains[0].system: expected a non-empty string",
        ),
        (
            "valuesets/mi-acute.json",
            _drop("expansion", "contains", 0, "code"),
            "valuesets/mi-acute.json: expansion.contains[0].code: expected a non-empty string",
        ),
        (
            "valuesets/mi-acute.json",
            _drop("expansion"),
            "valuesets/mi-acute.json: expansion: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _drop("expansion", "timestamp"),
            "valuesets/mi-acute.json: expansion.timestamp: expected a non-empty string",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("expansion", "contains", value={}),
            "valuesets/mi-acute.json: expansion.contains: expected a list",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("expansion", "contains", 0, value="I21"),
            "valuesets/mi-acute.json: expansion.contains[0]: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", value=[]),
            "valuesets/mi-acute.json: compose: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", "include", value={}),
            "valuesets/mi-acute.json: compose.include: expected a list",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", "include", 0, value="I21"),
            "valuesets/mi-acute.json: compose.include[0]: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", "include", 0, "concept", value={}),
            "valuesets/mi-acute.json: compose.include[0].concept: expected a list",
        ),
        (
            "valuesets/benzodiazepine-medications.json",
            _set_item("compose", "include", 0, "concept", 0, value={"display": "a concept without a code"}),
            "valuesets/benzodiazepine-medications.json: compose.include[0].code: expected a non-empty string",
        ),
        (
            "valuesets/benzodiazepine-medications.json",
            _set_item("compose", "include", 0, "concept", 0, value="197528"),
            "valuesets/benzodiazepine-medications.json: compose.include[0].concept[0]: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", "include", 1, "filter", value={}),
            "valuesets/mi-acute.json: compose.include[1].filter: expected a list",
        ),
        (
            "valuesets/mi-acute.json",
            _set_item("compose", "include", 1, "filter", 0, value="I21"),
            "valuesets/mi-acute.json: compose.include[1].filter[0]: expected an object",
        ),
        (
            "valuesets/mi-acute.json",
            _drop("compose", "include", 1, "filter", 0, "value"),
            "valuesets/mi-acute.json: compose.include[1].filter[0].code: expected a non-empty string",
        ),
    ],
)
def test_a_malformed_part_is_named_by_its_file_and_place(
    profiles_copy: Path, file: str, change: Callable[[Any], None], message: str
) -> None:
    edit(profiles_copy / file, change)
    with pytest.raises(ConfigError) as raised:
        Terminology.load(profiles_copy)
    assert message in str(raised.value)


@pytest.mark.parametrize("file", ["tables/blood-pressure-codes.json", "valuesets/stroke.json"])
def test_a_table_or_set_that_is_not_an_object_is_named(profiles_copy: Path, file: str) -> None:
    (profiles_copy / file).write_text("[]", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        Terminology.load(profiles_copy)
    assert f"{file}: expected an object" in str(raised.value)


def test_a_half_life_missing_or_not_written_as_text_is_unknown(profiles_copy: Path) -> None:
    def change(data: Any) -> None:
        del data["ingredients"]["clonazepam"]["half_life_h"]
        data["ingredients"]["lorazepam"]["half_life_h"] = 20

    edit(profiles_copy / "tables" / "diazepam-equivalence.json", change)
    loaded = Terminology.load(profiles_copy)
    assert loaded.longest_half_life_hours("clonazepam") is None
    assert loaded.longest_half_life_hours("lorazepam") is None
    assert loaded.longest_half_life_hours("diazepam") == 200.0  # "20-100 [36-200]"


def test_a_product_code_listed_without_a_text_display_has_no_product_name(profiles_copy: Path) -> None:
    def change(data: Any) -> None:
        for entry in data["expansion"]["contains"]:
            if entry["code"] == "197528":
                del entry["display"]
            if entry["code"] == "104683":
                entry["display"] = 104683

    edit(profiles_copy / "valuesets" / "benzodiazepine-medications.json", change)
    loaded = Terminology.load(profiles_copy)
    assert loaded.product_names(concept(rx("197528"))) == ()
    assert loaded.product_names(concept(rx("104683"))) == ()
    found = loaded.match(BENZO, concept(rx("197528")))
    assert found is not None
    assert found.method == "code"


def test_a_set_that_counts_past_mentions_keeps_them(profiles_copy: Path, term: Terminology) -> None:
    # pregnancy.json says "ignore" (extension[10]); written "count", a past pregnancy is a pregnancy mention
    edit(
        profiles_copy / "valuesets" / "pregnancy.json", _set_item("extension", 10, "valueCode", value="count")
    )
    loaded = Terminology.load(profiles_copy)
    past = concept(text="history of pregnancy")
    assert term.match(BASE + "pregnancy", past) is None
    found = loaded.match(BASE + "pregnancy", past)
    assert found is not None
    assert (found.method, found.term) == ("name", "pregnancy")


def test_a_reaction_name_is_read_as_written_in_any_spacing(profiles_copy: Path, term: Terminology) -> None:
    reactions = BASE + "non-immune-reactions"
    found = term.match(reactions, concept(text="Double  vision after the dose"))
    assert found is not None
    assert (found.method, found.term) == ("name", "double vision")
    assert term.match(reactions, concept(text="felt fine")) is None
    # a name whose capitals are not its small letters twice over ("ß" has no one-letter capital)
    edit(
        profiles_copy / "valuesets" / "non-immune-reactions.json",
        _extension("match-reaction-name", valueString="Schweißausbruch"),
    )
    found = Terminology.load(profiles_copy).match(reactions, concept(text="Schweißausbruch nach Gabe"))
    assert found is not None
    assert found.term == "schweißausbruch"
