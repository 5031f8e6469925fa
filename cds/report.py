"""The override report for the CDS committee: `RuleReport` as CSV, JSON or a self-contained HTML page.

    render_report(override_report(store, since), "html" | "csv" | "json") -> str

* ``json``: a stable document for dashboards (also what the report endpoint returns); see `report_to_dict`.
* ``csv``: one row per rule for the whole period (``period`` = ``all``) followed by one row per rule and
  week; one column per override reason. Cells that a spreadsheet would run as a formula are quoted.
* ``html``: one file, no external resources or scripts, charts drawn by matplotlib as inline SVG
  (override rate per rule; override rate per week), followed by the same numbers as tables.

Definitions used throughout (they are printed in the HTML and the JSON):
a card counts once, by its most recent feedback; *override rate* = overridden / (accepted + overridden),
so cards without feedback (ignored, or from an EHR that sends none) do not lower it; weeks are ISO weeks
(Monday, UTC) of the time the card was issued.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from cds.errors import ConfigError
from cds.storage.analytics import ReasonCount, RuleReport, RuleStats, Tally

__all__ = ["DEFINITIONS", "FORMATS", "render_report", "report_to_dict"]

FORMATS = ("html", "csv", "json")

DEFINITIONS = {
    "shown": "cards returned to the EHR in the period (by time issued)",
    "accepted": "cards whose most recent feedback was 'accepted'",
    "overridden": "cards whose most recent feedback was 'overridden'",
    "noFeedback": "cards with no feedback: ignored by the clinician, or the EHR sends no feedback",
    "overrideRate": "overridden / (accepted + overridden); empty when no card received feedback",
    "weekStart": "Monday (UTC) of the ISO week in which the cards were issued",
    "unmatchedFeedback": "feedback received for card ids this service never issued (not counted above)",
}

_REASON_NONE = (None, None)


def render_report(report: RuleReport, fmt: str) -> str:
    """`report` as ``html``, ``csv`` or ``json`` text. Raises ValueError for any other format."""
    if fmt == "json":
        return json.dumps(report_to_dict(report), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return _render_csv(report)
    if fmt == "html":
        _require_matplotlib()
        return _render_html(report)
    raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------


def _reason_dict(reason: ReasonCount) -> dict[str, Any]:
    out: dict[str, Any] = {"count": reason.count}
    for name, value in (("system", reason.system), ("code", reason.code), ("display", reason.display)):
        if value is not None:
            out[name] = value
    return out


def _tally_dict(tally: Tally) -> dict[str, Any]:
    return {
        "shown": tally.shown,
        "accepted": tally.accepted,
        "overridden": tally.overridden,
        "noFeedback": tally.no_feedback,
        "overrideRate": None if tally.override_rate is None else round(tally.override_rate, 6),
        "overrideReasons": [_reason_dict(r) for r in tally.reasons],
    }


def report_to_dict(report: RuleReport) -> dict[str, Any]:
    """The report as plain JSON-ready data (camelCase keys, ISO dates, rates as fractions 0..1)."""
    return {
        "generatedAt": report.generated_at.isoformat(),
        "since": report.since.isoformat() if report.since else None,
        "unmatchedFeedback": report.unmatched_feedback,
        "definitions": DEFINITIONS,
        "rules": [
            {
                "ruleId": rule.rule_id,
                "ruleVersions": list(rule.rule_versions),
                **_tally_dict(rule.total),
                "weeks": [
                    {"weekStart": w.week_start.isoformat(), **_tally_dict(w.tally)} for w in rule.weeks
                ],
            }
            for rule in report.rules
        ],
    }


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def _reason_columns(report: RuleReport) -> list[tuple[tuple[str | None, str | None], str]]:
    """Every override reason in the report, most frequent first, with a column title."""
    totals: dict[tuple[str | None, str | None], int] = {}
    titles: dict[tuple[str | None, str | None], str] = {}
    for rule in report.rules:
        for reason in rule.total.reasons:
            key = (reason.system, reason.code)
            totals[key] = totals.get(key, 0) + reason.count
            if key not in titles or reason.display:
                titles[key] = reason.label
    ordered = sorted(totals, key=lambda k: (-totals[k], k == _REASON_NONE, k[1] or "", k[0] or ""))
    # The same code with and without its system is two reasons; its columns must not share a title.
    shared = {title for title in titles.values() if list(titles.values()).count(title) > 1}
    return [
        (key, f"overridden: {titles[key]}" + (f" [{key[0] or 'no system'}]" if titles[key] in shared else ""))
        for key in ordered
    ]


def _safe_cell(value: str) -> str:
    """Keep spreadsheets from evaluating text we did not write (override displays come from the EHR)."""
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


def _rate_text(rate: float | None, digits: int = 4) -> str:
    return "" if rate is None else f"{rate:.{digits}f}"


def _render_csv(report: RuleReport) -> str:
    reasons = _reason_columns(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "rule_id",
            "rule_versions",
            "period",
            "shown",
            "accepted",
            "overridden",
            "no_feedback",
            "override_rate",
            *(_safe_cell(title) for _, title in reasons),
        ]
    )

    def row(rule: RuleStats, period: str, tally: Tally) -> list[str]:
        counts = {(r.system, r.code): r.count for r in tally.reasons}
        return [
            _safe_cell(rule.rule_id),
            _safe_cell(";".join(rule.rule_versions)),
            period,
            str(tally.shown),
            str(tally.accepted),
            str(tally.overridden),
            str(tally.no_feedback),
            _rate_text(tally.override_rate),
            *(str(counts.get(key, 0)) for key, _ in reasons),
        ]

    for rule in report.rules:
        writer.writerow(row(rule, "all", rule.total))
    for rule in report.rules:
        for week in rule.weeks:
            writer.writerow(row(rule, week.week_start.isoformat(), week.tally))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 62rem;
       color: #1b1b1b; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .92rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #888; }
.chart { margin: 0; } .chart svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .88rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; font-size: .92rem; }
dt { font-weight: 600; } dd { margin: 0; }
.empty { padding: 1rem; background: #f4f4f4; }
details { margin: .4rem 0 1rem; } summary { cursor: pointer; font-weight: 600; }
"""


def _tally_cells(tally: Tally) -> list[object]:
    return [tally.shown, tally.accepted, tally.overridden, tally.no_feedback, _percent(tally.override_rate)]


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th scope='col'>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _require_matplotlib() -> None:
    """The HTML report's charts need the optional `report` extra; say so before drawing anything."""
    try:
        import matplotlib  # noqa: F401, PLC0415  (heavy and optional: loaded only for an HTML report)
    except ImportError:
        raise ConfigError(
            "the HTML report draws its charts with matplotlib, which is not installed: "
            "pip install 'ketamine-cds[report]' (the csv and json formats need nothing more)"
        ) from None


def _svg(figure: Any) -> str:
    """A matplotlib figure as inline SVG markup (no XML prolog, no timestamp, stable element ids)."""
    import matplotlib  # noqa: PLC0415  (heavy: loaded only when an HTML report is drawn)

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "ketamine-cds-report", "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (see _svg)
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # text is measured with Agg; the output is written as SVG
    return figure


def _rate_chart(rules: tuple[RuleStats, ...]) -> str:
    answered = [r for r in rules if r.total.override_rate is not None]
    if not answered:
        return "<p class='empty'>No card received feedback in this period, so there is no override rate.</p>"
    answered.sort(key=lambda r: r.total.override_rate or 0.0)
    figure = _new_figure(8.0, 1.2 + 0.42 * len(answered))
    axes = figure.add_subplot()
    rates = [100 * (r.total.override_rate or 0.0) for r in answered]
    bars = axes.barh([r.rule_id for r in answered], rates, color="#c0504d")
    labels = [
        f"{rate:.0f}%  (n={r.total.accepted + r.total.overridden})"
        for r, rate in zip(answered, rates, strict=True)
    ]
    axes.bar_label(bars, labels=labels, padding=3, fontsize=8)
    axes.set_xlim(0, 118)
    axes.set_xticks([0, 25, 50, 75, 100])
    axes.set_xlabel("override rate, % of cards with feedback (n = cards with feedback)")
    axes.set_title("Override rate per rule")
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def _trend_chart(rules: tuple[RuleStats, ...]) -> str:
    plotted = [r for r in rules if any(w.tally.override_rate is not None for w in r.weeks)]
    if not plotted:
        return "<p class='empty'>No weekly trend: no card received feedback in this period.</p>"
    figure = _new_figure(8.0, 4.2)
    axes = figure.add_subplot()
    for rule in plotted:
        weeks = [datetime.combine(w.week_start, datetime.min.time()) for w in rule.weeks]
        rates = [
            math.nan if w.tally.override_rate is None else 100 * w.tally.override_rate for w in rule.weeks
        ]
        axes.plot(weeks, rates, marker="o", linewidth=1.5, markersize=4, label=rule.rule_id)
    weeks_shown = sorted({w.week_start for rule in plotted for w in rule.weeks})
    step = max(1, math.ceil(len(weeks_shown) / 12))  # at most a dozen labelled weeks
    axes.set_xticks(
        [datetime.combine(week, datetime.min.time()) for week in weeks_shown[::step]],
        [week.isoformat() for week in weeks_shown[::step]],
    )
    axes.set_ylim(-2, 102)
    axes.set_ylabel("override rate, %")
    axes.set_xlabel("week starting (cards grouped by the week they were issued)")
    axes.set_title("Override rate per week")
    axes.grid(axis="y", color="#e4e4e4")
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    figure.autofmt_xdate()
    return _svg(figure)


def _figure(chart: str, caption: str) -> str:
    return f"<figure class='chart'>{chart}<figcaption>{_e(caption)}</figcaption></figure>"


def _reason_rows(tally: Tally) -> list[list[object]]:
    return [[r.label, r.system or "", r.count] for r in tally.reasons]


def _render_html(report: RuleReport) -> str:
    period = (
        f"cards issued since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else "all cards on record"
    )
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>Ketamine screening: how clinicians answered the cards</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Ketamine screening: how clinicians answered the cards</h1>",
        f"<p class='meta'>{_e(period)} · generated {report.generated_at:%Y-%m-%d %H:%M} UTC</p>",
    ]
    if not report.rules:
        parts.append("<p class='empty'>No cards were issued in this period.</p>")
    else:
        total = Tally(
            shown=sum(r.total.shown for r in report.rules),
            accepted=sum(r.total.accepted for r in report.rules),
            overridden=sum(r.total.overridden for r in report.rules),
        )
        parts.append(
            f"<p>{total.shown} cards from {len(report.rules)} rules; {total.accepted} accepted, "
            f"{total.overridden} overridden, {total.no_feedback} without feedback. "
            f"Overall override rate: <strong>{_percent(total.override_rate)}</strong>.</p>"
        )
        parts.append("<h2>Override rate per rule</h2>")
        parts.append(
            _figure(
                _rate_chart(report.rules),
                "Override rate per rule: the share of cards with feedback that were overridden. "
                "Rules whose cards received no feedback are not drawn.",
            )
        )
        parts.append("<h2>Trend per week</h2>")
        parts.append(
            _figure(
                _trend_chart(report.rules),
                "Override rate per week, one line per rule; a gap is a week without feedback for that rule.",
            )
        )
        parts.append("<h2>Numbers per rule</h2>")
        parts.append(
            _table(
                ["rule", "versions", "shown", "accepted", "overridden", "no feedback", "override rate"],
                ([r.rule_id, ", ".join(r.rule_versions), *_tally_cells(r.total)] for r in report.rules),
            )
        )
        parts.append("<h2>Why cards were overridden</h2>")
        for rule in report.rules:
            if rule.total.overridden:
                parts.append(f"<h3>{_e(rule.rule_id)}</h3>")
                parts.append(_table(["reason", "code system", "cards"], _reason_rows(rule.total)))
        if not any(r.total.overridden for r in report.rules):
            parts.append("<p class='empty'>No card was overridden in this period.</p>")
        parts.append("<h2>Week by week</h2>")
        for rule in report.rules:
            parts.append(f"<details><summary>{_e(rule.rule_id)}</summary>")
            parts.append(
                _table(
                    ["week starting", "shown", "accepted", "overridden", "no feedback", "override rate"],
                    ([_week(w.week_start), *_tally_cells(w.tally)] for w in rule.weeks),
                )
            )
            parts.append("</details>")
    if report.unmatched_feedback:
        parts.append(
            f"<p>{report.unmatched_feedback} feedback items named cards this service never issued; "
            "they are kept but not counted above.</p>"
        )
    parts.append("<h2>How to read this report</h2><dl>")
    for term, meaning in DEFINITIONS.items():
        parts.append(f"<dt>{_e(term)}</dt><dd>{_e(meaning)}</dd>")
    parts.append("</dl>")
    parts.append(
        "<p class='meta'>The service is advisory: a high override rate is a reason to review a rule's "
        "wording or threshold with the committee, not evidence that clinicians were wrong.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _week(start: date) -> str:
    iso = start.isocalendar()
    return f"{start.isoformat()} (week {iso.week} of {iso.year})"
