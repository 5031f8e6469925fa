"""Calendar dates that save a phone call: benzodiazepine hold windows and the end of a time window.

Pure and clock-free: every function takes the dates it works from, so the card layer, the screening page
and the pre-session worklist compute the same dates from the same inputs. Site policy supplies the
numbers (hours before and after a session, the usual session time, the window in months); this module
only does the calendar arithmetic and never words anything.

API (small on purpose):
- `session_start(day, at)`: the planned session as a date-time (an order that names only a day is
  taken to start at the site's usual session time).
- `parse_hours(value)`: a policy value such as 6, "6" or "24-48" -> (shortest, longest) hours.
- `hold_window(start, hours_before, hours_after)`: when the last dose is due and when dosing resumes.
- `window_ends(onset, months)`: the first day a dated event (an infarction, a stroke) is outside a
  "within N months of the planned start" window, on exactly the calendar the engine uses.
- `months_before(day, months)` / `months_between(earlier, later)`: the shared calendar arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

__all__ = [
    "HoldWindow",
    "hold_window",
    "months_before",
    "months_between",
    "parse_hours",
    "parse_time_of_day",
    "session_start",
    "window_ends",
]

_HOURS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*$")
_CLOCK = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def months_before(day: date, months: int | float) -> date:
    """The date `months` whole months before `day` (day clipped to the month's length); a fraction of a
    month counts as that share of an average month (30.4375 days)."""
    whole = int(months)
    year, month = divmod(day.month - 1 - whole, 12)
    year += day.year
    month += 1
    for candidate in (day.day, 30, 29, 28):
        try:
            shifted = day.replace(year=year, month=month, day=min(day.day, candidate))
        except ValueError:
            continue
        break
    fraction = months - whole
    return shifted - timedelta(days=round(fraction * 30.4375))


def months_between(earlier: date, later: date) -> int:
    """Whole calendar months from `earlier` to `later` (0 when `later` is not after `earlier`)."""
    if earlier >= later:
        return 0
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    if later.day < earlier.day:
        months -= 1
    return max(months, 0)


def window_ends(onset: date, months: int | float) -> date:
    """The first planned-start date on which an event dated `onset` is no longer "within `months`".

    The engine treats an event as within the window when `onset >= months_before(start, months)`, so this
    is the earliest `start` with `months_before(start, months) > onset`. `months_before` never decreases
    as `start` grows, so a short forward walk from the naive answer finds it.
    """
    candidate = onset + timedelta(days=int(months * 30.4375) - 4)
    while months_before(candidate, months) <= onset:
        candidate += timedelta(days=1)
    while months_before(candidate - timedelta(days=1), months) > onset:
        candidate -= timedelta(days=1)
    return candidate


def parse_time_of_day(value: str) -> time:
    """A site's "HH:MM" session time. Raises ValueError on anything else."""
    found = _CLOCK.match(value)
    if not found:
        raise ValueError(f"not a time of day (HH:MM): {value!r}")
    return time(int(found.group(1)), int(found.group(2)))


def session_start(day: date | datetime, at: time) -> datetime:
    """The planned session as a date-time: a date-time is kept; a bare date starts at `at`."""
    if isinstance(day, datetime):
        return day
    return datetime.combine(day, at)


def parse_hours(value: object) -> tuple[float, float]:
    """A policy value in hours: 6, 6.0, "6" or a range "24-48" -> (shortest, longest).

    Raises ValueError for anything else (negative, empty, reversed range), so a bad site value fails at
    start-up rather than on a card.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a number of hours: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"hours must not be negative: {value!r}")
        return float(value), float(value)
    found = _HOURS.match(str(value))
    if not found:
        raise ValueError(f"not a number of hours or a range such as 24-48: {value!r}")
    low = float(found.group(1))
    high = float(found.group(2)) if found.group(2) else low
    if high < low:
        raise ValueError(f"hour range runs backwards: {value!r}")
    return low, high


@dataclass(frozen=True, slots=True)
class HoldWindow:
    """A timed hold around one session. All date-times are local clinic time, as the inputs were."""

    session: datetime  # the planned session start
    hold_hours: float  # the longest hold policy asks for (e.g. 48 of "24-48")
    shortest_hold_hours: float  # the shortest acceptable hold (e.g. 24 of "24-48")
    last_dose_by: datetime  # the last usual dose no later than this for the full hold
    last_dose_latest: datetime  # ... and never later than this (the shortest hold)
    resume_hours: float
    resume_from: datetime  # the usual dose resumes from this time (counted from the session start)


def hold_window(start: datetime, hours_before: object, hours_after: object) -> HoldWindow:
    """The hold around a session starting at `start`, from policy values `hours_before` ("24-48" or a
    number) and `hours_after` (a number). The resume time counts from the session start, which is what
    the clinic protocols state; a session's own length is not known to the service."""
    shortest, longest = parse_hours(hours_before)
    resume, _ = parse_hours(hours_after)
    return HoldWindow(
        session=start,
        hold_hours=longest,
        shortest_hold_hours=shortest,
        last_dose_by=start - timedelta(hours=longest),
        last_dose_latest=start - timedelta(hours=shortest),
        resume_hours=resume,
        resume_from=start + timedelta(hours=resume),
    )
