"""Prefetch templates and `gather`: every prefetch shape for every key, the FHIR fallback, and Medications.

The fallback runs against a real FHIR server (sekmet with the nine test patients, integration); failures
that a real server will not produce on demand come from a scripted local server.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
from cds.config import Settings
from cds.errors import PreconditionFailed
from cds.fhir.client import FhirClient, client_factory_for
from cds.fhir.prefetch import Gathered, gather, medication_key, render_template, template_tokens
from tests.support.clocked_transport import ClockedTransport, FakeMonotonic, Timed
from tests.support.constants import NOW
from tests.support.fhir_server import FhirServerHandle, Reply, ScriptedServer

HOOKS = Path(__file__).resolve().parents[1] / "hooks"
TEMPLATES: dict[str, str] = json.loads((HOOKS / "patient-view.json").read_text(encoding="utf-8"))["prefetch"]
KEYS = sorted(TEMPLATES)
SEARCH_KEYS = [key for key in KEYS if key != "patient"]
DEVORA = "8945eece-a2f2-4764-8d05-6f9e801dd25d"  # 31 MR, 175 conditions, 2 allergies, 15 MS
CONTEXT = {"patientId": DEVORA, "userId": "Practitioner/COREPRACTITIONER1"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TEST_PATIENT = "ketcds-test-patient"


# ---------------------------------------------------------------------- templates


def test_render_context_and_user_tokens() -> None:
    context = {"patientId": "123", "userId": "Practitioner/abc", "encounterId": "e-1"}
    assert render_template("Patient/{{context.patientId}}", context) == "Patient/123"
    assert (
        render_template("Encounter?patient={{ context.patientId }}&_id={{context.encounterId}}", context)
        == "Encounter?patient=123&_id=e-1"
    )
    assert render_template("Practitioner/{{userPractitionerId}}", context) == "Practitioner/abc"
    assert render_template("Patient?x=1", context) == "Patient?x=1"  # no token at all
    assert render_template("Patient/{{context.patientId}}", {"patientId": 7}) == "Patient/7"
    assert render_template("X?flag={{context.flag}}", {"flag": True}) == "X?flag=true"


@pytest.mark.parametrize(
    ("user_id", "token", "value"),
    [
        ("Practitioner/abc", "userPractitionerId", "abc"),
        ("PractitionerRole/r-1", "userPractitionerRoleId", "r-1"),
        ("Patient/p.1", "userPatientId", "p.1"),
        ("RelatedPerson/rp", "userRelatedPersonId", "rp"),
        ("https://ehr.example.org/fhir/Practitioner/abc", "userPractitionerId", "abc"),
        ("Practitioner/abc", "userPractitionerRoleId", None),  # a practitioner is not a role
        ("Practitioner/abc", "userPatientId", None),
        ("PractitionerRole/r-1", "userPractitionerId", None),
        ("abc", "userPractitionerId", None),
        ("Practitioner/", "userPractitionerId", None),
        ("Device/abc", "userPractitionerId", None),
    ],
)
def test_user_tokens(user_id: str, token: str, value: str | None) -> None:
    rendered = render_template(f"X?u={{{{{token}}}}}", {"userId": user_id})
    assert rendered == (None if value is None else f"X?u={value}")


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("Patient/{{context.patientId}}", {}),  # missing
        ("Patient/{{context.patientId}}", {"patientId": ""}),  # empty
        ("Patient/{{context.patientId}}", {"patientId": None}),
        ("X?s={{context.selections}}", {"selections": ["MedicationRequest/1"]}),  # not a primitive
        ("X?d={{context.draftOrders}}", {"draftOrders": {"resourceType": "Bundle"}}),
        ("X?d={{context.draftOrders.id}}", {"draftOrders": {"id": "1"}}),  # not root-level
        ("X?d={{today()}}", {}),  # CDS Hooks 3.0 FHIRPath token: not in 2.0
        ("X?d={{userPractitionerId}}", {}),  # no userId
        ("X?a={{context.patientId}}&b={{unknown}}", {"patientId": "1"}),  # one bad token spoils it
    ],
)
def test_unresolvable_tokens(template: str, context: dict[str, Any]) -> None:
    assert render_template(template, context) is None


def test_values_are_url_encoded() -> None:
    nasty = "12 3&_include=*#/../x?y=%"
    rendered = render_template("Condition?patient={{context.patientId}}", {"patientId": nasty})
    assert rendered == "Condition?patient=12%203%26_include%3D%2A%23%2F..%2Fx%3Fy%3D%25"
    assert rendered is not None
    assert unquote(rendered.split("=", 1)[1]) == nasty
    user = render_template("X?u={{userPractitionerId}}", {"userId": "Practitioner/a.b-c"})
    assert user == "X?u=a.b-c"


@settings(derandomize=True)
@given(st.text(min_size=1))
def test_rendered_values_cannot_change_the_query(value: str) -> None:
    rendered = render_template("Condition?patient={{context.patientId}}&x=1", {"patientId": value})
    assert rendered is not None
    head, _, rest = rendered.partition("=")
    encoded, _, tail = rest.partition("&")
    assert head == "Condition?patient"
    assert tail == "x=1"
    assert set(encoded) <= set(string.ascii_letters + string.digits + "%-._~")
    assert unquote(encoded) == value


def test_template_tokens() -> None:
    assert template_tokens("Patient/{{context.patientId}}") == {"context.patientId"}
    assert template_tokens("X?a={{ userPractitionerId }}&b={{context.encounterId}}&c=1") == {
        "userPractitionerId",
        "context.encounterId",
    }
    assert template_tokens("Observation?code=a,b&_sort=-date") == set()


ALLOWED_TOKENS = {
    "patient-view": {"context.userId", "context.patientId", "context.encounterId"},
    "order-select": {"context.userId", "context.patientId", "context.encounterId"},
    "order-sign": {"context.userId", "context.patientId", "context.encounterId"},
}
USER_TOKENS = {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


@pytest.mark.parametrize("path", sorted(HOOKS.glob("*.json")), ids=lambda p: p.stem)
def test_discovery_templates_use_only_tokens_the_hook_defines(path: Path) -> None:
    service = json.loads(path.read_text(encoding="utf-8"))
    allowed = ALLOWED_TOKENS[service["hook"]] | USER_TOKENS
    for key, template in service.get("prefetch", {}).items():
        assert template_tokens(template) <= allowed, key
        rendered = render_template(template, {"patientId": "p", "userId": "Practitioner/u"})
        assert rendered is not None, key
        assert not rendered.startswith(("/", "http")), f"{key}: templates are relative to fhirServer"


# ---------------------------------------------------------------------- helpers for gather


@pytest.fixture(scope="module")
def ketcds_resources(fhir_server: FhirServerHandle) -> None:
    """The few `ketcds-test-` resources these tests read, put on the shared server (once per module)."""
    put_resources(fhir_server, ketcds_test_resources())


@pytest.fixture(autouse=True)
def _load_ketcds_resources(request: pytest.FixtureRequest) -> None:
    """A test that uses the real server (`fhir_server`) finds the `ketcds-test-` resources on it."""
    if "fhir_server" in request.fixturenames:
        request.getfixturevalue("ketcds_resources")


def ketcds_test_resources() -> list[dict[str, Any]]:
    def medication(mid: str, code: str, display: str) -> dict[str, Any]:
        return {
            "resourceType": "Medication",
            "id": mid,
            "code": {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display},
        }

    return [
        {"resourceType": "Patient", "id": TEST_PATIENT, "gender": "female", "birthDate": "1970-01-01"},
        medication("ketcds-test-med-1", "6130", "ketamine"),
        medication("ketcds-test-med-2", "197591", "Diazepam 5 MG Oral Tablet"),
        medication("ketcds-test-med-3", "204892", "clonazePAM 0.25 MG Oral Tablet"),
        medication_request("ketcds-test-mr-1", "Medication/ketcds-test-med-1", subject=TEST_PATIENT),
    ]


def medication_request(rid: str, reference: str, *, subject: str = DEVORA) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": reference},
        "subject": {"reference": f"Patient/{subject}"},
    }


def put_resources(server: FhirServerHandle, resources: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/fhir+json"}
    with requests.Session() as s:
        for resource in resources:
            url = f"{server.base_url}/{resource['resourceType']}/{resource['id']}"
            response = s.put(url, data=json.dumps(resource), headers=headers, timeout=10)
            assert response.status_code in {200, 201}, response.text[:500]


class RecordingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.auth_headers: list[str | None] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.urls.append(str(request.url))
        self.auth_headers.append(request.headers.get("Authorization"))
        return super().send(request, **kwargs)


@pytest.fixture
def session() -> Iterator[RecordingSession]:
    with RecordingSession() as s:
        yield s


def settings(**overrides: Any) -> Settings:
    return replace(Settings(), **overrides)


def factory(
    base_url: str, token: str | None, session: requests.Session, **overrides: Any
) -> Callable[[], FhirClient | None]:
    overrides.setdefault("fhir_server_allowlist", (base_url,))
    budget = overrides.pop("budget_s", 30.0)

    def make() -> FhirClient:
        clock = FakeMonotonic()  # stands still: every request gets the whole budget as its timeout
        return FhirClient(
            base_url,
            session=session,
            access_token=token,
            settings=settings(**overrides),
            deadline=clock() + budget,
            monotonic=clock,
        )

    return make


def no_server() -> None:
    return None


def must_not_be_called() -> FhirClient | None:
    raise AssertionError("the FHIR server was consulted although the prefetch was complete")


def request(
    prefetch: dict[str, Any] | None, context: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": CONTEXT if context is None else context,
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def ids(resources: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["resourceType"], r.get("id")) for r in resources]


@pytest.fixture(scope="module")
def truth(fhir_server: FhirServerHandle) -> dict[str, list[dict[str, Any]]]:
    """What the server holds for each key (Devora_Orn), fetched directly."""
    out: dict[str, list[dict[str, Any]]] = {}
    with requests.Session() as s:
        c = factory(fhir_server.base_url, fhir_server.token, s)()
        for key, template in TEMPLATES.items():
            query = render_template(template, CONTEXT)
            assert query is not None
            if key == "patient":
                found = c.read(query)
                assert found is not None
                out[key] = [found]
            else:
                out[key] = c.search(query)
    assert len(out["medicationRequests"]) == 31
    assert len(out["conditions"]) == 175
    assert len(out["allergies"]) == 2
    assert len(out["medicationStatements"]) == 15
    assert out["bloodPressure"] == []  # the test data has no Observations
    return out


def first_page(server: FhirServerHandle, key: str, count: int) -> dict[str, Any]:
    query = render_template(TEMPLATES[key], CONTEXT)
    assert query is not None
    query = re.sub(r"&_count=\d+", "", query)  # the template's page size: this page has its own
    response = requests.get(
        f"{server.base_url}/{query}&_count={count}",
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )
    assert response.status_code == 200
    page: dict[str, Any] = response.json()
    return page


# ---------------------------------------------------------------------- the prefetch shapes, key by key


SHAPES = [
    "absent",
    "null",
    "bundle",
    "empty-bundle",
    "empty-entry-list",
    "operation-outcome",
    "paginated",
    "list",
    "string",
    "wrong-type",
]


def shape_value(
    shape: str, key: str, server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]]
) -> Any:
    one = (
        truth[key][0] if truth[key] else {"resourceType": "Observation", "id": "ketcds-test-only-in-prefetch"}
    )
    if shape == "null":
        return None
    if shape == "bundle":
        return (
            one
            if key == "patient"
            else {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": one}]}
        )
    if shape == "empty-bundle":
        return {"resourceType": "Bundle", "type": "searchset", "total": 0}
    if shape == "empty-entry-list":
        return {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    if shape == "operation-outcome":
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception", "diagnostics": "prefetch failed"}],
        }
    if shape == "paginated":
        return truth[key][0] if key == "patient" else first_page(server, key, 5)
    if shape == "list":
        return [one]
    if shape == "string":
        return "Bundle"
    if shape == "wrong-type":
        return {"resourceType": "Practitioner", "id": "x"} if key == "patient" else truth["patient"][0]
    raise AssertionError(shape)


def expected(
    shape: str, key: str, value: Any, truth: dict[str, list[dict[str, Any]]]
) -> tuple[list[tuple[str, str]], bool]:
    """(resource ids gather must return, whether the key must come from the server)."""
    full = ids(truth[key])
    is_read = key == "patient"
    if shape == "null":
        return ([], False) if is_read else (full, True)
    if shape == "bundle":
        return (ids([value]) if is_read else ids([value["entry"][0]["resource"]])), False
    if shape in {"empty-bundle", "empty-entry-list"}:
        return (full, True) if is_read else ([], False)  # a Bundle is not a Patient: fetch the read
    if shape == "paginated":
        if is_read:
            return full, False
        has_next = any(link["relation"] == "next" for link in value.get("link", []))
        return full, has_next
    return full, True  # absent, OperationOutcome, and every malformed shape


@pytest.mark.integration
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", KEYS)
def test_every_shape_for_every_key(
    key: str,
    shape: str,
    fhir_server: FhirServerHandle,
    truth: dict[str, list[dict[str, Any]]],
    session: RecordingSession,
) -> None:
    prefetch = {other: {"resourceType": "Bundle", "type": "searchset"} for other in SEARCH_KEYS}
    prefetch["patient"] = truth["patient"][0]
    value: Any = None
    if shape == "absent":
        del prefetch[key]
    else:
        value = shape_value(shape, key, fhir_server, truth)
        prefetch[key] = value
    want, from_server = expected(shape, key, value, truth)

    gathered = gather(
        TEMPLATES,
        request(prefetch),
        KEYS,
        client_factory=factory(fhir_server.base_url, fhir_server.token, session),
    )

    assert ids(gathered.resources[key]) == want
    assert gathered.fetched == ((key,) if from_server else ())
    for other in KEYS:
        if other != key:
            assert len(gathered.resources[other]) == (1 if other == "patient" else 0)
    assert all(header == f"Bearer {fhir_server.token}" for header in session.auth_headers)
    assert bool(session.urls) == from_server


@pytest.mark.integration
def test_prefetched_first_page_is_completed_from_the_server(
    fhir_server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]], session: RecordingSession
) -> None:
    page = first_page(fhir_server, "conditions", 10)
    gathered = gather(
        TEMPLATES,
        request({"conditions": page}),
        ["conditions"],
        client_factory=factory(fhir_server.base_url, fhir_server.token, session),
    )
    assert ids(gathered.resources["conditions"]) == ids(truth["conditions"])
    assert len(session.urls) == 17  # pages 2..18 of 175 at 10 a page: the first came with the request
    assert gathered.fetched == ("conditions",)


@pytest.mark.integration
def test_relative_next_link_in_a_prefetched_page(
    fhir_server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]], session: RecordingSession
) -> None:
    page = first_page(fhir_server, "medicationRequests", 10)
    for link in page["link"]:
        link["url"] = link["url"].removeprefix(fhir_server.base_url + "/")
    gathered = gather(
        TEMPLATES,
        request({"medicationRequests": page}),
        ["medicationRequests"],
        client_factory=factory(fhir_server.base_url, fhir_server.token, session),
    )
    assert ids(gathered.resources["medicationRequests"]) == ids(truth["medicationRequests"])
    assert all(url.startswith(fhir_server.base_url) for url in session.urls)


@pytest.mark.integration
def test_next_link_to_another_server_is_not_followed_and_the_search_is_redone(
    fhir_server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]], session: RecordingSession
) -> None:
    page = first_page(fhir_server, "conditions", 10)
    with ScriptedServer(lambda _t: Reply(body={"resourceType": "Bundle", "type": "searchset"})) as elsewhere:
        for link in page["link"]:
            link["url"] = link["url"].replace(fhir_server.base_url, elsewhere.base_url)
        gathered = gather(
            TEMPLATES,
            request({"conditions": page}),
            ["conditions"],
            client_factory=factory(fhir_server.base_url, fhir_server.token, session),
        )
        assert elsewhere.requests == []  # and so the token never went there
    assert ids(gathered.resources["conditions"]) == ids(truth["conditions"])
    assert gathered.fetched == ("conditions",)


@pytest.mark.integration
def test_whole_fallback_from_the_server(
    fhir_server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]], session: RecordingSession
) -> None:
    gathered = gather(
        TEMPLATES,
        request(None),
        KEYS,
        client_factory=factory(fhir_server.base_url, fhir_server.token, session, fhir_page_size=50),
    )
    # the round trips, not the seconds: the Patient read, one page for each search of up to 100 records
    # (the templates' _count, larger than fhir_page_size, is kept) and two for the 175 conditions; the
    # medications come in with the MedicationRequests (_include), so none is read on its own
    assert len(session.urls) == 7
    assert sorted(url.removeprefix(fhir_server.base_url + "/").split("?")[0] for url in session.urls) == [
        "AllergyIntolerance",
        "Condition",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        f"Patient/{DEVORA}",
    ]
    assert gathered.fetched == tuple(TEMPLATES)  # template order
    for key in KEYS:
        assert ids(gathered.resources[key]) == ids(truth[key]), key
    assert session.auth_headers
    assert all(header == f"Bearer {fhir_server.token}" for header in session.auth_headers)


def test_patient_with_another_id_is_not_taken_for_the_patient(session: RecordingSession) -> None:
    other = {"resourceType": "Patient", "id": "somebody-else"}
    with pytest.raises(PreconditionFailed) as caught:
        gather(TEMPLATES, request({"patient": other}), ["patient"], client_factory=no_server)
    assert [issue.path for issue in caught.value.issues] == ["prefetch.patient"]


def test_only_needed_keys_are_gathered_and_an_unknown_key_is_a_bug() -> None:
    gathered = gather(
        TEMPLATES,
        request({"allergies": {"resourceType": "Bundle", "type": "searchset", "total": 0}}),
        {"allergies"},
        client_factory=must_not_be_called,
    )
    assert gathered == Gathered(resources={"allergies": ()}, medications={}, fetched=())
    with pytest.raises(ValueError, match="no prefetch template"):
        gather(TEMPLATES, request({}), ["labs"], client_factory=must_not_be_called)


def test_resources_are_deduplicated_by_type_and_id() -> None:
    condition = {"resourceType": "Condition", "id": "c1"}
    page = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": condition},
            {"resource": dict(condition)},
            {"resource": {"resourceType": "Condition", "id": "c2"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
            {"fullUrl": "urn:uuid:no-resource"},
            {"resource": {"resourceType": "Observation", "id": "c1"}},  # another type: not a repeat
            {"resource": {"resourceType": "Condition"}},  # no id: nothing to repeat, both kept
            {"resource": {"resourceType": "Condition"}},
        ],
    }
    gathered = gather(
        TEMPLATES, request({"conditions": page}), ["conditions"], client_factory=must_not_be_called
    )
    assert ids(gathered.resources["conditions"]) == [
        ("Condition", "c1"),
        ("Condition", "c2"),
        ("Observation", "c1"),
        ("Condition", None),
        ("Condition", None),
    ]


# ---------------------------------------------------------------------- 412: neither prefetched nor fetchable


@pytest.mark.parametrize("shape", ["absent", "null", "operation-outcome", "list", "paginated"])
def test_no_fhir_server_and_unusable_prefetch_is_412_naming_the_keys(shape: str) -> None:
    values: dict[str, Any] = {
        "null": None,
        "operation-outcome": {"resourceType": "OperationOutcome", "issue": []},
        "list": [],
        "paginated": {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "AllergyIntolerance", "id": "a1"}}],
            "link": [{"relation": "next", "url": "https://ehr.example.org/fhir/AllergyIntolerance?page=2"}],
        },
    }
    prefetch: dict[str, Any] = {"patient": {"resourceType": "Patient", "id": DEVORA}}
    if shape != "absent":
        prefetch["allergies"] = prefetch["conditions"] = values[shape]
    with pytest.raises(PreconditionFailed) as caught:
        gather(TEMPLATES, request(prefetch), KEYS, client_factory=no_server)
    error = caught.value
    assert error.status == 412
    paths = {issue.path for issue in error.issues}
    assert {"prefetch.allergies", "prefetch.conditions"} <= paths
    assert "prefetch.patient" not in paths
    for issue in error.issues:
        assert "neither provided in a usable form nor fetchable" in issue.diagnostics
        assert DEVORA not in issue.diagnostics


def test_complete_prefetch_needs_no_server() -> None:
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    prefetch: dict[str, Any] = dict.fromkeys(SEARCH_KEYS, empty)
    prefetch["patient"] = None  # a read with no data
    gathered = gather(TEMPLATES, request(prefetch), KEYS, client_factory=must_not_be_called)
    assert gathered.resources == dict.fromkeys(KEYS, ())
    assert gathered.fetched == ()


def test_missing_context_value_for_a_fetch_is_412() -> None:
    with ScriptedServer() as server, requests.Session() as s:
        with pytest.raises(PreconditionFailed) as caught:
            gather(
                TEMPLATES,
                request({}, context={"userId": "Practitioner/u"}),
                ["conditions"],
                client_factory=factory(server.base_url, "t", s),
            )
        assert server.requests == []
    assert [issue.path for issue in caught.value.issues] == ["prefetch.conditions"]
    assert "context values" in caught.value.issues[0].diagnostics


def test_plain_http_fhir_server_outside_dev_mode_is_412() -> None:
    auth = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "x"}
    body = request({}, fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization=auth)
    with requests.Session() as s:
        make = client_factory_for(body, settings=Settings(), session=s, deadline=5, monotonic=lambda: 0.0)
        with pytest.raises(PreconditionFailed) as caught:
            gather(TEMPLATES, body, ["allergies"], client_factory=make)
    issue = caught.value.issues[0]
    assert issue.path == "prefetch.allergies"
    assert "https" in issue.diagnostics


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(500, body={"resourceType": "OperationOutcome", "issue": []}), "HTTP 500"),
        (Reply(body=b"<html>no</html>", content_type="text/html"), "not JSON"),
        (Reply(body={"resourceType": "Bundle", "type": "searchset"}, delay_s=2), "in time"),
    ],
)
def test_fhir_failure_while_fetching_is_412(reply: Reply, why: str) -> None:
    with (
        ScriptedServer(lambda _t: reply) as server,
        requests.Session() as s,
        pytest.raises(PreconditionFailed) as caught,
    ):
        gather(
            TEMPLATES,
            request({"conditions": {"resourceType": "Bundle"}}),
            ["conditions", "allergies"],
            client_factory=factory(server.base_url, "tok-xyz", s, budget_s=0.5),
        )
    issue = caught.value.issues[0]
    assert issue.path == "prefetch.allergies"
    assert why in issue.diagnostics
    assert DEVORA not in issue.diagnostics
    assert "tok-xyz" not in issue.diagnostics


def test_dev_mode_sandbox_without_token_sends_no_authorization() -> None:
    with ScriptedServer(lambda _t: Reply(body={"resourceType": "Bundle", "type": "searchset"})) as server:
        body = request({}, fhirServer=server.base_url)
        with requests.Session() as s:
            clock = FakeMonotonic()
            make = client_factory_for(
                body, settings=settings(dev_mode=True), session=s, deadline=clock() + 5, monotonic=clock
            )
            gathered = gather(TEMPLATES, body, ["allergies"], client_factory=make)
    assert gathered.resources == {"allergies": ()}
    assert "authorization" not in server.requests[0].headers


def test_the_screener_runs_the_fhir_budget_on_its_own_clock(knowledge: Knowledge) -> None:
    """The screen's deadline is read from the Screener's monotonic clock and checked against the same one;
    the real clock, far from this one, would refuse every request or give them other timeouts."""
    clock = FakeMonotonic(start=1e9)
    transport = ClockedTransport(
        clock, lambda _url: Timed(body=b'{"resourceType": "Bundle", "type": "searchset"}')
    )
    with requests.Session() as http:
        http.mount("https://fhir.test/", transport)
        screener = Screener(
            knowledge,
            settings(dev_mode=True, fhir_time_budget_s=0.75),
            http,
            clock=lambda: NOW,
            monotonic=clock,
        )
        service = next(s for s in knowledge.services.values() if s.hook == "patient-view")
        result = screener.screen(service, request(None, fhirServer="https://fhir.test/r4"))
    assert result.cards == []  # no ketamine course in an empty chart
    assert sorted(urlsplit(sent.url).path for sent in transport.sent) == [  # patient-view reads it all
        "/r4/AllergyIntolerance",
        "/r4/Condition",
        "/r4/MedicationRequest",
        "/r4/MedicationStatement",
        "/r4/Observation",
    ]
    assert {sent.timeout for sent in transport.sent} == {(0.75, 0.75)}


# ---------------------------------------------------------------------- medicationReference resolution


def bundle_of(*resources: dict[str, Any], include: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]
        + [{"resource": r, "search": {"mode": "include"}} for r in include],
    }


MED_A = {"resourceType": "Medication", "id": "med-a", "code": {"text": "ketamine"}}
MED_B = {"resourceType": "Medication", "id": "med-b", "code": {"text": "diazepam"}}


def test_medications_from_includes_other_bundles_and_draft_orders() -> None:
    prefetch = {
        "medicationRequests": bundle_of(
            medication_request("mr-1", "Medication/med-a"),
            medication_request("mr-2", "Medication/med-b"),
            include=(MED_A,),
        ),
        "medicationStatements": bundle_of(MED_B),  # a Medication in any prefetch bundle counts
    }
    draft_med = {"resourceType": "Medication", "id": "med-d", "code": {"text": "esketamine"}}
    context = {
        **CONTEXT,
        "draftOrders": {  # as the sandbox sends it: no Bundle.type
            "resourceType": "Bundle",
            "entry": [
                {"resource": medication_request("draft-1", "Medication/med-d")},
                {"resource": draft_med},
            ],
        },
    }
    gathered = gather(
        TEMPLATES,
        request(prefetch, context),
        ["medicationRequests", "medicationStatements"],
        client_factory=must_not_be_called,
    )
    assert gathered.medications == {
        "Medication/med-a": MED_A,
        "Medication/med-b": MED_B,
        "Medication/med-d": draft_med,
    }


def test_contained_and_unresolvable_references_are_left_to_the_caller() -> None:
    contained = medication_request("mr-c", "#med1")
    contained["contained"] = [{"resourceType": "Medication", "id": "med1"}]
    prefetch = {"medicationRequests": bundle_of(contained, medication_request("mr-x", "Medication/nowhere"))}
    gathered = gather(TEMPLATES, request(prefetch), ["medicationRequests"], client_factory=no_server)
    assert gathered.medications == {}
    assert len(gathered.resources["medicationRequests"]) == 2


@pytest.mark.integration
def test_medications_read_from_the_server_once_each(
    fhir_server: FhirServerHandle, session: RecordingSession
) -> None:
    base = fhir_server.base_url
    prefetch = {
        "medicationRequests": bundle_of(
            medication_request("mr-1", "Medication/ketcds-test-med-2"),
            medication_request("mr-2", "Medication/ketcds-test-med-2"),  # same again: one read
            medication_request("mr-3", f"{base}/Medication/ketcds-test-med-3/_history/1"),  # absolute, ours
            medication_request("mr-4", "Medication/ketcds-test-no-such-medication"),  # 404: absent
            medication_request("mr-5", "https://elsewhere.example.org/fhir/Medication/ketcds-test-med-1"),
        )
    }
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-1",
        "status": "active",
        "medicationReference": {"reference": "Medication/ketcds-test-med-3"},
        "subject": {"reference": f"Patient/{DEVORA}"},
    }
    context = {**CONTEXT, "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": statement}]}}
    gathered = gather(
        TEMPLATES,
        request(prefetch, context),
        ["medicationRequests"],
        client_factory=factory(base, fhir_server.token, session),
    )
    assert sorted(gathered.medications) == ["Medication/ketcds-test-med-2", "Medication/ketcds-test-med-3"]
    assert gathered.medications["Medication/ketcds-test-med-2"]["code"]["text"] == "Diazepam 5 MG Oral Tablet"
    assert gathered.fetched == ()  # medications are not prefetch keys
    reads = sorted(url.removeprefix(base + "/") for url in session.urls)
    assert reads == [
        "Medication/ketcds-test-med-2",
        "Medication/ketcds-test-med-3",
        "Medication/ketcds-test-no-such-medication",
    ]  # the foreign absolute reference is never read from our server, nor sent the token
    assert all(header == f"Bearer {fhir_server.token}" for header in session.auth_headers)


@pytest.mark.integration
def test_medication_included_by_the_server_search(
    fhir_server: FhirServerHandle, session: RecordingSession
) -> None:
    gathered = gather(
        TEMPLATES,
        request({}, {"patientId": TEST_PATIENT, "userId": "Practitioner/u"}),
        ["medicationRequests"],
        client_factory=factory(fhir_server.base_url, fhir_server.token, session),
    )
    assert ids(gathered.resources["medicationRequests"]) == [
        ("MedicationRequest", "ketcds-test-mr-1"),
        ("Medication", "ketcds-test-med-1"),
    ]
    assert list(gathered.medications) == ["Medication/ketcds-test-med-1"]
    assert len(session.urls) == 1  # _include=MedicationRequest:medication: no separate read


def test_medication_read_failures_leave_the_medication_absent() -> None:
    prefetch = {"medicationRequests": bundle_of(medication_request("mr-1", "Medication/m1"))}
    with ScriptedServer(lambda _t: Reply(500)) as server, requests.Session() as s:
        gathered = gather(
            TEMPLATES,
            request(prefetch),
            ["medicationRequests"],
            client_factory=factory(server.base_url, "t", s),
        )
        assert len(server.requests) == 1
    assert gathered.medications == {}
    assert gathered.fetched == ()


@pytest.mark.parametrize(
    ("reference", "key"),
    [
        ("Medication/123", "Medication/123"),
        ("https://ehr.example.org/fhir/Medication/a.b-c", "Medication/a.b-c"),
        ("Medication/123/_history/2", "Medication/123"),
        ("#med1", None),
        ("", None),
        ("Substance/123", None),
        ("Medication/", None),
        ("urn:uuid:5f1c", None),
    ],
)
def test_medication_key(reference: str, key: str | None) -> None:
    assert medication_key(reference) == key


@pytest.mark.integration
@pytest.mark.parametrize("url", ["", None, 42])
def test_next_link_without_a_usable_url_means_the_search_is_redone(
    url: Any, fhir_server: FhirServerHandle, truth: dict[str, list[dict[str, Any]]], session: RecordingSession
) -> None:
    page = first_page(fhir_server, "medicationStatements", 5)
    page["link"] = [{"relation": "next", "url": url}]
    gathered = gather(
        TEMPLATES,
        request({"medicationStatements": page}),
        ["medicationStatements"],
        client_factory=factory(fhir_server.base_url, fhir_server.token, session),
    )
    assert ids(gathered.resources["medicationStatements"]) == ids(truth["medicationStatements"])
    assert gathered.fetched == ("medicationStatements",)
