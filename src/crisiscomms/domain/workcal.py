"""The working calendar: staffed hours, bank holidays, closure days, live-event windows, weeks.

Social media policy section 7: the accounts are monitored 08:00-17:00 Monday-Friday, excluding
public holidays, and "occasionally ... outside of these hours to promote live events". This
module answers "is someone at the desk at this instant?" and "when is the next time someone
will be?" for the policy function. It is pure: no I/O, no clock reads. Instants go in and come
out as aware UTC datetimes; the local time zone (``policy.timezone``) is used only inside, so the
answers stay right across the clock changes (08:00 London is 07:00 UTC in summer, 08:00 in
winter).

Bank holidays come from the ``holidays`` package (``policy.bank_holidays``: country ``GB``,
subdivision ``ENG`` by default, which covers England and Wales and includes substitute days such
as Boxing Day observed on Mon 28 Dec 2026). They are cached per (country, subdivision, year).

``holidays`` is imported only when the first bank-holiday answer is needed, never when this
module is imported (the CLI starts without it), and for ``GB`` only the United Kingdom's
calendar is loaded: ``holidays.countries`` imports every country's module (the Chinese and
other lunisolar calendars among them), which costs several times the one calendar needed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from crisiscomms.domain.clock import utc
from crisiscomms.domain.config import PolicyConfig
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import LiveWindow

# Search horizon for the next working day. Two years is far beyond any sane run of closures;
# reaching it means the policy has no staffed days at all, which is a configuration error.
_SEARCH_DAYS = 2 * 366

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


_GB_CODES = frozenset({"GB", "GBR", "UK"})  # the holidays package's codes of UnitedKingdom
_GB_MODULE = "holidays.countries.united_kingdom"


@functools.cache
def _uk_calendar() -> Callable[..., Mapping[date, str]] | None:
    """The ``holidays`` package's ``UnitedKingdom`` class, loaded on its own.

    ``import holidays.countries.united_kingdom`` would first run ``holidays/countries/
    __init__.py``, which imports all the countries; the module file is loaded here under a
    private name instead (it imports only the shared ``holidays`` modules). ``None`` when this
    version of the package is laid out otherwise: the caller then asks the package's registry.
    """
    loaded = sys.modules.get(_GB_MODULE)
    if loaded is None:
        try:
            import holidays
            from holidays.holiday_base import HolidayBase

            path = Path(holidays.__file__).parent / "countries" / "united_kingdom.py"
            spec = importlib.util.spec_from_file_location("crisiscomms._holidays_gb", path)
            if spec is None or spec.loader is None or not path.is_file():
                return None
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        except Exception:  # any surprise in another layout: the registry's way is the answer
            return None
    else:
        from holidays.holiday_base import HolidayBase
    cls: Any = getattr(loaded, "UnitedKingdom", None)
    if not (isinstance(cls, type) and issubclass(cls, HolidayBase)):
        return None
    return cls  # type: ignore[no-any-return]


def country_calendar(country: str, subdiv: str | None, year: int) -> Mapping[date, str]:
    """The public holidays of ``year`` as ``{date: name}``, from the ``holidays`` package
    (imported here, on first use). Raises what ``holidays.country_holidays`` raises."""
    if country.upper() in _GB_CODES:
        uk = _uk_calendar()
        if uk is not None:
            return uk(subdiv=subdiv, years=year)
    import holidays

    found: Mapping[date, str] = holidays.country_holidays(country, subdiv=subdiv, years=year)
    return found


@functools.lru_cache(maxsize=128)
def _bank_holidays(country: str, subdiv: str | None, year: int) -> frozenset[date]:
    try:
        found = country_calendar(country, subdiv, year)
    except NotImplementedError as exc:
        if subdiv is not None and "subdivision" in str(exc):
            raise ConfigError(
                f"policy.yaml: bank_holidays.subdiv: unknown subdivision {subdiv!r} of "
                f"{country!r} for the holidays package"
            ) from exc
        raise ConfigError(
            f"policy.yaml: bank_holidays: unknown country {country!r} for the holidays package"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"policy.yaml: bank_holidays: {exc}") from exc
    return frozenset(found.keys())


def bank_holidays(year: int, policy: PolicyConfig) -> frozenset[date]:
    """The public holidays of ``year`` for the policy's country and subdivision (cached)."""
    bh = policy.bank_holidays
    return _bank_holidays(bh.country, bh.subdiv, year)


def is_working_day(d: date, policy: PolicyConfig) -> bool:
    """True if ``d`` (a local date) is a staffed weekday that is no bank holiday or closure day."""
    if d.weekday() not in policy.staffed_hours.weekdays:
        return False
    if d in policy.closure_days:
        return False
    return d not in bank_holidays(d.year, policy)


def local(at: datetime, policy: PolicyConfig) -> datetime:
    """``at`` as wall-clock time in the policy's time zone."""
    return utc(at).astimezone(policy.tz)


def local_instant(d: date, t: time, policy: PolicyConfig) -> datetime:
    """The UTC instant of local date ``d`` at wall time ``t`` in the policy's time zone."""
    # fold=0: in a spring-forward gap this lands after the gap, i.e. still inside staffed hours.
    return datetime.combine(d, t, tzinfo=policy.tz).astimezone(UTC)


def in_regular_hours(at: datetime, policy: PolicyConfig) -> bool:
    """True if ``at`` is inside the regular staffed hours of a working day (no live windows)."""
    wall = local(at, policy)
    hours = policy.staffed_hours
    return is_working_day(wall.date(), policy) and hours.start <= wall.time() < hours.end


def live_window_at(at: datetime, windows: Sequence[LiveWindow]) -> LiveWindow | None:
    """The live-event window containing ``at``, if any (earliest start first)."""
    at = utc(at)
    inside = [w for w in windows if w.contains(at)]
    return min(inside, key=lambda w: w.start) if inside else None


def is_staffed(at: datetime, policy: PolicyConfig, windows: Sequence[LiveWindow] = ()) -> bool:
    """True if someone is at the desk at ``at``: regular staffed hours or a live-event window."""
    return in_regular_hours(at, policy) or live_window_at(at, windows) is not None


def first_working_day(d: date, policy: PolicyConfig) -> date:
    """The first working day on or after local date ``d``.

    Raises ``ConfigError`` if there is none within two years (no staffed days configured).
    """
    for offset in range(_SEARCH_DAYS):
        candidate = d + timedelta(days=offset)
        if is_working_day(candidate, policy):
            return candidate
    raise ConfigError("policy.yaml: staffed_hours: no working day within two years")


def _next_regular_opening(at: datetime, policy: PolicyConfig) -> datetime:
    """The first regular opening (start of staffed hours) strictly after ``at``."""
    wall = local(at, policy)
    today = wall.date()
    start = policy.staffed_hours.start
    if wall.time() < start and is_working_day(today, policy):
        return local_instant(today, start, policy)
    return local_instant(first_working_day(today + timedelta(days=1), policy), start, policy)


def next_opening(
    at: datetime, policy: PolicyConfig, windows: Sequence[LiveWindow] = ()
) -> datetime:
    """The earliest instant at or after ``at`` when the desk is staffed.

    Returns ``at`` itself (in UTC) if it is already staffed. Otherwise the earlier of the next
    regular opening (next working day's start time in local time, converted to UTC) and the
    start of the next live-event window. The result always satisfies ``is_staffed``.
    """
    at = utc(at)
    if is_staffed(at, policy, windows):
        return at
    candidates = [_next_regular_opening(at, policy)]
    candidates.extend(w.start for w in windows if at < w.start < w.end)
    return min(candidates)


def next_day_opening(
    at: datetime, policy: PolicyConfig, windows: Sequence[LiveWindow] = ()
) -> datetime:
    """The first staffed instant from the next local midnight on.

    Used to re-check a day-based allowance (pacing, rolling caps): nothing changes before
    tomorrow, and nobody is at the desk before the next opening.
    """
    tomorrow = local(at, policy).date() + timedelta(days=1)
    return next_opening(local_instant(tomorrow, time(0, 0), policy), policy, windows)


def _monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def week_bounds(now: datetime, policy: PolicyConfig) -> tuple[datetime, datetime]:
    """The policy week containing ``now`` as ``[start, end)`` UTC instants.

    * ``calendar``: Monday 00:00 to the next Monday 00:00, local time. The span is 167, 168 or
      169 hours around the clock changes, because it is computed on local dates, not by adding
      hours.
    * ``rolling``: the last 7x24 hours, ``[now - 7 days, now]``; the end is ``now`` itself.
    """
    now = utc(now)
    if policy.week == "rolling":
        return now - timedelta(days=7), now
    monday = _monday(local(now, policy).date())
    return (
        local_instant(monday, time(0, 0), policy),
        local_instant(monday + timedelta(days=7), time(0, 0), policy),
    )


def week_start(now: datetime, policy: PolicyConfig) -> datetime:
    """Start (UTC) of the policy week containing ``now``; the store counts posts from here.

    Calendar weeks start on Monday 00:00 local time; rolling weeks 7x24 hours before ``now``.
    """
    return week_bounds(now, policy)[0]


def week_days(now: datetime, policy: PolicyConfig) -> tuple[date, ...]:
    """The local dates of the policy week containing ``now``.

    Calendar: Monday to Sunday. Rolling: the seven local dates ending today.
    """
    today = local(now, policy).date()
    first = today - timedelta(days=6) if policy.week == "rolling" else _monday(today)
    return tuple(first + timedelta(days=i) for i in range(7))


def working_days_in_week(now: datetime, policy: PolicyConfig) -> int:
    """How many working days the policy week containing ``now`` has (0 to 7)."""
    return sum(1 for d in week_days(now, policy) if is_working_day(d, policy))


def working_days_elapsed(now: datetime, policy: PolicyConfig) -> int:
    """Working days of the week containing ``now`` up to and including today's local date."""
    today = local(now, policy).date()
    return sum(1 for d in week_days(now, policy) if d <= today and is_working_day(d, policy))


def paced_allowance(cap: int, now: datetime, policy: PolicyConfig) -> int:
    """Posts allowed so far this calendar week: ``ceil(cap * elapsed / working days)``.

    At least one working day's share is always allowed (a live event on a bank-holiday Monday
    must not be starved), and a week with no working days allows the whole cap.
    """
    total = working_days_in_week(now, policy)
    if total == 0:
        return cap
    elapsed = max(1, working_days_elapsed(now, policy))
    return min(cap, math.ceil(cap * elapsed / total))


def daily_allowance(cap: int, now: datetime, policy: PolicyConfig) -> int:
    """Posts allowed per day under a rolling week: ``ceil(cap / working days in the window)``."""
    total = working_days_in_week(now, policy)
    return cap if total == 0 else math.ceil(cap / total)


def fmt_local(at: datetime, policy: PolicyConfig, *, date_too: bool = False) -> str:
    """``Sat 12:00`` or ``Mon 30 Nov 08:00`` in local time; locale-independent English names."""
    wall = local(at, policy)
    day = _DAY_NAMES[wall.weekday()]
    if date_too:
        return f"{day} {wall.day} {_MONTH_NAMES[wall.month - 1]} {wall:%H:%M}"
    return f"{day} {wall:%H:%M}"
