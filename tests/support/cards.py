"""Reading a response's cards as findings: consolidated cards ("Also noted", "Pre-session review") list
the rules they carry in the ketamine-cds-findings extension; any other card is one rule's finding."""

from __future__ import annotations

from typing import Any

FINDINGS_EXTENSION = "ketamine-cds-findings"

# Words of the service's own machinery that must never reach a clinician's card.
INTERNAL_VOCABULARY = ("tier", "preset", "clinic_faq", "section", ".yaml", "site policy", "project sources")


def findings_carried(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(rule id, indicator) for every finding on every card; a review that carries nothing adds none."""
    carried: list[tuple[str, str]] = []
    for card in cards:
        inside = card.get("extension", {}).get(FINDINGS_EXTENSION)
        if inside is not None:
            carried.extend((item["rule"], item["indicator"]) for item in inside)
        elif card["source"]["topic"]["code"] not in {"pre-session-review", "also-noted"}:
            carried.append((card["source"]["topic"]["code"], card["indicator"]))
    return carried


def findings_shown(cards: list[dict[str, Any]]) -> dict[str, str]:
    """rule id -> indicator over the whole response."""
    return dict(findings_carried(cards))


def screen_link(card: dict[str, Any]) -> str:
    """The card's link to its screening page (the first link; type absolute)."""
    link = card["links"][0]
    assert "/screens/" in link["url"], card["links"]
    assert link["type"] == "absolute", card["links"]
    return str(link["url"])


def page_text(client: Any, cards: list[dict[str, Any]]) -> str:
    """The screening page behind a response's cards, as served (asserts 200, HTML, no-store)."""
    assert cards, "no card, so no screening page"
    client.application.extensions["ketamine_cds"].flush()
    response = client.get(screen_link(cards[0]))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    return str(response.get_data(as_text=True))


def views_from_record(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every finding of a screen as its screening page shows it: rule id -> indicator, summary, and a
    detail made of the explanation, one "- Type/id: ..." line per record (codes, dates, figures, notes)
    and the thresholds that applied."""
    found: dict[str, dict[str, Any]] = {}
    for check in record.get("checks", []):
        if check["status"] not in {"critical", "warning", "info"}:
            continue
        trail = [
            f"- {r['reference']}: {r['label']}; {r['coding']}; {r['date']}; {r['figures']}; "
            + "; ".join(r["notes"])
            for r in [*check["records"], *check["other_records"]]
        ]
        found[check["rule"]] = {
            "indicator": check["status"],
            "summary": check["statement"],
            "detail": "\n".join([check["explanation"], *trail, *check["policy"]]),
        }
    return found


def screen_views(knowledge: Any, result: Any, now: Any) -> dict[str, dict[str, Any]]:
    """views_from_record for a ScreenResult, without HTTP (the record the page would be built from)."""
    from cds.clinical.screen_record import record_of

    record = record_of(knowledge, result, now)
    views = views_from_record(record)
    assert {rule: v["indicator"] for rule, v in views.items()} == findings_shown(result.cards)
    return views


def every_chart_policy(folder: Any) -> str:
    """A site policy file that screens every chart on patient-view (the Synthea patients are in no
    ketamine course; by default patient-view is silent outside one)."""
    path = folder / "every-chart-policy.yaml"
    path.write_text("patient_view_scope: all\n", encoding="utf-8")
    return str(path)


def stored_screen(client: Any, cards: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored screen behind the cards (what their page shows), after the page answered 200."""
    from tests.support.constants import NOW

    page_text(client, cards)
    page_id = screen_link(cards[0]).split("/screens/")[1].split("?")[0]
    stored = client.application.extensions["ketamine_cds"].store.screen_page(page_id, NOW)
    assert stored is not None
    return dict(stored.payload)


def findings_on_page(client: Any, cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """views_from_record of the screen behind `cards` (empty when there is no card)."""
    return views_from_record(stored_screen(client, cards)) if cards else {}


def cards_by_rule(cards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rule id -> the card that carries its finding (a consolidated card stands for each finding it
    carries, with that finding's indicator)."""
    found: dict[str, dict[str, Any]] = {}
    for card in cards:
        inside = card.get("extension", {}).get(FINDINGS_EXTENSION)
        if inside is None:
            if card["source"]["topic"]["code"] not in {"pre-session-review", "also-noted"}:
                found[card["source"]["topic"]["code"]] = card
            continue
        for item in inside:
            found[item["rule"]] = {**card, "indicator": item["indicator"]}
    return found
