"""FhirClient against a real FHIR server (sekmet, integration) and a scripted server that misbehaves.

What must hold: the bearer token on every call and only under the base URL, paging that returns every
resource once, and every limit (pages, bytes, deadline) or failure turned into a FhirError whose message
carries neither the token nor patient data.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from cds.config import Settings, TrustedIssuer, load_settings
from cds.errors import ConfigError, FhirError
from cds.fhir.client import FhirAccessRefused, FhirClient, InsecureFhirServer, client_factory_for
from cds.fhir.prefetch import render_template
from tests.support.clocked_transport import ClockedTransport, FakeMonotonic, Timed
from tests.support.fhir_server import DATA_DIR, FhirServerHandle, Reply, ScriptedServer

TOKEN = "s3cr3t-token-value"
EDDIE = "b13e6919-2ec8-4a7b-8583-2e1e120a6285"
JONATHON = "b7c92413-a130-40b7-86ec-3a43a7e833c9"


# ---------------------------------------------------------------------- fixtures and helpers


class RecordingSession(requests.Session):
    """A real session that remembers every request it sent (URL and headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(request)
        return super().send(request, **kwargs)


@pytest.fixture
def session() -> Iterator[RecordingSession]:
    with RecordingSession() as s:
        yield s


def settings(**overrides: Any) -> Settings:
    return replace(Settings(), **overrides)


def client(
    base_url: str,
    session: requests.Session,
    *,
    token: str | None = TOKEN,
    budget_s: float = 10.0,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> FhirClient:
    """A client whose deadline is `budget_s` after now on `clock` (a fake one that stands still unless
    the test moves it: no test here depends on how fast the machine is)."""
    overrides.setdefault("fhir_allow_http", True)
    clock = clock or FakeMonotonic()
    return FhirClient(
        base_url,
        session=session,
        access_token=token,
        settings=settings(**overrides),
        deadline=clock() + budget_s,
        monotonic=clock,
    )


def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if resources:
        body["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in resources]
    if next_url is not None:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def assert_clean(exc: BaseException, *secrets: str) -> None:
    """The message names no token and no patient data (ids, query values)."""
    text = str(exc)
    for secret in (TOKEN, EDDIE, "pat-123", *secrets):
        assert secret not in text
    assert exc.__cause__ is None or isinstance(exc.__cause__, FhirError)


def rows(path_and_query: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(path_and_query).query)


# ---------------------------------------------------------------------- scripted server: paging and headers


def test_token_and_accept_on_every_page_and_next_links_absolute_or_relative(
    session: RecordingSession,
) -> None:
    def script(target: str) -> Reply:
        page = rows(target).get("page", ["1"])[0]
        if page == "1":  # relative next link, resolved against this page's URL
            return Reply(body=bundle([patient("a"), patient("b")], "Patient?page=2"))
        if page == "2":  # absolute next link; "b" again (an overlapping page) must not repeat
            return Reply(body=bundle([patient("b"), patient("c")], f"{server.base_url}/Patient?page=3"))
        return Reply(body=bundle([patient("d")]))

    with ScriptedServer(script) as server:
        found = client(server.base_url, session).search("Patient?name=pat-123")
        assert [r["id"] for r in found] == ["a", "b", "c", "d"]
        assert len(server.requests) == 3
        for request in server.requests:
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
            assert request.headers["accept"] == "application/fhir+json"
            assert request.target.startswith("/fhir/Patient?")
        assert rows(server.requests[0].target)["_count"] == [
            "1000"
        ]  # added (the default page size): the query had none


def test_no_token_means_no_authorization_header(session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: Reply(body=bundle([patient("a")]))) as server:
        assert client(server.base_url, session, token=None).search("Patient")[0]["id"] == "a"
        assert "authorization" not in server.requests[0].headers


def test_own_count_is_kept(session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: Reply(body=bundle([]))) as server:
        assert client(server.base_url, session).search("Observation?patient=pat-123&_count=10") == []
        assert rows(server.requests[0].target)["_count"] == ["10"]


def test_outcome_entries_and_included_resources() -> None:
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "m1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Medication", "id": "med1"}, "search": {"mode": "include"}},
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "search": {"mode": "outcome"},
            },
        ],
    }
    with ScriptedServer(lambda _t: Reply(body=body)) as server, requests.Session() as s:
        found = client(server.base_url, s).search("MedicationRequest?_include=MedicationRequest:medication")
    assert [(r["resourceType"], r["id"]) for r in found] == [
        ("MedicationRequest", "m1"),
        ("Medication", "med1"),
    ]


# ---------------------------------------------------------------------- scripted server: the token stays home


NEXT_LINKS_ELSEWHERE: dict[str, Callable[[ScriptedServer, ScriptedServer], str]] = {
    "other port": lambda _home, other: f"{other.base_url}/Patient?page=2",
    "same origin, other path": lambda home, _other: f"{home.origin}/admin/Patient?page=2",
    "base path as a prefix only": lambda home, _other: f"{home.origin}/fhirx/Patient?page=2",
    "dot-dot escape": lambda home, _other: f"{home.base_url}/../admin?page=2",
    "encoded dot-dot escape": lambda home, _other: f"{home.base_url}/%2e%2e/admin?page=2",
    "https on the same host": lambda home, _other: f"https://127.0.0.1:{home.port}/fhir/Patient?page=2",
    "credentials in the URL": lambda home, _other: f"http://u:p@127.0.0.1:{home.port}/fhir/Patient?page=2",
    "other host name": lambda home, _other: f"http://localhost:{home.port}/fhir/Patient?page=2",
}


@pytest.mark.parametrize("where", sorted(NEXT_LINKS_ELSEWHERE))
def test_next_link_outside_base_is_refused_and_never_gets_the_token(
    where: str, session: RecordingSession
) -> None:
    with ScriptedServer() as other:
        with ScriptedServer() as home:
            link = NEXT_LINKS_ELSEWHERE[where](home, other)
            home.script = lambda target: (
                Reply(body=bundle([patient("a")], link)) if "page" not in target else Reply(body=bundle([]))
            )
            with pytest.raises(FhirError, match="outside its base URL") as caught:
                client(home.base_url, session).search("Patient?name=pat-123")
            assert len(home.requests) == 1
        assert other.requests == []
    assert len(session.sent) == 1  # nothing at all was sent anywhere after the first page
    assert_clean(caught.value, link)


def test_redirect_is_not_followed(session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: Reply(body=bundle([]))) as other:
        target = f"{other.base_url}/Patient"
        redirect = Reply(302, headers={"Location": target})
        with ScriptedServer(lambda _t: redirect) as home, pytest.raises(FhirError, match="redirect"):
            client(home.base_url, session).search("Patient")
        assert other.requests == []


def test_query_outside_base_is_refused(session: RecordingSession) -> None:
    with ScriptedServer() as home:
        c = client(home.base_url, session)
        for query in ("http://example.org/fhir/Patient", f"{home.origin}/other/Patient"):
            with pytest.raises(FhirError, match="outside"):
                c.search(query)
        with pytest.raises(FhirError, match="Type/id"):
            c.read("../admin/1")
        assert home.requests == []


# ---------------------------------------------------------------------- scripted server: failures and limits


@pytest.mark.parametrize("status", [400, 401, 403, 500, 503])
def test_http_errors(status: int, session: RecordingSession) -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "patient pat-123 broke"}]}
    with ScriptedServer(lambda _t: Reply(status, body=body)) as server:
        c = client(server.base_url, session)
        with pytest.raises(FhirError, match=f"HTTP {status} to a Condition search") as caught:
            c.search("Condition?patient=pat-123")
        assert_clean(caught.value)
        with pytest.raises(FhirError, match=f"HTTP {status} to a Medication read"):
            c.read("Medication/pat-123")


@pytest.mark.parametrize("status", [404, 410])
def test_read_of_a_missing_resource_is_none(status: int, session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: Reply(status)) as server:
        assert client(server.base_url, session).read("Medication/gone") is None
        assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body=b"<html>oops pat-123</html>", content_type="text/html"), "not JSON"),
        (Reply(body=b"\xff\xfe\x00garbage"), "not JSON"),
        (Reply(body=[1, 2, 3]), "not a FHIR resource"),
        (Reply(body=patient("pat-123")), "with a Patient, not a Bundle"),
        (
            Reply(body={"resourceType": "OperationOutcome", "issue": [{"diagnostics": "pat-123"}]}),
            "OperationOutcome",
        ),
        (Reply(body={"resourceType": "Bundle", "entry": {"resource": {}}}), "malformed Bundle"),
        (Reply(body={"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}), "not a FHIR resource"),
        (Reply(body=bundle([], next_url="")), "malformed next link"),
    ],
)
def test_bodies_that_are_not_a_search_bundle(reply: Reply, message: str, session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: reply) as server:
        with pytest.raises(FhirError, match=message) as caught:
            client(server.base_url, session).search("Condition?patient=pat-123")
        assert_clean(caught.value)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body=b"not json"), "not JSON"),
        (Reply(body={"resourceType": "OperationOutcome", "issue": []}), "OperationOutcome"),
        (Reply(body=patient("x")), "Medication read with a Patient"),
    ],
)
def test_read_bodies_that_are_not_the_resource(reply: Reply, message: str, session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: reply) as server, pytest.raises(FhirError, match=message):
        client(server.base_url, session).read("Medication/x")


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_body_is_refused(content_length: bool, session: RecordingSession) -> None:
    big = bundle(
        [{"resourceType": "Condition", "id": f"c{i}", "note": [{"text": "x" * 200}]} for i in range(30)]
    )
    with ScriptedServer(lambda _t: Reply(body=big, content_length=content_length)) as server:
        c = client(server.base_url, session, fhir_max_bytes=1000)
        with pytest.raises(FhirError, match="1000-byte limit"):
            c.search("Condition?patient=pat-123")
        assert c.bytes_read <= 1000 + 64 * 1024  # stopped at the first chunk past the limit


def test_byte_limit_counts_every_page(session: RecordingSession) -> None:
    def script(target: str) -> Reply:
        page = int(rows(target).get("page", ["1"])[0])
        return Reply(
            body=bundle(
                [{"resourceType": "Condition", "id": f"c{page}", "x": "y" * 400}], f"C?page={page + 1}"
            )
        )

    with ScriptedServer(script) as server:
        with pytest.raises(FhirError, match="byte limit"):
            client(server.base_url, session, fhir_max_bytes=1500).search("Condition")
        assert 2 <= len(server.requests) <= 4


def test_page_limit(session: RecordingSession) -> None:
    def script(target: str) -> Reply:
        page = int(rows(target).get("page", ["1"])[0])
        return Reply(body=bundle([patient(f"p{page}")], f"Patient?page={page + 1}"))

    with ScriptedServer(script) as server:
        with pytest.raises(FhirError, match="more than 3 pages"):
            client(server.base_url, session, fhir_max_pages=3).search("Patient")
        assert len(server.requests) == 3


def test_paging_loop_is_detected(session: RecordingSession) -> None:
    with ScriptedServer() as server:
        server.script = lambda _t: Reply(
            body=bundle([patient("a")], f"{server.base_url}/Patient?_count=1000")
        )
        with pytest.raises(FhirError, match="loops"):
            client(server.base_url, session).search("Patient")
        assert len(server.requests) == 1  # the next link is the page just read


FAKE_BASE = "https://fhir.test/r4"


def clocked(script: Callable[[str], Timed]) -> tuple[FakeMonotonic, ClockedTransport, requests.Session]:
    """A session whose requests to FAKE_BASE are answered by a transport that spends fake time."""
    clock = FakeMonotonic()
    transport = ClockedTransport(clock, script)
    session = requests.Session()
    session.mount("https://fhir.test/", transport)
    return clock, transport, session


def test_slow_answer_past_the_deadline() -> None:
    clock, transport, session = clocked(lambda _url: Timed(body=json.dumps(bundle([])).encode(), delay_s=3))
    started = clock()
    with pytest.raises(FhirError, match="did not answer a Condition search in time") as caught:
        client(FAKE_BASE, session, budget_s=0.5, clock=clock).search("Condition?patient=pat-123")
    assert_clean(caught.value)
    # the connect and read timeouts (2 s and 5 s by default) were clipped to the half second left, so
    # the client gave up when its budget ran out, not 3 s later when the answer came
    assert [sent.timeout for sent in transport.sent] == [(0.5, 0.5)]
    assert clock() == started + 0.5


def test_each_request_gets_only_the_time_left() -> None:
    page = json.dumps(bundle([patient("a")], "Patient?page=2")).encode()
    last = json.dumps(bundle([patient("b")])).encode()
    clock, transport, session = clocked(
        lambda url: Timed(body=last if "page=2" in url else page, delay_s=1.5)
    )
    found = client(FAKE_BASE, session, budget_s=4.0, clock=clock).search("Patient")
    assert [r["id"] for r in found] == ["a", "b"]
    # 4 s at first: connect 2 s and read 5 s clipped to 4; 1.5 s later 2.5 s are left
    assert [(sent.at - 1_000.0, sent.timeout) for sent in transport.sent] == [
        (0.0, (2.0, 4.0)),
        (1.5, (2.0, 2.5)),
    ]


def test_body_trickling_in_past_the_deadline() -> None:
    body = json.dumps(bundle([patient(f"p{i}") for i in range(60)])).encode()  # ~5 KB in pieces of 16 B
    clock, transport, session = clocked(lambda _url: Timed(body=body, drip_s=0.125))
    c = client(FAKE_BASE, session, budget_s=0.5, fhir_read_timeout_s=5, clock=clock)
    with pytest.raises(FhirError, match="time budget ran out before the Patient search finished"):
        c.search("Patient")
    # every piece comes well within the read timeout, yet the whole body would take 40 s: the budget
    # is checked after each piece, and the fourth one (0.5 s in) spends it
    assert transport.bodies[0].pieces_read == 4
    assert c.bytes_read == 4 * 16
    assert clock() == 1_000.5


def test_body_that_stalls_longer_than_the_time_left() -> None:
    body = json.dumps(bundle([patient("p")])).encode()
    clock, transport, session = clocked(lambda _url: Timed(body=body, drip_s=2.0))
    with pytest.raises(FhirError, match="did not answer a Patient search in time") as caught:
        client(FAKE_BASE, session, budget_s=0.5, clock=clock).search("Patient?name=pat-123")
    assert_clean(caught.value)
    assert transport.bodies[0].pieces_read == 0
    assert clock() == 1_000.5  # the socket's read timeout was the half second left


class TickingClock:
    """A fake monotonic clock that moves one second every time it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += 1.0
        return self.now


def test_a_trickling_body_is_read_piece_by_piece_from_the_socket(session: RecordingSession) -> None:
    """On a real socket: each piece is handed over as it arrives (so the budget is checked between
    pieces), rather than after a whole 64 KiB chunk or the whole body."""
    body = json.dumps(bundle([patient(f"p{i}") for i in range(60)])).encode()  # 16 B every 50 ms: ~16 s
    with ScriptedServer(lambda _t: Reply(body=body, drip_s=0.05)) as server:
        clock = TickingClock()
        c = client(server.base_url, session, budget_s=4.0, clock=clock)  # deadline: 1 + 4 = 5
        with pytest.raises(FhirError, match="time budget ran out"):
            c.search("Patient")
    # clock reads: the deadline (5), before the request (3 s left), then after each of three pieces (2, 1,
    # then 0 s left): had the first read waited for a whole chunk, the whole body would have come in it
    assert clock.reads == 5
    assert 0 < c.bytes_read < len(body)


def test_spent_deadline_sends_nothing(session: RecordingSession) -> None:
    with ScriptedServer(lambda _t: Reply(body=bundle([]))) as server:
        with pytest.raises(FhirError, match="time budget"):
            client(server.base_url, session, budget_s=-1).search("Patient")
        with pytest.raises(FhirError, match="time budget"):
            client(server.base_url, session, budget_s=-1).read("Patient/x")
        assert server.requests == []


def test_unreachable_server(session: RecordingSession) -> None:
    with ScriptedServer() as server:
        base = server.base_url
    with pytest.raises(FhirError, match="could not reach the FHIR server") as caught:
        client(base, session).search("Condition?patient=pat-123")
    assert_clean(caught.value)


# ---------------------------------------------------------------------- base URL policy


@pytest.mark.parametrize(
    ("base", "overrides", "allowed"),
    [
        ("https://ehr.example.org/fhir", {}, True),
        ("HTTPS://EHR.example.org:443/fhir/", {}, True),
        ("http://ehr.example.org/fhir", {}, False),
        ("http://ehr.example.org/fhir", {"dev_mode": True}, True),
        ("http://ehr.example.org/fhir", {"fhir_allow_http": True}, True),
        ("http://ehr.example.org/fhir", {"fhir_server_allowlist": ("http://ehr.example.org/fhir/",)}, True),
        ("http://ehr.example.org:80/fhir", {"fhir_server_allowlist": ("http://EHR.example.org/fhir",)}, True),
        ("http://ehr.example.org/fhir", {"fhir_server_allowlist": ("http://ehr.example.org/other",)}, False),
        (
            "http://ehr.example.org/fhir",
            {"fhir_server_allowlist": ("http://ehr.example.org:8080/fhir",)},
            False,
        ),
    ],
)
def test_plain_http_needs_permission(base: str, overrides: dict[str, Any], allowed: bool) -> None:
    def make() -> FhirClient:
        return FhirClient(
            base, session=requests.Session(), access_token=TOKEN, settings=settings(**overrides), deadline=0
        )

    if allowed:
        assert make().base_url.lower().rstrip("/").endswith("/fhir")
    else:
        with pytest.raises(InsecureFhirServer, match="https") as caught:
            make()
        assert isinstance(caught.value, FhirError)
        assert caught.value.issue_code == "security"


@pytest.mark.parametrize(
    "base",
    [
        "ftp://ehr.example.org/fhir",
        "https:///fhir",
        "https://u:p@ehr.example.org/fhir",
        "https://e.org/fhir?x=1",
        "nonsense",
        "https://e.org/a/../fhir",
    ],
)
def test_unusable_base_urls(base: str) -> None:
    with pytest.raises(FhirError):
        FhirClient(
            base, session=requests.Session(), access_token=None, settings=settings(dev_mode=True), deadline=0
        )


def test_client_factory_for_requests() -> None:
    with requests.Session() as s:

        def factory(request: dict[str, Any], **overrides: Any) -> FhirClient | None:
            return client_factory_for(request, settings=settings(**overrides), session=s, deadline=0)()

        auth = {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "x",
            "subject": "y",
        }
        https = "https://ehr.example.org/fhir"
        assert factory({}) is None
        assert factory({"fhirServer": ""}) is None
        # no bearer token outside dev mode: refused with the reason (the caller answers 412 and says why)
        with pytest.raises(FhirAccessRefused, match="KETAMINE_CDS_OPEN_FHIR_SERVERS"):
            factory({"fhirServer": https})
        with pytest.raises(FhirAccessRefused):
            factory({"fhirServer": https, "fhirAuthorization": {**auth, "token_type": "MAC"}})
        assert isinstance(factory({"fhirServer": https, "fhirAuthorization": auth}), FhirClient)
        assert isinstance(factory({"fhirServer": https}, dev_mode=True), FhirClient)  # the sandbox
        with pytest.raises(InsecureFhirServer):
            factory({"fhirServer": "http://ehr.example.org/fhir", "fhirAuthorization": auth})


def test_client_factory_gives_its_clients_the_deadline_on_its_clock() -> None:
    answer = json.dumps(bundle([])).encode()
    clock, transport, session = clocked(lambda _url: Timed(body=answer, delay_s=0.5))
    clock.advance(1e9)  # far from any real monotonic reading: the real clock would give other timeouts
    request = {"fhirServer": FAKE_BASE, "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer"}}
    make = client_factory_for(
        request, settings=settings(), session=session, deadline=clock() + 1.25, monotonic=clock
    )
    first, second = make(), make()
    assert first is not None
    assert second is not None
    assert first.search("Condition") == []
    assert second.search("Condition") == []  # one deadline for both: 0.75 s left
    with pytest.raises(FhirError, match="did not answer a AllergyIntolerance search in time"):
        first.search("AllergyIntolerance")  # 0.25 s left, the answer takes 0.5 s
    with pytest.raises(FhirError, match="time budget ran out before the Patient read"):
        second.read("Patient/x")  # nothing left: not sent
    assert [sent.timeout for sent in transport.sent] == [(1.25, 1.25), (0.75, 0.75), (0.25, 0.25)]


@pytest.mark.parametrize(
    ("server", "is_open"),
    [
        ("https://open.example.org/fhir", True),
        ("https://open.example.org/fhir/", True),
        ("https://OPEN.example.org:443/fhir", True),
        ("https://open.example.org/fhir/r4", True),  # below a listed prefix
        ("https://open.example.org/fhirx", False),  # whole path segments only
        ("https://open.example.org/other", False),
        ("http://open.example.org/fhir", False),  # scheme exact
        ("https://open.example.org:8443/fhir", False),  # port exact
        ("https://evil.open.example.org/fhir", False),  # host exact
        ("https://open.example.org.evil.example/fhir", False),
        ("https://user@open.example.org/fhir", False),
        ("https://open.example.org/fhir/../admin", False),
    ],
)
def test_open_fhir_servers_are_read_without_a_token_and_only_they(server: str, is_open: bool) -> None:
    with requests.Session() as s:
        make = client_factory_for(
            {"fhirServer": server},
            settings=settings(open_fhir_servers=("https://open.example.org/fhir",), fhir_allow_http=True),
            session=s,
            deadline=0,
        )
        if is_open:
            client = make()
            assert isinstance(client, FhirClient)
            assert "Authorization" not in client._headers()
        else:
            with pytest.raises(FhirError):
                make()


def test_open_fhir_servers_setting_is_never_implied() -> None:
    """Neither the http allowlist nor FHIR_ALLOW_HTTP makes a server open."""
    with requests.Session() as s:
        for overrides in (
            {"fhir_server_allowlist": ("http://127.0.0.1:9/fhir",)},
            {"fhir_allow_http": True},
        ):
            make = client_factory_for(
                {"fhirServer": "http://127.0.0.1:9/fhir"},
                settings=settings(**overrides),
                session=s,
                deadline=0,
            )
            with pytest.raises(FhirAccessRefused):
                make()


PRODUCTION: dict[str, Any] = {
    "public_base_url": "https://cds.example.org",
    "trusted_issuers": (TrustedIssuer(iss="https://ehr.example.org", jwks_file="/x.json"),),
}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("http://open.example.org/fhir", "plain http"),
        ("open.example.org/fhir", "absolute https"),
        ("https://open.example.org/fhir?x=1", "query"),
        ("https://me:pw@open.example.org/fhir", "credentials"),
        ("https://open.example.org:99999/fhir", "not a valid URL"),
    ],
)
def test_bad_open_fhir_server_entries_stop_start_up(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match="KETAMINE_CDS_OPEN_FHIR_SERVERS") as caught:
        load_settings(environ={"KETAMINE_CDS_OPEN_FHIR_SERVERS": entry}, overrides=PRODUCTION)
    assert message in str(caught.value)


def test_plain_http_open_fhir_server_needs_an_explicit_http_allowance() -> None:
    url = "http://127.0.0.1:8090/fhir"
    loaded = load_settings(
        environ={"KETAMINE_CDS_OPEN_FHIR_SERVERS": url, "KETAMINE_CDS_FHIR_SERVER_ALLOWLIST": url},
        overrides=PRODUCTION,
    )
    assert loaded.open_fhir_servers == (url,)


# ---------------------------------------------------------------------- the real FHIR server (sekmet)


def real_client(server: FhirServerHandle, session: requests.Session, **overrides: Any) -> FhirClient:
    overrides.setdefault("fhir_server_allowlist", (server.base_url,))
    return FhirClient(
        server.base_url,
        session=session,
        access_token=overrides.pop("token", server.token),
        settings=settings(**overrides),
        deadline=overrides.pop("budget_s", 30.0),  # on a fake clock that stands at 0
        monotonic=lambda: 0.0,
    )


def count_in_test_data(resource_type: str, patient_id: str, **fields: str) -> int:
    n = 0
    for path in DATA_DIR.glob("*.json"):
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            r = entry["resource"]
            subject = (r.get("subject") or r.get("patient") or {}).get("reference")
            if r["resourceType"] == resource_type and subject == f"Patient/{patient_id}":
                n += all(r.get(k) == v for k, v in fields.items())
    return n


@pytest.mark.integration
def test_pages_all_273_medication_requests_of_eddie(
    fhir_server: FhirServerHandle, session: RecordingSession
) -> None:
    c = real_client(fhir_server, session, fhir_page_size=10)
    found = c.search(f"MedicationRequest?patient={EDDIE}")
    ids = [r["id"] for r in found]
    assert len(ids) == 273 == count_in_test_data("MedicationRequest", EDDIE)
    assert len(set(ids)) == 273
    assert {r["resourceType"] for r in found} == {"MedicationRequest"}
    assert len(session.sent) == 28  # ceil(273 / 10)
    for sent in session.sent:
        assert sent.headers["Authorization"] == f"Bearer {fhir_server.token}"
        assert sent.headers["Accept"] == "application/fhir+json"
        assert str(sent.url).startswith(fhir_server.base_url + "/MedicationRequest?")


@pytest.mark.integration
def test_real_server_page_limit(fhir_server: FhirServerHandle, session: RecordingSession) -> None:
    with pytest.raises(FhirError, match="more than 5 pages"):
        real_client(fhir_server, session, fhir_page_size=10, fhir_max_pages=5).search(
            f"Condition?patient={EDDIE}"
        )
    assert len(session.sent) == 5


@pytest.mark.integration
def test_real_server_search_features(fhir_server: FhirServerHandle, session: RecordingSession) -> None:
    """What sekmet supports of the CDS Hooks query subset: status=, code= (system|code, OR), _sort, _count."""
    c = real_client(fhir_server, session)
    active = c.search(f"MedicationRequest?patient={EDDIE}&status=active")
    assert len(active) == count_in_test_data("MedicationRequest", EDDIE, status="active")
    assert {r["status"] for r in active} == {"active"}
    bipolar = c.search(
        f"Condition?patient={EDDIE}&code=http://snomed.info/sct|13746004,http://snomed.info/sct|9340000"
    )
    assert {coding["code"] for r in bipolar for coding in r["code"]["coding"]} <= {"13746004", "9340000"}
    assert bipolar
    newest_first = c.search(f"MedicationRequest?patient={EDDIE}&_sort=-authoredon&_count=7")
    dates = [datetime.fromisoformat(r["authoredOn"]) for r in newest_first]
    assert len(dates) == 273
    assert dates == sorted(dates, reverse=True)


@pytest.mark.integration
def test_every_hook_template_is_understood_by_the_real_server(fhir_server: FhirServerHandle) -> None:
    """Each discovery template, sent with `Prefer: handling=strict`, is accepted (no ignored parameter)."""
    hooks = Path(__file__).resolve().parents[1] / "hooks"
    context = {"patientId": EDDIE, "userId": "Practitioner/COREPRACTITIONER1"}
    headers = {"Authorization": f"Bearer {fhir_server.token}", "Prefer": "handling=strict"}
    seen = Counter[str]()
    with requests.Session() as s:
        for path in sorted(hooks.glob("*.json")):
            for key, template in json.loads(path.read_text(encoding="utf-8"))["prefetch"].items():
                query = render_template(template, context)
                assert query is not None, key
                response = s.get(f"{fhir_server.base_url}/{query}", headers=headers, timeout=10)
                assert response.status_code == 200, (key, response.text[:300])
                body = response.json()
                modes = {e.get("search", {}).get("mode") for e in body.get("entry", [])}
                assert "outcome" not in modes, key
                seen[key] += 1
    assert set(seen) == {
        "patient",
        "medicationStatements",
        "medicationRequests",
        "conditions",
        "allergies",
        "bloodPressure",
    }


@pytest.mark.integration
def test_real_server_reads_and_auth(fhir_server: FhirServerHandle, session: RecordingSession) -> None:
    c = real_client(fhir_server, session)
    found = c.read(f"Patient/{JONATHON}")
    assert found is not None
    assert found["id"] == JONATHON
    assert c.read("Patient/ketcds-test-no-such-patient") is None
    assert c.read("Medication/ketcds-test-no-such-medication") is None
    with pytest.raises(FhirError, match="HTTP 401") as caught:
        real_client(fhir_server, session, token="wrong-token").search(f"Condition?patient={EDDIE}")
    assert_clean(caught.value, fhir_server.token)
    with pytest.raises(FhirError, match="HTTP 401"):
        real_client(fhir_server, session, token=None).read(f"Patient/{JONATHON}")


@pytest.mark.integration
def test_real_server_refused_over_plain_http_outside_dev_mode(fhir_server: FhirServerHandle) -> None:
    with pytest.raises(InsecureFhirServer):
        FhirClient(
            fhir_server.base_url,
            session=requests.Session(),
            access_token=fhir_server.token,
            settings=Settings(),
            deadline=5,
            monotonic=lambda: 0.0,
        )


def test_urllib3_debug_log_does_not_carry_patient_ids(
    session: RecordingSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), ScriptedServer() as server:
        server.script = lambda t: (
            Reply(body=patient("pat-123")) if "/Patient/" in t else Reply(body=bundle([]))
        )
        c = client(server.base_url, session)
        c.search("Condition?patient=pat-123")
        c.read("Patient/pat-123")
    lines = [record.getMessage() for record in caplog.records]
    assert any("/fhir/Condition…" in line for line in lines)  # urllib3 did log the request, redacted
    assert any("/fhir/Patient…" in line for line in lines)
    assert not [line for line in lines if "pat-123" in line or TOKEN in line]
