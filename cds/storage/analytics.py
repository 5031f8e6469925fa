"""Override analytics for the CDS committee: per rule, how its cards were answered and why overridden.

Reads what cds.storage.store keeps (issued cards and feedback) and returns a plain model that cds.report
renders as HTML, CSV or JSON, and `GET /analytics/overrides` serves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa

from cds.storage.store import Store, as_utc, feedback_table, issued_card_table, utc_now

__all__ = ["ReasonCount", "RuleReport", "RuleStats", "Tally", "WeekTally", "override_report"]


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """Cards whose latest feedback was an override with this reason (code None: no reason given)."""

    system: str | None
    code: str | None
    display: str | None
    count: int

    @property
    def label(self) -> str:
        if self.code is None:
            return "no reason given"
        return f"{self.code} ({self.display})" if self.display else self.code


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts for a set of cards. A card counts once, by its most recent feedback (``outcomeTimestamp``)."""

    shown: int
    accepted: int
    overridden: int
    reasons: tuple[ReasonCount, ...] = ()

    @property
    def no_feedback(self) -> int:
        """Cards without any feedback: ignored by the clinician, or the EHR does not send feedback."""
        return self.shown - self.accepted - self.overridden

    @property
    def override_rate(self) -> float | None:
        """Overridden / (accepted + overridden); None when no card received feedback."""
        answered = self.accepted + self.overridden
        return self.overridden / answered if answered else None


@dataclass(frozen=True, slots=True)
class WeekTally:
    week_start: date  # the Monday (UTC) of the ISO week in which the cards were issued
    tally: Tally


@dataclass(frozen=True, slots=True)
class RuleStats:
    rule_id: str
    rule_versions: tuple[str, ...]
    total: Tally
    weeks: tuple[WeekTally, ...]


@dataclass(frozen=True, slots=True)
class RuleReport:
    generated_at: datetime
    since: datetime | None
    rules: tuple[RuleStats, ...]
    unmatched_feedback: int  # feedback items whose card uuid we never issued (not attributed to a rule)


def override_report(
    store: Store, since: datetime | None = None, *, displays: Mapping[tuple[str, str], str] | None = None
) -> RuleReport:
    """Per rule: cards issued since `since`, how they were answered, why they were overridden, by week.

    Each card counts once, by its latest feedback (by ``outcomeTimestamp``, then arrival), so a card
    first overridden and later accepted counts as accepted. Cards are grouped into weeks by the time
    they were issued. A reason stored without a display (older feedback) takes its display from
    `displays` ((system, code) -> display, the service's own catalogue) when it is there.
    """
    generated_at = utc_now()
    fb = feedback_table
    cards = issued_card_table
    ranked_source = sa.select(
        fb.c.card_uuid,
        fb.c.outcome,
        fb.c.override_system,
        fb.c.override_code,
        fb.c.override_display,
        sa.func.row_number()
        .over(partition_by=fb.c.card_uuid, order_by=(fb.c.outcome_at.desc(), fb.c.id.desc()))
        .label("rank"),
    )
    if since is not None:
        recent = sa.select(cards.c.uuid).where(cards.c.issued_at >= since)
        ranked_source = ranked_source.where(fb.c.card_uuid.in_(recent))
    ranked = ranked_source.subquery("latest")
    query = sa.select(
        cards.c.rule_id,
        cards.c.rule_version,
        cards.c.issued_at,
        ranked.c.outcome,
        ranked.c.override_system,
        ranked.c.override_code,
        ranked.c.override_display,
    ).select_from(cards.outerjoin(ranked, sa.and_(ranked.c.card_uuid == cards.c.uuid, ranked.c.rank == 1)))
    if since is not None:
        query = query.where(cards.c.issued_at >= since)
    unmatched = (
        sa.select(sa.func.count()).select_from(fb).where(~sa.exists().where(cards.c.uuid == fb.c.card_uuid))
    )
    if since is not None:
        unmatched = unmatched.where(fb.c.received_at >= since)

    known = displays or {}
    builders: dict[str, _RuleBuilder] = defaultdict(_RuleBuilder)
    with store.engine.connect() as conn:
        for row in conn.execute(query.execution_options(yield_per=2000)):
            display = row.override_display or known.get((row.override_system, row.override_code))
            answer = _Answer(row.outcome, row.override_system, row.override_code, display)
            builders[row.rule_id].add(row.rule_version, row.issued_at, answer)
        unmatched_count = int(conn.execute(unmatched).scalar_one())
    rules = tuple(builders[rule_id].build(rule_id) for rule_id in sorted(builders))
    return RuleReport(
        generated_at=generated_at,
        since=as_utc(since) if since is not None else None,
        rules=rules,
        unmatched_feedback=unmatched_count,
    )


class _Answer(NamedTuple):
    """A card's latest feedback (all None when it has none)."""

    outcome: str | None
    system: str | None
    code: str | None
    display: str | None


class _RuleBuilder:
    """Accumulates one rule's cards into totals and ISO weeks."""

    def __init__(self) -> None:
        self.versions: set[str] = set()
        self.total = _Counts()
        self.weeks: dict[date, _Counts] = defaultdict(_Counts)

    def add(self, version: str, issued_at: datetime, answer: _Answer) -> None:
        self.versions.add(version)
        day = as_utc(issued_at).date()
        week = day - timedelta(days=day.weekday())
        for counts in (self.total, self.weeks[week]):
            counts.add(answer)

    def build(self, rule_id: str) -> RuleStats:
        return RuleStats(
            rule_id=rule_id,
            rule_versions=tuple(sorted(self.versions)),
            total=self.total.freeze(),
            weeks=tuple(WeekTally(week, self.weeks[week].freeze()) for week in sorted(self.weeks)),
        )


class _Counts:
    def __init__(self) -> None:
        self.shown = 0
        self.accepted = 0
        self.overridden = 0
        self.reasons: dict[tuple[str | None, str | None], int] = defaultdict(int)
        self.displays: dict[tuple[str | None, str | None], str] = {}

    def add(self, answer: _Answer) -> None:
        self.shown += 1
        if answer.outcome == "accepted":
            self.accepted += 1
        elif answer.outcome == "overridden":
            self.overridden += 1
            key = (answer.system, answer.code) if answer.code is not None else (None, None)
            self.reasons[key] += 1
            if answer.code is not None and answer.display and key not in self.displays:
                self.displays[key] = answer.display

    def freeze(self) -> Tally:
        reasons = sorted(
            (
                ReasonCount(system, code, self.displays.get((system, code)), count)
                for (system, code), count in self.reasons.items()
            ),
            key=lambda r: (-r.count, r.code is None, r.code or "", r.system or ""),
        )
        return Tally(self.shown, self.accepted, self.overridden, tuple(reasons))
