"""The committee report: CSV, JSON and a self-contained HTML page with matplotlib charts."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cds.cli import main
from cds.errors import ConfigError
from cds.report import render_report
from cds.storage.analytics import ReasonCount, RuleReport, RuleStats, Tally, WeekTally

SYSTEM = "https://example.org/CodeSystem/ketamine-override-reasons"
GENERATED = datetime(2025, 3, 20, 8, 30, tzinfo=UTC)


def sample() -> RuleReport:
    informed = ReasonCount(SYSTEM, "patient-informed", "Patient informed", 2)
    benefit = ReasonCount(SYSTEM, "benefit-outweighs-risk", "Benefit outweighs risk", 1)
    benzo = RuleStats(
        rule_id="ketamine-benzodiazepine",
        rule_versions=("1.0.0", "1.1.0"),
        total=Tally(shown=6, accepted=2, overridden=3, reasons=(informed, benefit)),
        weeks=(
            WeekTally(date(2025, 3, 3), Tally(4, 1, 3, (informed, benefit))),
            WeekTally(date(2025, 3, 10), Tally(2, 1, 0)),
        ),
    )
    bp = RuleStats(
        rule_id="ketamine-blood-pressure",
        rule_versions=("2.0.0",),
        total=Tally(shown=3, accepted=1, overridden=1, reasons=(ReasonCount(None, None, None, 1),)),
        weeks=(WeekTally(date(2025, 3, 10), Tally(3, 1, 1, (ReasonCount(None, None, None, 1),))),),
    )
    silent = RuleStats(  # cards shown, but no feedback at all: no rate, not drawn
        rule_id="ketamine-pregnancy",
        rule_versions=("1.0.0",),
        total=Tally(shown=2, accepted=0, overridden=0),
        weeks=(WeekTally(date(2025, 3, 10), Tally(2, 0, 0)),),
    )
    return RuleReport(
        generated_at=GENERATED,
        since=datetime(2025, 3, 1, tzinfo=UTC),
        rules=(benzo, bp, silent),
        unmatched_feedback=1,
    )


def test_csv_has_totals_then_weeks_with_one_column_per_reason() -> None:
    rows = list(csv.DictReader(io.StringIO(render_report(sample(), "csv"))))
    assert [(r["rule_id"], r["period"]) for r in rows] == [
        ("ketamine-benzodiazepine", "all"),
        ("ketamine-blood-pressure", "all"),
        ("ketamine-pregnancy", "all"),
        ("ketamine-benzodiazepine", "2025-03-03"),
        ("ketamine-benzodiazepine", "2025-03-10"),
        ("ketamine-blood-pressure", "2025-03-10"),
        ("ketamine-pregnancy", "2025-03-10"),
    ]
    benzo = rows[0]
    assert benzo["rule_versions"] == "1.0.0;1.1.0"
    assert (benzo["shown"], benzo["accepted"], benzo["overridden"], benzo["no_feedback"]) == (
        "6",
        "2",
        "3",
        "1",
    )
    assert benzo["override_rate"] == "0.6000"
    assert benzo["overridden: patient-informed (Patient informed)"] == "2"
    assert benzo["overridden: benefit-outweighs-risk (Benefit outweighs risk)"] == "1"
    assert benzo["overridden: no reason given"] == "0"
    assert rows[1]["overridden: no reason given"] == "1"
    assert rows[2]["override_rate"] == ""  # no feedback: no rate, not 0
    assert rows[3]["override_rate"] == "0.7500"
    assert rows[4]["override_rate"] == "0.0000"
    header = next(csv.reader(io.StringIO(render_report(sample(), "csv"))))
    # reasons ordered by how often they were given, "no reason given" last among equals
    assert header[8:] == [
        "overridden: patient-informed (Patient informed)",
        "overridden: benefit-outweighs-risk (Benefit outweighs risk)",
        "overridden: no reason given",
    ]


def test_csv_keeps_a_code_with_and_without_its_system_in_distinct_columns() -> None:
    """One reason code sent once with its system and once without is two reasons: two columns, each
    titled so a spreadsheet (and DictReader) does not fold them together."""
    with_system = ReasonCount(SYSTEM, "patient-informed", "Patient informed", 2)
    bare = ReasonCount(None, "patient-informed", "Patient informed", 1)  # display looked up when reported
    rule = RuleStats("ketamine-benzodiazepine", ("1",), Tally(4, 0, 3, (with_system, bare)), ())
    text = render_report(RuleReport(GENERATED, None, (rule,), 0), "csv")
    header = next(csv.reader(io.StringIO(text)))
    reasons = header[8:]
    assert len(reasons) == len(set(reasons)) == 2
    assert reasons[0] == f"overridden: patient-informed (Patient informed) [{SYSTEM}]"
    assert reasons[1] == "overridden: patient-informed (Patient informed) [no system]"
    (row,) = csv.DictReader(io.StringIO(text))
    assert [row[title] for title in reasons] == ["2", "1"]


def test_csv_does_not_let_spreadsheets_run_formulas() -> None:
    evil = ReasonCount(SYSTEM, "x", '=HYPERLINK("http://evil.example")', 1)
    report = RuleReport(
        GENERATED,
        None,
        (RuleStats("=cmd|' /C calc'!A0", ("1",), Tally(1, 0, 1, (evil,)), ()),),
        0,
    )
    text = render_report(report, "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][0].startswith("'=")
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


def test_json_is_stable_and_complete() -> None:
    text = render_report(sample(), "json")
    assert render_report(sample(), "json") == text  # stable: the same report gives the same bytes
    data = json.loads(text)
    assert sorted(data) == ["definitions", "generatedAt", "rules", "since", "unmatchedFeedback"]
    assert data["generatedAt"] == "2025-03-20T08:30:00+00:00"
    assert data["since"] == "2025-03-01T00:00:00+00:00"
    assert data["unmatchedFeedback"] == 1
    assert "overrideRate" in data["definitions"]
    benzo = data["rules"][0]
    assert benzo["ruleId"] == "ketamine-benzodiazepine"
    assert (benzo["shown"], benzo["accepted"], benzo["overridden"], benzo["noFeedback"]) == (6, 2, 3, 1)
    assert benzo["overrideRate"] == 0.6
    assert benzo["overrideReasons"][0] == {
        "system": SYSTEM,
        "code": "patient-informed",
        "display": "Patient informed",
        "count": 2,
    }
    assert [w["weekStart"] for w in benzo["weeks"]] == ["2025-03-03", "2025-03-10"]
    assert benzo["weeks"][0]["overrideRate"] == 0.75
    # written out by hand: 3 shown, 1 accepted, 1 overridden (no reason) -> 1 without feedback, rate 1/2
    bp_week = {
        "shown": 3,
        "accepted": 1,
        "overridden": 1,
        "noFeedback": 1,
        "overrideRate": 0.5,
        "overrideReasons": [{"count": 1}],
    }
    assert data["rules"][1] == {
        "ruleId": "ketamine-blood-pressure",
        "ruleVersions": ["2.0.0"],
        **bp_week,
        "weeks": [{"weekStart": "2025-03-10", **bp_week}],
    }
    # cards shown but no feedback: no rate (null, not 0), every card without feedback
    silent_week = {
        "shown": 2,
        "accepted": 0,
        "overridden": 0,
        "noFeedback": 2,
        "overrideRate": None,
        "overrideReasons": [],
    }
    assert data["rules"][2] == {
        "ruleId": "ketamine-pregnancy",
        "ruleVersions": ["1.0.0"],
        **silent_week,
        "weeks": [{"weekStart": "2025-03-10", **silent_week}],
    }


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_with_two_svg_charts() -> None:
    page = render_report(sample(), "html")
    parser = _Collector()
    parser.feed(page)
    assert page.startswith("<!DOCTYPE html>")
    assert parser.tags.count("svg") == 2
    assert "script" not in parser.tags
    assert "img" not in parser.tags
    assert "link" not in parser.tags
    # nothing fetched from elsewhere (SVG-internal #fragment references are fine)
    external = [
        v for k, v in parser.attrs if k in {"src", "href", "xlink:href"} and v and not v.startswith("#")
    ]
    assert external == []
    text = " ".join(parser.text)
    for expected in (
        "Override rate per rule",
        "Override rate per week",
        "ketamine-benzodiazepine",
        "60.0%",
        "Patient informed",
        "no reason given",
        "week 10 of 2025",
        "1 feedback items named cards this service never issued",
    ):
        assert expected in text, expected
    assert "<?xml" not in page


def test_html_is_deterministic() -> None:
    assert render_report(sample(), "html") == render_report(sample(), "html")


def test_html_for_a_period_without_cards() -> None:
    page = render_report(RuleReport(GENERATED, None, (), 0), "html")
    assert "No cards were issued in this period." in page
    assert "<svg" not in page


def test_html_when_no_card_got_feedback() -> None:
    report = RuleReport(GENERATED, None, (sample().rules[2],), 0)
    page = render_report(report, "html")
    assert "<svg" not in page
    assert "no override rate" in page.lower()


def test_user_supplied_text_is_escaped() -> None:
    reason = ReasonCount(SYSTEM, "x", "<script>alert(1)</script>", 1)
    report = RuleReport(GENERATED, None, (RuleStats("r<1>", ("1",), Tally(1, 0, 1, (reason,)), ()),), 0)
    page = render_report(report, "html")
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert not re.search(r"<r<1>", page)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(sample(), "pdf")


def test_html_without_the_report_extra_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if `pip install ketamine-cds` without [report]
    with pytest.raises(ConfigError, match=re.escape("pip install 'ketamine-cds[report]'")):
        render_report(sample(), "html")
    assert render_report(sample(), "csv")  # the other formats need nothing more
    assert render_report(sample(), "json")


def test_the_report_command_without_the_extra_stops_with_that_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setenv("KETAMINE_CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    assert main(["report", "--format", "html", "--output", str(tmp_path / "report.html")]) == 2
    assert "ketamine-cds[report]" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
