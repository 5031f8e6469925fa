"""Contract tests driven as a real CDS Hooks client drives the service.

The service runs behind a real HTTP server on loopback; the "EHR" (tests/support/ehr_client.py) signs ES384
tokens with `kid` and `jku` headers as the CDS Hooks sandbox and Epic do, sends browser-style CORS
preflights from its own origin, prefetch split across pages served by a real FHIR server (sekmet), and
feedback with override reasons that carry only a code and a system.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from cds.clinical.knowledge import Knowledge
from cds.config import TrustedIssuer
from cds.storage.analytics import override_report
from cds.storage.store import FeedbackItem
from tests.support.cards import every_chart_policy, findings_carried
from tests.support.ehr_client import EhrClient, serving
from tests.support.fhir_server import FhirServerHandle, running_fhir_server
from tests.support.responses import assert_valid_response
from tests.support.synthea import SyntheaPatient, synthea_patients, synthea_request

PUBLIC_BASE = "https://cds.example.org"  # what the EHR calls; the test reaches it on loopback (a proxy)
EHR_ORIGIN = "http://localhost:3000"  # a browser-based EHR simulator on another port
SERVICE = "/cds-services/ketamine-patient-view"
HOOKS = Path(__file__).resolve().parents[1] / "hooks"
# The longest record of the test data (137 conditions): at 20 a page, most of it is past page 1.
PAGED_STEM = "Yvone_Emmerich"
SIMULATOR_PAGE_SIZE = 20  # the browser simulator's FHIR server pages at 20 whatever _count asks


def preflight(base: str, path: str, origin: str) -> requests.Response:
    return requests.options(
        base + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )


@pytest.fixture
def dev_service(make_app: Callable[..., Flask]) -> Iterator[str]:
    with serving(make_app()) as base:  # `make run`: dev mode, nothing configured
        yield base


@dataclass
class Live:
    base: str  # where the test reaches the service (loopback)
    ehr: EhrClient
    app: Flask


@pytest.fixture
def prod(make_app: Callable[..., Flask], tmp_path: Path) -> Iterator[Live]:
    """Production mode; the EHR's issuer is trusted with a pinned JWKS file."""
    ehr = EhrClient.new(tmp_path, "http://unset", PUBLIC_BASE)
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file)),),
        cors_origins=(EHR_ORIGIN,),
        policy_file=every_chart_policy(tmp_path),  # the Synthea patients are in no ketamine course
    )
    with serving(app) as base:
        ehr.service_url = base
        yield Live(base, ehr, app)


# ---------------------------------------------------------------------------------------- CORS


@pytest.mark.parametrize("path", ["/cds-services", SERVICE, f"{SERVICE}/feedback"])
def test_dev_mode_answers_a_browser_preflight_from_any_origin(dev_service: str, path: str) -> None:
    """`make run` with no configuration: a browser client on another origin gets its preflight answered."""
    response = preflight(dev_service, path, EHR_ORIGIN)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_dev_mode_browser_call_gets_cards_with_the_cors_header(dev_service: str) -> None:
    patient = synthea_patients()[0]
    response = requests.post(
        dev_service + SERVICE, json=synthea_request(patient), headers={"Origin": EHR_ORIGIN}, timeout=60
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    discovery = requests.get(dev_service + "/cds-services", headers={"Origin": EHR_ORIGIN}, timeout=10)
    assert discovery.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    assert discovery.json()["services"]


def test_dev_mode_says_at_start_up_that_any_origin_is_allowed(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.app"):
        make_app()
    assert any("any origin" in record.getMessage() for record in caplog.records)


def test_production_allows_only_the_configured_origins(prod: Live) -> None:
    base = prod.base
    listed = preflight(base, SERVICE, EHR_ORIGIN)
    assert listed.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    other = preflight(base, SERVICE, "https://evil.example")
    assert other.status_code == 204
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Headers" not in other.headers


# ---------------------------------------------------------------------------------------- pinned keys


def test_pinned_jwks_file_accepts_real_client_tokens_with_a_jku(prod: Live, knowledge: Knowledge) -> None:
    """Tokens carry a jku naming a URL nobody allowlisted (and that cannot be reached): the file decides."""
    ehr = prod.ehr
    assert ehr.jku is not None
    discovery = ehr.get("/cds-services")
    assert discovery.status_code == 200, discovery.text
    patient = synthea_patients()[0]
    response = ehr.post(SERVICE, synthea_request(patient), origin=EHR_ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    assert_valid_response(knowledge, response.json())


def test_pinned_jwks_file_refuses_a_token_signed_by_another_key(prod: Live, tmp_path: Path) -> None:
    base, ehr = prod.base, prod.ehr
    impostor = EhrClient.new(tmp_path, base, PUBLIC_BASE)
    impostor.kid = ehr.kid  # same kid, same jku, other key
    response = impostor.get("/cds-services")
    assert response.status_code == 401
    assert response.json()["issue"][0]["diagnostics"] == "unauthorized"


# ---------------------------------------------------------------------------------------- paged prefetch


@pytest.fixture(scope="module")
def open_fhir() -> Iterator[FhirServerHandle]:
    """An open FHIR server (no token needed), as EHR simulators run, holding one long record."""
    with running_fhir_server(open_access=True, stems=(PAGED_STEM,)) as server:
        yield server


def paged_patient() -> SyntheaPatient:
    return next(p for p in synthea_patients() if p.stem.startswith(PAGED_STEM))


def ehr_prefetch(server: FhirServerHandle, patient_id: str) -> dict[str, Any]:
    """What the EHR sends: each of our templates, run against its own server, first page only."""
    templates = json.loads((HOOKS / "patient-view.json").read_text(encoding="utf-8"))["prefetch"]
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = template.replace("{{context.patientId}}", patient_id)
        if "?" in query:
            query = re.sub(r"_count=\d+", f"_count={SIMULATOR_PAGE_SIZE}", query)
        response = requests.get(f"{server.base_url}/{query}", timeout=30)  # open: no token
        assert response.status_code == 200, response.text[:500]
        prefetch[key] = response.json()
    return prefetch


def hook_request(patient: SyntheaPatient, prefetch: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/contract-test", "patientId": patient.id},
        "prefetch": prefetch,
        **extra,
    }


def summaries(response: requests.Response) -> list[str]:
    """Each card's summary, and each finding a consolidated card carries (its summary counts them)."""
    assert response.status_code == 200, response.text[:2000]
    cards = response.json()["cards"]
    return sorted([card["summary"] for card in cards] + [f"{r}: {i}" for r, i in findings_carried(cards)])


def rules_with_cards(response: requests.Response) -> set[str]:
    """The rules that answered, on cards of their own or inside a consolidated card."""
    assert response.status_code == 200, response.text[:2000]
    return {rule for rule, _ in findings_carried(response.json()["cards"])}


@pytest.fixture
def prod_open(
    make_app: Callable[..., Flask], tmp_path: Path, open_fhir: FhirServerHandle
) -> Iterator[EhrClient]:
    """Production; the EHR's FHIR server is declared open (plain http allowed for it: a local test)."""
    ehr = EhrClient.new(tmp_path, "http://unset", PUBLIC_BASE)
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(
            TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=(open_fhir.base_url,)),
        ),
        open_fhir_servers=(open_fhir.base_url,),
        fhir_server_allowlist=(open_fhir.base_url,),
        private_network_allowlist=("127.0.0.1/32",),  # the test's FHIR server is on loopback
        policy_file=every_chart_policy(tmp_path),  # the Synthea patients are in no ketamine course
    )
    with serving(app) as base:
        ehr.service_url = base
        yield ehr


def test_paged_prefetch_from_an_open_server_is_screened_in_full(
    prod_open: EhrClient, open_fhir: FhirServerHandle, knowledge: Knowledge
) -> None:
    """Page 1 in the prefetch, the rest behind next links, no fhirAuthorization: the service follows the
    pages, and the records on later pages produce their cards."""
    patient = paged_patient()
    prefetch = ehr_prefetch(open_fhir, patient.id)
    assert any(link["relation"] == "next" for link in prefetch["conditions"].get("link", [])), (
        "the test needs a record longer than one page"
    )
    assert len(prefetch["conditions"]["entry"]) == SIMULATOR_PAGE_SIZE

    paged = prod_open.post(SERVICE, hook_request(patient, prefetch, fhirServer=open_fhir.base_url))
    assert_valid_response(knowledge, paged.json())
    complete = prod_open.post(SERVICE, synthea_request(patient))  # every record, in the prefetch

    first_pages_only = copy.deepcopy(prefetch)
    for value in first_pages_only.values():
        value.pop("link", None)
    truncated = prod_open.post(SERVICE, hook_request(patient, first_pages_only))

    assert summaries(paged) == summaries(complete)
    # A record on a later page may also change a card page 1 already gave (a seizure disorder turns the
    # benzodiazepine card into the antiepileptic one), so compare which rules answered, not the wording.
    assert rules_with_cards(truncated) < rules_with_cards(paged), "later pages must carry cards of their own"


def test_missing_keys_are_fetched_from_an_open_server_without_a_token(
    prod_open: EhrClient, open_fhir: FhirServerHandle
) -> None:
    patient = paged_patient()
    prefetch = ehr_prefetch(open_fhir, patient.id)
    for key in ("conditions", "medicationStatements"):
        del prefetch[key]
    fetched = prod_open.post(SERVICE, hook_request(patient, prefetch, fhirServer=open_fhir.base_url))
    assert summaries(fetched) == summaries(prod_open.post(SERVICE, synthea_request(patient)))


def test_without_a_token_any_server_not_declared_open_is_412_and_says_why(
    make_app: Callable[..., Flask], tmp_path: Path, open_fhir: FhirServerHandle
) -> None:
    ehr = EhrClient.new(tmp_path, "http://unset", PUBLIC_BASE)
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(
            TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=(open_fhir.base_url,)),
        ),
        fhir_server_allowlist=(open_fhir.base_url,),  # plain http allowed: not the same as open
    )
    patient = paged_patient()
    with serving(app) as base:
        ehr.service_url = base
        response = ehr.post(
            SERVICE, hook_request(patient, ehr_prefetch(open_fhir, patient.id), fhirServer=open_fhir.base_url)
        )
    assert response.status_code == 412
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(issue["diagnostics"] for issue in outcome["issue"])
    assert "fhirAuthorization" in text
    assert "open" in text


# ---------------------------------------------------------------------------------------- feedback

HL7_NON_ADHERENCE = "http://cds-hooks.hl7.org/CodeSystem/non-adherence-reason"


def benzodiazepine_card(live: Live) -> dict[str, Any]:
    """A card offering override reasons: Yvone Emmerich's record (a benzodiazepine, a stroke...)."""
    response = live.ehr.post(SERVICE, synthea_request(paged_patient()))
    assert response.status_code == 200, response.text[:2000]
    card: dict[str, Any] = next(c for c in response.json()["cards"] if c.get("overrideReasons"))
    return card


def overridden(card: dict[str, Any], reason: dict[str, str], at: str) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason},
        "outcomeTimestamp": at,
    }


def test_code_only_override_reasons_are_stored_and_reported_with_their_display(prod: Live) -> None:
    """Clients send overrideReason with code and system only; analytics once showed blank reasons."""
    card = benzodiazepine_card(prod)
    offered = card["overrideReasons"][0]
    code_only = {"system": offered["system"], "code": offered["code"]}
    response = prod.ehr.post(
        f"{SERVICE}/feedback", {"feedback": [overridden(card, code_only, "2026-11-22T12:01:00Z")]}
    )
    assert response.status_code == 200, response.text
    runtime = prod.app.extensions["ketamine_cds"]
    (stored,) = runtime.store.feedback_for(card["uuid"])
    assert stored.item.override_display == offered["display"]

    report = prod.ehr.get("/analytics/overrides")
    assert report.status_code == 200, report.text
    reasons = [reason for rule in report.json()["rules"] for reason in rule["overrideReasons"]]
    assert reasons == [{"count": 1, **offered}]


def test_hl7_non_adherence_code_only_reason_gets_the_hl7_display(prod: Live) -> None:
    card = benzodiazepine_card(prod)
    reason = {"system": HL7_NON_ADHERENCE, "code": "need-more-info"}
    response = prod.ehr.post(
        f"{SERVICE}/feedback", {"feedback": [overridden(card, reason, "2026-11-22T12:02:00Z")]}
    )
    assert response.status_code == 200
    (stored,) = prod.app.extensions["ketamine_cds"].store.feedback_for(card["uuid"])
    assert stored.item.override_display is not None
    assert stored.item.override_display.startswith("Could not address recommended action")


@pytest.mark.parametrize(
    "reason",
    [
        {
            "system": "https://ehr.example.org/local-reasons",
            "code": "need-more-info",
        },  # our code, their system
        {"system": "https://ehr.example.org/local-reasons", "code": "pt-declined"},
    ],
)
def test_reasons_of_other_code_systems_are_not_given_our_display(prod: Live, reason: dict[str, str]) -> None:
    card = benzodiazepine_card(prod)
    feedback = {"feedback": [overridden(card, reason, "2026-11-22T12:03:00Z")]}
    assert prod.ehr.post(f"{SERVICE}/feedback", feedback).status_code == 200
    (stored,) = prod.app.extensions["ketamine_cds"].store.feedback_for(card["uuid"])
    assert stored.item.override_display is None


def test_a_display_the_client_sent_is_kept(prod: Live) -> None:
    card = benzodiazepine_card(prod)
    offered = card["overrideReasons"][0]
    reason = {**offered, "display": "Reason as our EHR words it"}
    feedback = {"feedback": [overridden(card, reason, "2026-11-22T12:04:00Z")]}
    assert prod.ehr.post(f"{SERVICE}/feedback", feedback).status_code == 200
    (stored,) = prod.app.extensions["ketamine_cds"].store.feedback_for(card["uuid"])
    assert stored.item.override_display == "Reason as our EHR words it"


def test_feedback_stored_without_display_is_reported_with_it(prod: Live, knowledge: Knowledge) -> None:
    """Older feedback was stored with an empty display; the report completes it from the catalogue."""
    card = benzodiazepine_card(prod)
    offered = card["overrideReasons"][0]
    runtime = prod.app.extensions["ketamine_cds"]
    runtime.flush()
    runtime.store.record_feedback(
        "ketamine-patient-view",
        [
            FeedbackItem(
                card_uuid=card["uuid"],
                outcome="overridden",
                override_system=offered["system"],
                override_code=offered["code"],
                override_display=None,
                user_comment=None,
                accepted_suggestions=(),
                outcome_at=datetime(2026, 11, 22, 12, 5, tzinfo=UTC),
                received_at=datetime(2026, 11, 22, 12, 5, tzinfo=UTC),
            )
        ],
    )
    plain = override_report(runtime.store)
    assert [r.display for rule in plain.rules for r in rule.total.reasons] == [None]
    completed = override_report(runtime.store, displays=knowledge.override_displays())
    assert [r.display for rule in completed.rules for r in rule.total.reasons] == [offered["display"]]
