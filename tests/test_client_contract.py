"""Contract tests driven as a real CDS Hooks client drives the service (issue 11).

The service runs behind a real HTTP server on loopback; the "EHR" (tests/support/ehr_client.py) signs ES384
tokens with `kid` and `jku` headers as the CDS Hooks sandbox and Epic do, sends browser-style CORS
preflights from its own origin, prefetch split across pages served by a real FHIR server (sekmet), and
feedback with override reasons that carry only a code and a system.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from cds.clinical.knowledge import Knowledge
from cds.config import TrustedIssuer
from tests.conftest import assert_valid_response
from tests.support.ehr_client import EhrClient, serving
from tests.support.synthea import synthea_patients, synthea_request

PUBLIC_BASE = "https://cds.example.org"  # what the EHR calls; the test reaches it on loopback (a proxy)
EHR_ORIGIN = "http://localhost:3000"  # a browser-based EHR simulator on another port
SERVICE = "/cds-services/ketamine-patient-view"


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


@pytest.fixture
def prod(make_app: Callable[..., Flask], tmp_path: Path) -> Iterator[tuple[str, EhrClient]]:
    """Production mode; the EHR's issuer is trusted with a pinned JWKS file."""
    ehr = EhrClient.new(tmp_path, "http://unset", PUBLIC_BASE)
    app = make_app(
        dev_mode=False,
        public_base_url=PUBLIC_BASE,
        trusted_issuers=(TrustedIssuer(iss=ehr.iss, jwks_file=str(ehr.jwks_file)),),
        cors_origins=(EHR_ORIGIN,),
    )
    with serving(app) as base:
        ehr.service_url = base
        yield base, ehr


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


def test_production_allows_only_the_configured_origins(prod: tuple[str, EhrClient]) -> None:
    base, _ = prod
    listed = preflight(base, SERVICE, EHR_ORIGIN)
    assert listed.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    other = preflight(base, SERVICE, "https://evil.example")
    assert other.status_code == 204
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Headers" not in other.headers


# ---------------------------------------------------------------------------------------- pinned keys


def test_pinned_jwks_file_accepts_real_client_tokens_with_a_jku(
    prod: tuple[str, EhrClient], knowledge: Knowledge
) -> None:
    """Tokens carry a jku naming a URL nobody allowlisted (and that cannot be reached): the file decides."""
    _, ehr = prod
    assert ehr.jku is not None
    discovery = ehr.get("/cds-services")
    assert discovery.status_code == 200, discovery.text
    patient = synthea_patients()[0]
    response = ehr.post(SERVICE, synthea_request(patient), origin=EHR_ORIGIN)
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == EHR_ORIGIN
    assert_valid_response(knowledge, response.json())


def test_pinned_jwks_file_refuses_a_token_signed_by_another_key(
    prod: tuple[str, EhrClient], tmp_path: Path
) -> None:
    base, ehr = prod
    impostor = EhrClient.new(tmp_path, base, PUBLIC_BASE)
    impostor.kid = ehr.kid  # same kid, same jku, other key
    response = impostor.get("/cds-services")
    assert response.status_code == 401
    assert response.json()["issue"][0]["diagnostics"] == "unauthorized"
