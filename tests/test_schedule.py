"""Calendar arithmetic behind the hold dates and the "eligible from" dates (cds.clinical.schedule)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from cds.clinical.schedule import (
    hold_window,
    months_before,
    months_between,
    parse_hours,
    parse_time_of_day,
    session_start,
    window_ends,
)


def test_hold_window_matches_the_worked_example() -> None:
    # Session 09:00 on 10 Dec, hold 24-48 h, resume 6 h after: last dose by 09:00 on 8 Dec, resume 15:00.
    window = hold_window(datetime(2026, 12, 10, 9, 0), "24-48", 6)
    assert window.last_dose_by == datetime(2026, 12, 8, 9, 0)
    assert window.last_dose_latest == datetime(2026, 12, 9, 9, 0)
    assert window.resume_from == datetime(2026, 12, 10, 15, 0)
    assert (window.hold_hours, window.shortest_hold_hours, window.resume_hours) == (48, 24, 6)


def test_hold_window_single_number_and_month_boundary() -> None:
    window = hold_window(datetime(2027, 3, 1, 8, 30), 36, "0")
    assert window.last_dose_by == datetime(2027, 2, 27, 20, 30)
    assert window.last_dose_by == window.last_dose_latest
    assert window.resume_from == window.session


def test_session_start_keeps_a_time_and_gives_a_date_the_site_time() -> None:
    assert session_start(date(2026, 12, 10), time(9)) == datetime(2026, 12, 10, 9)
    exact = datetime(2026, 12, 10, 13, 45)
    assert session_start(exact, time(9)) == exact


@pytest.mark.parametrize(
    ("value", "expected"),
    [(6, (6, 6)), (6.5, (6.5, 6.5)), ("24-48", (24, 48)), (" 12 - 24 ", (12, 24)), ("8", (8, 8))],
)
def test_parse_hours_accepts_numbers_and_ranges(value: object, expected: tuple[float, float]) -> None:
    assert parse_hours(value) == expected


@pytest.mark.parametrize("value", [-1, "48-24", "", "two days", True, None, "24-"])
def test_parse_hours_rejects_nonsense(value: object) -> None:
    with pytest.raises(ValueError, match=r"hours|range"):
        parse_hours(value)


@pytest.mark.parametrize("value", ["24:00", "9", "09:60", "nine"])
def test_time_of_day_rejects_nonsense(value: str) -> None:
    with pytest.raises(ValueError, match="time of day"):
        parse_time_of_day(value)


def test_time_of_day() -> None:
    assert parse_time_of_day("09:00") == time(9, 0)
    assert parse_time_of_day("7:05") == time(7, 5)


@pytest.mark.parametrize(
    ("onset", "months"),
    [
        (date(2026, 10, 1), 6),
        (date(2026, 8, 31), 6),  # clipped month ends
        (date(2026, 2, 28), 12),
        (date(2024, 2, 29), 12),  # leap day
        (date(2026, 12, 31), 1),
        (date(2026, 5, 15), 1.5),  # fractional policy value
    ],
)
def test_window_ends_is_the_first_day_outside_the_engines_window(onset: date, months: float) -> None:
    end = window_ends(onset, months)
    # The engine's rule: inside when onset >= months_before(start, months).
    assert onset < months_before(end, months)
    assert onset >= months_before(end - timedelta(days=1), months)


def test_window_ends_worked_example() -> None:
    # A heart attack on 1 Oct with a 6-month window: eligible from 2 Apr (1 Apr is still exactly 6 months).
    assert window_ends(date(2026, 10, 1), 6) == date(2027, 4, 2)


def test_months_between() -> None:
    assert months_between(date(2026, 10, 1), date(2026, 12, 1)) == 2
    assert months_between(date(2026, 10, 2), date(2026, 12, 1)) == 1
    assert months_between(date(2026, 12, 1), date(2026, 10, 1)) == 0
