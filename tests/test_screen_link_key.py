"""Without KETAMINE_CDS_AUDIT_HASH_KEY the service keeps its audit key in the database; the screening page
link is signed (and checked) with that same key, so a firing call is answered and its link opens."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests.support.cards import page_text, screen_link
from tests.support.charts import complex_chart


def test_cards_and_their_page_work_with_the_audit_key_from_the_database(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(audit_hash_key=None, repeat_suppression_s=0)
    client = app.test_client()
    response = client.post("/cds-services/ketamine-order-select", json=complex_chart("order-select"))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    cards = response.get_json()["cards"]
    assert cards
    assert screen_link(cards[0])
    assert "Condition/mi-1" in page_text(client, cards)
