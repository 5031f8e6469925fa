"""The worklist never drops a patient: a chart the server fails on, or answers too slowly for the hooks'
time budget, is listed as not screened with the reason, and the other patients are still screened."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cds.worklist.command import build_worklist, progress_bar
from cds.worklist.config import load_worklist_config
from tests.support import worklist_data as wd
from tests.support.fhir_server import Reply, ScriptedServer

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _bundle(resources: list[dict[str, object]]) -> dict[str, object]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


APPOINTMENTS = [
    wd.appointment(f"a-{key}", f"p-{key}", f"2026-12-02T0{hour}:00:00+00:00", description="Ketamine infusion")
    for key, hour in (("ok", 8), ("broken", 9), ("slow", 7))
]
FOREIGN = wd.appointment("a-foreign", "p-foreign", "2026-12-02T10:00:00+00:00", description="Spravato")
FOREIGN["participant"][0]["actor"]["reference"] = "https://elsewhere.example.org/fhir/Patient/p-foreign"
APPOINTMENTS.append(FOREIGN)


def _script(target: str) -> Reply:
    parts = urlsplit(target)
    query = parse_qs(parts.query)
    kind = parts.path.removeprefix("/fhir/").split("/")[0]
    patient = (query.get("patient") or [""])[0]
    if kind == "Appointment":
        return Reply(body=_bundle(APPOINTMENTS))  # type: ignore[arg-type]
    if kind == "Patient":
        pid = parts.path.rsplit("/", 1)[-1]
        return Reply(body=wd.patient(pid, "Test", pid))
    if kind == "Condition" and patient == "p-broken":
        return Reply(status=500)
    if kind == "Observation" and patient == "p-slow":
        return Reply(body=_bundle([]), delay_s=2.5)  # type: ignore[arg-type]
    return Reply(body=_bundle([]))  # type: ignore[arg-type]


def test_unfetchable_charts_are_listed_not_screened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETAMINE_CDS_FHIR_TIME_BUDGET_S", "1.5")
    with ScriptedServer(_script) as server:
        path = tmp_path / "worklist.yaml"
        path.write_text(json.dumps({"fhir_server": server.base_url, "allow_server": True}), encoding="utf-8")
        config = load_worklist_config(path, token="scripted-token")
        worklist = build_worklist(config, date(2026, 12, 2), 1, clock=lambda: NOW)
    rows = {row.patient_id: row for row in worklist.rows}
    assert list(rows) == ["p-slow", "p-ok", "p-broken", None]  # by session time
    # a patient on another server is not looked up here (the same id may be someone else), but listed
    assert rows[None].not_screened_reason == "the session names no patient the service can read"
    assert not any("p-foreign" in r.target for r in server.requests)
    assert rows["p-ok"].screened
    assert not rows["p-broken"].screened
    assert rows["p-broken"].not_screened_reason == "FHIR server answered HTTP 500 to a Condition search"
    assert not rows["p-slow"].screened
    assert "in time" in (rows["p-slow"].not_screened_reason or "")
    assert worklist.not_screened == 3
    assert worklist.calls == 4


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only() -> None:
    terminal = _Terminal()
    show = progress_bar(terminal)
    for done in range(4):
        show(done, 3)
    assert terminal.getvalue().endswith("\rscreening [" + "#" * 30 + "] 3/3 patients\n")
    assert "1/3 patients" in terminal.getvalue()
    piped = io.StringIO()
    quiet = progress_bar(piped)
    quiet(1, 3)
    assert piped.getvalue() == ""
