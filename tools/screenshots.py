"""Screenshots of the screening page for docs/ and the README: a typical and a complex chart.

    .venv/bin/python -m tools.screenshots [docs/screenshots]

Runs the service in-process on loopback with the test clock, sends the two charts of
tests/support/charts.py at order-select, and has Debian's headless Chromium (installed with apt-get when
missing) photograph each card's screening page at desktop and phone widths.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import requests

from cds.app import create_app
from cds.config import load_settings
from tests.support.browser import ensure_chromium, screenshot
from tests.support.cards import screen_link
from tests.support.charts import complex_chart, typical_chart
from tests.support.constants import NOW
from tests.support.ehr_client import serving

SHOTS = {  # name -> (chart, desktop height, phone height)
    "typical": (typical_chart, 1150, 1500),
    "complex": (complex_chart, 1700, 1500),
}


def main(folder: str = "docs/screenshots") -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(
            environ={},
            overrides={"dev_mode": True, "database_url": f"sqlite:///{scratch}/shots.sqlite3"},
        )
        app = create_app(settings, clock=lambda: NOW)
        with serving(app) as base:
            for name, (chart, desktop, phone) in SHOTS.items():
                body = chart("order-select")
                response = requests.post(f"{base}/cds-services/ketamine-order-select", json=body, timeout=60)
                response.raise_for_status()
                url = screen_link(response.json()["cards"][0])
                screenshot(chromium, url, out / f"screen-{name}.png", width=1000, height=desktop)
                screenshot(chromium, url, out / f"screen-{name}-phone.png", width=390, height=phone)
                print(out / f"screen-{name}.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
