"""Cards a clinician acts on in ten seconds, and the screening page one click behind every card.

Judged on the complex chart (tests/support/charts.py): a heart attack two months ago, clonazepam
2 mg/day, lamotrigine refilled 15 times, risperidone, a raised blood pressure, bipolar disorder, ketamine
planned in 10 days (2 Dec; the clock says 22 Nov).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from cds.storage.store import utc_now
from tests.support.builders import RXNORM
from tests.support.cards import INTERNAL_VOCABULARY, findings_shown, page_text, screen_link
from tests.support.charts import PRESCRIBER, complex_chart, typical_chart
from tests.support.constants import NOW

SERVICES = {
    "order-select": "ketamine-order-select",
    "order-sign": "ketamine-order-sign",
    "patient-view": "ketamine-patient-view",
}
MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# A number on a card is a date, a time, or a figure followed by its unit (or a count of something named).
DATE_OR_TIME = re.compile(rf"\b\d{{1,2}} (?:{MONTHS})(?: \d{{4}})?\b|\b\d{{2}}:\d{{2}}\b")
FIGURE = re.compile(
    r"\b\d+(?:\.\d+)?(?:/\d+)? ?(?:mg/day|mmHg|months?|h\b|hours?|days?|further points|records?)"
)


def post(client: FlaskClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(f"/cds-services/{SERVICES[body['hook']]}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(repeat_suppression_s=0).test_client()


def assert_house_style(card: dict[str, Any]) -> None:
    summary, detail = card["summary"], card["detail"]
    assert len(summary) < 140, summary
    assert len(detail) <= 900, (len(detail), detail)
    text = f"{summary}\n{detail}".lower()
    assert not [word for word in INTERNAL_VOCABULARY if word in text], text
    assert "](" not in detail, "citations are links on the card, not markdown links in its text"
    bare = re.findall(r"\d+(?:\.\d+)?", FIGURE.sub("", DATE_OR_TIME.sub("", summary)))
    assert not bare, f"numbers without a unit in {summary!r}: {bare}"


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_complex_chart_fits_in_four_cards_in_house_style(client: FlaskClient, hook: str) -> None:
    cards = post(client, complex_chart(hook))
    assert 1 <= len(cards) <= 4, [c["summary"] for c in cards]
    for card in cards:
        assert_house_style(card)
        assert card["source"]["url"].endswith("/rules")
        assert card["source"]["label"]
    ranks = {"critical": 2, "warning": 1, "info": 0}
    assert [ranks[c["indicator"]] for c in cards] == sorted(
        (ranks[c["indicator"]] for c in cards), reverse=True
    )
    # the findings are all still there, on one card or another
    shown = findings_shown(cards)
    assert shown["recent-myocardial-infarction"] == "critical"
    assert shown["benzodiazepine-response"] == "warning"
    assert shown["elevated-blood-pressure"] == "warning"
    assert {"lamotrigine-response", "risperidone-olanzapine-response", "bipolar-disorder"} <= set(shown)


def test_heart_attack_card_says_when_from_today_and_when_eligible(client: FlaskClient) -> None:
    cards = post(client, complex_chart("order-select"))
    mi = next(c for c in cards if c["source"]["topic"]["code"] == "recent-myocardial-infarction")
    # 20 Sep: two months ago today; the 6-month window from the planned start ends after 20 Mar
    assert (
        mi["summary"]
        == "Heart attack 2 months ago (20 Sep): defer ketamine infusion; eligible from 21 Mar 2027"
    )
    assert "2 months ago today and 2 months before the planned start" in mi["detail"]
    assert "Windows are counted to the planned start, 2 Dec." in mi["detail"]
    move, remove = mi["suggestions"]
    assert move["label"] == "Move the planned start to 21 Mar 2027"  # a date in next year says its year
    (update,) = move["actions"]
    assert update["type"] == "update"
    assert update["resource"]["dosageInstruction"][0]["timing"]["event"] == ["2027-03-21"]
    assert remove["actions"][0] == {
        "type": "delete",
        "description": remove["actions"][0]["description"],
        "resourceId": "MedicationRequest/draft-ketamine",
    }
    assert all(s["uuid"] for s in mi["suggestions"])


def _with_alprazolam(body: dict[str, Any]) -> dict[str, Any]:
    """The complex chart with its clonazepam replaced by the same 40 mg/day diazepam-eq of alprazolam,
    a short-acting benzodiazepine that a timed hold does clear."""
    for entry in body["prefetch"]["medicationRequests"]["entry"]:
        if entry["resource"]["id"] == "clonazepam-1":
            entry["resource"]["medicationCodeableConcept"] = {
                "coding": [{"system": RXNORM, "code": "308047", "display": "alprazolam 0.25 MG Oral Tablet"}]
            }
    return body


def test_a_long_acting_benzodiazepine_gets_no_hold_plan(client: FlaskClient) -> None:
    """Clonazepam's half-life reaches 50 h: a 24-48 h hold does not clear it (pharmacist review)."""
    cards = post(client, complex_chart("order-select"))
    benzo = next(c for c in cards if c["source"]["topic"]["code"] == "benzodiazepine-response")
    assert "a short hold will not clear clonazepam" in benzo["summary"]
    assert "last dose by" not in benzo["summary"] + benzo["detail"]
    assert not benzo.get("suggestions")


def test_benzodiazepine_card_gives_the_hold_as_calendar_dates(client: FlaskClient) -> None:
    cards = post(client, _with_alprazolam(complex_chart("order-select")))
    benzo = next(c for c in cards if c["source"]["topic"]["code"] == "benzodiazepine-response")
    # session 09:00 on 2 Dec (the site's usual time), hold 48 h, resume 6 h after the start
    assert "40 mg/day diazepam-eq" in benzo["summary"]
    assert "last dose by 09:00 on 30 Nov" in benzo["summary"]
    assert "resume from 15:00 on 2 Dec" in benzo["summary"]
    assert "Never stop a regular benzodiazepine abruptly" in benzo["detail"]
    (ask,) = benzo["suggestions"]
    assert ask["label"] == "Ask the prescriber to confirm the hold plan"
    request = ask["actions"][0]["resource"]
    assert ask["actions"][0]["type"] == "create"
    assert request["resourceType"] == "CommunicationRequest"
    assert request["status"] == "draft"
    assert request["recipient"] == [{"reference": PRESCRIBER}]
    assert request["about"] == [{"reference": "MedicationRequest/clonazepam-1"}]  # the record's id
    assert "09:00 on 30 Nov" in request["payload"][0]["contentString"]
    assert "15:00 on 2 Dec" in request["payload"][0]["contentString"]


def test_lamotrigine_refills_are_summarised_newest_first(knowledge: Any, client: FlaskClient) -> None:
    body = complex_chart("order-select")
    policy_free = [c for c in post(client, body) if c["source"]["topic"]["code"] == "also-noted"]
    (also_noted,) = policy_free
    assert "Lamotrigine 200 mg/day (over 100 mg/day)" in also_noted["detail"]
    page = page_text(client, [also_noted])
    assert "MedicationRequest/lamotrigine-15" in page  # every refill is on the page, with its date
    assert "MedicationRequest/lamotrigine-0" in page


def test_order_sign_gives_the_pharmacist_one_review_and_no_instructions(client: FlaskClient) -> None:
    cards = post(client, _with_alprazolam(complex_chart("order-sign")))  # a drug a timed hold clears
    topics = [c["source"]["topic"]["code"] for c in cards]
    assert topics == ["recent-myocardial-infarction", "pre-session-review"]
    review = cards[1]
    assert review["summary"].startswith("Pre-session review")
    assert "Contraindications: 1 blocking the session (separate card)" in review["detail"]
    assert "last dose by 09:00 on 30 Nov" in review["detail"]
    assert "Latest blood pressure: 152/96 mmHg, measured 15 Nov" in review["detail"]
    assert "Records: all could be read" in review["detail"]
    assert "ordering-instructions" not in findings_shown(cards)
    # a clean chart still gets its review, every check clear
    (clean,) = post(client, typical_chart("order-sign"))
    assert clean["source"]["topic"]["code"] == "pre-session-review"
    assert "Contraindications: none found" in clean["detail"]


def test_patient_view_outside_a_ketamine_course_warns_of_nothing(client: FlaskClient) -> None:
    cards = post(client, complex_chart("patient-view"))
    assert not [c for c in cards if c["indicator"] in {"warning", "critical"}]


def test_every_card_links_to_the_whole_screen(client: FlaskClient) -> None:
    cards = post(client, complex_chart("order-select"))
    urls = {screen_link(card) for card in cards}
    assert len(urls) == 1, "one screen per call, behind every card"
    (url,) = urls
    assert "scenario-patient" not in url  # an opaque id, no patient data
    assert "Patient" not in url
    page = page_text(client, cards)
    for card in cards:
        assert card["summary"].replace("&", "&amp;") in page
    # the negatives, the records, the arithmetic, the policy, the completeness and the citations
    assert "None found in 2 conditions checked." in page
    assert "Condition/mi-1" in page
    assert "SNOMED CT 22298006" in page
    assert "4 unit x 2/day x 0.25 mg/unit = 2 mg/day = 40 mg/day diazepam-eq" in page
    assert "default, from Andrashko 2020" in page
    assert "Every record the screen needed could be read." in page
    assert 'href="https://doi.org/10.3389/fpsyt.2020.00844"' in page
    # the page is clinician text too: no evidence tiers, preset names or repository files
    for internal in ("evidence level", "clinic_faq", "docs/evidence.md", ".yaml"):
        assert internal not in page, internal


def test_the_page_needs_its_token_and_reveals_nothing_else(
    make_app: Callable[..., Flask], client: FlaskClient
) -> None:
    cards = post(client, complex_chart("order-select"))
    url = screen_link(cards[0])
    path, token = url.split("?token=")
    page_id = path.rsplit("/", 1)[1]
    client.application.extensions["ketamine_cds"].flush()
    answers = [
        client.get(path),  # no token
        client.get(f"{path}?token={token[:-2]}xx"),  # a forged signature
        client.get(f"{path.replace(page_id, 'A' * len(page_id))}?token={token}"),  # another id
        client.get(f"/screens/{'B' * 24}?token=1.x"),
    ]
    bodies = {a.get_data(as_text=True) for a in answers}
    assert [a.status_code for a in answers] == [404] * 4
    assert len(bodies) == 1, "an unknown id and a bad token look the same"
    assert all(a.headers["Cache-Control"] == "no-store" for a in answers)
    assert client.get(url).status_code == 200
    # the same link a day and a minute later (site policy default 24 h) is gone
    later = make_app(repeat_suppression_s=0)
    later.extensions["ketamine_cds"].clock = lambda: NOW + timedelta(hours=24, minutes=1)
    assert later.test_client().get(url).status_code == 404


def test_screen_pages_are_purged_with_the_records(client: FlaskClient) -> None:
    post(client, complex_chart("order-select"))
    runtime = client.application.extensions["ketamine_cds"]
    runtime.flush()
    store = runtime.store
    with store.engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM screen_page").scalar_one()
    assert count == 1
    # expired links are purged whatever the retention period; retention purges old pages too
    assert store.purge(3650, now=utc_now() + timedelta(days=400)) >= 1
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM screen_page").scalar_one() == 0


def test_a_link_clicked_before_its_page_was_shipped_still_opens(make_app: Callable[..., Flask]) -> None:
    """The page leaves the request path through the outbox; a click that beats the shipper ships it."""
    app = make_app(outbox_interval_s=3600)  # the shipper thread will not ship during this test
    client = app.test_client()
    cards = post(client, complex_chart("order-select"))
    store = app.extensions["ketamine_cds"].store
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM screen_page").scalar_one() == 0  # not yet shipped
    assert client.get(screen_link(cards[0])).status_code == 200


def test_a_page_written_while_the_database_is_down_opens_once_it_is_back(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(outbox_interval_s=3600)
    runtime = app.extensions["ketamine_cds"]
    client = app.test_client()

    def database_down(*_args: Any, **_kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is down"))

    with monkeypatch.context() as patched:
        patched.setattr(runtime.store, "record_screen_pages", database_down)
        cards = post(client, complex_chart("order-select"))  # answered all the same
        assert runtime.flush() is False  # the page stays in the outbox
        assert client.get(screen_link(cards[0])).status_code == 404  # not available yet
    assert runtime.flush() is True  # the database is back: shipped
    assert client.get(screen_link(cards[0])).status_code == 200


def test_an_accepted_suggestion_reaches_the_feedback_store(client: FlaskClient) -> None:
    cards = post(client, complex_chart("order-select"))
    mi = next(c for c in cards if c["source"]["topic"]["code"] == "recent-myocardial-infarction")
    move = mi["suggestions"][0]
    feedback = {
        "feedback": [
            {
                "card": mi["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": move["uuid"]}],
                "outcomeTimestamp": "2026-11-22T12:01:00Z",
            }
        ]
    }
    runtime = client.application.extensions["ketamine_cds"]
    runtime.flush()
    assert client.post("/cds-services/ketamine-order-select/feedback", json=feedback).status_code == 200
    (stored,) = runtime.store.feedback_for(mi["uuid"])
    assert stored.known_card  # the card was recorded as issued
    assert stored.item.accepted_suggestions == (move["uuid"],)


def test_no_hold_suggestion_for_an_antiepileptic_benzodiazepine(client: FlaskClient) -> None:
    body = complex_chart("order-select")
    seizure = {"coding": [{"system": "http://snomed.info/sct", "code": "84757009", "display": "Epilepsy"}]}
    body["prefetch"]["conditions"]["entry"].append(
        {"resource": {**body["prefetch"]["conditions"]["entry"][0]["resource"], "id": "epi", "code": seizure}}
    )
    cards = post(client, body)
    benzo = next(c for c in cards if c["source"]["topic"]["code"] == "benzodiazepine-response")
    assert "do not hold it" in benzo["summary"]
    assert "last dose by" not in benzo["summary"] + benzo["detail"]
    assert not [s for s in benzo.get("suggestions", []) if "hold" in s["label"]]


def _benzo_card_with_session_on(client: FlaskClient, start: str) -> dict[str, Any]:
    body = _with_alprazolam(complex_chart("order-select"))  # a hold plan is offered only for it
    order = next(
        r for r in body["context"]["draftOrders"]["entry"] if r["resource"]["id"] == "draft-ketamine"
    )
    order["resource"]["dosageInstruction"][0]["timing"]["event"] = [start]
    cards = post(client, body)
    return next(c for c in cards if c["source"]["topic"]["code"] == "benzodiazepine-response")


def test_a_hold_already_past_is_called_too_late_not_given_as_an_instruction(client: FlaskClient) -> None:
    # clock 22 Nov; session 09:00 on 23 Nov: the 48 h hold would have needed the last dose on 21 Nov
    benzo = _benzo_card_with_session_on(client, "2026-11-23")
    assert "too late for a 48 h hold before 23 Nov: discuss with the prescriber" in benzo["summary"]
    assert "21 Nov" not in benzo["summary"] + benzo["detail"]
    assert "A 24 h hold needs the last dose by 09:00 today" in benzo["detail"]
    assert_house_style(benzo)
    (ask,) = benzo["suggestions"]
    request = ask["actions"][0]["resource"]["payload"][0]["contentString"]
    assert "no longer possible" in request
    assert "21 Nov" not in request


def test_a_hold_starting_today_says_today(client: FlaskClient) -> None:
    benzo = _benzo_card_with_session_on(client, "2026-11-24")
    assert "last dose by 09:00 today" in benzo["summary"]
    assert "too late" not in benzo["summary"]


def test_a_session_today_with_no_hold_possible_says_so(client: FlaskClient) -> None:
    benzo = _benzo_card_with_session_on(client, "2026-11-22")
    assert "too late for a 48 h hold before 22 Nov" in benzo["summary"]
    assert "last dose by" not in benzo["summary"] + benzo["detail"]


def test_also_noted_names_the_medicine_found_not_its_class(client: FlaskClient) -> None:
    cards = post(client, complex_chart("order-select"))
    text = "\n".join(c["summary"] + "\n" + c["detail"] for c in cards)
    assert "risperidone" in text.lower()
    assert "Risperidone or olanzapine in use" not in text
