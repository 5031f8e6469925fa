"""No log line of the whole suite carries patient data or a token. Runs last, by name.

conftest's LOG_CAPTURE keeps every record any logger emitted during the run (root at DEBUG, so library
loggers too). This module fails if one of them contains:

* the id of a test patient: the nine Synthea patients (tests/data/fhir-test-data) and the scenario
  patient of tests/support/builders.py;
* a test patient's name: every given and family name in their Patient resources, as a whole word;
* any string a test registered in conftest.SENSITIVE (client JWTs, Authorization headers, FHIR tokens);
* anything shaped like a JWT: three base64url segments joined by dots, over 40 characters.

The first test drives the service with every Synthea patient's real chart (ids, names, identifiers,
addresses) through every hook, accepted and refused, so the check means something even when this
module runs alone; tests/test_api_auth.py and tests/test_fuzz.py send the same patients through
production-mode authentication and through thousands of malformed requests.

Proven to bite: with a temporary `log.info("screening %s", patient_ref)` in cds/web/api.py the check
failed, naming the patient ids it found (done once by hand when this test was written).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Flask

from cds.storage.store import patient_hash
from tests.conftest import LOG_CAPTURE, SENSITIVE
from tests.support.synthea import identifying_strings, synthea_patients, synthea_request

JWT_SHAPED = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MIN_SENSITIVE_CHARS = 8  # shorter registered strings would match by chance (and are no real secret)
SERVICES = {
    "patient-view": "ketamine-patient-view",
    "order-select": "ketamine-order-select",
    "order-sign": "ketamine-order-sign",
}


def leaks(lines: list[str]) -> list[str]:
    """Each offending line, with what it leaks (secrets and JWTs in the line shown are redacted)."""
    ids, names = identifying_strings()
    name_pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len)[::-1]) + r")\b")
    secrets = sorted(s for s in SENSITIVE if len(s) >= MIN_SENSITIVE_CHARS)
    found = []
    for number, line in enumerate(lines):
        reasons = [f"patient id {pid}" for pid in ids if pid in line]
        reasons += [f"patient name {m.group(1)!r}" for m in name_pattern.finditer(line)]
        leaked = [s for s in secrets if s in line]
        reasons += [f"registered secret ({len(s)} chars)" for s in leaked]
        shaped = [m.group(0) for m in JWT_SHAPED.finditer(line) if len(m.group(0)) > 40]
        reasons += [f"JWT-shaped ({len(t)} chars)" for t in shaped]
        if reasons:
            shown = line
            for secret in (*leaked, *shaped):
                shown = shown.replace(secret, "<redacted>")
            found.append(f"line {number}: {'; '.join(dict.fromkeys(reasons))} in: {shown[:200]}")
    return found


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
        body["fhirServer"] = "http://127.0.0.1:9/fhir"
        token = f"fhir-token-{patient.id}"
        SENSITIVE.add(token)
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "subject": "cds"}
        refused.append((412, body))
        for status, body in refused:
            assert client.post("/cds-services/ketamine-patient-view", json=body).status_code == status
    flask_app.extensions["ketamine_cds"].flush()
    # The audit log did see each patient, as a keyed hash only.
    text = "\n".join(LOG_CAPTURE.lines)
    for patient in synthea_patients():
        assert patient_hash("test-key", f"Patient/{patient.id}") in text


def test_no_log_line_carries_patient_data_or_tokens() -> None:
    assert LOG_CAPTURE.lines, "nothing was captured: the check would be empty"
    found = leaks(LOG_CAPTURE.lines)
    assert not found, f"{len(found)} log line(s) leak patient data or tokens:\n" + "\n".join(found[:25])
