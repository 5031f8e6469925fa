"""End to end against a real FHIR server: the nine Synthea patients screened through the HTTP API with no
(or only part of a) prefetch, so the service fetches the chart from `fhirServer` itself.

The session's `fhir_server` (sekmet, loaded from tests/data/fhir-test-data) plays the EHR's FHIR server:
each request names it in `fhirServer` with its bearer token, and the dev-mode app (plain http allowed,
clock pinned to 2026-11-22) fetches whatever the prefetch lacks.

Every expectation is worked out here from the patient's own bundle (`Chart`), the project's published
ValueSets (fhir_profiles/valuesets) and rule files (rules/*.yaml), never from the screening code: which
cards, at which band, citing exactly which records, with which dates and totals.
"""

from __future__ import annotations

import calendar
import functools
import json
import logging
import re
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from flask.testing import FlaskClient

from cds.clinical.knowledge import Knowledge
from tests.support.builders import ketamine_order
from tests.support.cards import findings_carried, stored_screen, views_from_record
from tests.support.constants import NOW
from tests.support.fhir_server import DATA_DIR, FhirServerHandle
from tests.support.logs import SENSITIVE
from tests.support.responses import assert_valid_response

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
VALUESETS = ROOT / "fhir_profiles" / "valuesets"
RULES = ROOT / "rules"
PATIENT_VIEW = "ketamine-patient-view"
ORDER_SELECT = "ketamine-order-select"
USER = "Practitioner/e2e-prescriber"
TODAY = NOW.date()

# What a full screen reads (the prefetch keys of hooks/*.json except the Patient itself, which the rules
# need only for an onset given as an age; these bundles date every condition).
SCREEN_KEYS = ("medicationStatements", "medicationRequests", "conditions", "allergies", "bloodPressure")
PREFETCH_TYPES = {
    "medicationStatements": "MedicationStatement",
    "medicationRequests": "MedicationRequest",
    "conditions": "Condition",
    "allergies": "AllergyIntolerance",
    "bloodPressure": "Observation",
}

# Which records count (fhir_profiles/tables/status-semantics.json says the same).
COUNTING_STATEMENT = {"active", "intended", "on-hold"}
COUNTING_REQUEST = {"active", "on-hold", "draft"}
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
NOT_A_RECORD = {"refuted", "entered-in-error"}

NINE = (
    "Devora_Orn",
    "Eddie_Schultz",
    "Elli_Quitzon",
    "Jaime_Homenick",
    "Jonathon_Sauer",
    "Kieth_Wilkinson",
    "Ludie_Schultz",
    "Rosario_Schimmel",
    "Yvone_Emmerich",
)


# ---------------------------------------------------------------------- the patients' own data


@dataclass(frozen=True)
class Chart:
    """One test patient, read straight from their two bundles (trimmed Synthea + derived statements)."""

    name: str
    resources: tuple[dict[str, Any], ...]

    @property
    def patient(self) -> dict[str, Any]:
        return next(r for r in self.resources if r["resourceType"] == "Patient")

    @property
    def id(self) -> str:
        return str(self.patient["id"])

    def of(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["resourceType"] == resource_type]

    def full_prefetch(self) -> dict[str, Any]:
        prefetch: dict[str, Any] = {"patient": self.patient}
        prefetch.update({key: searchset(self.of(rtype)) for key, rtype in PREFETCH_TYPES.items()})
        return prefetch

    def code_records(self, code: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if code in {c.get("code") for c in codings(concept_of(r))}]


@functools.cache
def chart(name: str) -> Chart:
    (trimmed,) = DATA_DIR.glob(f"{name}_*.trimmed.json")
    statements = trimmed.with_name(trimmed.name.replace(".trimmed.", ".medicationstatements."))
    entries = [*read_json(trimmed)["entry"], *read_json(statements)["entry"]]
    return Chart(name, tuple(entry["resource"] for entry in entries))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def ref(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def concept_of(resource: dict[str, Any]) -> dict[str, Any]:
    for key in ("medicationCodeableConcept", "code"):
        if isinstance(resource.get(key), dict):
            return dict(resource[key])
    return {}


def codings(concept: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in concept.get("coding", []) if isinstance(c, dict)]


def status_code(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    return next((c["code"] for c in codings(value or {}) if c.get("code")), None)


def day(value: Any) -> date | None:
    return date.fromisoformat(value[:10]) if isinstance(value, str) else None


def condition_date(condition: dict[str, Any]) -> date | None:
    """Onset, else the recorded date."""
    return day(condition.get("onsetDateTime")) or day(condition.get("recordedDate"))


def months_back(reference: date, months: int) -> date:
    """`months` calendar months before `reference`, the day clipped to the month's length."""
    year, month0 = divmod(reference.year * 12 + reference.month - 1 - months, 12)
    month = month0 + 1
    return date(year, month, min(reference.day, calendar.monthrange(year, month)[1]))


def whole_months(earlier: date, later: date) -> int:
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    return months - 1 if later.day < earlier.day else months


# ---------------------------------------------------------------------- the project's value sets and rules


@dataclass(frozen=True)
class ValueSetContent:
    codes: frozenset[tuple[str, str]]
    names: tuple[str, ...]  # ingredient and brand names a medication set also matches in record text


@functools.cache
def valueset(name: str) -> ValueSetContent:
    data = read_json(VALUESETS / f"{name}.json")
    codes = {(c["system"], c["code"]) for c in data.get("expansion", {}).get("contains", [])}
    for include in data.get("compose", {}).get("include", []):  # a names-only set has no compose
        codes |= {(include["system"], c["code"]) for c in include.get("concept", [])}
    names = tuple(
        ext["valueString"].lower()
        for ext in data.get("extension", [])
        if ext["url"].endswith(("/match-ingredient", "/match-brand"))
    )
    return ValueSetContent(frozenset(codes), names)


def in_valueset(name: str, concept: dict[str, Any]) -> bool:
    """A coding in the set, or (medication sets) one of its ingredient or brand names as a whole word."""
    content = valueset(name)
    if any((c.get("system"), c.get("code")) in content.codes for c in codings(concept)):
        return True
    texts = [t for t in [concept.get("text"), *(c.get("display") for c in codings(concept))] if t]
    return any(re.search(rf"\b{re.escape(n)}\b", t, re.IGNORECASE) for n in content.names for t in texts)


@functools.cache
def rules() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(RULES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "bands" in data:
            out[data["id"]] = data
    return out


def band(rule_id: str, band_id: str) -> dict[str, Any]:
    return next(b for b in rules()[rule_id]["bands"] if b["id"] == band_id)


def vs_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------- what the data implies


@dataclass(frozen=True)
class Expected:
    band: str
    evidence: frozenset[str]  # "Type/id" of every record the card must cite, and no other


def counts_as_record(condition: dict[str, Any]) -> bool:
    return status_code(condition.get("verificationStatus")) not in NOT_A_RECORD


def is_active(condition: dict[str, Any]) -> bool:
    status = status_code(condition.get("clinicalStatus"))
    return status is None or status in ACTIVE_CONDITION


def conditions_in(c: Chart, *names: str, active_only: bool = False) -> list[dict[str, Any]]:
    return [
        r
        for r in c.of("Condition")
        if counts_as_record(r)
        and (is_active(r) or not active_only)
        and any(in_valueset(n, r["code"]) for n in names)
    ]


def counted_medications(c: Chart) -> list[dict[str, Any]]:
    statements = [r for r in c.of("MedicationStatement") if r.get("status") in COUNTING_STATEMENT]
    orders = [r for r in c.of("MedicationRequest") if r.get("status") in COUNTING_REQUEST]
    return statements + orders


def banded(*bands: tuple[str, list[dict[str, Any]]]) -> Expected | None:
    """Records claimed band by band, in rule order (a record counts for the first band it meets)."""
    claimed: list[dict[str, Any]] = []
    first: str | None = None
    for band_id, records in bands:
        fresh = [r for r in records if all(r is not seen for seen in claimed)]
        if fresh and first is None:
            first = band_id
        claimed += fresh
    return Expected(first, frozenset(ref(r) for r in claimed)) if first else None


def default(rule_id: str, parameter: str) -> Any:
    return rules()[rule_id]["parameters"][parameter]["default"]


def within(months: int, reference: date, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if (d := condition_date(r)) and d >= months_back(reference, months)]


def undated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if condition_date(r) is None]


def expect_myocardial_infarction(c: Chart, reference: date) -> Expected | None:
    rule = "recent-myocardial-infarction"
    acute = conditions_in(c, "mi-acute")
    history = conditions_in(c, "mi-history")
    # critical (6 months) beats the three warning bands, which tie (the first listed wins); a record of a
    # past infarction dates the record, not the infarction, so it has a band of its own
    return banded(
        ("within-contraindication-window", within(default(rule, "critical_months"), reference, acute)),
        ("history-recorded-recently", within(default(rule, "review_months"), reference, history)),
        ("within-review-window", within(default(rule, "review_months"), reference, acute)),
        ("date-unknown", undated(acute + history)),
    )


def expect_stroke(c: Chart, reference: date, products: set[str]) -> Expected | None:
    strokes = conditions_in(c, "stroke")
    recent = within(default("recent-stroke", "critical_months"), reference, strokes)
    haemorrhage = conditions_in(c, "intracerebral-hemorrhage") if "esketamine" in products else []
    months = default("recent-stroke", "critical_months")
    return banded(
        ("within-contraindication-window", recent),
        ("intracerebral-haemorrhage-esketamine", haemorrhage),
        ("date-unknown", undated(strokes)),
        ("recent-tia", within(months, reference, conditions_in(c, "transient-ischaemic-attack"))),
        (
            "recent-stroke-record",
            within(months, reference, conditions_in(c, "stroke-sequelae", "stroke-history-tia")),
        ),
        (
            "older-stroke-or-tia",
            conditions_in(c, "stroke", "stroke-history-tia", "transient-ischaemic-attack", "stroke-sequelae"),
        ),
    )


def expect_on_record(c: Chart, valueset_name: str) -> Expected | None:
    return banded(("on-record", conditions_in(c, valueset_name, active_only=True)))


def expect_pregnancy(c: Chart, reference: date) -> Expected | None:
    pregnancies = conditions_in(c, "pregnancy", active_only=True)
    return banded(
        ("current", within(default("pregnancy", "window_months"), reference, pregnancies)),
        ("undated", undated(pregnancies)),
    )


def expect_substance_use(c: Chart) -> Expected | None:
    return banded(
        ("ketamine-use-disorder", conditions_in(c, "ketamine-use-disorder")),
        ("other-substance-use", conditions_in(c, "substance-use-disorder")),
    )


def dose_records(c: Chart, valueset_name: str) -> list[dict[str, Any]]:
    """Every counted record of the class. A statement derived from an order that is present is the same
    therapy: it is not counted again, but the card lists it and says so."""
    return [r for r in counted_medications(c) if in_valueset(valueset_name, concept_of(r))]


def dosage_of(record: dict[str, Any]) -> list[Any]:
    return list(record.get("dosageInstruction") or record.get("dosage") or [])


def expect_dose_rule(c: Chart, valueset_name: str, indication: str | None = None) -> Expected | None:
    """Charts carry no dosage on these records, so the dose cannot be computed; with the rule's
    indication on record (a seizure disorder for benzodiazepines) the antiepileptic band says so
    and cites the condition too."""
    records = dose_records(c, valueset_name)
    if not records:
        return None
    assert not any(dosage_of(r) for r in records), (
        f"{c.name}: a {valueset_name} record carries a dosage; work its total out by hand in its own test"
    )
    reasons = conditions_in(c, indication, active_only=True) if indication else []
    if reasons:
        return Expected("antiepileptic-dose-unknown", frozenset(ref(r) for r in records + reasons))
    return Expected("dose-not-computable", frozenset(ref(r) for r in records))


def expect_cns_depressants(c: Chart, reference: date, products: set[str]) -> Expected | None:
    """Opioids and barbiturates (warning) or other sedating medicines (information), for esketamine only.
    A statement derived from an order that is present is that order; a record whose effective period
    ended before the reference date is past use."""
    if "esketamine" not in products:
        return None

    def current(record: dict[str, Any]) -> bool:
        period = record.get("effectivePeriod") or {}
        end = date.fromisoformat(period["end"][:10]) if period.get("end") else None
        return end is None or end >= reference

    def records(*names: str) -> list[dict[str, Any]]:
        found = [
            r
            for r in counted_medications(c)
            if current(r) and any(in_valueset(n, concept_of(r)) for n in names)
        ]
        present = {ref(r) for r in found}
        return [
            r
            for r in found
            if not any(d.get("reference") in present for d in r.get("derivedFrom", []))
            or r["resourceType"] != "MedicationStatement"
        ]

    return banded(
        ("opioid-or-barbiturate", records("opioid-medications", "barbiturate-medications")),
        (
            "other-sedating-medicine",
            records("z-drug-medications", "gabapentinoid-medications", "sedating-antihistamine-medications"),
        ),
    )


MODELLED = {
    "esketamine-cns-depressants",
    "recent-myocardial-infarction",
    "recent-stroke",
    "bipolar-disorder",
    "seizure-disorder",
    "substance-use-disorder",
    "unstable-cardiac-disease",
    "pregnancy",
    "benzodiazepine-response",
    "lamotrigine-response",
    "ordering-instructions",
}


def expected_cards(
    c: Chart, reference: date, products: set[str], order: dict[str, Any] | None = None
) -> dict[str, Expected]:
    found = {
        "recent-myocardial-infarction": expect_myocardial_infarction(c, reference),
        "recent-stroke": expect_stroke(c, reference, products),
        "bipolar-disorder": expect_on_record(c, "bipolar-disorder"),
        "seizure-disorder": expect_on_record(c, "seizure-disorder"),
        "substance-use-disorder": expect_substance_use(c),
        "unstable-cardiac-disease": expect_on_record(c, "unstable-cardiac"),
        "pregnancy": expect_pregnancy(c, reference),
        "benzodiazepine-response": expect_dose_rule(c, "benzodiazepine-medications", "seizure-disorder"),
        "lamotrigine-response": expect_dose_rule(c, "lamotrigine-medications"),
        "esketamine-cns-depressants": expect_cns_depressants(c, reference, products),
        "ordering-instructions": Expected("ketamine", frozenset({ref(order)})) if order else None,
    }
    assert_other_rules_have_nothing_to_find(c)
    return {rule: expected for rule, expected in found.items() if expected is not None}


def assert_other_rules_have_nothing_to_find(c: Chart) -> None:
    """Every rule not modelled above stays silent because nothing in the chart, in any status, is in its
    value sets; the bundles hold no Observations (no blood-pressure reading) and no uncoded record."""
    assert not c.of("Observation")
    records = c.of("Condition") + c.of("MedicationRequest") + c.of("MedicationStatement")
    for record in records + c.of("AllergyIntolerance"):
        concept = concept_of(record)
        assert codings(concept) or concept.get("text"), f"{ref(record)} is not coded"
    for rule_id, rule in rules().items():
        if rule_id in MODELLED:
            continue
        for rule_band in rule["bands"]:
            for url in rule_band.get("match", []):
                hits = [ref(r) for r in records if in_valueset(vs_name(url), concept_of(r))]
                hits += [
                    ref(a)
                    for a in c.of("AllergyIntolerance")
                    if in_valueset(vs_name(url), a["code"])
                    or any(in_valueset(vs_name(url), x.get("substance", {})) for x in a.get("reaction", []))
                ]
                assert not hits, f"{c.name}: {rule_id} would see {hits}: model that rule in this test"


# ---------------------------------------------------------------------- reading the cards


RECORD_TYPES = "Condition|MedicationRequest|MedicationStatement|AllergyIntolerance|Observation"
CITED = re.compile(rf"^- ((?:{RECORD_TYPES})/[A-Za-z0-9\-.]+):", re.MULTILINE)


def cited(card: dict[str, Any]) -> frozenset[str]:
    return frozenset(CITED.findall(card["detail"]))


def by_rule(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every finding of the response, read from its screening page (the cards carry the decision; the
    records behind each finding are on the page): rule id -> indicator, summary and an evidence trail
    with one "- Type/id: ..." line per record."""
    carried = findings_carried(payload["cards"])
    assert len(carried) == len(dict(carried)), "one card per problem"
    found = views_from_record(payload.get("screen", {}))
    assert {rule: f["indicator"] for rule, f in found.items()} == dict(carried)
    return found


def summary_matches(template: str, summary: str) -> bool:
    template = " ".join(template.split())
    if summary.endswith("…"):  # cut at 139 characters
        literal = template.split("$", 1)[0]
        return summary.startswith(literal[: len(summary) - 1])
    parts = re.split(r"\$(\w+)", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else ".+?" for i, p in enumerate(parts))
    return re.fullmatch(pattern, summary) is not None


def assert_cards(payload: dict[str, Any], expected: dict[str, Expected], where: str) -> None:
    cards = by_rule(payload)
    assert set(cards) == set(expected), (
        f"{where}: cards {sorted(cards)} but the data implies {sorted(expected)}"
    )
    for rule_id, want in expected.items():
        card, spec = cards[rule_id], band(rule_id, want.band)
        assert summary_matches(spec["summary"], card["summary"]), (where, rule_id, want.band, card["summary"])
        indicator = spec["indicator"]
        if isinstance(indicator, dict):  # a site-policy parameter: its default
            indicator = rules()[rule_id]["parameters"][indicator["param"]]["default"]
        assert card["indicator"] == indicator, (where, rule_id)
        assert cited(card) == want.evidence, (
            f"{where} {rule_id}: cites {sorted(cited(card) - want.evidence)} it should not, "
            f"misses {sorted(want.evidence - cited(card))}"
        )


def findings(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(findings_carried(payload["cards"]))


def without_uuids(value: Any) -> Any:
    """The response without what differs on every call: card and suggestion uuids, the screening page's
    own address (a fresh id and token per call) and its note of which data was fetched."""
    if isinstance(value, dict):
        return {
            k: "(screening page)" if k == "url" and "/screens/" in str(v) else without_uuids(v)
            for k, v in value.items()
            if k not in {"uuid", "completeness"}
        }
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


# ---------------------------------------------------------------------- calling the service


class RecordingSession(requests.Session):
    """The session the app uses for FHIR calls, remembering each request's URL and Authorization."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.sent: list[tuple[str, str | None]] = []
        self.seconds: list[float] = []  # per request, until the headers arrived

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append((str(request.url), request.headers.get("Authorization")))
        response = super().send(request, **kwargs)
        self.seconds.append(response.elapsed.total_seconds())
        return response


@dataclass
class Api:
    client: FlaskClient
    knowledge: Knowledge
    fhir: RecordingSession
    caplog: pytest.LogCaptureFixture

    def post(self, service: str, body: dict[str, Any], *, expect: int = 200) -> tuple[Any, tuple[str, ...]]:
        """(response JSON, prefetch keys fetched from the FHIR server as the audit line reports them)."""
        self.caplog.clear()
        response = self.client.post(f"/cds-services/{service}", json=body)
        assert response.status_code == expect, response.get_data(as_text=True)[:3000]
        payload = response.get_json()
        if expect == 200:
            assert_valid_response(self.knowledge, payload)
        else:
            assert payload["resourceType"] == "OperationOutcome"
        (audit,) = [
            r for r in self.caplog.records if r.name == "cds.audit" and r.fields["event"] == "service-call"
        ]
        if expect == 200 and payload["cards"]:
            payload["screen"] = self.screen(payload["cards"])
        return payload, tuple(audit.fields["fetched"])

    def screen(self, cards: list[dict[str, Any]]) -> dict[str, Any]:
        """The stored screen behind the cards (what their screening page shows)."""
        return stored_screen(self.client, cards)


@pytest.fixture
def make_api(
    make_app: Callable[..., Any], knowledge: Knowledge, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> Iterator[Callable[..., Api]]:
    made: list[tuple[Any, RecordingSession]] = []
    # The Synthea patients are in no ketamine course: screen every chart, as a dedicated clinic would.
    every_chart = tmp_path / "every-chart.yaml"
    every_chart.write_text("patient_view_scope: all\n", encoding="utf-8")

    def factory(**overrides: Any) -> Api:
        app = make_app(**{"policy_file": str(every_chart), **overrides})
        fhir = RecordingSession()
        app.extensions["ketamine_cds"]._local.session = fhir  # the request thread's FHIR session
        made.append((app, fhir))
        return Api(app.test_client(), knowledge, fhir, caplog)

    caplog.set_level(logging.INFO, logger="cds.audit")
    yield factory
    for app, fhir in made:
        app.extensions["ketamine_cds"].flush()
        fhir.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@pytest.fixture
def server(fhir_server: FhirServerHandle) -> FhirServerHandle:
    SENSITIVE.add(fhir_server.token)  # the log-hygiene check looks for it in every log line
    return fhir_server


def authorization(token: str) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read"}


def request_body(
    hook: str,
    c: Chart,
    *,
    fhir_server: str | None,
    token: str | None,
    prefetch: dict[str, Any] | None = None,
    order: dict[str, Any] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": USER, "patientId": c.id}
    if hook == "order-select":
        assert order is not None
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order}],
        }
        context["selections"] = [ref(order)]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = authorization(token)
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def ketamine_draft(c: Chart, start: date | None = None) -> dict[str, Any]:
    order = ketamine_order(rid="e2e-ketamine-draft", start=start.isoformat() if start else None)
    order["subject"] = {"reference": f"Patient/{c.id}"}
    return order


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/fhir"  # nothing listens there once the socket is closed


# ---------------------------------------------------------------------- the data says what it says


def test_the_bundles_hold_what_the_tests_rely_on() -> None:
    """The facts the brief names, read from the bundles: if the data changes, this says how."""
    for name in ("Jaime_Homenick", "Eddie_Schultz"):
        c = chart(name)
        assert expect_on_record(c, "bipolar-disorder") is not None
        for code in ("198427", "312743", "197890"):  # lamotrigine 100 mg, quetiapine, lithium
            assert any(r.get("status") == "active" for r in c.code_records(code)), (name, code)
    for name in ("Yvone_Emmerich", "Elli_Quitzon"):
        c = chart(name)
        assert c.code_records("197591")
        assert c.code_records("204892")
        assert expect_on_record(c, "seizure-disorder") is not None
    for name in ("Kieth_Wilkinson", "Ludie_Schultz"):
        c = chart(name)
        assert c.code_records("22298006")
        assert c.code_records("399211009")
    assert chart("Rosario_Schimmel").code_records("230690007")  # cerebrovascular accident
    # the codes are where the rules look for them
    assert in_valueset("mi-acute", {"coding": [{"system": "http://snomed.info/sct", "code": "22298006"}]})
    assert in_valueset("mi-history", {"coding": [{"system": "http://snomed.info/sct", "code": "399211009"}]})
    assert in_valueset("stroke", {"coding": [{"system": "http://snomed.info/sct", "code": "230690007"}]})


# ---------------------------------------------------------------------- patient-view, no prefetch at all


@pytest.mark.parametrize("name", NINE)
def test_patient_view_fetches_the_chart_and_finds_what_the_data_implies(
    name: str, api: Api, server: FhirServerHandle
) -> None:
    c = chart(name)
    body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
    payload, fetched = api.post(PATIENT_VIEW, body)

    assert set(fetched) == set(SCREEN_KEYS)
    assert api.fhir.sent, "nothing was fetched"
    assert all(url.startswith(server.base_url + "/") for url, _ in api.fhir.sent)
    assert all(auth == f"Bearer {server.token}" for _, auth in api.fhir.sent)
    # the chart names neither treatment, so the screen covers both (site policy `treatments`)
    expected = expected_cards(c, TODAY, {"ketamine", "esketamine"})
    assert_cards(payload, expected, name)
    # ... and a full prefetch built from the same bundle gives the very same cards
    full, fetched_full = api.post(
        PATIENT_VIEW,
        request_body("patient-view", c, fhir_server=None, token=None, prefetch=c.full_prefetch()),
    )
    assert fetched_full == ()
    assert without_uuids(full) == without_uuids(payload)


def test_bipolar_patients_lamotrigine_only_as_the_data_allows_and_never_lithium(
    api: Api, server: FhirServerHandle
) -> None:
    for name in ("Jaime_Homenick", "Eddie_Schultz"):
        c = chart(name)
        body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
        cards = by_rule(api.post(PATIENT_VIEW, body)[0])

        active_bipolar = conditions_in(c, "bipolar-disorder", active_only=True)
        assert active_bipolar
        assert "bipolar-disorder" in cards
        assert cards["bipolar-disorder"]["indicator"] == "info"
        # lamotrigine 100 mg tablets with no dosage anywhere: no computed dose, so never "above 100 mg/day",
        # but the card says the dose could not be worked out (never silence, never an assumed dose)
        lamotrigine = dose_records(c, "lamotrigine-medications")
        assert lamotrigine
        assert not any(dosage_of(r) for r in lamotrigine)
        card = cards["lamotrigine-response"]
        assert summary_matches(
            band("lamotrigine-response", "dose-not-computable")["summary"], card["summary"]
        )
        assert not summary_matches(
            band("lamotrigine-response", "above-threshold")["summary"], card["summary"]
        )
        # lithium, quetiapine and the antidepressants: no card cites them
        quiet = {
            ref(r)
            for code in ("197890", "312743", "310385", "312938", "349332")
            for r in c.code_records(code)
        }
        assert quiet
        assert all(not (cited(card) & quiet) for card in cards.values()), name
        assert not any("lithium" in card["summary"].lower() for card in cards.values())


def test_benzodiazepine_card_lists_only_active_records(api: Api, server: FhirServerHandle) -> None:
    for name in ("Yvone_Emmerich", "Elli_Quitzon"):
        c = chart(name)
        body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
        card = by_rule(api.post(PATIENT_VIEW, body)[0])["benzodiazepine-response"]

        benzos = [
            r
            for r in c.resources
            if r["resourceType"].startswith("Medication")
            and in_valueset("benzodiazepine-medications", concept_of(r))
        ]
        ended = {ref(r) for r in benzos if r["status"] not in COUNTING_STATEMENT | COUNTING_REQUEST}
        assert ended, f"{name}: the bundle has stopped or completed benzodiazepine records"
        assert not (cited(card) & ended)
        expected = expect_dose_rule(c, "benzodiazepine-medications", "seizure-disorder")
        assert expected is not None
        assert cited(card) == expected.evidence
        # no record has a dosage: the card says none could be computed (no "0 mg/day" total),
        # and each record says why; with a seizure disorder on record it gives no hold advice
        if expected.band == "antiepileptic-dose-unknown":
            assert "has no dose the service can compute" in card["detail"]
            assert "neurologist" in card["detail"]
            assert "skip the dose" not in card["detail"]
        else:
            assert "carry no dose the service can compute" in card["detail"]
        assert "add up to" not in card["detail"]
        lines = [
            line
            for line in card["detail"].splitlines()
            if CITED.match(line) and line.startswith("- Medication")
        ]
        assert lines
        assert all("daily dose not computed" in line or "counted once" in line for line in lines)


def test_contraindication_free_patients_get_no_contraindication_card(
    api: Api, server: FhirServerHandle
) -> None:
    for name in ("Devora_Orn", "Jonathon_Sauer"):
        c = chart(name)
        body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
        cards = by_rule(api.post(PATIENT_VIEW, body)[0])
        assert not [r for r in cards if rules()[r]["category"] == "contraindication"], name
        assert all(card["indicator"] != "critical" for card in cards.values())


# ---------------------------------------------------------------------- windows from the planned start


def shifted(start: date, *, months: int = 0, days: int = 0) -> date:
    year, month0 = divmod(start.year * 12 + start.month - 1 + months, 12)
    month = month0 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1])) + timedelta(days=days)


def onset_of(name: str, code: str) -> date:
    (record,) = chart(name).code_records(code)
    found = condition_date(record)
    assert found is not None
    return found


# (patient, the condition whose onset anchors the planned start, months and days after that onset)
WINDOW_CASES = [
    ("Kieth_Wilkinson", "22298006", 1, 0),  # MI a month before the infusion
    ("Kieth_Wilkinson", "22298006", 6, 0),  # the last day of the 6-month window
    ("Kieth_Wilkinson", "22298006", 6, 1),  # the day after
    ("Kieth_Wilkinson", "399211009", 12, 0),  # history-of-MI record: last day of the 12-month window
    ("Kieth_Wilkinson", "399211009", 12, 1),  # ... and the day after: nothing left
    ("Ludie_Schultz", "401303003", 3, 0),  # STEMI, MI and history of MI on one day
    ("Rosario_Schimmel", "230690007", 12, 0),  # stroke: last day of the 12-month window
    ("Rosario_Schimmel", "230690007", 12, 1),  # the day after: older stroke, review
    ("Yvone_Emmerich", "230690007", 2, 0),
]


@pytest.mark.parametrize(("name", "anchor", "months", "days"), WINDOW_CASES)
def test_myocardial_infarction_and_stroke_bands_run_from_the_planned_start(
    name: str, anchor: str, months: int, days: int, api: Api, server: FhirServerHandle
) -> None:
    c = chart(name)
    start = shifted(onset_of(name, anchor), months=months, days=days)
    order = ketamine_draft(c, start)
    body = request_body("order-select", c, fhir_server=server.base_url, token=server.token, order=order)
    payload, fetched = api.post(ORDER_SELECT, body)

    assert set(fetched) == set(SCREEN_KEYS)
    expected = expected_cards(c, start, {"ketamine"}, order)
    assert_cards(payload, expected, f"{name} from {start}")
    cards = {c["source"]["topic"]["code"]: c for c in payload["cards"]}
    for rule_id in ("recent-myocardial-infarction", "recent-stroke"):
        if rule_id not in expected:
            continue
        card = cards[rule_id]  # warning and critical findings have cards of their own
        # the window's reference date, said in the card as a calendar date
        assert f"counted to the planned start, {start.strftime('%d %b %Y').lstrip('0')}" in card["detail"]
        if expected[rule_id].band == "within-contraindication-window":
            assert card["indicator"] == "critical"
            months = whole_months(onset_of(name, anchor), start)
            said = {0: "under a month", 1: "1 month"}.get(months, f"{months} months")
            assert f"{said} before the planned start" in card["detail"]
            assert "eligible from" in card["summary"]
            # move the start past the window, or remove the ketamine draft order
            move, remove = card["suggestions"]
            assert move["label"].startswith("Move the planned start to ")
            assert [a["type"] for a in move["actions"]] == ["update"]
            assert [a["resourceId"] for a in remove["actions"]] == [ref(order)]
        else:
            assert "suggestions" not in card


# ---------------------------------------------------------------------- order-select, no prefetch


def test_order_select_without_prefetch_equals_the_full_prefetch(api: Api, server: FhirServerHandle) -> None:
    c = chart("Yvone_Emmerich")
    order = ketamine_draft(c)
    fetched_body = request_body(
        "order-select", c, fhir_server=server.base_url, token=server.token, order=order
    )
    fetched_payload, fetched = api.post(ORDER_SELECT, fetched_body)
    assert set(fetched) == set(SCREEN_KEYS)
    assert {url.split("?")[0].rsplit("/", 1)[-1] for url, _ in api.fhir.sent} == {
        PREFETCH_TYPES[key] for key in SCREEN_KEYS
    }

    api.fhir.sent.clear()
    full_body = request_body(
        "order-select", c, fhir_server=None, token=None, prefetch=c.full_prefetch(), order=order
    )
    full_payload, fetched_full = api.post(ORDER_SELECT, full_body)
    assert fetched_full == ()
    assert not api.fhir.sent

    assert findings(fetched_payload) == findings(full_payload)
    assert without_uuids(fetched_payload) == without_uuids(full_payload)
    assert_cards(fetched_payload, expected_cards(c, TODAY, {"ketamine"}, order), "Yvone order-select")


def test_partial_prefetch_fetches_exactly_the_unusable_keys(api: Api, server: FhirServerHandle) -> None:
    """Every shape a client may send for a key, in one request: only what is unusable is fetched."""
    c = chart("Elli_Quitzon")
    prefetch = c.full_prefetch()
    prefetch["medicationRequests"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "the EHR's own fetch failed"}],
    }
    prefetch["conditions"] = None  # a search left unsatisfied
    del prefetch["allergies"]  # not sent at all
    body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token, prefetch=prefetch)
    partial, fetched = api.post(PATIENT_VIEW, body)
    assert set(fetched) == {"medicationRequests", "conditions", "allergies"}
    assert {url.split("?")[0].rsplit("/", 1)[-1] for url, _ in api.fhir.sent} == {
        "MedicationRequest",
        "Condition",
        "AllergyIntolerance",
    }
    full, _ = api.post(
        PATIENT_VIEW,
        request_body("patient-view", c, fhir_server=None, token=None, prefetch=c.full_prefetch()),
    )
    assert without_uuids(partial) == without_uuids(full)
    assert_cards(partial, expected_cards(c, TODAY, {"ketamine", "esketamine"}), "Elli, partial prefetch")


# ---------------------------------------------------------------------- a paginated prefetch


def test_paginated_prefetch_is_completed_from_the_server(
    make_api: Callable[..., Api], server: FhirServerHandle
) -> None:
    c = chart("Eddie_Schultz")
    first = requests.get(
        f"{server.base_url}/MedicationRequest",
        params={"patient": c.id, "_include": "MedicationRequest:medication", "_count": "50"},
        headers={"Authorization": f"Bearer {server.token}", "Accept": "application/fhir+json"},
        timeout=30,
    )
    assert first.status_code == 200
    page = first.json()
    next_links = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
    assert len(page["entry"]) == 50
    assert len(next_links) == 1
    prefetch = c.full_prefetch()
    prefetch["medicationRequests"] = page

    paged_api = make_api()
    body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token, prefetch=prefetch)
    paged, fetched = paged_api.post(PATIENT_VIEW, body)
    assert fetched == ("medicationRequests",)
    requested = [url for url, _ in paged_api.fhir.sent]
    assert requested[0] == next_links[0]  # the rest of that search, not the search again
    total = len(c.of("MedicationRequest"))
    assert len(requested) == -(-total // 50) - 1  # 273 requests, pages of 50: the 5 pages after the first

    whole_api = make_api()
    whole, fetched_whole = whole_api.post(
        PATIENT_VIEW, request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
    )
    assert set(fetched_whole) == set(SCREEN_KEYS)
    assert without_uuids(paged) == without_uuids(whole)
    assert_cards(paged, expected_cards(c, TODAY, {"ketamine", "esketamine"}), "Eddie, paged prefetch")


# ---------------------------------------------------------------------- when the data cannot be had


def issue_paths(outcome: dict[str, Any]) -> set[str]:
    return {path for issue in outcome["issue"] for path in issue.get("expression", [])}


def test_server_down_with_missing_prefetch_is_412_naming_the_keys(api: Api, server: FhirServerHandle) -> None:
    c = chart("Kieth_Wilkinson")
    down = closed_port_url()
    partial = c.full_prefetch()
    del partial["conditions"]
    outcome, _ = api.post(
        PATIENT_VIEW,
        request_body("patient-view", c, fhir_server=down, token=server.token, prefetch=partial),
        expect=412,
    )
    assert issue_paths(outcome) == {"prefetch.conditions"}

    outcome, _ = api.post(
        PATIENT_VIEW, request_body("patient-view", c, fhir_server=down, token=server.token), expect=412
    )
    assert issue_paths(outcome) <= {f"prefetch.{key}" for key in SCREEN_KEYS}
    assert issue_paths(outcome)

    # with everything prefetched the dead server is never needed
    payload, fetched = api.post(
        PATIENT_VIEW,
        request_body("patient-view", c, fhir_server=down, token=server.token, prefetch=c.full_prefetch()),
    )
    assert fetched == ()
    assert_cards(payload, expected_cards(c, TODAY, {"ketamine", "esketamine"}), "Kieth, full prefetch")


def test_the_bearer_token_is_what_lets_the_service_read(api: Api, server: FhirServerHandle) -> None:
    c = chart("Rosario_Schimmel")
    # sekmet itself refuses a search without the token
    assert (
        requests.get(f"{server.base_url}/Condition", params={"patient": c.id}, timeout=10).status_code == 401
    )

    payload, _ = api.post(
        PATIENT_VIEW, request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
    )
    assert api.fhir.sent
    assert all(auth == f"Bearer {server.token}" for _, auth in api.fhir.sent)
    assert payload["cards"]

    for token in ("wrong-token", None):  # a wrong token; none at all (dev mode sends the call without one)
        api.fhir.sent.clear()
        outcome, _ = api.post(
            PATIENT_VIEW,
            request_body("patient-view", c, fhir_server=server.base_url, token=token),
            expect=412,
        )
        assert issue_paths(outcome)
        assert issue_paths(outcome) <= {f"prefetch.{key}" for key in SCREEN_KEYS}
        assert all("401" in issue["diagnostics"] for issue in outcome["issue"])
        assert all(auth == (f"Bearer {token}" if token else None) for _, auth in api.fhir.sent)
        text = json.dumps(outcome)
        assert server.token not in text
        assert c.id not in text


# ---------------------------------------------------------------------- doses worked out by hand


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
E2E_PATIENT = "ketcds-test-e2e-benzo"


def dosed_benzodiazepine_records() -> list[dict[str, Any]]:
    """Yvone_Emmerich's benzodiazepine history with the dosage her bundle leaves out, under a test patient:
    clonazePAM 0.25 mg tablet renewed three times (all still active) with a statement derived from the
    renewals, diazepam 5 mg tablet once active and once stopped, and a completed statement for those."""

    def order(rid: str, code: str, display: str, status: str, per_day: int, authored: str) -> dict[str, Any]:
        return {
            "resourceType": "MedicationRequest",
            "id": rid,
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{E2E_PATIENT}"},
            "authoredOn": authored,
            "dosageInstruction": [
                {
                    "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
                }
            ],
        }

    def statement(rid: str, status: str, derived: list[str], template: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "MedicationStatement",
            "id": rid,
            "status": status,
            "medicationCodeableConcept": template["medicationCodeableConcept"],
            "subject": {"reference": f"Patient/{E2E_PATIENT}"},
            "dateAsserted": template["authoredOn"],
            "derivedFrom": [{"reference": f"MedicationRequest/{d}"} for d in derived],
            "dosage": template["dosageInstruction"],
        }

    clonazepam = [
        order(
            f"ketcds-test-e2e-clz-{n}",
            "204892",
            "clonazePAM 0.25 MG Oral Tablet",
            "active",
            2,
            f"2026-0{n}-01",
        )
        for n in (1, 2, 3)
    ]
    diazepam_active = order(
        "ketcds-test-e2e-dzp-1", "197591", "Diazepam 5 MG Oral Tablet", "active", 3, "2026-05-01"
    )
    diazepam_stopped = order(
        "ketcds-test-e2e-dzp-2", "197591", "Diazepam 5 MG Oral Tablet", "stopped", 3, "2026-04-01"
    )
    return [
        {"resourceType": "Patient", "id": E2E_PATIENT, "gender": "female", "birthDate": "1978-10-24"},
        *clonazepam,
        diazepam_active,
        diazepam_stopped,
        statement("ketcds-test-e2e-ms-clz", "active", [r["id"] for r in clonazepam], clonazepam[-1]),
        statement("ketcds-test-e2e-ms-dzp", "completed", [diazepam_stopped["id"]], diazepam_stopped),
    ]


def test_benzodiazepine_total_in_diazepam_equivalents_from_server_records(
    api: Api, server: FhirServerHandle
) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/fhir+json"}
    for resource in dosed_benzodiazepine_records():
        url = f"{server.base_url}/{resource['resourceType']}/{resource['id']}"
        response = requests.put(url, data=json.dumps(resource), headers=headers, timeout=10)
        assert response.status_code in {200, 201}, response.text[:500]

    # By hand, Ashton's table (10 mg diazepam = 0.5 mg clonazepam = 10 mg diazepam):
    #   clonazePAM 0.25 mg x 2 a day = 0.5 mg/day = 0.5 x 10 / 0.5 = 10 mg/day diazepam-eq;
    #     the three renewals are one therapy (counted once), the derived statement is the same therapy;
    #   diazepam 5 mg x 3 a day = 15 mg/day = 15 mg/day diazepam-eq; the stopped order and the
    #     completed statement do not count;
    #   total 25 mg/day diazepam-eq, over the default threshold of 8: the warning band.
    threshold = default("benzodiazepine-response", "threshold")
    assert threshold == 8
    context = {"userId": USER, "patientId": E2E_PATIENT}
    body = {
        "hook": "patient-view",
        "hookInstance": "e2e-benzo-by-hand",
        "context": context,
        "fhirServer": server.base_url,
        "fhirAuthorization": authorization(server.token),
    }
    payload, fetched = api.post(PATIENT_VIEW, body)
    assert set(fetched) == set(SCREEN_KEYS)
    card = by_rule(payload)["benzodiazepine-response"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Benzodiazepines 25 mg/day diazepam-eq (over 8 mg/day diazepam-eq)")
    (shown,) = [c for c in payload["cards"] if c["source"]["topic"]["code"] == "benzodiazepine-response"]
    assert "**25 mg/day diazepam-eq**" in shown["detail"]
    lines = {line.split(":", 1)[0][2:]: line for line in card["detail"].splitlines() if CITED.match(line)}
    assert "= 10 mg/day diazepam-eq" in lines["MedicationRequest/ketcds-test-e2e-clz-1"]
    assert "= 15 mg/day diazepam-eq" in lines["MedicationRequest/ketcds-test-e2e-dzp-1"]
    assert "counted once" in lines["MedicationRequest/ketcds-test-e2e-clz-2"]
    assert "counted once" in lines["MedicationRequest/ketcds-test-e2e-clz-3"]
    assert not {
        "MedicationRequest/ketcds-test-e2e-dzp-2",
        "MedicationStatement/ketcds-test-e2e-ms-dzp",
    } & set(lines)
    # the statement derived from the renewals is the same therapy: listed, and said to be counted once
    assert "counted once" in lines["MedicationStatement/ketcds-test-e2e-ms-clz"]
    # patient-view: nothing to act on in an order, and never a suggestion to stop a benzodiazepine
    assert "suggestions" not in shown


# ---------------------------------------------------------------------- how long the fallback takes


@pytest.mark.parametrize("page_size", [200, 50])
def test_fallback_latency_for_the_largest_record(
    page_size: int,
    make_api: Callable[..., Api],
    server: FhirServerHandle,
    record_property: Callable[[str, Any], None],
) -> None:
    """Eddie_Schultz (273 MedicationRequests, 261 Conditions) fetched whole, call after call, against the
    same screen with everything prefetched."""
    c = chart("Eddie_Schultz")
    assert len(c.of("MedicationRequest")) == 273
    assert len(c.of("Condition")) == 261
    api = make_api(fhir_page_size=page_size)
    expected = expected_cards(c, TODAY, {"ketamine", "esketamine"})
    fetched_s, prefetched_s, per_request_s = [], [], []
    for _ in range(5):
        api.fhir.sent.clear()
        api.fhir.seconds.clear()
        body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
        started = time.perf_counter()
        payload, fetched = api.post(PATIENT_VIEW, body)
        fetched_s.append(time.perf_counter() - started)
        per_request_s += api.fhir.seconds
        assert set(fetched) == set(SCREEN_KEYS)
        assert_cards(payload, expected, f"Eddie, pages of {page_size}")
        calls = len(api.fhir.sent)

        body = request_body("patient-view", c, fhir_server=None, token=None, prefetch=c.full_prefetch())
        started = time.perf_counter()
        api.post(PATIENT_VIEW, body)
        prefetched_s.append(time.perf_counter() - started)

    def ms(values: list[float]) -> str:
        return "/".join(f"{f(values) * 1000:.0f}" for f in (min, statistics.median, max))

    report = (
        f"Eddie_Schultz patient-view, _count={page_size}, min/median/max of 5: no prefetch {ms(fetched_s)} "
        f"ms with {calls} FHIR requests per call, each {ms(per_request_s)} ms; "
        f"full prefetch {ms(prefetched_s)} ms"
    )
    record_property("latency", report)
    print(report)
    # No latency ceiling here: a fetch past the FHIR time budget would have ended the call with a 412
    # (checked above through `fetched`); speed is the benchmark's business (bench/).


# ------------------------------------------------- value-set content these patients once fell through


def test_unstable_angina_coded_in_snomed_is_recognised(api: Api, server: FhirServerHandle) -> None:
    c = chart("Kieth_Wilkinson")
    (angina,) = c.code_records("4557003")
    assert is_active(angina)
    body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
    assert "unstable-cardiac-disease" in by_rule(api.post(PATIENT_VIEW, body)[0])


def test_drug_dependence_coded_in_snomed_is_recognised(api: Api, server: FhirServerHandle) -> None:
    c = chart("Jaime_Homenick")
    assert any(is_active(r) for r in c.code_records("6525002"))
    body = request_body("patient-view", c, fhir_server=server.base_url, token=server.token)
    assert "substance-use-disorder" in by_rule(api.post(PATIENT_VIEW, body)[0])
