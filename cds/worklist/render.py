"""The worklist as JSON, CSV or a printable HTML page.

* ``json`` (schema ``ketamine-cds/worklist/1``, field names stable; see docs/worklist.md):
  ``{"schema", "from", "days", "generated", "summary": {patients, sessions, critical, calls, notScreened},
  "patients": [{"patientId", "name", "sessions": [{"start", "products", "source"}], "screened",
  "notScreenedReason", "critical": [{"summary", "action": "defer", "eligibleFrom"}],
  "holds": [{"medicine", "session", "lastDoseBy", "lastDoseLatest", "resumeFrom", "summary"}],
  "instructions": [..], "review": [..], "unreadable": [..]}]}``; date-times are ISO 8601 with the clinic's
  offset, dates are ISO dates.
* ``csv``: one row per patient and action (``defer``, ``hold``, ``review``, ``instructions``,
  ``unreadable``, ``not-screened``, or ``none`` for a patient with nothing to do), for a call list.
* ``html``: one self-contained page, no scripts, one printed page per day of sessions; a patient with
  sessions on several days appears on the day of the first, with every date listed.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cds.report import _safe_cell
from cds.worklist.build import Row, Worklist

FORMATS = ("html", "csv", "json")
SCHEMA = "ketamine-cds/worklist/1"


def render_worklist(worklist: Worklist, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(worklist_to_dict(worklist), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return _csv(worklist)
    if fmt == "html":
        return _html(worklist)
    raise ValueError(f"unknown worklist format {fmt!r}: use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------- JSON


def _row_dict(row: Row) -> dict[str, Any]:
    return {
        "patientId": row.patient_id,
        "name": row.name,
        "sessions": [
            {"start": s.start.isoformat(), "products": sorted(s.products), "source": s.source}
            for s in row.sessions
        ],
        "screened": row.screened,
        "notScreenedReason": row.not_screened_reason,
        "critical": [
            {
                "summary": c.summary,
                "action": "defer",
                "eligibleFrom": c.eligible_from.isoformat() if c.eligible_from else None,
            }
            for c in row.critical
        ],
        "holds": [
            {
                "medicine": h.medicine,
                "session": h.session.isoformat(),
                "lastDoseBy": h.last_dose_by.isoformat(),
                "lastDoseLatest": h.last_dose_latest.isoformat(),
                "resumeFrom": h.resume_from.isoformat(),
                "summary": h.summary,
            }
            for h in row.holds
        ],
        "instructions": list(row.instructions),
        "review": list(row.review),
        "unreadable": list(row.unreadable),
    }


def worklist_to_dict(worklist: Worklist) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "from": worklist.first_day.isoformat(),
        "days": worklist.days,
        "generated": worklist.generated.isoformat(),
        "summary": {
            "patients": len(worklist.rows),
            "sessions": worklist.session_count,
            "critical": worklist.critical_count,
            "calls": worklist.calls,
            "notScreened": worklist.not_screened,
        },
        "patients": [_row_dict(row) for row in worklist.rows],
    }


# ---------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "first_session",
    "sessions",
    "patient",
    "patient_id",
    "action",
    "what",
    "last_dose_by",
    "resume_from",
    "eligible_from",
)


def _actions(row: Row) -> list[tuple[str, str, str, str, str]]:
    """(action, what, last dose by, resume from, eligible from) for each thing to do for this patient."""
    if not row.screened:
        return [("not-screened", row.not_screened_reason or "", "", "", "")]
    actions = [("defer", c.summary, "", "", _day(c.eligible_from)) for c in row.critical]
    actions += [
        (
            "hold",
            f"{h.medicine} (session {_moment(h.session)})",
            _moment(h.last_dose_by),
            _moment(h.resume_from),
            "",
        )
        for h in row.holds
    ]
    actions += [("review", text, "", "", "") for text in row.review]
    actions += [("instructions", text, "", "", "") for text in row.instructions]
    actions += [("unreadable", text, "", "", "") for text in row.unreadable]
    return actions or [("none", "", "", "", "")]


def _csv(worklist: Worklist) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in worklist.rows:
        sessions = "; ".join(_moment(s.start) for s in row.sessions)
        for action in _actions(row):
            cells = [_moment(row.first_session), sessions, row.name or "", row.patient_id or "", *action]
            writer.writerow([_safe_cell(cell) for cell in cells])
    return out.getvalue()


def _moment(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def _day(value: date | None) -> str:
    return value.isoformat() if value else ""


# ---------------------------------------------------------------------- HTML

_SHARED_STYLE = Path(__file__).resolve().parents[1] / "web" / "templates" / "_style.html"
_OWN_CSS = """
main { padding-top: 1rem; } .critical { color: var(--critical); font-weight: 600; }
.sub { display: block; margin: .1rem 0 0 .2rem; } .missing { margin: 0; }
.clear { color: var(--clear); margin: 0; } .also { font-size: .9rem; color: var(--muted); }
td.when { white-space: nowrap; } col.when { width: 9.5rem; } col.who { width: 11rem; }
ul.cards li { margin: .2rem 0; padding: .25rem .45rem; }
.day { break-before: page; page-break-before: always; }
.day:first-of-type { break-before: auto; page-break-before: auto; }
@media print { tr { break-inside: avoid; } }
"""


def _style() -> str:
    """The screening page's shared style (one look for the service's pages) and the worklist's layout."""
    return _SHARED_STYLE.read_text(encoding="utf-8") + f"<style>{_OWN_CSS}</style>"


_PASSED = " <em>(the full hold's last dose time has already passed: call today)</em>"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time(value: datetime) -> str:
    return value.strftime("%H:%M")


def _long(value: datetime) -> str:
    return f"{value:%a} {value.day} {value:%b} {value:%H:%M}"


def _long_day(value: date) -> str:
    return f"{value:%A} {value.day} {value:%B %Y}"


def _list(items: Iterable[tuple[str, str]]) -> str:
    """(status, html) items as the shared style's bordered list (status: critical, warning, info, na)."""
    entries = [f"<li class='s-{status}'>{item}</li>" for status, item in items]
    return f"<ul class='cards'>{''.join(entries)}</ul>" if entries else ""


def _badge(status: str, label: str) -> str:
    return f"<span class='badge b-{status}'>{label}</span>"


def _row_html(row: Row, generated: datetime) -> str:
    sessions = "<br>".join(_e(_long(s.start)) for s in row.sessions)
    name = _e(row.name) if row.name else "<em>name not available</em>"
    if not row.screened:
        actions = (
            f"<p class='missing'>{_badge('not-applicable', 'Not screened')}"
            f"{_e(row.not_screened_reason or '')}. Screen this chart by hand.</p>"
        )
        return f"<tr><td class='when'>{sessions}</td><th scope='row'>{name}</th><td>{actions}</td></tr>"
    parts: list[tuple[str, str]] = []
    for critical in row.critical:
        until = (
            f"<span class='sub'>Eligible from <strong>{_e(_long_day(critical.eligible_from))}</strong>."
            "</span>"
            if critical.eligible_from
            else ""
        )
        parts.append(
            (
                "critical",
                f"{_badge('critical', 'Defer')}<span class='critical'>{_e(critical.summary)}</span>{until}",
            )
        )
    for summary in dict.fromkeys(hold.summary for hold in row.holds):
        lines = "".join(
            f"<span class='sub'>{_e(hold.medicine)}: last dose by <strong>{_e(_long(hold.last_dose_by))}"
            f"</strong> (at the latest {_e(_long(hold.last_dose_latest))}), resume from "
            f"<strong>{_e(_long(hold.resume_from))}</strong>; session {_e(_long(hold.session))}"
            f"{_PASSED if hold.last_dose_by <= generated else ''}</span>"
            for hold in row.holds
            if hold.summary == summary
        )
        parts.append(("warning", f"{_badge('warning', 'Hold')}{_e(summary)}{lines}"))
    parts += [("warning", f"{_badge('warning', 'Review')}{_e(text)}") for text in row.review]
    parts += [("info", f"{_badge('info', 'Tell')}{_e(text)}") for text in row.instructions]
    parts += [
        ("not-applicable", f"{_badge('not-applicable', 'Unreadable')}{_e(text)}") for text in row.unreadable
    ]
    body = _list(parts) or "<p class='clear'>Screened: nothing to act on.</p>"
    return f"<tr><td class='when'>{sessions}</td><th scope='row'>{name}</th><td>{body}</td></tr>"


def _on(row: Row, day: date) -> list[datetime]:
    return [s.start for s in row.sessions if s.start.date() == day]


def _html(worklist: Worklist) -> str:
    last = worklist.first_day.toordinal() + worklist.days - 1
    title = (
        f"Ketamine and esketamine sessions {_long_day(worklist.first_day)} to "
        f"{_long_day(date.fromordinal(last))}"
    )
    generated = f"{_long(worklist.generated)} {worklist.generated.tzname() or ''}".strip()
    days: dict[date, list[Row]] = {}
    for row in worklist.rows:
        days.setdefault(row.first_session.date(), []).append(row)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title>{_style()}</head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>{_e(worklist.summary_line())}. Generated {_e(generated)}. "
        "Every patient was screened as for their first session in this list; hold times are in clinic time."
        "</p>",
    ]
    if not days:
        parts.append("<p>No ketamine or esketamine sessions in this period.</p>")
    for day, rows in sorted(days.items()):
        parts.append(f"<section class='day' aria-labelledby='day-{day.isoformat()}'>")
        parts.append(f"<h2 id='day-{day.isoformat()}'>{_e(_long_day(day))}: {len(rows)} patient(s)</h2>")
        parts.append("<table><colgroup><col class='when'><col class='who'><col></colgroup>")
        parts.append("<thead><tr><th scope='col'>Session</th><th scope='col'>Patient</th>")
        parts.append("<th scope='col'>What to do before the session</th></tr></thead><tbody>")
        parts += [_row_html(row, worklist.generated) for row in rows]
        parts.append("</tbody></table>")
        later = [row for row in worklist.rows if row.first_session.date() < day and _on(row, day)]
        if later:
            names = ", ".join(
                f"{_e(row.name or 'name not available')} ({_e(_long(_on(row, day)[0]))})" for row in later
            )
            parts.append(f"<p class='also'>Also in session this day, listed on an earlier day: {names}.</p>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
