"""The pre-session worklist against a real FHIR server (sekmet) loaded with sessions inside and outside the
window, with bearer and SMART Backend Services authentication, in all three formats.

Clock: 1 Dec 2026, 12:00 UTC. Window: 2-4 Dec 2026 in Europe/Berlin (UTC+1 in December).
Expected dates are written out by hand from the site policy defaults:
- clonazepam hold "24-48" h before, resume 6 h after: session Thu 3 Dec 09:00 -> last dose by Tue 1 Dec
  09:00 (48 h), at the latest Wed 2 Dec 09:00 (24 h), resume from Thu 3 Dec 15:00;
- myocardial infarction on 1 Oct 2026, contraindication within 6 months of the session -> still inside on
  1 Apr 2027 (1 Oct is exactly 6 months before it), eligible from 2 Apr 2027.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient

from cds.config import TrustedIssuer
from cds.worklist.build import Worklist
from cds.worklist.command import build_worklist
from cds.worklist.config import load_worklist_config
from cds.worklist.render import CSV_COLUMNS, render_worklist, worklist_to_dict
from tests.conftest import SENSITIVE
from tests.support import worklist_data as wd
from tests.support.constants import NOW as APP_NOW
from tests.support.fhir_server import FhirServerHandle, running_fhir_server

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FIRST_DAY = date(2026, 12, 2)
DAYS = 3
CLIENT_ID = "ketcds-worklist-test"
KEY_ID = "worklist-test-key"
P = "ketcds-wl-"  # every id this test creates
NAMES = {
    "benzo": ("Bettina", "Holdwell"),
    "mi": ("Martin", "Cardio"),
    "two": ("Tamsin", "Twice"),
    "unread": ("Ursula", "Unread"),
    "bounds": ("Boris", "Weekly"),
    "other": ("Otto", "Dentist"),
    "later": ("Lena", "Later"),
    "epi": ("Edith", "Seizewell"),
    "ghost": ("Gustav", "Ghost"),
}


def _fixtures() -> list[dict[str, Any]]:
    patients = [wd.patient(P + key, *name) for key, name in NAMES.items() if key != "ghost"]
    return [
        *patients,
        # a benzodiazepine to hold; the session is marked only by its description
        wd.appointment(
            P + "a-benzo", P + "benzo", "2026-12-03T09:00:00+01:00", description="Ketamine infusion 3 of 6"
        ),
        wd.clonazepam(P + "m-benzo", P + "benzo"),
        # a recent infarction (critical); the session is an esketamine one, named by brand in serviceType
        wd.appointment(
            P + "a-mi",
            P + "mi",
            "2026-12-02T10:30:00+01:00",
            serviceType=[{"text": "Spravato treatment session"}],
        ),
        wd.myocardial_infarction(P + "c-mi", P + "mi", "2026-10-01"),
        # two sessions: an appointment marked with the site's own code, and an order dose two days later
        wd.appointment(
            P + "a-two",
            P + "two",
            "2026-12-02T14:00:00+01:00",
            appointmentType={"coding": [{"system": wd.SITE_SERVICE, "code": "KET-INF"}]},
        ),
        wd.ketamine_order(P + "m-two", P + "two", event=["2026-12-04T10:00:00+01:00"]),
        # based on an esketamine order (ServiceRequest), with a record the screen cannot read
        {
            "resourceType": "ServiceRequest",
            "id": P + "s-unread",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{P}unread"},
            "code": {"coding": [{"system": wd.RXNORM, "code": "2201625"}]},
        },
        wd.appointment(
            P + "a-unread",
            P + "unread",
            "2026-12-03T11:00:00+01:00",
            basedOn=[{"reference": f"ServiceRequest/{P}s-unread"}],
        ),
        wd.unreadable_condition(P + "c-unread", P + "unread"),
        # a weekly course that started before the window: its dose on Wed 2 Dec counts
        wd.ketamine_order(
            P + "m-bounds",
            P + "bounds",
            repeat={"boundsPeriod": {"start": "2026-11-25"}, "period": 1, "periodUnit": "wk"},
        ),
        # left out: not a ketamine appointment, a ketamine session after the window, a cancelled one
        wd.appointment(
            P + "a-other", P + "other", "2026-12-03T08:00:00+01:00", description="Dental check-up"
        ),
        wd.appointment(
            P + "a-later", P + "later", "2026-12-10T09:00:00+01:00", description="Ketamine infusion"
        ),
        wd.appointment(
            P + "a-cancelled",
            P + "later",
            "2026-12-03T09:00:00+01:00",
            status="cancelled",
            description="Ketamine infusion",
        ),
        # clonazepam as an antiepileptic: never a hold, the review says why
        wd.appointment(P + "a-epi", P + "epi", "2026-12-04T10:30:00+01:00", description="Ketamine infusion"),
        wd.clonazepam(P + "m-epi", P + "epi"),
        wd.epilepsy(P + "c-epi", P + "epi"),
        # the patient record does not exist on the server: listed as not screened, never as clear
        wd.appointment(P + "a-ghost", P + "ghost", "2026-12-04T16:00:00+01:00", description="ketamine"),
    ]


@pytest.fixture(scope="module")
def smart_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path_factory.mktemp("smart") / "worklist-key.pem"
    path.write_bytes(pem)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KEY_ID, alg="RS384", use="sig")
    return path, {"keys": [jwk]}


@pytest.fixture(scope="module")
def server(smart_key: tuple[Path, dict[str, Any]]) -> Iterator[FhirServerHandle]:
    _path, jwks = smart_key
    clients: list[dict[str, object]] = [{"client_id": CLIENT_ID, "jwks": jwks, "scopes": "system/*.read"}]
    with running_fhir_server(load_patients=False, smart_clients=clients) as handle:
        SENSITIVE.add(handle.token)
        for key, (given, family) in NAMES.items():  # tests/test_zz_log_hygiene.py: never in a log line
            SENSITIVE.update({P + key, f"{given} {family}", family})
        wd.load(handle.base_url, handle.token, _fixtures())
        yield handle


def _config_file(tmp_path: Path, server: FhirServerHandle, auth: dict[str, Any]) -> Path:
    sessions = tmp_path / "sessions.yaml"
    default = (Path(__file__).resolve().parents[1] / "rules" / "_sessions.yaml").read_text(encoding="utf-8")
    sessions.write_text(
        default.replace(
            "codes: []", f"codes:\n  - {{system: '{wd.SITE_SERVICE}', code: KET-INF, product: ketamine}}"
        ),
        encoding="utf-8",
    )
    config = {
        "fhir_server": server.base_url,
        "allow_server": True,
        "timezone": "Europe/Berlin",
        "concurrency": 4,
        "sessions_file": "sessions.yaml",
        "auth": auth,
    }
    path = tmp_path / "worklist.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _build(config_path: Path, **kwargs: Any) -> Worklist:
    config = load_worklist_config(config_path, **kwargs)
    return build_worklist(config, FIRST_DAY, DAYS, clock=lambda: NOW)


@pytest.fixture(scope="module")
def bearer_list(server: FhirServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Worklist:
    path = _config_file(tmp_path_factory.mktemp("bearer"), server, {"type": "bearer"})
    return _build(path, token=server.token)


def _row(worklist: Worklist, key: str) -> Any:
    rows = [row for row in worklist.rows if row.patient_id == P + key]
    assert len(rows) == 1, f"{key}: {len(rows)} rows"
    return rows[0]


def test_lists_exactly_the_sessions_in_the_window(bearer_list: Worklist) -> None:
    listed = [row.patient_id for row in bearer_list.rows]
    assert listed == [
        P + k for k in ("bounds", "mi", "two", "benzo", "unread", "epi", "ghost")
    ]  # by first session
    assert all(pid != P + "other" and pid != P + "later" for pid in listed)
    assert bearer_list.session_count == 8
    two = _row(bearer_list, "two")
    assert [s.start.isoformat() for s in two.sessions] == [
        "2026-12-02T14:00:00+01:00",
        "2026-12-04T10:00:00+01:00",
    ]
    assert [s.source for s in two.sessions] == [f"Appointment/{P}a-two", f"MedicationRequest/{P}m-two"]
    bounds = _row(bearer_list, "bounds")
    assert [s.start.isoformat() for s in bounds.sessions] == ["2026-12-02T09:00:00+01:00"]
    assert _row(bearer_list, "mi").sessions[0].products == frozenset({"esketamine"})
    assert _row(bearer_list, "unread").sessions[0].products == frozenset({"esketamine"})


def test_benzodiazepine_hold_dates(bearer_list: Worklist) -> None:
    row = _row(bearer_list, "benzo")
    assert row.screened
    assert row.name == "Bettina Holdwell"
    assert len(row.holds) == 1
    hold = row.holds[0]
    assert "clonazepam" in hold.medicine.lower()
    assert hold.session.isoformat() == "2026-12-03T09:00:00+01:00"
    assert hold.last_dose_by.isoformat() == "2026-12-01T09:00:00+01:00"
    assert hold.last_dose_latest.isoformat() == "2026-12-02T09:00:00+01:00"
    assert hold.resume_from.isoformat() == "2026-12-03T15:00:00+01:00"
    assert not row.critical
    assert any("fast" in text.lower() for text in row.instructions)


def test_antiepileptic_benzodiazepine_is_never_held(bearer_list: Worklist) -> None:
    row = _row(bearer_list, "epi")
    assert row.screened
    assert row.holds == ()
    assert any("do not hold" in text.lower() for text in row.review)


def test_recent_infarction_is_critical_with_the_date_it_ends(bearer_list: Worklist) -> None:
    row = _row(bearer_list, "mi")
    assert row.screened
    assert len(row.critical) == 1
    assert row.critical[0].eligible_from == date(2027, 4, 2)
    assert any(word in row.critical[0].summary.lower() for word in ("infarction", "heart attack"))
    assert bearer_list.critical_count == 1


def test_unreadable_record_and_missing_patient_are_said(bearer_list: Worklist) -> None:
    unread = _row(bearer_list, "unread")
    assert unread.screened
    assert unread.unreadable
    ghost = _row(bearer_list, "ghost")
    assert not ghost.screened
    assert ghost.not_screened_reason
    assert "not found" in ghost.not_screened_reason
    assert not ghost.critical
    assert not ghost.holds
    assert not ghost.instructions
    assert bearer_list.not_screened == 1


def test_json_and_csv(bearer_list: Worklist) -> None:
    document = json.loads(render_worklist(bearer_list, "json"))
    assert document == worklist_to_dict(bearer_list)
    assert document["schema"] == "ketamine-cds/worklist/1"
    assert document["summary"] == {"patients": 7, "sessions": 8, "critical": 1, "calls": 7, "notScreened": 1}
    benzo = next(p for p in document["patients"] if p["patientId"] == P + "benzo")
    assert benzo["holds"][0]["lastDoseBy"] == "2026-12-01T09:00:00+01:00"
    assert benzo["holds"][0]["resumeFrom"] == "2026-12-03T15:00:00+01:00"
    mi = next(p for p in document["patients"] if p["patientId"] == P + "mi")
    assert mi["critical"][0]["action"] == "defer"
    assert mi["critical"][0]["eligibleFrom"] == "2027-04-02"

    rows = list(csv.DictReader(io.StringIO(render_worklist(bearer_list, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {r["patient_id"] for r in rows} == {row.patient_id for row in bearer_list.rows}
    hold = next(r for r in rows if r["action"] == "hold")
    assert (hold["patient"], hold["last_dose_by"], hold["resume_from"]) == (
        "Bettina Holdwell",
        "2026-12-01 09:00",
        "2026-12-03 15:00",
    )
    defer = next(r for r in rows if r["action"] == "defer")
    assert (defer["patient"], defer["eligible_from"]) == ("Martin Cardio", "2027-04-02")
    ghost = [r for r in rows if r["patient_id"] == P + "ghost"]
    assert [r["action"] for r in ghost] == ["not-screened"]
    two = next(r for r in rows if r["patient_id"] == P + "two")
    assert two["sessions"] == "2026-12-02 14:00; 2026-12-04 10:00"


def test_smart_backend_services_end_to_end(
    server: FhirServerHandle, smart_key: tuple[Path, dict[str, Any]], tmp_path: Path, bearer_list: Worklist
) -> None:
    key_path, _jwks = smart_key
    auth = {
        "type": "smart",
        "client_id": CLIENT_ID,
        "private_key_file": str(key_path),
        "key_id": KEY_ID,
        "algorithm": "RS384",
        "scope": "system/*.read",
    }
    smart_list = _build(_config_file(tmp_path, server, auth))
    assert worklist_to_dict(smart_list)["patients"] == worklist_to_dict(bearer_list)["patients"]


def test_smart_with_an_unregistered_key_is_refused(server: FhirServerHandle, tmp_path: Path) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = tmp_path / "other.pem"
    key_path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    auth = {"type": "smart", "client_id": CLIENT_ID, "private_key_file": str(key_path), "key_id": KEY_ID}
    from cds.fhir.smart_backend import AuthFailed

    with pytest.raises(AuthFailed, match="HTTP 401"):
        _build(_config_file(tmp_path, server, auth))


def test_command_writes_the_file_and_a_summary_without_names_or_tokens(
    server: FhirServerHandle, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, server, {"type": "bearer"})
    output = tmp_path / "list.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds.cli",
            "worklist",
            "--config",
            str(config),
            "--from",
            "2026-12-02",
            "--days",
            "3",
            "--format",
            "csv",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env={"KETAMINE_WORKLIST_TOKEN": server.token, "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "patients" in result.stderr
    assert "calls to make" in result.stderr
    assert "Holdwell" in output.read_text(encoding="utf-8")
    for secret in (server.token, "Holdwell", "Bettina", P):
        assert secret not in result.stderr + result.stdout


def test_plain_http_server_needs_allowing(server: FhirServerHandle, tmp_path: Path) -> None:
    config = _config_file(tmp_path, server, {"type": "bearer"})
    text = json.loads(config.read_text(encoding="utf-8"))
    text["allow_server"] = False
    config.write_text(json.dumps(text), encoding="utf-8")
    from cds.fhir.client import InsecureFhirServer

    with pytest.raises(InsecureFhirServer):
        _build(config, token=server.token)


def test_html_page_in_headless_chromium(bearer_list: Worklist, tmp_path: Path) -> None:
    from tests.support.browser import axe_violations, dump_dom, ensure_chromium, print_pdf, screenshot

    chromium = ensure_chromium()
    page = tmp_path / "worklist.html"
    page.write_text(render_worklist(bearer_list, "html"), encoding="utf-8")
    url = page.as_uri()
    dom = dump_dom(chromium, url)
    assert '<html lang="en">' in dom
    for day in ("Wednesday 2 December 2026", "Thursday 3 December 2026", "Friday 4 December 2026"):
        assert f">{day}: " in dom  # one section (and printed page) per day with sessions
    assert "Bettina Holdwell" in dom
    assert "Tue 1 Dec 09:00" in dom
    assert "Thu 3 Dec 15:00" in dom
    assert "Eligible from <strong>Friday 2 April 2027</strong>" in dom
    assert "Also in session this day, listed on an earlier day: Tamsin Twice (Fri 4 Dec 10:00)" in dom
    assert "Not screened" in dom
    assert "Dentist" not in dom
    assert "Lena" not in dom
    assert dom.count('<th scope="row">') == len(bearer_list.rows)
    pdf = print_pdf(chromium, url, tmp_path / "worklist.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 3  # one printed page per day
    assert axe_violations(chromium, page.read_text(encoding="utf-8"), tmp_path) == []  # WCAG 2.1 AA
    png = screenshot(chromium, url, tmp_path / "worklist.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_smart_token_is_reused_and_refreshed_before_expiry(
    server: FhirServerHandle, smart_key: tuple[Path, dict[str, Any]]
) -> None:
    import requests

    from cds.fhir.smart_backend import REFRESH_MARGIN_S, SmartBackendToken, SmartClientConfig

    key_path, _jwks = smart_key
    now = [1_000_000.0]
    source = SmartBackendToken(
        server.base_url,
        SmartClientConfig(CLIENT_ID, key_path.read_text(encoding="utf-8"), KEY_ID, "RS384", "system/*.read"),
        session=requests.Session(),
        url_allowed=lambda _url: True,
        clock=lambda: now[0],
    )
    first = source.token()
    SENSITIVE.add(first)
    assert source.token() == first
    assert source.tokens_fetched == 1
    now[0] += 3600 - REFRESH_MARGIN_S  # sekmet's tokens live 3600 s: inside the margin, a new one is fetched
    second = source.token()
    SENSITIVE.add(second)
    assert source.tokens_fetched == 2
    answer = requests.get(
        f"{server.base_url}/Patient/{P}benzo", headers={"Authorization": f"Bearer {second}"}, timeout=10
    )
    assert answer.status_code == 200


# ---------------------------------------------------------------------- GET /worklist


@pytest.fixture
def worklist_file(server: FhirServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KETAMINE_WORKLIST_TOKEN", server.token)
    text = json.loads(_config_file(tmp_path, server, {"type": "bearer"}).read_text(encoding="utf-8"))
    path = tmp_path / "worklist.yaml"
    path.write_text(json.dumps(text), encoding="utf-8")
    return path


def test_endpoint_serves_the_same_list(
    make_app: Callable[..., Flask], worklist_file: Path, bearer_list: Worklist
) -> None:
    client = make_app(worklist_config=str(worklist_file)).test_client()
    response = client.get("/worklist?from=2026-12-02&days=3")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.headers["Cache-Control"] == "no-store"
    served = response.get_json()["patients"]
    expected = worklist_to_dict(bearer_list)["patients"]

    def decisions(patients: list[dict[str, Any]]) -> list[Any]:
        # the wording may count months from each call's own today; the decisions and dates may not differ
        return [
            (
                p["patientId"],
                p["sessions"],
                [(h["medicine"], h["lastDoseBy"], h["resumeFrom"]) for h in p["holds"]],
                [c["eligibleFrom"] for c in p["critical"]],
                p["notScreenedReason"],
            )
            for p in patients
        ]

    assert decisions(served) == decisions(expected)
    csv_text = client.get("/worklist?from=2026-12-02&days=3&format=csv")
    assert csv_text.content_type.startswith("text/csv")
    assert csv_text.get_data(as_text=True).startswith(",".join(CSV_COLUMNS))


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("from=02-12-2026&days=3", "from"),
        ("from=2026-12-02&days=0", "days"),
        ("from=2026-12-02&format=pdf", "format"),
    ],
)
def test_endpoint_rejects_bad_parameters(
    make_app: Callable[..., Flask], worklist_file: Path, query: str, path: str
) -> None:
    response = make_app(worklist_config=str(worklist_file)).test_client().get(f"/worklist?{query}")
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [path]


def test_endpoint_absent_unless_configured(client: FlaskClient) -> None:
    assert client.get("/worklist?from=2026-12-02").status_code == 404


def test_endpoint_needs_client_authentication_in_production(
    make_app: Callable[..., Flask],
    worklist_file: Path,
    smart_key: tuple[Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    key_path, jwks = smart_key  # reused here as the EHR client's signing key
    jwks_file = tmp_path / "ehr-jwks.json"
    jwks_file.write_text(json.dumps(jwks), encoding="utf-8")
    base, iss = "https://cds.example.org", "https://ehr.example.org/worklist-client"
    prod = make_app(
        dev_mode=False,
        public_base_url=base,
        trusted_issuers=(TrustedIssuer(iss=iss, jwks_file=str(jwks_file)),),
        worklist_config=str(worklist_file),
    ).test_client()
    assert prod.get("/worklist?from=2026-12-02&days=3").status_code == 401
    now = int(APP_NOW.timestamp())  # the app judges the token on the clock make_app gives it
    claims = {
        "iss": iss,
        "sub": "ehr",
        "aud": base + "/worklist",
        "iat": now,
        "exp": now + 300,
        "jti": "wl-1",
    }
    token = jwt.encode(
        claims, key_path.read_text(encoding="utf-8"), algorithm="RS384", headers={"kid": KEY_ID}
    )
    SENSITIVE.add(token)
    response = prod.get("/worklist?from=2026-12-02&days=3", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert len(response.get_json()["patients"]) == 7
