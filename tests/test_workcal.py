"""The working calendar: staffed hours, bank holidays, clock changes, weeks, live windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crisiscomms.domain.config import PolicyConfig, StaffedHours
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.workcal import (
    LiveWindow,
    fmt_local,
    is_staffed,
    is_working_day,
    next_opening,
    paced_allowance,
    week_bounds,
    week_start,
    working_days_elapsed,
    working_days_in_week,
)

LONDON = ZoneInfo("Europe/London")
POLICY = PolicyConfig(timezone="Europe/London", weekly_caps={"x": 25, "facebook": 5})
ROLLING = POLICY.model_copy(update={"week": "rolling"})


def ldn(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A London wall time as a UTC instant."""
    return datetime(y, mo, d, h, mi, tzinfo=LONDON).astimezone(UTC)


def z(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 11, 27), True),  # Friday
        (date(2026, 11, 28), False),  # Saturday
        (date(2026, 11, 29), False),  # Sunday
        (date(2026, 12, 25), False),  # Christmas Day (Fri)
        (date(2026, 12, 28), False),  # Boxing Day observed (Mon)
        (date(2026, 12, 29), True),
        (date(2026, 4, 3), False),  # Good Friday
        (date(2026, 4, 6), False),  # Easter Monday
        (date(2026, 5, 4), False),  # Early May bank holiday
        (date(2027, 1, 1), False),
    ],
    ids=lambda v: str(v),
)
def test_is_working_day(day: date, working: bool) -> None:
    assert is_working_day(day, POLICY) is working


def test_closure_days_are_not_working_days() -> None:
    policy = POLICY.model_copy(update={"closure_days": [date(2026, 12, 31)]})
    assert is_working_day(date(2026, 12, 30), policy)
    assert not is_working_day(date(2026, 12, 31), policy)
    assert next_opening(ldn(2026, 12, 30, 17), policy) == z(2027, 1, 4, 8)


@pytest.mark.parametrize(
    ("at", "opening"),
    [
        pytest.param(ldn(2026, 11, 27, 16, 59), ldn(2026, 11, 27, 16, 59), id="fri-16:59-open"),
        pytest.param(ldn(2026, 11, 27, 17), z(2026, 11, 30, 8), id="fri-17:00"),
        pytest.param(ldn(2026, 11, 30, 7, 59), z(2026, 11, 30, 8), id="mon-07:59"),
        pytest.param(ldn(2026, 12, 24, 17), z(2026, 12, 29, 8), id="christmas-eve-evening"),
        pytest.param(ldn(2026, 12, 28, 10), z(2026, 12, 29, 8), id="boxing-day-observed"),
        pytest.param(ldn(2026, 4, 3, 10), z(2026, 4, 7, 7), id="good-friday-bst"),
        # Spring forward Sun 29 Mar 2026: Monday 08:00 BST is 07:00 UTC.
        pytest.param(ldn(2026, 3, 27, 17), z(2026, 3, 30, 7), id="march-change"),
        # In 2027 the change falls on Easter Sunday: Good Friday to Easter Monday are closed.
        pytest.param(ldn(2027, 3, 25, 17), z(2027, 3, 30, 7), id="march-change-easter-2027"),
        # Fall back Sun 25 Oct 2026: Monday 08:00 GMT is 08:00 UTC.
        pytest.param(ldn(2026, 10, 23, 17), z(2026, 10, 26, 8), id="october-change"),
        pytest.param(z(2026, 10, 26, 7, 30), z(2026, 10, 26, 8), id="oct-07:30utc-closed"),
        pytest.param(z(2026, 3, 30, 7, 30), z(2026, 3, 30, 7, 30), id="mar-07:30utc-open"),
    ],
)
def test_next_opening(at: datetime, opening: datetime) -> None:
    assert next_opening(at, POLICY) == opening
    assert is_staffed(opening, POLICY)


def test_live_window_extends_hours_and_is_an_opening() -> None:
    window = LiveWindow(ldn(2026, 11, 28, 18), ldn(2026, 11, 28, 20), "Q&A")
    assert not is_staffed(ldn(2026, 11, 28, 17), POLICY, [window])
    assert is_staffed(ldn(2026, 11, 28, 18), POLICY, [window])
    assert not is_staffed(ldn(2026, 11, 28, 20), POLICY, [window])
    assert next_opening(ldn(2026, 11, 28, 12), POLICY, [window]) == window.start
    assert next_opening(ldn(2026, 11, 28, 20), POLICY, [window]) == z(2026, 11, 30, 8)


def test_live_window_needs_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        LiveWindow(datetime(2026, 1, 1), datetime(2026, 1, 2))


def test_no_staffed_days_is_a_config_error() -> None:
    policy = POLICY.model_copy(update={"staffed_hours": StaffedHours(days=[])})
    with pytest.raises(ConfigError, match="no working day"):
        next_opening(z(2026, 1, 1), policy)


def test_weekend_staffing_follows_the_configured_days() -> None:
    policy = POLICY.model_copy(update={"staffed_hours": StaffedHours(days=["sat"])})
    assert is_staffed(ldn(2026, 11, 28, 9), policy)
    assert not is_staffed(ldn(2026, 11, 27, 9), policy)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        pytest.param(ldn(2026, 12, 2, 10), z(2026, 11, 30), z(2026, 12, 7), id="winter"),
        pytest.param(ldn(2026, 11, 30), z(2026, 11, 30), z(2026, 12, 7), id="monday-midnight"),
        pytest.param(ldn(2026, 11, 29, 23, 59), z(2026, 11, 23), z(2026, 11, 30), id="sunday"),
        # The week of the spring change is 167 hours long; the next starts 23:00 UTC Sunday.
        pytest.param(ldn(2027, 3, 28, 12), z(2027, 3, 22), z(2027, 3, 28, 23), id="march"),
        pytest.param(ldn(2027, 3, 31, 12), z(2027, 3, 28, 23), z(2027, 4, 4, 23), id="bst"),
        pytest.param(ldn(2026, 10, 25, 12), z(2026, 10, 18, 23), z(2026, 10, 26), id="oct"),
    ],
)
def test_calendar_week_bounds(now: datetime, start: datetime, end: datetime) -> None:
    assert week_bounds(now, POLICY) == (start, end)
    assert week_start(now, POLICY) == start


def test_rolling_week_is_the_last_168_hours() -> None:
    now = ldn(2027, 3, 31, 12)
    assert week_bounds(now, ROLLING) == (now - timedelta(days=7), now)
    assert week_start(now, ROLLING) == now - timedelta(hours=168)


@pytest.mark.parametrize(
    ("now", "elapsed", "total", "allowed_x"),
    [
        pytest.param(ldn(2026, 11, 30, 10), 1, 5, 5, id="mon"),
        pytest.param(ldn(2026, 12, 2, 10), 3, 5, 15, id="wed"),
        pytest.param(ldn(2026, 12, 5, 19), 5, 5, 25, id="sat"),
        pytest.param(ldn(2026, 12, 24, 10), 4, 4, 25, id="christmas-week-thu"),
        pytest.param(ldn(2026, 12, 29, 10), 1, 3, 9, id="new-year-week-tue"),
        # Bank-holiday Monday: no working day elapsed yet, but one share is still allowed.
        pytest.param(ldn(2026, 12, 28, 19), 0, 3, 9, id="holiday-monday"),
    ],
)
def test_working_days_and_pacing(now: datetime, elapsed: int, total: int, allowed_x: int) -> None:
    assert working_days_elapsed(now, POLICY) == elapsed
    assert working_days_in_week(now, POLICY) == total
    assert paced_allowance(25, now, POLICY) == allowed_x


def test_fmt_local_is_london_time() -> None:
    assert fmt_local(z(2026, 3, 30, 7), POLICY) == "Mon 08:00"
    assert fmt_local(z(2026, 11, 30, 8), POLICY, date_too=True) == "Mon 30 Nov 08:00"


instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@st.composite
def live_windows(draw: st.DrawFn) -> list[LiveWindow]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        start = draw(instants)
        length = draw(st.integers(1, 6 * 60))
        out.append(LiveWindow(start, start + timedelta(minutes=length), "event"))
    return out


@settings(max_examples=300, deadline=None)
@given(at=instants, windows=live_windows())
def test_next_opening_is_the_first_staffed_instant(at: datetime, windows: list[LiveWindow]) -> None:
    opening = next_opening(at, POLICY, windows)
    assert opening >= at
    assert is_staffed(opening, POLICY, windows)
    if opening > at:
        # Nothing staffed just before it (the minute grid is fine enough for our inputs).
        assert not is_staffed(opening - timedelta(microseconds=1), POLICY, windows)
        assert not is_staffed(at, POLICY, windows)


# -- the holidays package: imported on first use, the GB calendar only -----------------------

def _fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet) and return its stdout."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_workcal_and_the_cli_does_not_import_holidays() -> None:
    out = _fresh("import sys, crisiscomms.domain.workcal, crisiscomms.domain.policy, "
                 "crisiscomms.cli; print(sorted(m for m in sys.modules "
                 "if m == 'holidays' or m.startswith('holidays.')))")
    assert out == "[]"


def test_the_first_bank_holiday_answer_loads_only_the_gb_calendar() -> None:
    out = _fresh(
        "import sys, datetime\n"
        "from crisiscomms.domain.config import PolicyConfig\n"
        "from crisiscomms.domain.workcal import is_working_day\n"
        "policy = PolicyConfig()\n"
        "print(is_working_day(datetime.date(2026, 12, 28), policy),"
        " is_working_day(datetime.date(2026, 12, 29), policy),"
        " 'holidays' in sys.modules,"
        " [m for m in sys.modules if m.startswith(('holidays.countries', 'holidays.financial'))])")
    assert out == "False True True []"


@pytest.mark.parametrize("subdiv", ["ENG", "WLS", "SCT", "NIR", None])
def test_the_gb_calendar_agrees_with_the_holidays_package(subdiv: str | None) -> None:
    import holidays

    from crisiscomms.domain.workcal import country_calendar

    for year in range(2020, 2032):
        ours = dict(country_calendar("GB", subdiv, year))
        theirs = dict(holidays.country_holidays("GB", subdiv=subdiv, years=year))
        assert ours == theirs, (subdiv, year)
        assert ours  # every year has bank holidays


def test_other_countries_and_bad_bank_holidays_settings() -> None:
    from crisiscomms.domain.config import BankHolidays

    ireland = POLICY.model_copy(update={"bank_holidays": BankHolidays(country="IE",
                                                                        subdiv=None)})
    assert not is_working_day(date(2026, 3, 17), ireland)  # St Patrick's Day
    assert is_working_day(date(2026, 3, 17), POLICY)
    for country, subdiv, message in (
            ("ZZ", None, "unknown country 'ZZ'"),
            ("GB", "XYZ", "bank_holidays.subdiv: unknown subdivision 'XYZ' of 'GB'")):
        bad = POLICY.model_copy(update={"bank_holidays": BankHolidays(country=country,
                                                                        subdiv=subdiv)})
        with pytest.raises(ConfigError, match=message):
            is_working_day(date(2026, 3, 18), bad)
