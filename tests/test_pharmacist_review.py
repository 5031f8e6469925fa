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

Screen = Callable[[str], tuple[dict[str, str], str]]


@pytest.fixture(scope="module")
def screen(knowledge: Knowledge) -> Screen:
    """A case -> its findings (rule -> indicator) and the text of every card returned."""
    settings = load_settings(environ={}, overrides={"dev_mode": True})
    screener = Screener(knowledge, settings, requests.Session(), lambda: SCREEN_DATE)

    def run(name: str) -> tuple[dict[str, str], str]:
        body = json.loads((CORPUS / f"{name}.json").read_text(encoding="utf-8"))
        service = next(s for s in knowledge.services.values() if s.hook == body["hook"])
        result = screener.screen(service, body)
        assert_valid_response(knowledge, {"cards": result.cards})
        text = "\n".join(card["summary"] + "\n" + card.get("detail", "") for card in result.cards)
        return {f.rule.id: f.indicator for f in result.findings}, text

    return run


def test_the_corpus_is_whole() -> None:
    requests_on_disk = {p.stem for p in CORPUS.glob("[0-9]*.json")}
    assert requests_on_disk == set(CASES)
    assert len(CASES) == 90
    written = (CORPUS / "expectations.md").read_text(encoding="utf-8")
    assert all(f"**{name}**" in written for name in CASES), "every case has the pharmacist's expectation"


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_finds_what_is_expected_with_the_expected_figures(name: str, screen: Screen) -> None:
    expected = CASES[name]
    findings, text = screen(name)
    assert findings == expected["findings"], expected["pharmacist"]
    for key in ("summary_has", "detail_has"):
        for rule, phrases in expected.get(key, {}).items():
            for phrase in phrases:
                assert phrase in text, (rule, phrase)
    for rule, phrases in expected.get("detail_lacks", {}).items():
        for phrase in phrases:
            assert phrase not in text, (rule, phrase)


def test_no_critical_finding_the_pharmacist_expected_is_missed(screen: Screen) -> None:
    """Every case whose expectation opens with CRITICAL has a critical finding, unless the corpus says
    why the service deliberately answers otherwise (the review's first concern: silent misses)."""
    missed = [
        name
        for name, case in CASES.items()
        if case["pharmacist"].startswith("CRITICAL")
        and "differs" not in case
        and "critical" not in screen(name)[0].values()
    ]
    assert missed == []
