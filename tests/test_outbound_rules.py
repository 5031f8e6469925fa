"""Outbound calls only where the caller's issuer allows.

In production each trusted issuer lists the FHIR base URLs its calls may name (`fhir_servers`). A call
naming any other server is answered from its prefetch alone, with no outbound request at all; if data is
missing the answer is 412 with an OperationOutcome that says why. A loopback listener counting the TCP
connections it receives proves "no outbound request".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds.config import TrustedIssuer
from tests.support.builders import hook_request
from tests.support.ehr_client import EhrClient
from tests.support.fhir_server import FhirServerHandle
from tests.support.listener import CountingListener
from tests.support.synthea import synthea_patients, synthea_request

PUBLIC_BASE = "https://cds.example.org"
SERVICE = "/cds-services/ketamine-patient-view"
LISTED = "https://fhir.hospital.example/r4"
AUTH = {"access_token": "fhir-token-for-the-ehr", "token_type": "Bearer", "expires_in": 300, "scope": "x"}


@pytest.fixture
def ehr(tmp_path: Path) -> EhrClient:
    return EhrClient.new(tmp_path, "http://unused", PUBLIC_BASE)


@pytest.fixture
def prod(make_app: Callable[..., Flask], ehr: EhrClient) -> Iterator[Callable[..., FlaskClient]]:
    """A production app factory: the EHR's issuer (pinned keys) lists `fhir_servers`."""
    made: list[Flask] = []

    def build(fhir_servers: tuple[str, ...] = (LISTED,), **overrides: Any) -> FlaskClient:
        issuer = TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=fhir_servers)
        values: dict[str, Any] = {
            "dev_mode": False,
            "public_base_url": PUBLIC_BASE,
            "trusted_issuers": (issuer,),
        }
        values.update(overrides)
        app = make_app(**values)
        made.append(app)
        return app.test_client()

    yield build
    for app in made:
        app.extensions["ketamine_cds"].flush()


def call(client: FlaskClient, ehr: EhrClient, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    response = client.post(SERVICE, json=body, headers=ehr.headers(SERVICE))
    elapsed_ms = (time.perf_counter() - started) * 1000
    return response.status_code, response.get_json(), elapsed_ms


def missing_conditions(fhir_server: str, **extra: Any) -> dict[str, Any]:
    """A complete patient-view request but for its conditions, which must be fetched."""
    body = hook_request("patient-view")
    del body["prefetch"]["conditions"]
    body.update(fhirServer=fhir_server, fhirAuthorization=AUTH, **extra)
    return body


def diagnostics(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome"
    return " ".join(issue["diagnostics"] for issue in outcome["issue"])


def test_a_server_outside_the_issuers_list_gets_no_connection_and_the_412_says_why(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    client = prod(fhir_server_allowlist=("http://127.0.0.1",), fhir_allow_http=True)
    with CountingListener() as listener:
        target = f"http://127.0.0.1:{listener.port}/fhir"
        status, outcome, elapsed_ms = call(client, ehr, missing_conditions(target))
        assert listener.connections == 0
    assert status == 412
    text = diagnostics(outcome)
    assert "registered for this client's issuer" in text
    assert [issue.get("expression") for issue in outcome["issue"]] == [["prefetch.conditions"]]
    # nothing about the operator's configuration: not the listed server, not the token
    body = json.dumps(outcome)
    assert LISTED not in body
    assert "fhir.hospital.example" not in body
    assert AUTH["access_token"] not in body
    assert elapsed_ms < 1000  # measured: a few ms (no connection is attempted)


def test_a_server_outside_the_list_is_not_needed_when_the_prefetch_is_complete(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    client = prod()
    with CountingListener() as listener:
        body = hook_request("patient-view")
        body.update(fhirServer=f"https://127.0.0.1:{listener.port}/fhir", fhirAuthorization=AUTH)
        status, payload, _ = call(client, ehr, body)
        assert listener.connections == 0
    assert status == 200
    assert payload == {"cards": []}


@pytest.mark.parametrize(
    "named",
    [
        "https://fhir.hospital.example/r4-other",  # a sibling path, not below the prefix
        "https://fhir.hospital.example/",  # above the prefix
        "http://fhir.hospital.example/r4",  # scheme exact
        "https://fhir.hospital.example:8443/r4",  # port exact
        "https://evil.fhir.hospital.example/r4",  # host exact: no subdomains
        "https://fhir.hospital.example.evil.example/r4",
        "https://fhir.hospital.example/r4/../admin",
    ],
)
def test_near_misses_of_a_listed_prefix_are_refused(
    prod: Callable[..., FlaskClient], ehr: EhrClient, named: str
) -> None:
    status, outcome, _ = call(prod(fhir_allow_http=True), ehr, missing_conditions(named))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_an_issuer_without_fhir_servers_is_screened_from_its_prefetch_only(
    prod: Callable[..., FlaskClient], ehr: EhrClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.app"):
        client = prod(fhir_servers=())
    assert any("lists no fhir_servers" in r.getMessage() for r in caplog.records)
    status, outcome, _ = call(client, ehr, missing_conditions(LISTED))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_the_open_server_setting_is_checked_against_the_issuers_list_too(
    prod: Callable[..., FlaskClient], ehr: EhrClient
) -> None:
    with CountingListener() as listener:
        target = f"http://127.0.0.1:{listener.port}/fhir"
        client = prod(open_fhir_servers=(target,), fhir_server_allowlist=(target,))
        body = missing_conditions(target)
        del body["fhirAuthorization"]
        status, outcome, _ = call(client, ehr, body)
        assert listener.connections == 0
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


def test_one_issuers_servers_cannot_be_named_by_another(
    make_app: Callable[..., Flask], ehr: EhrClient, tmp_path: Path
) -> None:
    other = EhrClient.new(tmp_path, "http://unused", PUBLIC_BASE)
    other.iss = "https://other-ehr.example.org"
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(
            TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file), fhir_servers=(LISTED,)),
            TrustedIssuer(
                iss=other.iss, jwks_file=str(other.jwks_file), fhir_servers=("https://b.example/f",)
            ),
        ),
    )
    status, outcome, _ = call(app.test_client(), other, missing_conditions(LISTED))
    assert status == 412
    assert "registered for this client's issuer" in diagnostics(outcome)


@pytest.mark.integration
def test_a_listed_server_is_read_as_before(
    prod: Callable[..., FlaskClient], ehr: EhrClient, fhir_server: FhirServerHandle
) -> None:
    patient = next(p for p in synthea_patients() if p.stem.startswith("Yvone_Emmerich"))
    client = prod(fhir_servers=(fhir_server.base_url,), fhir_server_allowlist=(fhir_server.base_url,))
    body = {
        "hook": "patient-view",
        "hookInstance": "5f0c4a52-1b8e-4c1e-9b7a-0d3c2e1f4a5b",
        "context": {"userId": "Practitioner/x", "patientId": patient.id},
        "fhirServer": fhir_server.base_url,
        "fhirAuthorization": {**AUTH, "access_token": fhir_server.token},
    }
    status, payload, _ = call(client, ehr, body)
    assert status == 200, payload
    status, complete, _ = call(client, ehr, synthea_request(patient))  # the whole record as prefetch
    assert sorted(c["summary"] for c in payload["cards"]) == sorted(c["summary"] for c in complete["cards"])
    assert payload["cards"]


def test_dev_mode_reads_any_server_and_says_so(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.app"):
        client = make_app().test_client()
    assert any("any fhirServer is read" in r.getMessage() for r in caplog.records)
    with CountingListener() as listener:
        body = missing_conditions(f"http://127.0.0.1:{listener.port}/fhir")
        response = client.post(SERVICE, json=body)
        assert listener.connections >= 1  # permissive: it tried (and the listener failed it)
    assert response.status_code == 412
