"""Client authentication through the HTTP API, with the app in production mode.

The app runs as a hospital would run it: `dev_mode` off, `public_base_url` https://cds.example.org, one
trusted issuer whose JWKS is a file written here with an ES384 key generated here. Every call to
discovery, a service and feedback must carry a JWT whose `aud` is the exact URL called (built from the
public base URL, never from the Host header); anything else gets a bare 401 whose OperationOutcome says
"unauthorized" and nothing more, while the reason goes to the log (and the token does not).

Every token minted here is registered in tests.support.logs.SENSITIVE, so the session-end log check fails if
one ever reaches a log line. The service calls carry the Synthea test patients' real records and names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from cds import cli
from cds.app import create_app
from cds.config import TrustedIssuer
from cds.errors import ConfigError
from cds.storage.analytics import override_report
from cds.storage.shared_state import DEFAULT_PREFIX
from tests.support.backends import redis_url_or_skip
from tests.support.constants import NOW
from tests.support.logs import SENSITIVE
from tests.support.responses import assert_valid_response
from tests.support.synthea import synthea_patients, synthea_request

BASE = "https://cds.example.org"
ISS = "https://ehr.example.org/cds-client"
SERVICE = "ketamine-patient-view"
DISCOVERY = "/cds-services"
CALL = f"/cds-services/{SERVICE}"
FEEDBACK = f"/cds-services/{SERVICE}/feedback"
UNAUTHORIZED = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "security", "diagnostics": "unauthorized"}],
}


# ------------------------------------------------------------------------------------ keys and tokens


@dataclass(frozen=True)
class Issuer:
    kid: str
    key: ec.EllipticCurvePrivateKey
    jwks_file: Path

    def token(self, aud: str | list[str], *, at: datetime = NOW, **overrides: Any) -> str:
        """A signed ES384 client JWT issued `at` (the clock the test apps run on), registered as sensitive
        before anything can log it."""
        now = int(at.timestamp())
        claims: dict[str, Any] = {
            "iss": ISS,
            "sub": "ehr-client-id",
            "aud": aud,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        token = jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})
        SENSITIVE.add(token)
        return token


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    key = ec.generate_private_key(ec.SECP384R1())
    kid = "ehr-es384-" + uuid.uuid4().hex[:8]
    jwk = jwt.get_algorithm_by_name("ES384").to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", alg="ES384")
    path = tmp_path_factory.mktemp("jwks") / "ehr-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    return Issuer(kid, key, path)


def bearer(token: str) -> dict[str, str]:
    header = f"Bearer {token}"
    SENSITIVE.add(header)
    return {"Authorization": header}


def url(path: str) -> str:
    return BASE + path


@pytest.fixture
def make_prod_app(make_app: Callable[..., Flask], issuer: Issuer) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        values: dict[str, Any] = {
            "dev_mode": False,
            "public_base_url": BASE,
            "trusted_issuers": (TrustedIssuer(iss=ISS, jwks_file=str(issuer.jwks_file)),),
            "cors_origins": ("https://ehr.example.org",),
            "log_level": "DEBUG",  # every record the service can emit reaches the log-hygiene check
        }
        values.update(overrides)
        flask_app = make_app(**values)
        made.append(flask_app)
        return flask_app

    yield factory
    for flask_app in made:
        flask_app.extensions["ketamine_cds"].flush()


@pytest.fixture
def prod(make_prod_app: Callable[..., Flask]) -> FlaskClient:
    return make_prod_app().test_client()


def patient_request(index: int = 0) -> dict[str, Any]:
    """A patient-view request for a Synthea patient: their real id, name and records."""
    return synthea_request(synthea_patients()[index])


def feedback_body(card: str = "00000000-0000-0000-0000-000000000001") -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "record-out-of-date",
                        "system": "https://ketamine-cds.example.org/fhir/CodeSystem/ketamine-override-reason",
                    }
                },
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }


def send(client: FlaskClient, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """GET discovery, POST a service call or feedback, each with a body that would be accepted."""
    if path == DISCOVERY:
        return client.get(path, headers=headers, **kwargs)
    body = feedback_body() if path.endswith("/feedback") else patient_request()
    return client.post(path, json=body, headers=headers, **kwargs)


def assert_bare_401(response: Any, *secrets: str) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)[:500]
    assert response.get_json() == UNAUTHORIZED  # exactly: no reason, no hint
    headers = json.dumps(dict(response.headers))
    for word in ("aud", "expired", "replay", "jti", "kid", "iss", "error", *secrets):
        assert word not in headers, f"the 401's headers give away {word!r}"
    for secret in secrets:
        assert secret not in response.get_data(as_text=True)


def auth_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(r, "reason", ""))
        for r in caplog.records
        if r.name == "cds.web.auth" and hasattr(r, "reason")
    ]


def assert_token_not_logged(caplog: pytest.LogCaptureFixture, token: str) -> None:
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in json.dumps(record.__dict__, default=str)


# ------------------------------------------------------------------------------------ accepted


def test_discovery_accepted_with_the_exact_url_as_audience(prod: FlaskClient, issuer: Issuer) -> None:
    response = prod.get(DISCOVERY, headers=bearer(issuer.token(url(DISCOVERY))))
    assert response.status_code == 200
    assert {s["id"] for s in response.get_json()["services"]} >= {SERVICE}


@pytest.mark.parametrize("index", range(len(synthea_patients())), ids=[p.stem for p in synthea_patients()])
def test_service_call_accepted_with_the_exact_url_as_audience(
    prod: FlaskClient, issuer: Issuer, knowledge: Any, index: int
) -> None:
    """Every Synthea patient's whole chart, sent as a hospital would: real ids, names and records."""
    response = prod.post(CALL, json=patient_request(index), headers=bearer(issuer.token(url(CALL))))
    assert response.status_code == 200, response.get_data(as_text=True)[:1000]
    assert_valid_response(knowledge, response.get_json())


def test_order_select_accepted_with_its_own_url_as_audience(
    prod: FlaskClient, issuer: Issuer, knowledge: Any
) -> None:
    path = "/cds-services/ketamine-order-select"
    body = synthea_request(synthea_patients()[0], "order-select")
    response = prod.post(path, json=body, headers=bearer(issuer.token(url(path))))
    assert response.status_code == 200, response.get_data(as_text=True)[:1000]
    assert_valid_response(knowledge, response.get_json())
    # the same token's audience does not open the neighbouring service
    other = prod.post(CALL, json=patient_request(), headers=bearer(issuer.token(url(path))))
    assert_bare_401(other)


def test_feedback_accepted_for_a_card_just_shown(
    make_prod_app: Callable[..., Flask], issuer: Issuer, knowledge: Any
) -> None:
    flask_app = make_prod_app()
    client = flask_app.test_client()
    path = "/cds-services/ketamine-order-select"
    body = synthea_request(synthea_patients()[3], "order-select")
    cards = client.post(path, json=body, headers=bearer(issuer.token(url(path)))).get_json()["cards"]
    assert cards, "a ketamine order gets at least the patient-instructions card"
    feedback = f"{path}/feedback"
    response = client.post(
        feedback, json=feedback_body(cards[0]["uuid"]), headers=bearer(issuer.token(url(feedback)))
    )
    assert response.status_code == 200
    runtime = flask_app.extensions["ketamine_cds"]
    runtime.flush()
    assert sum(row.total.overridden for row in override_report(runtime.store).rules) == 1


def test_audience_as_a_list_containing_the_url_accepted(prod: FlaskClient, issuer: Issuer) -> None:
    token = issuer.token([url("/cds-services/other"), url(DISCOVERY)])
    assert prod.get(DISCOVERY, headers=bearer(token)).status_code == 200


def test_analytics_needs_a_token_too(prod: FlaskClient, issuer: Issuer) -> None:
    path = "/analytics/overrides"
    assert_bare_401(prod.get(path))
    assert prod.get(path, headers=bearer(issuer.token(url(path)))).status_code == 200


# ------------------------------------------------------------------------------------ rejected


ENDPOINTS = [DISCOVERY, CALL, FEEDBACK]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_authorization_header_is_a_bare_401(
    prod: FlaskClient, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        assert_bare_401(send(prod, path))
    assert auth_reasons(caplog) == ["missing_authorization"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_audience_from_the_host_header_is_a_bare_401(
    prod: FlaskClient, issuer: Issuer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A token minted for the URL the request arrived at (Host header), not the configured public URL."""
    host_url = f"http://localhost{path}"  # what request.host_url + path gives under the test client
    token = issuer.token(host_url)
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        assert_bare_401(send(prod, path, headers=bearer(token)), token)
        # a forged Host header naming the audience changes nothing either
        forged = issuer.token("https://evil.example" + path)
        assert_bare_401(send(prod, path, headers={**bearer(forged), "Host": "evil.example"}), forged)
    assert auth_reasons(caplog) == ["wrong_aud", "wrong_aud"]
    assert_token_not_logged(caplog, token)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_replayed_jti_is_a_bare_401(
    prod: FlaskClient, issuer: Issuer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = issuer.token(url(path))
    assert send(prod, path, headers=bearer(token)).status_code == 200
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        assert_bare_401(send(prod, path, headers=bearer(token)), token)
    assert auth_reasons(caplog) == ["replayed_jti"]
    assert_token_not_logged(caplog, token)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_expired_token_is_a_bare_401(
    prod: FlaskClient, issuer: Issuer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(NOW.timestamp())
    token = issuer.token(url(path), iat=now - 900, exp=now - 600)
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        assert_bare_401(send(prod, path, headers=bearer(token)), token)
    assert auth_reasons(caplog) == ["expired"]
    assert_token_not_logged(caplog, token)


APP_CLOCK = datetime(2031, 3, 14, 15, 9, 26, tzinfo=UTC)  # years from the real date, either way


def test_tokens_are_judged_on_the_apps_clock_not_the_real_one(
    make_prod_app: Callable[..., Flask], issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_prod_app(clock=lambda: APP_CLOCK).test_client()
    assert send(client, CALL, headers=bearer(issuer.token(url(CALL), at=APP_CLOCK))).status_code == 200
    real_time = issuer.token(url(CALL), at=datetime.now(UTC))  # 5 minutes' life, years off the app's now
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        assert_bare_401(send(client, CALL, headers=bearer(real_time)), real_time)
    assert auth_reasons(caplog) in (["expired"], ["iat_in_future"])  # before 2031: expired


@pytest.mark.parametrize(
    ("exp_before_now", "refused_for"),
    [
        (29, None),  # a second inside the leeway
        (30, None),  # exp + leeway == now: refused only once now is past exp + leeway (PyJWT refuses here)
        (31, "expired"),  # a second past it
    ],
)
def test_expiry_at_the_leeway_on_the_apps_clock(
    make_prod_app: Callable[..., Flask],
    issuer: Issuer,
    caplog: pytest.LogCaptureFixture,
    exp_before_now: int,
    refused_for: str | None,
) -> None:
    client = make_prod_app(clock=lambda: APP_CLOCK, jwt_leeway_s=30).test_client()
    now = int(APP_CLOCK.timestamp())
    token = issuer.token(url(CALL), at=APP_CLOCK, iat=now - 300, exp=now - exp_before_now)
    with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
        response = send(client, CALL, headers=bearer(token))
    if refused_for is None:
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        assert auth_reasons(caplog) == []
    else:
        assert_bare_401(response, token)
        assert auth_reasons(caplog) == [refused_for]


def test_rejected_service_call_is_audited_without_token_or_patient(
    prod: FlaskClient, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    patient = synthea_patients()[1]
    token = issuer.token("https://wrong.example/cds-services")
    with caplog.at_level(logging.INFO):
        response = prod.post(CALL, json=synthea_request(patient), headers=bearer(token))
    assert_bare_401(response, token)
    audit = [r for r in caplog.records if r.name == "cds.audit"]
    assert len(audit) == 1
    assert audit[0].fields["status"] == 401
    assert audit[0].fields["patient"] is None  # never screened, nothing about the patient
    text = "\n".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert token not in text
    assert patient.id not in text


# ------------------------------------------------------------------------------------ no token needed


@pytest.mark.parametrize("path", ENDPOINTS)
def test_cors_preflight_needs_no_token(prod: FlaskClient, path: str) -> None:
    response = prod.options(
        path,
        headers={
            "Origin": "https://ehr.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


def test_health_needs_no_token_and_says_production(prod: FlaskClient) -> None:
    response = prod.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["mode"] == "production"


# ------------------------------------------------------------------------------------ start-up


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("KETAMINE_CDS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_production_without_trusted_issuers_refuses_to_start(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    overrides = {"public_base_url": BASE, "database_url": f"sqlite:///{tmp_path / 'x.sqlite3'}"}
    with pytest.raises(ConfigError) as raised:
        create_app(overrides=overrides)
    message = str(raised.value)
    assert "production mode needs at least one trusted issuer" in message
    assert "KETAMINE_CDS_TRUSTED_ISSUERS" in message
    assert "--dev" in message
    assert not (tmp_path / "x.sqlite3").exists(), "refused before touching the database"


def test_serve_without_trusted_issuers_exits_with_the_message(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_environment.setenv("KETAMINE_CDS_PUBLIC_BASE_URL", BASE)
    assert cli.main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: production mode needs at least one trusted issuer" in err
    assert "KETAMINE_CDS_TRUSTED_ISSUERS" in err


# ------------------------------------------------------------------------------------ shared replay cache


def _replay_key(jti: str) -> str:
    """The replay marker's Redis key, spelled out here: prefix, "jti:", SHA-256 of "<iss>|<jti>"."""
    return f"{DEFAULT_PREFIX}jti:{hashlib.sha256(f'{ISS}|{jti}'.encode()).hexdigest()}"


def test_replayed_jti_rejected_across_two_app_instances_sharing_redis(
    make_prod_app: Callable[..., Flask], issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_url = redis_url_or_skip()
    first = make_prod_app(redis_url=redis_url).test_client()
    second = make_prod_app(redis_url=redis_url).test_client()
    jti, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    token = issuer.token(url(CALL), jti=jti)
    key = _replay_key(jti)
    try:
        assert first.post(CALL, json=patient_request(2), headers=bearer(token)).status_code == 200
        with caplog.at_level(logging.WARNING, logger="cds.web.auth"):
            assert_bare_401(second.post(CALL, json=patient_request(2), headers=bearer(token)), token)
            assert_bare_401(first.post(CALL, json=patient_request(2), headers=bearer(token)), token)
        assert auth_reasons(caplog) == ["replayed_jti", "replayed_jti"]
        client = redis.Redis.from_url(redis_url)
        try:
            assert 0 < client.pttl(key) <= (300 + 30) * 1000, "kept for the token's life plus leeway"
        finally:
            client.close()
        # a fresh token still works
        assert (
            second.get(DISCOVERY, headers=bearer(issuer.token(url(DISCOVERY), jti=fresh))).status_code == 200
        )
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            client.delete(key, _replay_key(fresh))
        finally:
            client.close()
