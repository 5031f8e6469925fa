"""`ketamine-cds screen`: offline screening for pharmacists and scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds.cli import main

EXAMPLES = Path(__file__).resolve().parent / "data" / "examples"


def test_screen_prints_the_cards(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["screen", str(EXAMPLES / "order-select.json"), "--now", "2026-11-22"]) == 0
    cards = json.loads(capsys.readouterr().out)["cards"]
    assert {c["source"]["topic"]["code"]: c["indicator"] for c in cards}[
        "ketamine-hypersensitivity"
    ] == "critical"


def test_screen_rejects_a_bad_request_by_path_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "hook": "patient-view",
        "hookInstance": "x",
        "context": {"patientId": "p", "userId": "Nurse/SECRET-9"},
    }
    request = tmp_path / "bad.json"
    request.write_text(json.dumps(body), encoding="utf-8")
    assert main(["screen", str(request)]) == 2
    err = capsys.readouterr().err
    outcome = json.loads(err[err.index("{") :])
    assert outcome["issue"][0]["expression"] == ["$.context.userId"]
    assert "SECRET-9" not in err
