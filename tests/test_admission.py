"""Large request bodies take turns per worker (cds/web/admission.py), so memory stays bounded."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from cds.errors import ServiceUnavailable
from cds.web.admission import UNCOUNTED_BYTES, BodyBudget
from tests.support.builders import hook_request

MIB = 1024 * 1024


def hasty_clock() -> Callable[[], float]:
    """A monotonic clock 100 s later at every reading: any wait is over by the next look, so a body that
    does not fit is refused at once, without sleeping."""
    readings: Iterator[float] = itertools.count(0.0, 100.0)
    return lambda: next(readings)


def test_an_ordinary_body_never_waits_and_is_not_counted() -> None:
    budget = BodyBudget(6 * MIB, hasty_clock())
    budget.admit(6 * MIB, wait_s=1)
    assert budget.admit(UNCOUNTED_BYTES - 1, wait_s=1) == 0
    assert budget.in_flight == 6 * MIB


def test_a_body_of_1_mib_is_counted() -> None:
    budget = BodyBudget(6 * MIB)
    assert budget.admit(MIB, wait_s=1) == MIB
    assert budget.in_flight == MIB


def test_bodies_within_the_budget_run_together() -> None:
    budget = BodyBudget(6 * MIB)
    budget.admit(2 * MIB, wait_s=1)
    budget.admit(4 * MIB, wait_s=1)
    assert budget.in_flight == 6 * MIB


def test_a_body_that_does_not_fit_waits_and_is_refused_with_retry_after() -> None:
    budget = BodyBudget(6 * MIB, hasty_clock())
    budget.admit(4 * MIB, wait_s=1)
    with pytest.raises(ServiceUnavailable) as refused:
        budget.admit(3 * MIB, wait_s=8)
    assert refused.value.status == 503
    assert budget.in_flight == 4 * MIB  # the refused body took nothing


def test_a_body_larger_than_the_budget_runs_alone() -> None:
    budget = BodyBudget(6 * MIB, hasty_clock())
    assert budget.admit(10 * MIB, wait_s=1) == 6 * MIB  # counted as the whole budget
    with pytest.raises(ServiceUnavailable):
        budget.admit(MIB, wait_s=1)


def test_a_body_of_undeclared_length_counts_as_the_whole_budget() -> None:
    budget = BodyBudget(6 * MIB)
    assert budget.admit(None, wait_s=1) == 6 * MIB


def test_a_waiting_body_is_admitted_when_the_one_before_it_is_released() -> None:
    budget = BodyBudget(6 * MIB)
    first = budget.admit(5 * MIB, wait_s=1)
    admitted = threading.Event()

    def second() -> None:
        budget.release(budget.admit(5 * MIB, wait_s=30))
        admitted.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not admitted.wait(0.05)  # still waiting while the first is in flight
    budget.release(first)
    waiter.join(timeout=30)
    assert admitted.is_set()
    assert budget.in_flight == 0


def _padded(body: dict[str, object], size: int) -> bytes:
    """The hook request as JSON padded with trailing whitespace to `size` bytes (still valid JSON)."""
    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


def test_a_large_call_is_answered_and_hands_its_share_back(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    budget = app.extensions["ketamine_cds"].body_budget
    response = app.test_client().post(
        "/cds-services/ketamine-patient-view",
        data=_padded(hook_request("patient-view"), 2 * MIB),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert budget.in_flight == 0


def test_a_refused_large_call_hands_its_share_back(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    budget = app.extensions["ketamine_cds"].body_budget
    body = hook_request("patient-view")
    body["hook"] = 7  # schema error: 400 after the body was admitted
    response = app.test_client().post(
        "/cds-services/ketamine-patient-view", data=_padded(body, 2 * MIB), content_type="application/json"
    )
    assert response.status_code == 400
    assert budget.in_flight == 0


def test_a_large_call_that_cannot_get_its_turn_is_503_with_an_outcome(make_app: Callable[..., Flask]) -> None:
    app = make_app(max_inflight_body_bytes=2 * MIB, request_time_budget_s=0.01)
    budget = app.extensions["ketamine_cds"].body_budget
    held = budget.admit(2 * MIB, wait_s=1)  # another large call is being screened
    response = app.test_client().post(
        "/cds-services/ketamine-patient-view",
        data=_padded(hook_request("patient-view"), 3 * MIB // 2),
        content_type="application/json",
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "busy with other large requests" in outcome["issue"][0]["diagnostics"]
    assert budget.in_flight == held
    budget.release(held)
    small = app.test_client().post("/cds-services/ketamine-patient-view", json=hook_request("patient-view"))
    assert small.status_code == 200
