"""Regression corpus: an independent clinical pharmacist's 90 chart cases, screened as of 2026-03-15.

The cases and the pharmacist's own expectations (expectations.md, written before the cases were run)
come from a review of 2026-12-02 by someone who had not read the project's corpus. expectations.json
turns them into checks: exactly which rules fire at which indicator, the figures each summary must
carry, and what the card text must or must not say (the defects the review found). Where the service
deliberately answers otherwise, `differs` says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.clinical.knowledge import Knowledge
from cds.clinical.screening import Screener
from cds.config import load_settings
from tests.support.responses import assert_valid_response

CORPUS = Path(__file__).parent / "data" / "pharmacist-review"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expectations.json").read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = EXPECTED["cases"]
SCREEN_DATE = datetime.fromisoformat(EXPECTED["screen_date"]).replace(hour=12, tzinfo=UTC)

Screen = Callable[[str], dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def screen(knowledge: Knowledge) -> Screen:
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    screener = Screener(knowledge, settings, requests.Session(), lambda: SCREEN_DATE)

    def run(name: str) -> dict[str, dict[str, Any]]:
        body = json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))
        service = next(s for s in knowledge.services.values() if s.hook == body["hook"])
        cards = screener.screen(service, body).cards
        assert_valid_response(knowledge, {"cards": cards})
        return {card["source"]["topic"]["code"]: card for card in cards}

    return run


def test_the_corpus_is_whole() -> None:
    requests_on_disk = {p.stem for p in CORPUS.glob("[0-9]*.json")}
    assert requests_on_disk == set(CASES)
    assert len(CASES) == 90
    written = (CORPUS / "expectations.md").read_text(encoding="utf-8")
    assert all(f"**{name}**" in written for name in CASES), "every case has the pharmacist's expectation"


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_fires_the_expected_rules_with_the_expected_figures(name: str, screen: Screen) -> None:
    expected = CASES[name]
    cards = screen(name)
    fired = {rule: card["indicator"] for rule, card in cards.items()}
    assert fired == expected["cards"], expected["pharmacist"]
    for rule, figures in expected.get("summary_has", {}).items():
        for figure in figures:
            assert figure in cards[rule]["summary"], (rule, figure)
    for rule, phrases in expected.get("detail_has", {}).items():
        for phrase in phrases:
            assert phrase in cards[rule]["detail"], (rule, phrase)
    for rule, phrases in expected.get("detail_lacks", {}).items():
        text = cards[rule]["summary"] + cards[rule]["detail"]
        for phrase in phrases:
            assert phrase not in text, (rule, phrase)


def test_no_critical_finding_the_pharmacist_expected_is_missed(screen: Screen) -> None:
    """Every case whose expectation opens with CRITICAL gets a critical card (the review's first concern)."""
    missed = [
        name
        for name, case in CASES.items()
        if case["pharmacist"].startswith("CRITICAL")
        and "critical" not in {card["indicator"] for card in screen(name).values()}
    ]
    assert missed == []
