"""The screening page in a real browser: Debian's headless Chromium (installed on first use, never
downloaded by a test tool) renders it, prints it to PDF, and axe-core finds no WCAG 2.1 A/AA violation."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from tests.support.browser import axe_violations, dump_dom, ensure_chromium, print_pdf, screenshot
from tests.support.cards import screen_link
from tests.support.charts import complex_chart, typical_chart
from tests.support.ehr_client import serving

SERVICES = {"order-select": "ketamine-order-select", "order-sign": "ketamine-order-sign"}


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture
def service(make_app: Callable[..., Flask]) -> Iterator[str]:
    with serving(make_app(repeat_suppression_s=0)) as base:
        yield base


def cards_for(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = requests.post(f"{base}/cds-services/{SERVICES[body['hook']]}", json=body, timeout=30)
    assert response.status_code == 200, response.text[:2000]
    cards: list[dict[str, Any]] = response.json()["cards"]
    assert cards
    return cards


def pdf_pages(pdf: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page(?!s)", pdf.read_bytes()))


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_page_renders_what_the_cards_said_and_the_whole_screen(
    chromium: Path, service: str, hook: str
) -> None:
    cards = cards_for(service, complex_chart(hook))
    dom = html.unescape(dump_dom(chromium, screen_link(cards[0])))
    for card in cards:
        assert card["summary"] in dom
    assert "<main>" in dom
    assert "Every check" in dom
    assert "None found in" in dom  # the negatives are listed too
    assert "Condition/mi-1" in dom


def test_the_typical_chart_prints_on_one_a4_page(chromium: Path, service: str, tmp_path: Path) -> None:
    cards = cards_for(service, typical_chart("order-select"))
    pdf = print_pdf(chromium, screen_link(cards[0]), tmp_path / "typical.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    assert pdf_pages(pdf) == 1


def test_the_complex_chart_prints(chromium: Path, service: str, tmp_path: Path) -> None:
    cards = cards_for(service, complex_chart("order-select"))
    pdf = print_pdf(chromium, screen_link(cards[0]), tmp_path / "complex.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    assert 1 <= pdf_pages(pdf) <= 4  # every check with its records, policy and sources


@pytest.mark.parametrize("chart", [typical_chart, complex_chart])
def test_no_accessibility_violations_at_wcag_21_aa(
    chromium: Path, service: str, tmp_path: Path, chart: Callable[[str], dict[str, Any]]
) -> None:
    cards = cards_for(service, chart("order-select"))
    page = requests.get(screen_link(cards[0]), timeout=30)
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<script" not in page.text  # works without JavaScript: there is none
    assert axe_violations(chromium, page.text, tmp_path) == []


def test_the_rules_page_is_accessible(chromium: Path, service: str, tmp_path: Path) -> None:
    page = requests.get(f"{service}/rules", timeout=30)
    assert page.status_code == 200
    assert "Recent myocardial infarction" in page.text
    assert axe_violations(chromium, page.text, tmp_path) == []


def test_the_page_fits_a_phone(chromium: Path, service: str, tmp_path: Path) -> None:
    cards = cards_for(service, complex_chart("order-select"))
    png = screenshot(chromium, screen_link(cards[0]), tmp_path / "phone.png", width=390, height=844)
    assert png.read_bytes().startswith(b"\x89PNG")
    page = requests.get(screen_link(cards[0]), timeout=30).text
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page
