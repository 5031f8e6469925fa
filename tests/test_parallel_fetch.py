"""The FHIR fallback fetches the missing keys concurrently: bounded per call, deterministic in its outcome.

A scripted server holds each request until a given number of requests have arrived, so these tests prove
overlap (and its bound) by counting, not by timing.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.config import Settings
from cds.errors import PreconditionFailed
from cds.fhir.client import FhirClient
from cds.fhir.prefetch import MAX_PARALLEL_FETCHES, gather
from tests.support.fhir_server import Reply, ScriptedServer

HOOKS = Path(__file__).resolve().parents[1] / "hooks"
TEMPLATES: dict[str, str] = json.loads((HOOKS / "patient-view.json").read_text(encoding="utf-8"))["prefetch"]
PATIENT = "p-parallel"
BODY = {
    "hook": "patient-view",
    "hookInstance": "5e0c2a4e-7c1f-4f0e-9a55-3f1d2b6c8e90",
    "context": {"patientId": PATIENT, "userId": "Practitioner/x"},
}
HOLD_S = 5.0  # safety net only: a request waits at most this long for the others to arrive


class Overlap:
    """Counts requests in flight; each waits until `quorum` requests have started (or HOLD_S passes)."""

    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        self.started = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._cond = threading.Condition()

    def hold(self) -> None:
        with self._cond:
            self.started += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.started >= self.quorum, timeout=HOLD_S)

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1


def resource_type(target: str) -> str:
    match = re.match(r"/fhir/([A-Za-z]+)", target)
    assert match, target
    return match.group(1)


def searchset(rtype: str, count: int) -> dict[str, Any]:
    entries = [{"resource": {"resourceType": rtype, "id": f"{rtype}-{n}"}} for n in range(count)]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def factory(server: ScriptedServer, session: requests.Session, **overrides: Any) -> Callable[[], FhirClient]:
    settings = replace(Settings(), fhir_server_allowlist=(server.base_url,), **overrides)
    return lambda: FhirClient(
        server.base_url,
        session=session,
        access_token="tok",
        settings=settings,
        deadline=30,  # on a clock that stands at 0: every request may take the whole budget
        monotonic=lambda: 0.0,
    )


def test_missing_keys_are_fetched_concurrently_at_most_the_bound_at_once() -> None:
    overlap = Overlap(quorum=MAX_PARALLEL_FETCHES)

    def reply(target: str) -> Reply:
        overlap.hold()
        try:
            rtype = resource_type(target)
            if rtype == "Patient":
                return Reply(body={"resourceType": "Patient", "id": PATIENT})
            return Reply(body=searchset(rtype, 3))
        finally:
            overlap.release()

    assert 1 < MAX_PARALLEL_FETCHES < len(TEMPLATES)  # so both the overlap and the bound are tested
    with ScriptedServer(reply) as server, requests.Session() as session:
        gathered = gather(TEMPLATES, BODY, list(TEMPLATES), client_factory=factory(server, session))
    # a sequential fetch would have one request in flight and wait HOLD_S at every request
    assert overlap.most_in_flight == MAX_PARALLEL_FETCHES
    assert len(server.requests) == len(TEMPLATES)
    assert gathered.fetched == tuple(TEMPLATES)  # template order, whatever order they finished in
    assert list(gathered.resources) == list(TEMPLATES)
    assert gathered.resources["patient"] == ({"resourceType": "Patient", "id": PATIENT},)
    assert [r["id"] for r in gathered.resources["conditions"]] == [
        "Condition-0",
        "Condition-1",
        "Condition-2",
    ]


def test_when_several_keys_fail_the_412_names_the_first_in_template_order() -> None:
    """The later key fails at once, the earlier one only after it: the answer is the sequential one."""
    first, later = "medicationStatements", "conditions"
    assert list(TEMPLATES).index(first) < list(TEMPLATES).index(later)

    def reply(target: str) -> Reply:
        rtype = resource_type(target)
        if rtype == "MedicationStatement":
            return Reply(500, body={"resourceType": "OperationOutcome", "issue": []}, delay_s=0.3)
        if rtype == "Condition":
            return Reply(503, body={"resourceType": "OperationOutcome", "issue": []})
        return Reply(body=searchset(rtype, 1))

    prefetch = {key: searchset("X", 0) for key in TEMPLATES if key not in {first, later, "patient"}}
    with (
        ScriptedServer(reply) as server,
        requests.Session() as session,
        pytest.raises(PreconditionFailed) as caught,
    ):
        gather(
            TEMPLATES, {**BODY, "prefetch": prefetch}, [first, later], client_factory=factory(server, session)
        )
    assert [issue.path for issue in caught.value.issues] == [f"prefetch.{first}"]
    assert "HTTP 500" in caught.value.issues[0].diagnostics


def test_concurrent_fetches_share_one_byte_budget() -> None:
    """Each page alone is under the limit; together they pass it, and the call is refused."""
    body = json.dumps(searchset("Condition", 40)).encode()
    limit = int(len(body) * 2.5)
    overlap = Overlap(quorum=MAX_PARALLEL_FETCHES)

    def reply(target: str) -> Reply:
        overlap.hold()
        try:
            rtype = resource_type(target)
            return Reply(body=body.replace(b'"Condition', f'"{rtype}'.encode()))
        finally:
            overlap.release()

    searches = [key for key in TEMPLATES if key != "patient"]
    with (
        ScriptedServer(reply) as server,
        requests.Session() as session,
        pytest.raises(PreconditionFailed) as caught,
    ):
        gather(TEMPLATES, BODY, searches, client_factory=factory(server, session, fhir_max_bytes=limit))
    assert "byte limit" in " ".join(issue.diagnostics for issue in caught.value.issues)


def test_a_single_missing_key_is_fetched_on_the_calling_thread() -> None:
    threads: list[str] = []

    def reply(target: str) -> Reply:
        return Reply(body=searchset(resource_type(target), 2))

    class Watching(requests.Session):
        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            threads.append(threading.current_thread().name)
            return super().send(request, **kwargs)

    prefetch = {key: searchset("X", 0) for key in TEMPLATES if key not in {"conditions", "patient"}}
    with ScriptedServer(reply) as server, Watching() as session:
        gathered = gather(
            TEMPLATES, {**BODY, "prefetch": prefetch}, ["conditions"], client_factory=factory(server, session)
        )
    assert threads == [threading.current_thread().name]
    assert len(gathered.resources["conditions"]) == 2


def test_a_fresh_fallback_search_asks_for_pages_of_fhir_page_size_and_a_server_link_is_kept() -> None:
    """The templates ask for _count=100 (the EHR's prefetch); the fallback reads every page anyway, so it
    asks for the operator's larger page size. A next link (the server's own paging) is never rewritten,
    and a page size below the template's leaves the template alone."""

    def reply(target: str) -> Reply:
        return Reply(body=searchset(resource_type(target), 1))

    link = "Condition?patient=p-parallel&_count=7&page=2"
    first_page = {**searchset("Condition", 1), "link": [{"relation": "next", "url": link}]}
    prefetch = {
        key: searchset("X", 0) for key in TEMPLATES if key not in {"allergies", "conditions", "patient"}
    }
    prefetch["conditions"] = first_page
    for page_size, expected in ((200, "_count=200"), (50, "_count=100")):
        with ScriptedServer(reply) as server, requests.Session() as session:
            gather(
                TEMPLATES,
                {**BODY, "prefetch": prefetch},
                ["allergies", "conditions"],
                client_factory=factory(server, session, fhir_page_size=page_size),
            )
        targets = {resource_type(r.target): r.target for r in server.requests}
        assert targets["AllergyIntolerance"] == f"/fhir/AllergyIntolerance?patient={PATIENT}&{expected}"
        assert targets["Condition"] == f"/fhir/{link}"
