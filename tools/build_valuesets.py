#!/usr/bin/env python3
"""Build the service's FHIR ValueSets and code tables from the project's research CSVs.

    python tools/build_valuesets.py [SOURCE_DIR] [--out PROFILES_DIR]

SOURCE_DIR defaults to ../shared/clinical/valuesets (beside the repository); PROFILES_DIR defaults to the
repository's fhir_profiles/. The tool writes

    PROFILES_DIR/valuesets/<id>.json        one FHIR R4 ValueSet per rule concept (+ README.md)
    PROFILES_DIR/tables/ingredients.json    ingredient -> RxNorm IN, verification status, brands, class
    PROFILES_DIR/tables/diazepam-equivalence.json
    PROFILES_DIR/tables/code-systems.json   canonical code-system URI -> accepted aliases
    PROFILES_DIR/tables/blood-pressure-codes.json

The service reads only those committed files; it never reads SOURCE_DIR at run time. Output is
deterministic (sorted codes, fixed key order, no build clock), so running the tool twice gives
byte-identical files and a test can check that the committed knowledge matches its sources.

What each value set is made of is declared in RECIPES below: which CSV files, which ICD-10-CM subtree
rules, which hand-picked codes (each with the reason it is there). This is build-time curation, kept
in one declarative block so a clinical reviewer can read it next to the generated files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "clinical" / "valuesets"
DEFAULT_OUT = REPO / "fhir_profiles"

VALUESET_BASE = "https://ketamine-cds.example.org/fhir/ValueSet/"
EXT_INGREDIENT = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-ingredient"
EXT_BRAND = "https://ketamine-cds.example.org/fhir/StructureDefinition/match-brand"
PUBLISHER = "ketamine-cds project"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"

# Date given to content that has no expansion date of its own (the curated ingredient and equivalence
# tables and the hand-picked codes below): the day the project's research tables were handed over.
CURATED_AS_OF = "2026-11-22"

# --------------------------------------------------------------------------------------- code systems

CODE_SYSTEMS: dict[str, dict[str, Any]] = {
    RXNORM: {
        "name": "RxNorm",
        "oid": "2.16.840.1.113883.6.88",
        "code_form": "trim",
        "hierarchy": None,
        "names": ["RXNORM"],
        "other_uris": ["http://nlm.nih.gov/research/umls/rxnorm"],
    },
    SNOMED: {
        "name": "SNOMED CT",
        "oid": "2.16.840.1.113883.6.96",
        "code_form": "trim",
        "hierarchy": None,
        "names": ["SNOMEDCT", "SNOMED CT", "SNOMED-CT", "SNOMEDCT_US", "SCT"],
        "other_uris": [],
    },
    ICD10CM: {
        "name": "ICD-10-CM",
        "oid": "2.16.840.1.113883.6.90",
        "code_form": "upper-without-dots",
        "hierarchy": "code-prefix",
        "names": ["ICD-10-CM", "ICD10CM", "ICD10-CM"],
        "other_uris": ["http://www.cdc.gov/nchs/icd/icd10cm"],
    },
    LOINC: {
        "name": "LOINC",
        "oid": "2.16.840.1.113883.6.1",
        "code_form": "trim",
        "hierarchy": None,
        "names": ["LOINC", "LN"],
        "other_uris": [],
    },
}


def _aliases(uri: str, spec: Mapping[str, Any]) -> list[str]:
    found: set[str] = set()
    for base in [uri, *spec["other_uris"]]:
        https = base.replace("http://", "https://", 1)
        found.update({base, base + "/", https, https + "/"})
    found.update({f"urn:oid:{spec['oid']}", spec["oid"], *spec["names"]})
    found.discard(uri)
    return sorted(found)


CSV_SYSTEM = {name: uri for uri, spec in CODE_SYSTEMS.items() for name in spec["names"]}

# ------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Pick:
    """Rows taken from one CSV value-set file."""

    file: str
    keep_display: str | None = None  # regex (case-insensitive): keep only rows whose display matches
    drop_display: str | None = None  # regex (case-insensitive): drop rows whose display matches
    drop_icd_under: tuple[str, ...] = ()  # ICD-10-CM roots whose descendants are dropped


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
    icd: tuple[tuple[str, tuple[str, ...] | None], ...] = ()  # (rule_id in the subtree CSV, roots or all)
    extras: tuple[Extra, ...] = ()
    # medication and substance sets: which ingredient names belong to the set
    ingredients: tuple[str, ...] = ()  # named explicitly
    ingredient_classes: tuple[str, ...] = ()  # every table ingredient whose class starts with one of these
    ingredients_from_products: bool = False  # every ingredient named in the set's product displays ...
    not_in_class: tuple[str, ...] = ()  # ... except these co-ingredients
    extra_brands: tuple[
        str, ...
    ] = ()  # brand names whose products all belong here (beyond ingredient brands)
    known_products_of: tuple[
        str, ...
    ] = ()  # add product RxCUIs listed for these ingredients in ingredients.csv
    ingredient_codes_in_expansion: bool = False  # list the ingredients' RxNorm IN codes as members
    class_label: str | None = None  # class recorded for ingredients first seen through this set
    products_name_an_ingredient: bool = True  # check: every product name mentions a set ingredient
    notes: tuple[str, ...] = ()  # extra sentences for the description


BENZO_FILES = ("cdc-benzodiazepine-medications.csv", "vsac-schedule-iv-benzodiazepines.csv")
RESCUE_DISPLAY = r"\bdiazepam\b.*\b(?:nasal|rectal|buccal)\b|\b(?:midazolam|remimazolam)\b"

RECIPES: tuple[Recipe, ...] = (
    # ---------------------------------------------------------------- medications and substances
    Recipe(
        id="ketamine-racemic-medications",
        title="Racemic ketamine medications",
        kind="medication",
        purpose=(
            "Recognises racemic ketamine (generic injectables and Ketalar) in orders and medication lists, "
            "so that the ketamine treatment rules can tell an IV ketamine course from esketamine. "
            "Esketamine is deliberately not a member: it has its own set."
        ),
        extras=(Extra(RXNORM, "6130", "ketamine", "RxNorm ingredient (IN) from ingredients.csv"),),
        ingredients=("ketamine",),
        known_products_of=("ketamine",),
        notes=(
            "The product RxCUIs come from the ingredients table, which took them from openFDA NDC "
            "mappings; their RxNorm names were not verified, so their displays here are descriptive "
            "labels written by the build, not RxNorm names.",
        ),
    ),
    Recipe(
        id="esketamine-medications",
        title="Esketamine medications",
        kind="medication",
        purpose=(
            "Recognises esketamine nasal spray (Spravato) in orders and medication lists, for the "
            "esketamine-specific rules (aneurysm/AVM and intracerebral haemorrhage contraindications, "
            "REMS monitoring). Racemic ketamine is not a member."
        ),
        ingredients=("esketamine",),
        known_products_of=("esketamine",),
        notes=(
            "No RxNorm ingredient (IN) code for esketamine was verified, so the set relies on the two "
            "verified dose-form concepts and on the names esketamine and Spravato.",
        ),
    ),
    Recipe(
        id="ketamine-substances",
        title="Ketamine and esketamine as allergy substances",
        kind="substance",
        purpose=(
            "Recognises ketamine or esketamine as the substance of an AllergyIntolerance (its code or a "
            "reaction substance), for the hypersensitivity contraindication. The two are treated as one "
            "allergen because esketamine is an enantiomer of ketamine."
        ),
        extras=(
            Extra(
                SNOMED, "373464007", "Ketamine (substance)", "SNOMED CT substance named in evidence.md 5.2"
            ),
            Extra(RXNORM, "6130", "ketamine", "RxNorm ingredient (IN) from ingredients.csv"),
        ),
        ingredients=("ketamine", "esketamine"),
        known_products_of=("ketamine", "esketamine"),
    ),
    Recipe(
        id="benzodiazepine-medications",
        title="Benzodiazepine medications",
        kind="medication",
        purpose=(
            "Recognises benzodiazepine products, whose regular use (especially at higher daily "
            "diazepam-equivalent doses) is associated with a weaker or shorter response to ketamine, and "
            "which add sedation with esketamine. Z-drugs (zolpidem, zaleplon, zopiclone, eszopiclone) are "
            "not members."
        ),
        picks=tuple(Pick(f) for f in BENZO_FILES),
        ingredient_classes=("benzodiazepine",),
        ingredients_from_products=True,
        not_in_class=("amitriptyline", "clidinium"),
        class_label="benzodiazepine",
        notes=(
            "Union of the CDC opioid-CDS benzodiazepine list and the VSAC Schedule IV Benzodiazepines "
            "expansion. Products missing from both (for example clonazePAM 0.25 MG Oral Tablet, RxCUI "
            "204892) are still recognised by ingredient code or by ingredient or brand name.",
        ),
    ),
    Recipe(
        id="benzodiazepine-rescue-procedural",
        title="Benzodiazepine rescue and procedural products",
        kind="medication",
        purpose=(
            "Marks benzodiazepine products that are used intermittently (nasal, rectal and buccal diazepam "
            "rescue forms) or for procedures (midazolam, remimazolam), so that they are left out of the "
            "regular daily diazepam-equivalent sum."
        ),
        picks=tuple(Pick(f, keep_display=RESCUE_DISPLAY) for f in BENZO_FILES),
        ingredients=("midazolam", "remimazolam"),
        extra_brands=("Valtoco", "Diastat", "Libervant"),
        products_name_an_ingredient=False,
        notes=(
            "Members were selected from the benzodiazepine product lists by product name: diazepam "
            "products whose dose form is nasal, rectal or buccal, and every midazolam or remimazolam "
            "product. Valtoco, Diastat and Libervant are diazepam brands that exist only as rescue forms, "
            "so those brand names mark a product as rescue even without a code.",
        ),
    ),
    Recipe(
        id="lamotrigine-medications",
        title="Lamotrigine medications",
        kind="medication",
        purpose=(
            "Recognises lamotrigine, which one clinic FAQ lists as reducing ketamine's effect above "
            "100 mg/day (evidence disputed); used by the lamotrigine information rule."
        ),
        picks=(Pick("derived-lamotrigine-products.csv"),),
        ingredients=("lamotrigine",),
    ),
    Recipe(
        id="risperidone-olanzapine-medications",
        title="Risperidone and olanzapine medications",
        kind="medication",
        purpose=(
            "Recognises risperidone and olanzapine products, which one clinic FAQ lists as relative "
            "contraindications (evidence mechanistic and low quality); used by the antipsychotic rule."
        ),
        picks=(Pick("derived-olanzapine-risperidone-products.csv"),),
        ingredients=("risperidone", "olanzapine"),
    ),
    Recipe(
        id="other-antipsychotic-medications",
        title="Other antipsychotic medications",
        kind="medication",
        purpose=(
            "Recognises antipsychotics other than risperidone and olanzapine (haloperidol, clozapine, "
            "quetiapine, ...), for an information card about possible blunting of ketamine's acute effects "
            "and the underlying psychotic illness."
        ),
        picks=(Pick("vsac-antipsychotics-beers.csv", drop_display=r"\b(?:risperidone|olanzapine)\b"),),
        ingredient_classes=("antipsychotic",),
        ingredients_from_products=True,
        not_in_class=("risperidone", "olanzapine", "fluoxetine", "amitriptyline", "samidorphan"),
        class_label="antipsychotic",
        notes=(
            "VSAC 'Potentially Harmful Antipsychotics for Older Adults' minus every product that contains "
            "risperidone or olanzapine (those are in risperidone-olanzapine-medications).",
        ),
    ),
    Recipe(
        id="maoi-medications",
        title="Monoamine oxidase inhibitor medications",
        kind="medication",
        purpose=(
            "Recognises MAOIs (phenelzine, tranylcypromine, isocarboxazid, selegiline), which the Spravato "
            "label says may raise blood pressure with esketamine; used by the MAOI rule."
        ),
        picks=(Pick("derived-maoi-products.csv"),),
        ingredients=("phenelzine", "tranylcypromine", "isocarboxazid", "selegiline"),
    ),
    Recipe(
        id="psychostimulant-medications",
        title="Psychostimulant medications",
        kind="medication",
        purpose=(
            "Recognises psychostimulants (amphetamines, methylphenidate, modafinil, armodafinil), which the "
            "Spravato label says may raise blood pressure with esketamine; used by the stimulant rule."
        ),
        picks=(Pick("cdc-amphetamines-class-medications.csv"),),
        ingredients=("methylphenidate", "dexmethylphenidate", "modafinil", "armodafinil"),
        ingredients_from_products=True,
        not_in_class=("topiramate", "tropicamide"),
        class_label="psychostimulant (amphetamine class)",
        notes=(
            "Products: the CDC amphetamine-class list as published. Methylphenidate, dexmethylphenidate, "
            "modafinil and armodafinil have no product list in the sources and are recognised by "
            "ingredient code or name.",
        ),
    ),
    Recipe(
        id="naltrexone-medications",
        title="Naltrexone and samidorphan medications",
        kind="medication",
        purpose=(
            "Recognises the opioid antagonists naltrexone and samidorphan (in olanzapine/samidorphan, "
            "Lybalvi), after a small crossover study in which naltrexone blocked ketamine's antidepressant "
            "effect (contradicted by later studies); used by the naltrexone information rule."
        ),
        picks=(
            Pick("derived-naltrexone-products.csv"),
            Pick("derived-olanzapine-risperidone-products.csv", keep_display=r"\bsamidorphan\b"),
        ),
        ingredients=("naltrexone", "samidorphan"),
    ),
    Recipe(
        id="theophylline-medications",
        title="Theophylline and aminophylline medications",
        kind="medication",
        purpose=(
            "Recognises theophylline and aminophylline, which lower the seizure threshold together with "
            "ketamine (EU SmPC); used by the theophylline rule."
        ),
        ingredients=("theophylline", "aminophylline"),
        ingredient_codes_in_expansion=True,
        notes=(
            "No product list exists in the sources, so the members are the two RxNorm ingredient codes "
            "(recalled, not verified: see ingredients.json) and matching relies on ingredient and brand "
            "names.",
        ),
    ),
    # ----------------------------------------------------------------------------------- conditions
    Recipe(
        id="mi-acute",
        title="Myocardial infarction (acute or recent)",
        kind="condition",
        purpose=(
            "Recognises a myocardial infarction whose onset date decides the recent-MI contraindication "
            "(within 6 months) and the 6-12 month caution."
        ),
        picks=(Pick("vsac-acute-myocardial-infarction.csv"), Pick("vsac-myocardial-infarction.csv")),
        icd=(("MI_ACUTE", None),),
        extras=(
            Extra(
                SNOMED, "428752002", "Recent myocardial infarction (situation)", "named in evidence.md 5.2"
            ),
        ),
        notes=(
            "The VSAC 'Myocardial Infarction' set also holds a few concepts for past infarctions; the rule "
            "decides recency from the onset or recorded date, not from the code.",
        ),
    ),
    Recipe(
        id="mi-history",
        title="History of myocardial infarction (date unknown)",
        kind="condition",
        purpose=(
            "Recognises codes that say an infarction happened in the past without saying when (ICD-10-CM "
            "I25.2 only means more than 4 weeks ago), so the clinician is asked to confirm the date."
        ),
        icd=(("MI_OLD", None),),
        extras=(
            Extra(
                SNOMED,
                "399211009",
                "History of myocardial infarction (situation)",
                "seen in the project's Synthea test patients (shared/fhir-test-data); display as Synthea "
                "writes it",
            ),
        ),
    ),
    Recipe(
        id="stroke",
        title="Stroke (ischaemic or haemorrhagic)",
        kind="condition",
        purpose=(
            "Recognises an ischaemic or haemorrhagic stroke whose onset date decides the recent-stroke "
            "contraindication (within 12 months)."
        ),
        picks=(Pick("vsac-ischemic-stroke.csv"), Pick("vsac-hemorrhagic-stroke.csv")),
        icd=(("STROKE_ISCHEMIC", None), ("STROKE_HEMORRHAGIC", None)),
    ),
    Recipe(
        id="intracerebral-hemorrhage",
        title="Intracerebral haemorrhage (any time)",
        kind="condition",
        purpose=(
            "Recognises a past or present intracranial haemorrhage, an absolute contraindication to "
            "esketamine at any time (Spravato label) and part of the stroke rules for IV ketamine."
        ),
        picks=(Pick("vsac-hemorrhagic-stroke.csv"),),
        icd=(("ICH_HISTORY", None),),
    ),
    Recipe(
        id="stroke-history-tia",
        title="Stroke history, sequelae and transient ischaemic attack",
        kind="condition",
        purpose=(
            "Recognises a history of stroke, its sequelae and transient ischaemic attacks, for the "
            "physician-review caution when no recent stroke is recorded."
        ),
        icd=(("STROKE_HISTORY", None), ("TIA", None)),
        extras=(
            Extra(SNOMED, "266257000", "", "display from vsac-cerebrovascular-disease-stroke-tia.csv"),
            Extra(
                SNOMED,
                "161511000",
                "History of transient ischemic attack (situation)",
                "named in evidence.md 5.2; display as used in public FHIR value sets",
            ),
            Extra(
                SNOMED,
                "275526006",
                "History of cerebrovascular accident (situation)",
                "named in evidence.md 5.2; display as used in public FHIR value sets",
            ),
        ),
    ),
    Recipe(
        id="aneurysm-avm",
        title="Aneurysmal vascular disease and arteriovenous malformation",
        kind="condition",
        purpose=(
            "Recognises aortic, intracranial and peripheral arterial aneurysms and arteriovenous "
            "malformations: an absolute contraindication to esketamine (Spravato label) and a strong "
            "caution for IV ketamine, which raises blood pressure."
        ),
        picks=(Pick("vsac-aortic-aneurysm.csv"),),
        icd=(("ANEURYSM", None), ("AVM", None)),
        extras=(
            Extra(
                SNOMED,
                "234142008",
                "Cerebral arteriovenous malformation",
                "named in evidence.md 5.2; display as used in public code tables",
            ),
            Extra(
                SNOMED,
                "234141001",
                "Congenital arteriovenous malformation",
                "named in evidence.md 5.2 ('congenital AVM'); display not checked against a SNOMED release",
            ),
            Extra(
                SNOMED,
                "261482004",
                "Spinal arteriovenous malformation",
                "named in evidence.md 5.2 ('spinal AVM'); display not checked against a SNOMED release",
            ),
        ),
    ),
    Recipe(
        id="hypertensive-crisis",
        title="Hypertensive crisis",
        kind="condition",
        purpose=(
            "Recognises hypertensive urgency, emergency and crisis (ICD-10-CM I16), which escalate the "
            "blood-pressure rule regardless of the latest reading."
        ),
        icd=(("HYPERTENSION", ("I16",)),),
    ),
    Recipe(
        id="unstable-cardiac",
        title="Unstable cardiac disease",
        kind="condition",
        purpose=(
            "Recognises unstable angina, other acute ischaemic heart disease and heart failure, for the "
            "unstable-cardiac-disease caution (cardiology clearance). SNOMED CT members are the unstable "
            "forms picked from the VSAC angina set (preinfarction syndrome, new-onset and post-infarct "
            "angina); stable angina is not a member."
        ),
        picks=(
            Pick(
                "vsac-stable-and-unstable-angina.csv",
                keep_display=r"unstable|preinfarction|new onset angina|post infarct angina",
            ),
        ),
        icd=(("UNSTABLE_CARDIAC", None),),
    ),
    Recipe(
        id="raised-intracranial-pressure",
        title="Raised intracranial pressure",
        kind="condition",
        purpose=(
            "Recognises hydrocephalus, benign intracranial hypertension, cerebral oedema and brain "
            "compression, where a rise in intracranial pressure would be a serious risk."
        ),
        icd=(("RAISED_ICP", None),),
    ),
    Recipe(
        id="raised-intraocular-pressure",
        title="Glaucoma and raised intraocular pressure",
        kind="condition",
        purpose=(
            "Recognises glaucoma and ocular hypertension: ketamine can raise intraocular pressure, so "
            "untreated or angle-closure disease needs ophthalmology input."
        ),
        picks=(Pick("vsac-glaucoma.csv"),),
        icd=(("RAISED_IOP", None),),
    ),
    Recipe(
        id="psychotic-disorder",
        title="Psychotic disorder",
        kind="condition",
        purpose=(
            "Recognises schizophrenia-spectrum and other psychotic disorders, including mood disorders "
            "with psychotic features, for the psychosis-history caution."
        ),
        picks=(Pick("vsac-schizophrenia-or-psychotic-disorder.csv"),),
        icd=(("PSYCHOSIS", None),),
        notes=("The ICD-10-CM block F20-F29 is expressed as one is-a filter per category in the block.",),
    ),
    Recipe(
        id="bipolar-disorder",
        title="Bipolar disorder",
        kind="condition",
        purpose="Recognises bipolar disorder and manic episodes, for an information card about switch risk.",
        picks=(Pick("vsac-bipolar-disorder.csv"),),
        icd=(("BIPOLAR", None),),
    ),
    Recipe(
        id="seizure-disorder",
        title="Seizure disorder and epilepsy",
        kind="condition",
        purpose=(
            "Recognises epilepsy and seizure disorders, for an information card and for the theophylline "
            "interaction."
        ),
        picks=(Pick("vsac-seizure-disorder.csv"), Pick("vsac-epilepsy.csv")),
        icd=(("SEIZURE", None),),
    ),
    Recipe(
        id="substance-use-disorder",
        title="Substance use disorder (excluding nicotine)",
        kind="condition",
        purpose=(
            "Recognises alcohol and drug use disorders, for the abuse-and-misuse caution. Nicotine "
            "dependence (ICD-10-CM F17) is not a member."
        ),
        picks=(Pick("vsac-substance-use-disorder.csv", drop_icd_under=("F17",)),),
        extras=(
            Extra(
                SNOMED,
                "6525002",
                "Dependent drug abuse (disorder)",
                "seen in the project's Synthea test data; not in the VSAC expansion",
            ),
        ),
        icd=(("SUBSTANCE_USE", None),),
    ),
    Recipe(
        id="ketamine-use-disorder",
        title="Ketamine or hallucinogen use disorder",
        kind="condition",
        purpose=(
            "Recognises harmful use of or dependence on ketamine (and the ICD-10-CM hallucinogen category "
            "that contains it), which most clinics treat as an absolute contraindication."
        ),
        extras=(
            Extra(SNOMED, "724713006", "", "display from vsac-substance-use-disorder.csv"),
            Extra(SNOMED, "724715004", "", "display from vsac-substance-use-disorder.csv"),
        ),
        icd=(("SUBSTANCE_USE", ("F16",)),),
    ),
    Recipe(
        id="pregnancy",
        title="Pregnancy",
        kind="condition",
        purpose=(
            "Recognises a current pregnancy: esketamine is not recommended in pregnancy (embryo-fetal "
            "toxicity) and IV ketamine needs obstetric input."
        ),
        picks=(Pick("vsac-pregnancy.csv"), Pick("vsac-pregnant-state.csv")),
        icd=(("PREGNANCY", None),),
    ),
    Recipe(
        id="hyperthyroidism",
        title="Hyperthyroidism",
        kind="condition",
        purpose="Recognises thyrotoxicosis, a contraindication when untreated (EU/Swiss SmPC).",
        picks=(Pick("vsac-hyperthyroidism.csv"),),
        icd=(("HYPERTHYROID", None),),
    ),
    Recipe(
        id="severe-hepatic-impairment",
        title="Severe hepatic impairment",
        kind="condition",
        purpose=(
            "Recognises hepatic failure and cirrhosis: esketamine is not recommended in severe hepatic "
            "impairment, and repeated ketamine can injure the liver."
        ),
        icd=(("HEPATIC", None),),
    ),
    Recipe(
        id="interstitial-cystitis",
        title="Interstitial cystitis",
        kind="condition",
        purpose=(
            "Recognises interstitial cystitis, for an information card about ketamine-associated urinary "
            "tract symptoms."
        ),
        icd=(("CYSTITIS", None),),
    ),
    Recipe(
        id="anaesthetic-allergy-history",
        title="Allergy to or adverse effect of an anaesthetic (non-specific)",
        kind="condition",
        purpose=(
            "Recognises ICD-10-CM codes that record an allergy to, or an adverse effect of, an anaesthetic "
            "agent without naming it: a weak hint that the hypersensitivity rule asks the clinician to check."
        ),
        icd=(("KETAMINE_ADVERSE", None),),
    ),
    # ---------------------------------------------------------------------------------- observations
    Recipe(
        id="blood-pressure-observations",
        title="Blood pressure observations",
        kind="observation",
        purpose=(
            "Recognises blood-pressure Observations (the panel and its systolic and diastolic components) "
            "for the uncontrolled-hypertension rule."
        ),
        extras=(
            Extra(LOINC, "85354-9", "Blood pressure panel with all children optional", "LOINC panel"),
            Extra(LOINC, "8480-6", "Systolic blood pressure", "LOINC component"),
            Extra(LOINC, "8462-4", "Diastolic blood pressure", "LOINC component"),
        ),
        notes=("fhir_profiles/tables/blood-pressure-codes.json says which code plays which part.",),
    ),
)

BLOOD_PRESSURE = {"panel": "85354-9", "systolic": "8480-6", "diastolic": "8462-4"}

# Extra ingredients the recipes rely on that the ingredient table does not list (name -> class).
EXTRA_INGREDIENTS = {
    "dexmethylphenidate": "psychostimulant",
    "armodafinil": "wakefulness agent",
    "samidorphan": "opioid antagonist",
}

# Words that follow an ingredient name in RxNorm product names (salts, esters, complexes).
SALT_WORDS = frozenset(
    [
        "acetate",
        "anhydrous",
        "aspartate",
        "besylate",
        "bitartrate",
        "bromide",
        "citrate",
        "decanoate",
        "dihydrochloride",
        "dimesylate",
        "dipotassium",
        "fumarate",
        "hcl",
        "hydrobromide",
        "hydrochloride",
        "lactate",
        "lauroxil",
        "maleate",
        "mesylate",
        "monohydrate",
        "pamoate",
        "palmitate",
        "potassium",
        "resin",
        "saccharate",
        "sodium",
        "succinate",
        "sulfate",
        "tartrate",
    ]
)
# Words that precede an ingredient name (quantity units, release time, device words).
LEAD_WORDS = frozenset(["actuat", "day", "hr", "ml", "sensor"])

LOINC_LICENCE = (
    "LOINC codes and names are copyright Regenstrief Institute, Inc. and the LOINC Committee, "
    "available at no cost under the LOINC licence."
)
SNOMED_LICENCE = (
    "SNOMED CT codes are the property of SNOMED International; use in the US is free under the UMLS "
    "Metathesaurus licence and SNOMED affiliate terms."
)

# ------------------------------------------------------------------------------------------- reading


class BuildError(Exception):
    pass


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
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise BuildError(f"source directory not found: {root}")
        self.root = root
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
        if name == "icd10cm-rule-subtrees.csv":
            return ICD_RELEASE_DATE
        # a derived subset: the newest of the VSAC expansions it names that are among the sources
        oids = re.findall(r"urn:oid:([\d.]+)", source.meta.get("oid_or_url", ""))
        stamps = [
            self.timestamp(entry["file"])
            for entry in self.index.values()
            if any(entry.get("oid_or_url", "").startswith(f"urn:oid:{oid} ") for oid in oids)
        ]
        return max(stamps, key=_instant) if stamps else CURATED_AS_OF


ICD_RELEASE_DATE = "2026-04-01"  # "CDC/NCHS ICD-10-CM tabular list, April 1 2026 release"


def _instant(stamp: str) -> str:
    """Sort key for FHIR dateTimes of mixed precision: the date part, then the full text."""
    return stamp[:10] + "~" + stamp


# ---------------------------------------------------------------------------------------- ingredients


def parse_product_ingredients(display: str) -> list[str]:
    """Base ingredient names in an RxNorm product name ('amphetamine aspartate 5 MG / ...' -> amphetamine)."""
    text = re.sub(r"\[[^\]]*\]", " ", display.lower())
    text = re.sub(r"[{}()]", " ", text)
    names: list[str] = []
    pattern = r"([a-z][a-z\- ]*?)\s+\d+(?:\.\d+)?\s+(?:mg|mcg|meq|unt|ml|%)"
    for match in re.finditer(pattern, text):
        words = match.group(1).split()
        while words and words[0] in LEAD_WORDS:
            words.pop(0)
        while len(words) > 1 and words[-1] in SALT_WORDS:
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
    rule_ids: list[str] = field(default_factory=list)
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
            rule_ids=_split_list(row["rule_ids"]),
            notes=row["notes"] or None,
            source="ingredients.csv",
        )
        if ing.rxnorm_in and not ing.rxnorm_in.isdigit():
            raise BuildError(f"ingredients.csv: bad RxCUI for {name}: {ing.rxnorm_in}")
        for match in re.finditer(r"((?:\d+;?)+)\s*\(([^)]*)\)", row["product_rxcuis_known"]):
            for code in _split_list(match.group(1)):
                ing.products.append((code, match.group(2).strip()))
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
    for name, cls in EXTRA_INGREDIENTS.items():
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
        return re.sub(r",? see \.\./clinical\.md", "", src.meta["license"])
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
            system = CSV_SYSTEM.get(row["system"])
            if system is None:
                raise BuildError(f"{pick.file}: unknown code system {row['system']!r}")
            display = row["display"]
            if pick.keep_display and not re.search(pick.keep_display, display, re.IGNORECASE):
                continue
            if pick.drop_display and re.search(pick.drop_display, display, re.IGNORECASE):
                continue
            if system == ICD10CM and _covered(row["code"], pick.drop_icd_under):
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
                f"- {CODE_SYSTEMS[extra.system]['name']} {extra.code}: {extra.why} (also in a source)."
            )
            continue
        extras_text.append(f'- {CODE_SYSTEMS[extra.system]["name"]} {extra.code} "{display}": {extra.why}.')
        stamps.append(CURATED_AS_OF)
        if extra.system == SNOMED and not any("SNOMED" in text for text in licences):
            licences.append(SNOMED_LICENCE)
        if extra.system == LOINC:
            licences.append(LOINC_LICENCE)

    # ingredient membership
    ingredients: set[str] = set(recipe.ingredients)
    for ing in table.values():
        if ing.drug_class and any(ing.drug_class.startswith(c) for c in recipe.ingredient_classes):
            ingredients.add(ing.name)
    if recipe.ingredients_from_products:
        for (system, _code), display in codes.items():
            if system == RXNORM:
                ingredients.update(parse_product_ingredients(display))
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
                code = table[name].rxnorm_in
                if code:
                    from_table += add(RXNORM, code, name)
        if from_table:
            stamps.append(CURATED_AS_OF)
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

    if not codes:
        raise BuildError(f"{recipe.id}: empty expansion")
    for key in codes:
        if key[0] == ICD10CM and not re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", key[1]):
            raise BuildError(f"{recipe.id}: odd ICD-10-CM code {key[1]}")

    timestamp = max(stamps, key=_instant)
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
            "copyright": " ".join(_unique(licences)),
            "compose": {"include": includes},
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
            if CSV_SYSTEM.get(row.get("system", "")) == extra.system and row.get("code") == extra.code:
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
    lines.append("")
    lines.append(
        f"Expansion timestamp {timestamp}: the date of the newest source content, not the build date. "
        "Derived: yes - this set is the project's grouping of the sources above, not an official "
        "value set. Licences: see copyright."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tables


def ingredients_json(
    table: Mapping[str, Ingredient], brands: Mapping[str, list[str]], sources: Sources
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
        if ing.rule_ids:
            entry["rule_ids"] = ing.rule_ids
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
            "as_of": CURATED_AS_OF,
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
            "as_of": CURATED_AS_OF,
            "source_notes": [
                f"{key}: {value}" for key, value in src.meta.items() if key in {"sources", "caveats"}
            ],
            "licence": src.meta.get("license", ""),
        },
        "ingredients": entries,
    }


def code_systems_json() -> Any:
    systems = {}
    for uri in sorted(CODE_SYSTEMS):
        spec = CODE_SYSTEMS[uri]
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


def blood_pressure_json(valueset: Mapping[str, Any]) -> Any:
    displays = {c["code"]: c["display"] for c in valueset["expansion"]["contains"]}
    parts = {}
    for part, code in BLOOD_PRESSURE.items():
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
                "systolic or diastolic Observation may also stand alone. " + LOINC_LICENCE
            ),
        },
    }


def readme(built: list[Built]) -> str:
    lines = [
        "# Value sets",
        "",
        "Generated by `tools/build_valuesets.py` from the project's research tables "
        "(`../shared/clinical/valuesets/*.csv`); do not edit the JSON by hand, change the recipe in the "
        "tool and rebuild. Each ValueSet's `description` gives its sources (files, OIDs/URLs, versions, "
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


def build(source_dir: Path) -> Iterator[tuple[str, str]]:
    """Every output file as (path relative to the profiles directory, text)."""
    sources = Sources(source_dir)
    table, brands = build_ingredients(sources)
    built = [build_valueset(recipe, sources, table, brands) for recipe in RECIPES]
    for item in built:  # every other ingredient named in a product, so ingredients() can report it
        for entry in item.resource["expansion"]["contains"]:
            if entry["system"] == RXNORM:
                for name in parse_product_ingredients(entry["display"]):
                    table.setdefault(
                        name,
                        Ingredient(name=name, source=f"co-ingredient in product names of {item.recipe.id}"),
                    )
    ids = [b.recipe.id for b in built]
    if len(ids) != len(set(ids)):
        raise BuildError("duplicate value-set ids")
    for item in built:
        yield f"valuesets/{item.recipe.id}.json", dump(item.resource)
    yield "valuesets/README.md", readme(built)
    yield "tables/ingredients.json", dump(ingredients_json(table, brands, sources))
    yield "tables/diazepam-equivalence.json", dump(equivalence_json(sources, table))
    yield "tables/code-systems.json", dump(code_systems_json())
    bp = next(b for b in built if b.recipe.id == "blood-pressure-observations")
    yield "tables/blood-pressure-codes.json", dump(blood_pressure_json(bp.resource))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="research CSV directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fhir_profiles directory to write")
    args = parser.parse_args(argv)
    try:
        outputs = list(build(args.source))
    except (BuildError, OSError, KeyError, ValueError) as exc:
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
