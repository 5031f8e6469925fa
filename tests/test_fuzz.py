"""Property-based fuzzing of the HTTP API: bad input never crashes, never goes unsaid.

Hypothesis generates request bodies and FHIR resources with wrong types, missing and extra fields, huge
strings, deep nesting, impossible dates ("2026-02-30", "99999-01-01"), unknown units, NaN-like values
(strings, and bare NaN/Infinity tokens, which Python's JSON parser accepts), resources of the wrong type in
prefetch bundles, garbage dosage and medicationReferences to nowhere. The properties:

* the service never answers 5xx;
* every 4xx carries a FHIR OperationOutcome with at least one issue;
* every 200 to a hook call is strict JSON (no NaN) and valid against the response schema, with no empty
  values (tests/support/responses.py, assert_valid_response);
* never an "all clear" for records the screen could not read: in a full screen (a ketamine or esketamine
  order, or an open chart), a prefetched medication, condition, allergy or blood pressure that
  cds/fhir/facts.py cannot read (no name or code, a medicationReference that resolves to nothing or to a
  Medication without a code, no reading or no readable date) is listed by name on the
  `unreadable-records` card (rules/unreadable-records.yaml); a relevant record that *is* readable but
  whose dose or date is garbage still gets its own rule's card (the dose-not-computable or date-unknown
  bands).

CI runs a fixed budget with a fixed seed (`derandomize=True`): the same examples every run, about 20 s.
For a larger campaign, raise the budget per property and let Hypothesis pick fresh examples:

    KETAMINE_CDS_FUZZ_EXAMPLES=5000 KETAMINE_CDS_FUZZ_RANDOM=1 .venv/bin/pytest tests/test_fuzz.py -q

(`KETAMINE_CDS_FUZZ_RANDOM=1` turns derandomisation off, so every run explores new inputs; Hypothesis
prints the failing example, which then belongs in a regression test below.)

Besides, 10,000 mutated requests (the last section) go through the edge's own steps without Flask, from a
recorded seed, and must give no 5xx: about 47 % are screened, the rest refused with 400 or 412
(`KETAMINE_CDS_FUZZ_SEED` and `KETAMINE_CDS_FUZZ_REQUESTS` change the campaign).

Requests carry the Synthea test patients' ids and names, so the session-end log check
(tests/support/logs.py) would catch any log line that echoed request data while these bodies were being
rejected or screened.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cds.app import create_app
from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
from cds.config import load_settings
from cds.errors import ClientError, operation_outcome
from cds.web.validation import check_hook_call, check_json_object
from tests.support.builders import (
    ESKETAMINE,
    KETAMINE,
    PATIENT,
    RXNORM,
    SNOMED,
    allergy,
    blood_pressure,
    coding,
    concept,
    condition,
    dosage,
    hook_request,
    ketamine_order,
    med_request,
    med_statement,
)
from tests.support.cards import every_chart_policy, findings_on_page
from tests.support.constants import CLOSED_PORT, NOW, SERVICES
from tests.support.responses import assert_valid_response, deterministic_uuids
from tests.support.synthea import synthea_patients, synthea_request

# A falsifying example may hold a huge string: print it anyway rather than fail on the size of its repr.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

EXAMPLES = int(os.environ.get("KETAMINE_CDS_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    derandomize=os.environ.get("KETAMINE_CDS_FUZZ_RANDOM", "") != "1",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
MAX_BODY = 2_000_000
PREFETCH_KEYS = ("medicationStatements", "medicationRequests", "conditions", "allergies", "bloodPressure")


# --------------------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, knowledge: Knowledge) -> Iterator[Flask]:
    folder = tmp_path_factory.mktemp("fuzz")
    database = folder / "cds.sqlite3"
    app_settings = load_settings(
        environ={},
        overrides={
            "dev_mode": True,
            "database_url": f"sqlite:///{database}",
            "audit_hash_key": "fuzz-key",
            "max_body_bytes": MAX_BODY,
            "repeat_suppression_s": 0,  # every call screened afresh: no card hidden as "already shown"
            "log_level": "DEBUG",  # every record the service can emit reaches the log-hygiene check
            # patient-view screens every chart, so that every fuzzed chart is screened
            "policy_file": every_chart_policy(folder),
        },
    )
    flask_app = create_app(app_settings, clock=lambda: NOW, new_uuid=deterministic_uuids())
    yield flask_app
    flask_app.extensions["ketamine_cds"].flush()


@pytest.fixture(scope="module")
def fuzz_client(fuzz_app: Flask) -> FlaskClient:
    return fuzz_app.test_client()


# --------------------------------------------------------------------------------------------- checks


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants)


def check(response: Any, knowledge: Knowledge, *, hook_call: bool) -> Any:
    """The properties every answer must have, whatever was sent. Returns the parsed body."""
    status = response.status_code
    text = response.get_data(as_text=True)
    assert status < 500, f"{status}: {text[:500]}"
    if status >= 400:
        outcome = strict_json(text)
        assert outcome["resourceType"] == "OperationOutcome", text[:500]
        assert outcome["issue"], text[:500]
        for issue in outcome["issue"]:
            assert isinstance(issue["severity"], str)
            assert isinstance(issue["code"], str)
            assert isinstance(issue["diagnostics"], str)
            assert issue["diagnostics"]
        return outcome
    if status == 200 and hook_call:
        payload = strict_json(text)
        assert_valid_response(knowledge, payload)
        return payload
    return None


def post_json(client: FlaskClient, path: str, body: Any) -> Any:
    # json.dumps writes NaN/Infinity as bare tokens, as a sloppy sender would; the service must cope.
    return client.post(path, data=json.dumps(body), content_type="application/json")


# --------------------------------------------------------------------------------------------- values

IMPOSSIBLE_DATES = [
    "2026-02-30",
    "99999-01-01",
    "2026-13-01",
    "2026-00-10",
    "0000-01-01",
    "2026-11-31T10:00:00Z",
    "2026-11-22T25:61:00Z",
    "2026-11-22T12:00:00+24:00",
    "20261122",
    "22/11/2026",
    "yesterday",
    "",
    " ",
    "NaN",
]
PLAUSIBLE_DATES = [
    "2026",
    "2026-09",
    "2026-09-01",
    "2026-11-01T09:00:00Z",
    "1972-07-30T13:27:08.848645+00:00",
]
NAN_LIKE = ["NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "", "12 mg", "0x10", "١٢"]
UNITS = ["mg", "mL", "g", "ug", "mcg", "{tbl}", "TAB", "[drp]", "furlong", "mg/kg", "µg", "", " ", "NaN", "1"]
STATUSES = [
    "active",
    "completed",
    "stopped",
    "on-hold",
    "draft",
    "intended",
    "entered-in-error",
    "unknown",
    "ACTIVE",
    "",
]
PERIOD_UNITS = ["s", "min", "h", "d", "wk", "mo", "a", "fortnight", "", "D"]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(NAN_LIKE + IMPOSSIBLE_DATES),
)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAN_LIKE),
    st.booleans(),
    st.none(),
)
TIME_ZONES = ["Z", "+00:00", "-01:00", "+14:00", "+24:00", "-23:59", "+05:30", ""]
# Dates shaped right with every component free to be impossible: month 13, day 32, hour 25, year 0 or 9999.
built_dates = st.builds(
    "{:04d}-{:02d}-{:02d}".format,
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
)
timestamps = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}".format,
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(TIME_ZONES),
)
dates = st.one_of(
    st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES), built_dates, timestamps, st.text(max_size=12), leaves
)


def huge_string(size: int, seed: str) -> str:
    return (seed or "x") * (size // max(len(seed), 1) + 1)


def nested(depth: int, leaf: Any, as_list: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


huge_strings = st.builds(huge_string, st.sampled_from([5_000, 100_000, 700_000]), st.text(max_size=3))
oversized_strings = st.builds(huge_string, st.just(MAX_BODY + 1), st.text(max_size=3))
deep_values = st.builds(nested, st.integers(min_value=1, max_value=300), leaves, st.booleans())


@st.composite
def _odd_values(draw: st.DrawFn) -> Any:
    """Mostly small values of the wrong type; now and then a huge string or deep nesting."""
    choice = draw(st.integers(0, 11))
    if choice == 0:
        return draw(huge_strings)
    if choice == 1:
        return draw(deep_values)
    return draw(json_values)


odd_values = _odd_values()


@st.composite
def quantities(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    out: dict[str, Any] = {"value": draw(numbers)}
    for key in ("unit", "code"):
        if draw(st.booleans()):
            out[key] = draw(st.one_of(st.sampled_from(UNITS), leaves))
    if draw(st.booleans()):
        out["system"] = draw(st.sampled_from(["http://unitsofmeasure.org", "urn:nowhere", ""]))
    return out


@st.composite
def garbage_dosage(draw: st.DrawFn) -> Any:
    """A Dosage with wrong types, impossible timings, unknown units; sometimes not a Dosage at all."""
    if draw(st.integers(0, 6)) == 0:
        return draw(json_values)
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        repeat: dict[str, Any] = {}
        for key in ("frequency", "frequencyMax", "period", "periodMax", "count"):
            if draw(st.booleans()):
                repeat[key] = draw(numbers)
        if draw(st.booleans()):
            repeat["periodUnit"] = draw(st.one_of(st.sampled_from(PERIOD_UNITS), leaves))
        if draw(st.booleans()):
            repeat["boundsPeriod"] = {"start": draw(dates), "end": draw(dates)}
        if draw(st.booleans()):
            repeat["timeOfDay"] = draw(st.lists(st.one_of(st.sampled_from(["08:00:00", "25:00"]), leaves)))
        timing: dict[str, Any] = {"repeat": repeat}
        if draw(st.booleans()):
            timing["event"] = draw(st.lists(dates, max_size=3))
        if draw(st.booleans()):
            timing["code"] = draw(st.one_of(st.just({"text": "BID"}), json_values))
        out["timing"] = draw(st.sampled_from([timing, timing, [timing], "BID"]))
    if draw(st.booleans()):
        rate: dict[str, Any] = {}
        choice = draw(st.integers(0, 3))
        if choice == 0:
            rate["doseQuantity"] = draw(quantities())
        elif choice == 1:
            rate["doseRange"] = {"low": draw(quantities()), "high": draw(quantities())}
        elif choice == 2:
            rate["rateRatio"] = {"numerator": draw(quantities()), "denominator": draw(quantities())}
        else:
            rate = draw(json_values)
        out["doseAndRate"] = draw(st.sampled_from([[rate], rate, [rate, rate]]))
    for key in ("asNeededBoolean", "maxDosePerPeriod", "text", "route", "sequence"):
        if draw(st.integers(0, 3)) == 0:
            out[key] = draw(json_values)
    return out


def _garbage_for(key: str) -> st.SearchStrategy[Any]:
    lowered = key.lower()
    if "date" in lowered or "onset" in lowered or lowered in {"authoredon", "issued", "abatement"}:
        return dates
    if lowered in {"dosage", "dosageinstruction"}:
        return st.one_of(st.lists(garbage_dosage(), max_size=3), garbage_dosage())
    if lowered == "status":
        return st.one_of(st.sampled_from(STATUSES), leaves)
    if "quantity" in lowered:
        return quantities()
    return odd_values


@st.composite
def perturbed(
    draw: st.DrawFn, base: dict[str, Any], protected: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`base` with some fields dropped or given garbage of a fitting kind, and some extra fields."""
    out = copy.deepcopy(base)
    for key in list(out):
        if key in protected:
            continue
        action = draw(st.sampled_from(["keep", "keep", "keep", "keep", "drop", "garbage"]))
        if action == "drop":
            del out[key]
        elif action == "garbage":
            out[key] = draw(_garbage_for(key))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(
            st.one_of(
                st.sampled_from(["extension", "meta", "note", "category", "identifier", "reasonCode"]),
                st.text(min_size=1, max_size=10),
            )
        )
        if key not in protected and key not in base:
            out[key] = draw(odd_values)
    return out


# --------------------------------------------------------------------------------------- FHIR resources

CLONAZEPAM = concept(coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"))
LAMOTRIGINE = concept(coding(RXNORM, "198427", "lamotrigine 100 MG Oral Tablet"))
SERTRALINE = concept(coding(RXNORM, "312940", "sertraline 50 MG Oral Tablet"))
MI = concept(coding(SNOMED, "22298006", "Myocardial infarction"))
STROKE = concept(coding(SNOMED, "230690007", "Cerebrovascular accident"))
PHARYNGITIS = concept(coding(SNOMED, "195662009", "Acute viral pharyngitis"))
KETAMINE_ALLERGY = concept(coding(RXNORM, "6130", "ketamine"))
MEDICINES = [CLONAZEPAM, LAMOTRIGINE, SERTRALINE, KETAMINE, ESKETAMINE]
garbage_concepts = st.one_of(
    st.sampled_from(
        [{}, {"coding": [{}]}, {"text": ""}, {"coding": "6130"}, {"coding": [{"system": RXNORM}]}]
    ),
    json_values,
)
medicine_concepts = st.one_of(st.sampled_from(MEDICINES), garbage_concepts)


@st.composite
def fuzzed_medication(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    medicine = draw(medicine_concepts)
    dosages = draw(
        st.lists(st.one_of(st.just(dosage(dose=1, unit="mg", frequency=2)), garbage_dosage()), max_size=3)
    )
    if draw(st.booleans()):
        base = med_statement(medicine, dosages=dosages, rid=rid)
    else:
        base = med_request(medicine, dosages=dosages, rid=rid, status=draw(st.sampled_from(STATUSES)))
    if draw(st.integers(0, 3)) == 0:  # a reference instead of a concept: to nowhere, or to garbage
        base.pop("medicationCodeableConcept", None)
        base["medicationReference"] = draw(
            st.one_of(
                st.sampled_from(
                    [
                        {"reference": "Medication/nowhere"},
                        {"reference": "#missing"},
                        {"reference": "https://elsewhere.example/fhir/Medication/1"},
                        {"reference": "Medication/x/_history/2", "display": "clonazepam 0.5 mg"},
                        {"reference": "Medication/in-bundle"},
                    ]
                ),
                json_values,
            )
        )
    return draw(perturbed(base, frozenset({"resourceType", "id"})))


@st.composite
def fuzzed_condition(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    base = condition(
        draw(st.one_of(st.sampled_from([MI, STROKE, PHARYNGITIS]), garbage_concepts)),
        onset=draw(st.one_of(st.none(), st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES))),
        recorded=draw(st.one_of(st.none(), st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES))),
        clinical=draw(st.sampled_from(["active", "resolved", "remission", None, ""])),
        rid=rid,
    )
    if draw(st.integers(0, 4)) == 0:
        base["onsetAge"] = draw(quantities())
    return draw(perturbed(base, frozenset({"resourceType", "id"})))


@st.composite
def fuzzed_allergy(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    base = allergy(draw(st.one_of(st.just(KETAMINE_ALLERGY), garbage_concepts)), rid=rid)
    if draw(st.booleans()):
        base["reaction"] = draw(
            st.one_of(st.just([{"substance": concept(text="Spravato")}]), st.lists(json_values, max_size=2))
        )
    return draw(perturbed(base, frozenset({"resourceType", "id"})))


@st.composite
def fuzzed_observation(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    base = blood_pressure(draw(st.floats(0, 300)), draw(st.floats(0, 200)), rid=rid)
    for component in base["component"]:
        if draw(st.integers(0, 2)) == 0:
            component["valueQuantity"] = draw(quantities())
    if draw(st.booleans()):
        base["effectiveDateTime"] = draw(dates)
    return draw(perturbed(base, frozenset({"resourceType", "id"})))


WRONG_TYPES = [
    {"resourceType": "Patient", "id": "someone-else", "name": [{"family": "Other"}]},
    {"resourceType": "Encounter", "id": "enc-1", "status": "finished"},
    {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]},
    {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Condition"}}]},
    {"resourceType": "Medication", "id": "in-bundle"},
    {"resourceType": "Medication", "id": "in-bundle", "code": {"coding": [{}]}},
    {"resourceType": "Medication", "id": "nowhere-else", "code": {"text": "diazepam 5 mg"}},
    {"resourceType": "medicationstatement", "id": "lower-case"},
    {"resourceType": ""},
]

KINDS: dict[str, Callable[[str], st.SearchStrategy[dict[str, Any]]]] = {
    "medicationStatements": fuzzed_medication,
    "medicationRequests": fuzzed_medication,
    "conditions": fuzzed_condition,
    "allergies": fuzzed_allergy,
    "bloodPressure": fuzzed_observation,
}


@st.composite
def prefetch_bundles(draw: st.DrawFn, key: str) -> Any:
    """A searchset for `key`: fuzzed resources of its type, other types mixed in, odd entries."""
    shape = draw(st.integers(0, 49))
    if shape == 0:  # not a Bundle at all: the key is unusable (412 without a FHIR server)
        return draw(st.one_of(json_values, st.sampled_from([None, [], "Bundle"])))
    entries: list[Any] = []
    for index in range(draw(st.integers(0, 4))):
        which = draw(st.integers(0, 29))
        if which < 20:  # the right kind, and sometimes a kind that belongs under another key
            kind = key if which < 15 else draw(st.sampled_from(list(KINDS)))
            entries.append({"resource": draw(KINDS[kind](f"{key}-{index}"))})
        elif which < 26:
            entries.append({"resource": draw(st.sampled_from(WRONG_TYPES))})
        elif which < 29:  # no resource: skipped
            entries.append(draw(st.sampled_from([{}, {"fullUrl": "urn:x"}, {"resource": None}])))
        else:  # an entry that is not one: the bundle is unusable (412 without a FHIR server)
            entries.append(draw(json_values))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": entries}
    if draw(st.booleans()):
        bundle["type"] = draw(st.sampled_from(["searchset", "collection", "", 7]))
    if draw(st.integers(0, 29)) == 0:
        bundle["link"] = draw(
            st.one_of(st.just([{"relation": "next", "url": "Condition?page=2"}]), json_values)
        )
    if draw(st.integers(0, 9)) == 0:
        bundle["total"] = draw(numbers)
    return bundle


def _patient_identity(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A patient id and Patient resource: a Synthea test patient (real name), or the scenario patient."""
    choice = draw(st.integers(0, len(synthea_patients())))
    if choice == len(synthea_patients()):
        return PATIENT, {"resourceType": "Patient", "id": PATIENT, "birthDate": draw(dates)}
    synthea = synthea_patients()[choice]
    patient = dict(synthea.patient)
    if draw(st.booleans()):
        patient["birthDate"] = draw(dates)
    return synthea.id, patient


DRAFTS = {
    "ketamine": ketamine_order,
    "esketamine": lambda: ketamine_order(esketamine=True),
    "benzodiazepine": lambda: med_request(CLONAZEPAM, status="draft", rid="draft-benzo"),
    "unrelated": lambda: med_request(SERTRALINE, status="draft", rid="draft-other"),
    "no-medication": lambda: med_request(None, status="draft", rid="draft-empty"),
}


@st.composite
def fuzzed_hook_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed envelope around fuzzed FHIR resources."""
    hook = draw(st.sampled_from(list(SERVICES)))
    patient_id, patient = _patient_identity(draw)
    body = hook_request(hook)
    body["context"]["patientId"] = patient_id
    body["prefetch"]["patient"] = patient
    for key in PREFETCH_KEYS:
        if draw(st.integers(0, 3)) > 0:
            body["prefetch"][key] = draw(prefetch_bundles(key))
    if hook != "patient-view":
        kinds = draw(st.lists(st.sampled_from(list(DRAFTS)), min_size=1, max_size=3, unique=True))
        drafts = [
            draw(perturbed(DRAFTS[kind](), frozenset({"resourceType", "id", "medicationCodeableConcept"})))
            for kind in kinds
        ]
        body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
        if hook == "order-select":
            body["context"]["selections"] = [f"MedicationRequest/{drafts[0]['id']}"]
    if draw(st.integers(0, 9)) == 0:
        body["fhirServer"] = CLOSED_PORT
    return body


# ------------------------------------------------------------------------------- 1. fuzzed resources


@FUZZ
@given(body=fuzzed_hook_requests())
def test_fuzzed_fhir_resources_never_crash(
    fuzz_client: FlaskClient, knowledge: Knowledge, body: dict[str, Any]
) -> None:
    response = post_json(fuzz_client, f"/cds-services/{SERVICES[body['hook']]}", body)
    event(f"HTTP {response.status_code}")
    check(response, knowledge, hook_call=True)
    assert response.status_code in {200, 400, 412, 413}, response.status_code


# ------------------------------------------------------------------------------- 2. mutated requests


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    node = body
    for part in path[:-1]:
        node = node[part]
    return node


def _small_synthea(hook: str) -> dict[str, Any]:
    body = synthea_request(synthea_patients()[3], hook)
    for key in PREFETCH_KEYS:
        body["prefetch"][key]["entry"] = body["prefetch"][key]["entry"][:3]
    return body


# Built once: the builders number their ids, and a strategy must see the same seeds on every run.
SEEDS: list[dict[str, Any]] = [
    hook_request("patient-view", allergies=[allergy(KETAMINE_ALLERGY)], conditions=[condition(MI)]),
    hook_request("order-select", drafts=[ketamine_order()], statements=[med_statement(CLONAZEPAM)]),
    hook_request(
        "order-sign", drafts=[ketamine_order(esketamine=True)], observations=[blood_pressure(190, 120)]
    ),
    _small_synthea("patient-view"),
    _small_synthea("order-select"),
]


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with 1-4 structural mutations anywhere: deleted, retyped, huge, deep, extra."""
    body = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(body))))
        action = draw(st.sampled_from(["delete", "replace", "huge", "deep", "extra", "wrap", "nan"]))
        if not path:
            if action == "extra":
                body[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
            continue
        parent, last = _parent(body, path), path[-1]
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(json_values)
        elif action == "huge":
            parent[last] = draw(st.one_of(huge_strings, oversized_strings))
        elif action == "deep":
            parent[last] = draw(deep_values)
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif action == "nan":
            parent[last] = draw(st.sampled_from([math.nan, math.inf, -math.inf, *NAN_LIKE]))
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    return body


@FUZZ
@given(body=mutated_requests(), other=st.integers(0, 9), service=st.sampled_from(sorted(SERVICES.values())))
def test_mutated_requests_never_crash(
    fuzz_client: FlaskClient, knowledge: Knowledge, body: dict[str, Any], other: int, service: str
) -> None:
    """Mostly sent to the service of the hook it names (else nearly all would stop at the hook check)."""
    hook = body.get("hook")
    if other and isinstance(hook, str) and hook in SERVICES:
        service = SERVICES[hook]
    response = post_json(fuzz_client, f"/cds-services/{service}", body)
    event(f"HTTP {response.status_code}")
    check(response, knowledge, hook_call=True)


# ------------------------------------------------------------------------------- 3. raw bodies


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if choice == 2:  # valid JSON, any shape
        return json.dumps(draw(json_values)).encode()
    if choice == 3:  # a valid request cut short
        text = json.dumps(draw(st.sampled_from(SEEDS)))
        return text[: draw(st.integers(0, len(text)))].encode()
    if choice == 4:  # nesting from a little over the limit to far past the parser's recursion limit
        depth = draw(st.sampled_from([65, 500, 5_000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    if choice == 5:  # over the body limit
        return b'{"hook":"' + b"x" * (MAX_BODY + 1) + b'"}'
    return draw(st.sampled_from([b"", b"null", b"[]", b'"x"', b"NaN", b"{}", b'{"hook":null}']))


@FUZZ
@given(
    raw=raw_bodies(),
    path=st.sampled_from(
        [
            "/cds-services/ketamine-patient-view",
            "/cds-services/ketamine-order-select",
            "/cds-services/ketamine-order-sign/feedback",
            "/cds-services/no-such-service",
            "/cds-services/%00",
            "/cds-services/" + "x" * 5000,
        ]
    ),
    content_type=st.sampled_from(
        ["application/json", "application/fhir+json", "text/plain", "application/json; charset=latin-1", None]
    ),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET", "DELETE"]),
)
def test_raw_bodies_never_crash(
    fuzz_client: FlaskClient,
    knowledge: Knowledge,
    raw: bytes,
    path: str,
    content_type: str | None,
    method: str,
) -> None:
    response = fuzz_client.open(path, method=method, data=raw, content_type=content_type)
    event(f"HTTP {response.status_code}")
    check(response, knowledge, hook_call=not path.endswith("/feedback"))


# ------------------------------------------------------------------------------- 4. feedback


FEEDBACK_TIMESTAMPS = [
    "2026-02-30T12:00:00Z",
    "2026-11-22T25:00:00Z",
    "2026-11-22T12:00:60Z",
    "2026-11-22T12:00:00+24:00",
    "2026-11-22T12:00:00-99:99",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-11-22T12:00:00.1234567890Z",
]


@st.composite
def fuzzed_feedback(draw: st.DrawFn) -> dict[str, Any]:
    which = draw(st.integers(0, 5))
    if which <= 1:
        timestamp = "2026-11-22T12:01:00Z"
    elif which <= 3:  # pattern-valid, components anywhere from sane to impossible
        timestamp = draw(timestamps)
    elif which == 4:
        timestamp = draw(st.sampled_from(FEEDBACK_TIMESTAMPS))
    else:
        timestamp = draw(dates)
    item: dict[str, Any] = {
        "card": draw(
            st.one_of(st.just("00000000-0000-0000-0000-000000000001"), st.text(min_size=1, max_size=40))
        ),
        "outcome": draw(st.sampled_from(["accepted", "overridden"])),
        "outcomeTimestamp": timestamp,
    }
    if draw(st.booleans()):
        item["overrideReason"] = {
            "reason": {"code": draw(st.text(min_size=1, max_size=30)), "system": draw(st.text(max_size=30))},
            "userComment": draw(st.one_of(st.text(max_size=200), huge_strings)),
        }
    if draw(st.booleans()):
        item["acceptedSuggestions"] = [{"id": draw(st.text(min_size=1, max_size=20))}]
    if draw(st.integers(0, 3)) == 0:
        item = draw(perturbed(item, frozenset({"outcomeTimestamp"})))
    body = {"feedback": [item] * draw(st.integers(1, 3))}
    return draw(perturbed(body)) if draw(st.integers(0, 4)) == 0 else body


@FUZZ
@given(body=fuzzed_feedback())
def test_fuzzed_feedback_never_crashes(
    fuzz_client: FlaskClient, knowledge: Knowledge, body: dict[str, Any]
) -> None:
    response = post_json(fuzz_client, "/cds-services/ketamine-patient-view/feedback", body)
    event(f"HTTP {response.status_code}")
    check(response, knowledge, hook_call=False)
    assert response.status_code in {200, 400, 413}


@FUZZ
@given(since=st.one_of(dates, st.text(max_size=30)))
def test_fuzzed_analytics_since_never_crashes(
    fuzz_client: FlaskClient, knowledge: Knowledge, since: Any
) -> None:
    response = fuzz_client.get("/analytics/overrides", query_string={"since": str(since)})
    check(response, knowledge, hook_call=False)


# ------------------------------------------------------------------------------- 5. never an all clear

UNREADABLE_CONCEPTS = [
    None,
    "",
    [],
    {},
    "ketamine",
    {"text": "   "},
    {"coding": []},
    {"coding": [{}]},
    {"coding": ["6130"]},
    {"coding": [{"system": RXNORM}]},
    {"coding": [{"system": RXNORM, "code": "", "display": ""}], "text": ""},
    {"coding": [{"code": None, "display": None}]},
]
UNRESOLVABLE_REFERENCES = [
    {"reference": "Medication/nowhere"},
    {"reference": "Medication/nowhere/_history/2"},
    {"reference": "https://elsewhere.example/fhir/Medication/nowhere"},
    {"reference": "#missing"},
    {"reference": "Patient/not-a-medication"},
    {"reference": ""},
    {"reference": 42},
    {},
    "Medication/nowhere",
    None,
    [],
]


# Statuses under which a record still describes the patient (not ended, not entered in error).
TARGET_STATUSES = ["active", "on-hold", "ACTIVE", "", "unknown"]


@st.composite
def unreadable_medication(draw: st.DrawFn, rid: str, pool: list[dict[str, Any]]) -> dict[str, Any]:
    """A medication record cds/fhir/facts.py cannot name; uncodable Medications it points at go in `pool`."""
    medicine = draw(st.sampled_from([CLONAZEPAM, LAMOTRIGINE, KETAMINE]))
    dosages = draw(
        st.lists(st.one_of(st.just(dosage(dose=2, unit="mg", frequency=2)), garbage_dosage()), max_size=2)
    )
    if draw(st.booleans()):
        record = med_statement(
            medicine, dosages=dosages, rid=rid, status=draw(st.sampled_from(TARGET_STATUSES))
        )
    else:
        record = med_request(
            medicine, dosages=dosages, rid=rid, status=draw(st.sampled_from(TARGET_STATUSES))
        )
    how = draw(st.sampled_from(["concept", "no-medication", "reference", "contained", "uncoded-medication"]))
    if how == "concept":
        record["medicationCodeableConcept"] = draw(st.sampled_from(UNREADABLE_CONCEPTS))
        return record
    del record["medicationCodeableConcept"]
    if how == "reference":
        record["medicationReference"] = draw(st.sampled_from(UNRESOLVABLE_REFERENCES))
    elif how == "contained":
        code = draw(st.sampled_from(UNREADABLE_CONCEPTS))
        record["contained"] = [{"resourceType": "Medication", "id": "m1", **({"code": code} if code else {})}]
        record["medicationReference"] = {"reference": "#m1"}
    elif how == "uncoded-medication":
        code = draw(st.sampled_from(UNREADABLE_CONCEPTS))
        pool.append({"resourceType": "Medication", "id": f"{rid}-med", **({"code": code} if code else {})})
        record["medicationReference"] = {"reference": f"Medication/{rid}-med"}
    return record


@st.composite
def unreadable_condition(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    record = condition(
        MI,
        onset=draw(st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES)),
        clinical=draw(st.sampled_from(["active", "resolved", None])),
        verification=draw(st.sampled_from(["confirmed", "unconfirmed", "provisional", None])),
        rid=rid,
    )
    code = draw(st.sampled_from([*UNREADABLE_CONCEPTS, "drop"]))
    if code == "drop":
        del record["code"]
    else:
        record["code"] = code
    return record


@st.composite
def unreadable_allergy(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    record = allergy(KETAMINE_ALLERGY, rid=rid, clinical=draw(st.sampled_from(["active", "inactive", None])))
    code = draw(st.sampled_from([*UNREADABLE_CONCEPTS, "drop"]))
    if code == "drop":
        del record["code"]
    else:
        record["code"] = code
    if draw(st.booleans()):  # reactions that name no substance either
        record["reaction"] = draw(
            st.sampled_from(
                [
                    [{"manifestation": [{"text": "hives"}]}],
                    [{"substance": {}}],
                    [{"substance": {"coding": [{}]}}],
                ]
            )
        )
    return record


@st.composite
def unreadable_blood_pressure(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    record = blood_pressure(draw(st.floats(60, 250)), draw(st.floats(40, 150)), rid=rid)
    if draw(st.booleans()):  # no reading the screen can use
        bad = draw(
            st.sampled_from(
                [
                    None,
                    {},
                    {"value": "190"},
                    {"value": 0},
                    {"value": -5},
                    {"value": 1e9},
                    {"value": True},
                    {"unit": "mmHg"},
                ]
            )
        )
        for component in record["component"]:
            if bad is None:
                component.pop("valueQuantity")
            else:
                component["valueQuantity"] = bad
        if draw(st.booleans()):
            record["effectiveDateTime"] = draw(dates)
    else:  # a reading with no readable date
        record["effectiveDateTime"] = draw(st.sampled_from(IMPOSSIBLE_DATES))
        if draw(st.booleans()):
            record["issued"] = draw(st.sampled_from(IMPOSSIBLE_DATES))
    return record


READABLE_NOISE: list[Callable[[], tuple[str, dict[str, Any]]]] = [
    lambda: ("allergies", allergy(concept(coding(RXNORM, "7984", "Penicillin V")))),
    lambda: ("conditions", condition(PHARYNGITIS, onset="2026-11-01")),
    lambda: ("conditions", condition(STROKE, onset="2020-01-01")),
    lambda: ("medicationStatements", med_statement(SERTRALINE)),
    lambda: ("medicationRequests", med_request(SERTRALINE)),
    lambda: ("bloodPressure", blood_pressure(120, 80)),
]
SCREENS = {
    "patient-view": lambda: hook_request("patient-view"),
    "order-select ketamine": lambda: hook_request("order-select", drafts=[ketamine_order()]),
    "order-select esketamine": lambda: hook_request("order-select", drafts=[ketamine_order(esketamine=True)]),
    "order-sign": lambda: hook_request(
        "order-sign", drafts=[med_request(SERTRALINE, status="draft", rid="draft-other"), ketamine_order()]
    ),
}


@st.composite
def screens_with_unreadable_records(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """A full screen whose chart holds 1-3 records the service cannot read, among readable noise."""
    body = draw(st.sampled_from(list(SCREENS.values())))()
    patient_id, patient = _patient_identity(draw)
    body["context"]["patientId"] = patient_id
    body["prefetch"]["patient"] = patient
    pool: list[dict[str, Any]] = []
    targets: list[str] = []
    for index in range(draw(st.integers(1, 3))):
        rid = f"unreadable-{index}"
        kind = draw(
            st.sampled_from(
                ["medicationStatements", "medicationRequests", "conditions", "allergies", "bloodPressure"]
            )
        )
        if kind.startswith("medication"):
            record = draw(unreadable_medication(rid, pool))
            kind = (
                "medicationStatements"
                if record["resourceType"] == "MedicationStatement"
                else "medicationRequests"
            )
        elif kind == "conditions":
            record = draw(unreadable_condition(rid))
        elif kind == "allergies":
            record = draw(unreadable_allergy(rid))
        else:
            record = draw(unreadable_blood_pressure(rid))
        body["prefetch"][kind]["entry"].append({"resource": record})
        targets.append(f"{record['resourceType']}/{rid}")
    for make in draw(st.lists(st.sampled_from(READABLE_NOISE), max_size=3)):
        key, resource = make()
        body["prefetch"][key]["entry"].append({"resource": resource})
    for medication in pool:  # uncodable Medications ride along as _include entries, as an EHR sends them
        body["prefetch"]["medicationRequests"]["entry"].append(
            {"resource": medication, "search": {"mode": "include"}}
        )
    if draw(st.booleans()):
        entries = body["prefetch"]["medicationRequests"]["entry"]
        entries.append({"resource": draw(st.sampled_from(WRONG_TYPES))})
    return body, targets


def _cards_by_rule(client: FlaskClient, payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each finding as the screening page shows it, with the records behind it."""
    return findings_on_page(client, payload["cards"])


@FUZZ
@given(case=screens_with_unreadable_records())
def test_unreadable_records_are_never_an_all_clear(
    fuzz_client: FlaskClient, knowledge: Knowledge, case: tuple[dict[str, Any], list[str]]
) -> None:
    body, targets = case
    response = post_json(fuzz_client, f"/cds-services/{SERVICES[body['hook']]}", body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    payload = check(response, knowledge, hook_call=True)
    cards = _cards_by_rule(fuzz_client, payload)
    assert "unreadable-records" in cards, f"all clear for unreadable {targets}: {sorted(cards)}"
    card = cards["unreadable-records"]
    for reference in targets:
        assert reference in card["detail"], f"{reference} not listed on the unreadable-records card"
    count = int(card["summary"].split(" ", 1)[0])
    assert count >= len(targets)


UNCOMPUTABLE_DOSAGES: list[list[Any]] = [
    [],
    [{}],
    ["twice daily"],
    [{"text": "as directed"}],
    [dosage(dose=None)],
    [dosage(dose=100, unit="furlong")],
    [dosage(dose=100, unit="mg", frequency=None)],
    [
        {
            "doseAndRate": [{"doseQuantity": {"value": "NaN", "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        }
    ],
    [
        {
            "doseAndRate": [{"doseQuantity": {"value": 100, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "fortnight"}},
        }
    ],
    [
        {
            "doseAndRate": [{"doseQuantity": {"value": 100, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 1, "period": 0, "periodUnit": "d"}},
        }
    ],
]


@st.composite
def relevant_records_with_garbage_detail(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """A readable, relevant record whose dose or date cannot be read: its own rule must still speak."""
    body = draw(st.sampled_from([SCREENS["patient-view"], SCREENS["order-select ketamine"]]))()
    patient_id, patient = _patient_identity(draw)
    body["context"]["patientId"] = patient_id
    body["prefetch"]["patient"] = patient
    kind = draw(st.sampled_from(["benzodiazepine", "lamotrigine", "infarction"]))
    if kind == "infarction":
        # onset and recorded date both unreadable (or absent): the date-unknown band asks when it happened
        record = condition(MI, rid="target", clinical=draw(st.sampled_from(["active", None])))
        for key in ("onsetDateTime", "recordedDate"):
            value = draw(st.one_of(st.none(), st.sampled_from(IMPOSSIBLE_DATES)))
            if value is not None:
                record[key] = value
        body["prefetch"]["conditions"]["entry"].append({"resource": record})
        return body, "recent-myocardial-infarction", "Condition/target"
    if kind == "benzodiazepine":  # every band of the rule is a dose band: any dosage at all gets a card
        medicine, dosages = CLONAZEPAM, draw(st.lists(garbage_dosage(), max_size=3))
    else:  # below the threshold is silent by design, so only doses that cannot be computed
        medicine, dosages = LAMOTRIGINE, draw(st.sampled_from(UNCOMPUTABLE_DOSAGES))
    status = draw(st.sampled_from(["active", "on-hold", None]))
    if draw(st.booleans()):
        record = med_statement(medicine, dosages=dosages, rid="target", status=status or "active")
        record["dateAsserted"] = draw(st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES))
        key = "medicationStatements"
    else:
        record = med_request(medicine, dosages=dosages, rid="target", status=status or "active")
        record["authoredOn"] = draw(st.sampled_from(IMPOSSIBLE_DATES + PLAUSIBLE_DATES))
        key = "medicationRequests"
    if status is None:
        del record["status"]  # no status: counted (absence is not evidence that it ended)
    body["prefetch"][key]["entry"].append({"resource": record})
    rule = "benzodiazepine-response" if kind == "benzodiazepine" else "lamotrigine-response"
    return body, rule, f"{record['resourceType']}/target"


@FUZZ
@given(case=relevant_records_with_garbage_detail())
def test_relevant_record_with_garbage_dose_or_date_still_gets_its_rule(
    fuzz_client: FlaskClient, knowledge: Knowledge, case: tuple[dict[str, Any], str, str]
) -> None:
    body, rule, reference = case
    response = post_json(fuzz_client, f"/cds-services/{SERVICES[body['hook']]}", body)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = _cards_by_rule(fuzz_client, check(response, knowledge, hook_call=True))
    assert rule in cards, f"all clear for {reference}: {sorted(cards)}"
    assert reference in cards[rule]["detail"]


# ------------------------------------------------------------------------------- regressions


def _patient_view_with(key: str, resource: dict[str, Any]) -> dict[str, Any]:
    body = hook_request("patient-view")
    body["prefetch"][key]["entry"].append({"resource": resource})
    return body


@pytest.mark.parametrize(
    "medication",
    [{"coding": [{}]}, {"coding": [{"system": RXNORM}]}, {"coding": [{"code": "", "display": ""}]}],
    ids=["empty-coding", "system-only", "blank-code-and-display"],
)
def test_regression_a_coding_with_no_code_or_name_is_unreadable(
    fuzz_client: FlaskClient, knowledge: Knowledge, medication: dict[str, Any]
) -> None:
    """Found by the fuzzer: codings with neither code nor display counted as a name, so the record
    was neither matched by any rule nor reported: an empty card list for a medicine nobody could read."""
    record = med_statement(KETAMINE, rid="nameless")
    record["medicationCodeableConcept"] = medication
    response = post_json(
        fuzz_client, "/cds-services/ketamine-patient-view", _patient_view_with("medicationStatements", record)
    )
    cards = _cards_by_rule(fuzz_client, check(response, knowledge, hook_call=True))
    assert "MedicationStatement/nameless" in cards["unreadable-records"]["detail"]
    nameless_condition = condition({"coding": [{"system": SNOMED}]}, rid="nameless")
    response = post_json(
        fuzz_client,
        "/cds-services/ketamine-patient-view",
        _patient_view_with("conditions", nameless_condition),
    )
    cards = _cards_by_rule(fuzz_client, check(response, knowledge, hook_call=True))
    assert "Condition/nameless" in cards["unreadable-records"]["detail"]


def test_regression_a_five_digit_year_is_not_a_date(fuzz_client: FlaskClient, knowledge: Knowledge) -> None:
    """Found by the fuzzer: "99999-01-01" was read as 9999-12-31, so a blood pressure dated so became the
    "latest" reading (hiding a real high one) instead of a record whose date could not be read."""
    high = blood_pressure(200, 125, taken="2026-11-20T09:00:00Z", rid="high")
    odd = blood_pressure(120, 80, rid="odd")
    odd["effectiveDateTime"] = "99999-01-01"
    body = hook_request("patient-view", observations=[high, odd])
    cards = _cards_by_rule(
        fuzz_client,
        check(post_json(fuzz_client, "/cds-services/ketamine-patient-view", body), knowledge, hook_call=True),
    )
    assert "Observation/odd" in cards["unreadable-records"]["detail"]
    assert "Observation/high" in cards["elevated-blood-pressure"]["detail"]


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-02-30T12:00:00Z",
        "2026-11-22T25:00:00Z",
        "2026-11-22T12:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",
    ],
)
def test_regression_impossible_feedback_timestamp_is_400(fuzz_client: FlaskClient, timestamp: str) -> None:
    """Found by the fuzzer: a timestamp that matches the schema's pattern but is not a real instant
    (or lies outside what a datetime can hold in UTC) was a 500."""
    body = {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": timestamp}]}
    response = post_json(fuzz_client, "/cds-services/ketamine-patient-view/feedback", body)
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["$.feedback[0].outcomeTimestamp"]
    assert timestamp not in response.get_data(as_text=True)


# ------------------------------------------------------------------- 7. ten thousand mutated requests

# Hypothesis explores the shapes above a hundred examples at a time through Flask. This campaign sends
# 10,000 requests, each a valid request with 1-4 random structural mutations (ids of the wrong type among
# them: a list or object as a resource `id` once crashed the conformance check), through the same steps
# as the HTTP edge without the web framework: check the parsed body (cds.web.validation.check_json_object),
# check it fits the service (check_hook_call), screen it, and check the answer. Derandomised: the seed is
# recorded here (KETAMINE_CDS_FUZZ_SEED replaces it for a fresh campaign, KETAMINE_CDS_FUZZ_REQUESTS sets
# the count), and a failure names the request number, so it can be replayed.
BULK_SEED = int(os.environ.get("KETAMINE_CDS_FUZZ_SEED", "20261122"))
BULK_REQUESTS = int(os.environ.get("KETAMINE_CDS_FUZZ_REQUESTS", "10000"))
BULK_CARD_UUID = "00000000-0000-4000-8000-000000000000"
ODD_IDS: list[Any] = [
    [],
    ["ms-1"],
    [{"id": "x"}],
    {},
    {"value": "ms-1"},
    7,
    -1,
    1.5,
    True,
    None,
    "",
    " ",
    "x" * 300,
]
ODD_LEAVES: list[Any] = [
    *[None, True, False, 0, -1, 10**20, 1.5, math.nan, math.inf, "", " ", "x", "NaN", "2026-02-30"],
    *["99999-01-01", "12 mg", "Patient/", "MedicationRequest/", [], {}],
]
MUTATIONS = ("delete", "replace", "wrap", "nan", "extra", "deep", "odd-id", "retype", "stringify")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.6:
        return copy.deepcopy(rng.choice(ODD_LEAVES))  # a copy: a shared [] or {} could be grown into a cycle
    if roll < 0.8:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["id", "code", "system", "value", "reference", "resourceType", "a"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _node(body: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        body = body[part]
    return body


def _resource_paths(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where the prefetch's and the draft orders' resources are (a fixed depth: no walk over the chart)."""
    bundles: list[tuple[Any, ...]] = []
    prefetch = body.get("prefetch")
    if isinstance(prefetch, dict):
        bundles = [("prefetch", key) for key, value in prefetch.items() if isinstance(value, dict)]
    context = body.get("context")
    if isinstance(context, dict) and isinstance(context.get("draftOrders"), dict):
        bundles.append(("context", "draftOrders"))
    found = []
    for bundle in bundles:
        entries = _node(body, bundle).get("entry")
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                found.append((*bundle, "entry", index, "resource"))
    return found


def _random_path(rng: random.Random, body: dict[str, Any], start: tuple[Any, ...]) -> tuple[Any, ...]:
    """A random walk down from `start`: cheaper than listing every path of a large chart, and reaches deep."""
    path = list(start)
    node: Any = _node(body, start)
    while True:
        if isinstance(node, dict):
            children = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            children = []
        if not children or rng.random() < (0.05 if not path else 0.3):
            return tuple(path)
        key, node = rng.choice(children)
        path.append(key)


def _mutate(rng: random.Random, seed: str) -> tuple[dict[str, Any], bool]:
    """A mutated copy of a seed request (JSON text), and whether a resource now has a list or object id."""
    body: dict[str, Any] = json.loads(seed)
    nested_once = odd_id = False
    for _ in range(rng.randint(1, 4)):
        action = rng.choice(MUTATIONS)
        resources = _resource_paths(body)
        if action == "odd-id":
            if resources:
                odd = copy.deepcopy(rng.choice(ODD_IDS))
                _node(body, rng.choice(resources))["id"] = odd
                odd_id = odd_id or isinstance(odd, (list, dict))
            continue
        if action == "deep":
            if nested_once:  # one deep nest per request: a nest inside a nest says nothing new
                continue
            nested_once = True
        # Mostly inside a resource, where the schema lets almost anything through to the screen.
        start = rng.choice(resources) if resources and rng.random() < 0.75 else ()
        path = _random_path(rng, body, start)
        if not path:
            body[rng.choice(["extension", "x", "prefetch2"])] = _random_json(rng)
            continue
        parent, last = _node(body, path[:-1]), path[-1]
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = _random_json(rng)
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif action == "nan":
            parent[last] = rng.choice([math.nan, math.inf, -math.inf, "NaN", "Infinity"])
        elif action == "extra" and isinstance(parent[last], dict):
            parent[last][rng.choice(["extension", "id", "status", "x"])] = _random_json(rng)
        elif action == "deep":
            parent[last] = nested(rng.randint(1, 70), parent[last], rng.random() < 0.5)
        elif action == "retype" and isinstance(parent[last], dict) and "resourceType" in parent[last]:
            parent[last]["resourceType"] = rng.choice(["Patient", "Condition", "Medication", "Bundle", ""])
        elif action == "stringify":
            parent[last] = json.dumps(parent[last])
    return body, odd_id


def _answer(runtime: Any, screener: Screener, body: dict[str, Any], service_id: str) -> tuple[int, Any]:
    """What the service answers, by the edge's own steps short of Flask: (status, cards or outcome)."""
    try:
        # The body is already what json.loads gives (the seeds are parsed JSON text, the mutations JSON
        # values, NaN included as Python's parser reads a bare NaN): parsing is the hypothesis tests' part.
        service = runtime.knowledge.services[service_id]
        parsed = check_json_object(body, runtime.knowledge.request_validator, runtime.settings)
        check_hook_call(service, parsed, runtime.settings)
        return 200, screener.screen(service, parsed).cards
    except ClientError as exc:
        return exc.status, operation_outcome(exc.issues)


def test_ten_thousand_mutated_requests_never_give_a_server_error(
    fuzz_app: Flask, knowledge: Knowledge
) -> None:
    runtime = fuzz_app.extensions["ketamine_cds"]
    # One uuid for every card: identical answers are then identical text, and each is validated once.
    screener = replace(runtime.screener(None), new_uuid=lambda: BULK_CARD_UUID)
    seeds = [json.dumps(seed) for seed in SEEDS]
    rng = random.Random(BULK_SEED)
    statuses: dict[int, int] = {}
    validated: set[str] = set()
    odd_ids = 0
    for number in range(BULK_REQUESTS):
        body, odd_id = _mutate(rng, rng.choice(seeds))
        odd_ids += odd_id
        hook = body.get("hook")
        service = (
            SERVICES.get(hook, SERVICES["order-select"])
            if isinstance(hook, str)
            else SERVICES["patient-view"]
        )
        where = f"request {number} (seed {BULK_SEED})"
        try:
            status, payload = _answer(runtime, screener, body, service)
            text = json.dumps({"cards": payload} if status == 200 else payload, allow_nan=False)
        except Exception as exc:  # anything but a ClientError is what the edge answers with a 500
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
        statuses[status] = statuses.get(status, 0) + 1
        if text in validated:
            continue
        if status == 200:
            assert_valid_response(knowledge, json.loads(text))
        else:
            assert payload["resourceType"] == "OperationOutcome", where
            assert payload["issue"], where
        validated.add(text)
    assert sum(statuses.values()) == BULK_REQUESTS
    assert all(status < 500 for status in statuses), statuses
    # The campaign is worth its time only if it reaches the screen often and exercises the bad ids.
    assert statuses.get(200, 0) > BULK_REQUESTS // 3, statuses
    assert odd_ids > BULK_REQUESTS // 20, odd_ids


def test_a_resource_id_that_is_a_list_or_object_is_not_a_crash(
    fuzz_client: FlaskClient, knowledge: Knowledge
) -> None:
    """Regression: `cited_resources` indexed resources by id, and a list or object id raised TypeError."""
    for odd in ([], ["c-1"], {"a": 1}, {}):
        body = hook_request(
            "order-select", drafts=[ketamine_order()], conditions=[condition(MI, onset="2026-09-01")]
        )
        odd_record = {**condition(MI, onset="2026-10-01"), "id": odd}
        body["prefetch"]["conditions"]["entry"].append({"resource": odd_record})
        response = post_json(fuzz_client, "/cds-services/ketamine-order-select", body)
        payload = check(response, knowledge, hook_call=True)
        assert response.status_code == 200, odd
        assert "recent-myocardial-infarction" in {
            card["source"]["topic"]["code"] for card in payload["cards"]
        }


def test_a_draft_order_whose_id_is_not_a_fhir_id_gets_no_delete_suggestion(
    fuzz_client: FlaskClient, knowledge: Knowledge
) -> None:
    """Found by the campaign above: an order id of ' ' made the suggestion's resourceId invalid."""
    order = {**ketamine_order(), "id": " "}
    body = hook_request("order-sign", drafts=[order], allergies=[allergy(KETAMINE_ALLERGY)])
    response = post_json(fuzz_client, "/cds-services/ketamine-order-sign", body)
    payload = check(response, knowledge, hook_call=True)
    critical = [card for card in payload["cards"] if card["indicator"] == "critical"]
    assert critical
    assert all("suggestions" not in card for card in critical)
