"""No log line carries patient data or a token (tests/support/logs.py says what counts as a leak).

The whole run's logs are checked when the session ends (conftest.pytest_sessionfinish), so a leak fails
the run whichever test caused it and in whatever order the tests ran. These tests prove the checker bites,
and drive every Synthea patient's real chart (ids, names, identifiers, addresses) through every hook,
accepted and refused, so the check means something even when this module runs alone;
tests/test_api_auth.py and tests/test_fuzz.py send the same patients through production-mode
authentication and through thousands of malformed requests.

Proven to bite: with a temporary `log.info("screening %s", patient_ref)` in cds/web/api.py the check
failed, naming the patient ids it found (done once by hand when the check was written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from cds.storage.store import patient_hash
from tests.support.constants import CLOSED_PORT, SERVICES, TEST_HASH_KEY
from tests.support.logs import LOG_CAPTURE, SENSITIVE, leaks
from tests.support.synthea import synthea_patients, synthea_request


def test_the_checker_catches_each_kind_of_leak() -> None:
    patient = synthea_patients()[0]
    token = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlLm9yZyJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    SENSITIVE.add("fhir-access-token-under-test")
    samples = [
        f"cds.web.api screening Patient/{patient.id} {{}}",
        f"cds.web.api patient {patient.names[0]} {{}}",
        "cds.fhir.client sent Authorization: Bearer fhir-access-token-under-test {}",
        f"cds.web.auth rejected {token} {{}}",
    ]
    assert len(leaks(samples)) == len(samples)
    clean = [
        'cds.audit call {"patient": "' + patient_hash("k", f"Patient/{patient.id}") + '"}',
        "cds.web.auth client JWT rejected: reason=expired iss=https://ehr.example.org kid=ec-1 jti=abc {}",
        "alembic.runtime.migration Running upgrade  -> 0001, Initial schema {}",
    ]
    assert leaks(clean) == []


def test_patient_data_flows_through_the_service(make_app: Callable[..., Flask]) -> None:
    """Every test patient's chart through every hook, plus refused variants, so the logs had the chance."""
    first_line = len(LOG_CAPTURE.lines)
    flask_app = make_app(log_level="DEBUG")  # debug records too: an operator may turn them on
    client = flask_app.test_client()
    for patient in synthea_patients():
        for hook, service in SERVICES.items():
            body = synthea_request(patient, hook)
            assert client.post(f"/cds-services/{service}", json=body).status_code == 200
        refused: list[tuple[int, dict[str, Any]]] = []
        body = synthea_request(patient)  # a prefetch key missing, no FHIR server: 412
        del body["prefetch"]["conditions"]
        refused.append((412, body))
        body = synthea_request(patient)  # the patient's name where an id belongs: schema 400
        body["context"]["userId"] = patient.names[-1]
        refused.append((400, body))
        body = synthea_request(patient)  # the patient's name as the hook: 400
        body["hook"] = patient.names[0]
        refused.append((400, body))
        body = synthea_request(patient)  # a FHIR server that does not answer, with an access token: 412
        del body["prefetch"]["allergies"]
        body["fhirServer"] = CLOSED_PORT
        token = f"fhir-token-{patient.id}"
        SENSITIVE.add(token)
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "subject": "cds"}
        refused.append((412, body))
        for status, body in refused:
            assert client.post("/cds-services/ketamine-patient-view", json=body).status_code == status
    flask_app.extensions["ketamine_cds"].flush()
    lines = LOG_CAPTURE.lines[first_line:]
    # The audit log did see each patient, as a keyed hash only.
    text = "\n".join(lines)
    for patient in synthea_patients():
        assert patient_hash(TEST_HASH_KEY, f"Patient/{patient.id}") in text
    assert leaks(lines) == []


def test_no_log_line_so_far_carries_patient_data_or_tokens() -> None:
    """What the run logged up to here (the session-end check covers the rest of the run)."""
    assert LOG_CAPTURE.lines, "nothing was captured: the check would be empty"
    found = leaks(LOG_CAPTURE.lines)
    assert not found, f"{len(found)} log line(s) leak patient data or tokens:\n" + "\n".join(found[:25])
