"""The dispatch policy, as tables of cases. ``decide`` is pure, so no fakes are needed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crisiscomms.domain.config import ChannelAction, ChannelConfig, Playbook, PlaybookSource
from crisiscomms.domain.config import PolicyConfig as Policy
from crisiscomms.domain.models import (
    ActionKind,
    ChannelCounters,
    Decision,
    DecisionAction,
    Incident,
    ItemState,
    OutboxItem,
    Platform,
)
from crisiscomms.domain.policy import CEILING_RETRY, LiveWindow, decide, hourly_ceiling
from crisiscomms.domain.workcal import is_staffed

LONDON = ZoneInfo("Europe/London")
PUBLISH, HOLD = DecisionAction.PUBLISH, DecisionAction.HOLD
APPROVE, SKIP = DecisionAction.NEEDS_APPROVAL, DecisionAction.SKIP

# Pacing is off in the base policy so cap boundaries are visible on any weekday.
POLICY = Policy(
    timezone="Europe/London",
    weekly_caps={"x": 25, "facebook": 5},
    normal_approval="auto",
    pacing=False,
)
CHANNELS = {
    "x": ChannelConfig(id="x", platform=Platform.X, account="@nhs"),
    "facebook": ChannelConfig(id="facebook", platform=Platform.FACEBOOK, account="nhs"),
    "mastodon": ChannelConfig(id="mastodon", platform=Platform.MASTODON, account="@nhs@x.y"),
}
PLAYBOOK = Playbook(
    name="flood",
    default_lead="ea",
    sources=[PlaybookSource(source="ea")],
    channels=[
        ChannelAction(channel="x", action=ActionKind.RETWEET, hourly_ceiling=10),
        ChannelAction(channel="facebook", action=ActionKind.POST),
    ],
    hourly_ceiling=20,
)
PLAYBOOKS = {"flood": PLAYBOOK}


def ldn(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A London wall time as a UTC instant."""
    return datetime(y, mo, d, h, mi, tzinfo=LONDON).astimezone(UTC)


def z(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def incident(id: int = 3, *, stood_down: datetime | None = None) -> Incident:
    return Incident(
        id=id,
        playbook="flood",
        hashtags=("#Flood",),
        lead="ea",
        activated_at=z(2026, 11, 1),
        activated_by="ops",
        reason="test",
        deactivated_at=stood_down,
        deactivated_by="ops" if stood_down else None,
    )


def item(channel: str = "x", *, crisis: bool = False, key: str = "", **kw: object) -> OutboxItem:
    base = OutboxItem(
        id=1,
        dedupe_key=key or f"update:42:{channel}",
        channel_id=channel,
        action=ActionKind.RETWEET if channel == "x" else ActionKind.POST,
        text="hello",
        state=ItemState.QUEUED,
        created_at=z(2026, 11, 1),
        incident_id=3 if crisis else None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def run(
    it: OutboxItem,
    now: datetime,
    *,
    policy: Policy = POLICY,
    counters: ChannelCounters | None = None,
    incidents: tuple[Incident, ...] | None = None,
    windows: tuple[LiveWindow, ...] = (),
) -> Decision:
    if incidents is None:
        incidents = (incident(),) if it.crisis else ()
    return decide(
        it,
        CHANNELS[it.channel_id],
        now,
        counters or ChannelCounters(),
        policy,
        incidents,
        PLAYBOOKS,
        windows,
    )


# --- staffed hours -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "action", "until"),
    [
        pytest.param(ldn(2026, 11, 27, 16, 59), PUBLISH, None, id="fri-16:59"),
        pytest.param(ldn(2026, 11, 27, 17), HOLD, z(2026, 11, 30, 8), id="fri-17:00"),
        pytest.param(ldn(2026, 11, 28, 12), HOLD, z(2026, 11, 30, 8), id="saturday"),
        pytest.param(ldn(2026, 11, 29, 23, 59), HOLD, z(2026, 11, 30, 8), id="sunday"),
        pytest.param(ldn(2026, 11, 30, 8), PUBLISH, None, id="mon-08:00"),
        pytest.param(ldn(2026, 12, 25, 10), HOLD, z(2026, 12, 29, 8), id="christmas-day"),
        pytest.param(ldn(2026, 12, 28, 10), HOLD, z(2026, 12, 29, 8), id="boxing-day-observed"),
        pytest.param(ldn(2026, 4, 6, 10), HOLD, z(2026, 4, 7, 7), id="easter-monday"),
        pytest.param(ldn(2026, 3, 27, 17), HOLD, z(2026, 3, 30, 7), id="march-clock-change"),
        pytest.param(ldn(2026, 10, 23, 17), HOLD, z(2026, 10, 26, 8), id="october-clock-change"),
        pytest.param(z(2026, 3, 30, 7, 30), PUBLISH, None, id="07:30utc-is-08:30bst"),
        pytest.param(z(2026, 10, 26, 7, 30), HOLD, z(2026, 10, 26, 8), id="07:30utc-is-gmt"),
    ],
)
def test_staffed_hours(now: datetime, action: DecisionAction, until: datetime | None) -> None:
    decision = run(item(), now)
    assert (decision.action, decision.until) == (action, until)
    assert decision.out_of_hours is (action is HOLD)


def test_hours_reason_shows_london_time() -> None:
    decision = run(item(), ldn(2026, 11, 28, 12))
    assert decision.reason == (
        "outside staffed hours (Sat 12:00 Europe/London); next opening Mon 30 Nov 08:00"
    )


def test_closure_day() -> None:
    policy = POLICY.model_copy(update={"closure_days": [date(2026, 12, 31)]})
    decision = run(item(), ldn(2026, 12, 31, 10), policy=policy)
    assert (decision.action, decision.until) == (HOLD, z(2027, 1, 4, 8))  # 1 Jan is a holiday
    assert run(item(), ldn(2026, 12, 30, 10), policy=policy).action is PUBLISH


@pytest.mark.parametrize(
    ("now", "action", "until"),
    [
        pytest.param(ldn(2026, 11, 28, 17), HOLD, ldn(2026, 11, 28, 18), id="before-window"),
        pytest.param(ldn(2026, 11, 28, 19), PUBLISH, None, id="in-window"),
        pytest.param(ldn(2026, 11, 28, 20), HOLD, z(2026, 11, 30, 8), id="window-ended"),
    ],
)
def test_live_window_on_saturday_evening(
    now: datetime, action: DecisionAction, until: datetime | None
) -> None:
    window = LiveWindow(ldn(2026, 11, 28, 18), ldn(2026, 11, 28, 20), "tweet chat")
    decision = run(item(), now, windows=(window,))
    assert (decision.action, decision.until) == (action, until)
    assert decision.out_of_hours  # regular hours only: reports still see a weekend post
    if action is PUBLISH:
        assert "live-event window 'tweet chat'" in decision.reason


# --- weekly caps and pacing ----------------------------------------------------------------

WEDNESDAY = ldn(2026, 12, 2, 10)


@pytest.mark.parametrize(
    ("channel", "count", "action"),
    [
        pytest.param("x", 24, PUBLISH, id="x-24"),
        pytest.param("x", 25, HOLD, id="x-25"),
        pytest.param("x", 40, HOLD, id="x-40"),
        pytest.param("facebook", 4, PUBLISH, id="facebook-4"),
        pytest.param("facebook", 5, HOLD, id="facebook-5"),
        pytest.param("mastodon", 500, PUBLISH, id="uncapped"),
    ],
)
def test_weekly_cap_calendar(channel: str, count: int, action: DecisionAction) -> None:
    decision = run(item(channel), WEDNESDAY, counters=ChannelCounters(normal_week_count=count))
    assert decision.action is action
    assert decision.over_cap is (action is HOLD)
    if action is HOLD:
        cap = POLICY.weekly_caps[channel]
        assert decision.reason.startswith(f"weekly cap {cap} reached for {channel}")
        assert decision.until == z(2026, 12, 7, 8)  # first staffed instant of next week


def test_weekly_cap_rolling_rechecks_next_opening() -> None:
    policy = POLICY.model_copy(update={"week": "rolling"})
    decision = run(item(), WEDNESDAY, policy=policy, counters=ChannelCounters(normal_week_count=25))
    assert (decision.action, decision.until) == (HOLD, z(2026, 12, 3, 8))
    assert "weekly cap 25 reached for x" in decision.reason
    assert (
        run(item(), WEDNESDAY, policy=policy, counters=ChannelCounters(normal_week_count=24)).action
        is PUBLISH
    )


PACED = POLICY.model_copy(update={"pacing": True})


@pytest.mark.parametrize(
    ("channel", "now", "count", "action", "until"),
    [
        pytest.param("x", ldn(2026, 11, 30, 10), 4, PUBLISH, None, id="x-mon-4-of-5"),
        pytest.param("x", ldn(2026, 11, 30, 10), 5, HOLD, z(2026, 12, 1, 8), id="x-mon-5-of-5"),
        pytest.param("x", WEDNESDAY, 14, PUBLISH, None, id="x-wed-14-of-15"),
        pytest.param("x", WEDNESDAY, 15, HOLD, z(2026, 12, 3, 8), id="x-wed-15-of-15"),
        pytest.param("facebook", ldn(2026, 12, 1, 10), 1, PUBLISH, None, id="fb-tue-1-of-2"),
        pytest.param("facebook", ldn(2026, 12, 1, 10), 2, HOLD, z(2026, 12, 2, 8), id="fb-tue"),
        # New Year week 2026: Mon 28 Dec and Fri 1 Jan are holidays, so Tue allows ceil(25/3).
        pytest.param("x", ldn(2026, 12, 29, 10), 8, PUBLISH, None, id="x-short-week-8"),
        pytest.param("x", ldn(2026, 12, 29, 10), 9, HOLD, z(2026, 12, 30, 8), id="x-short-9"),
        pytest.param("x", ldn(2026, 12, 3, 16), 20, HOLD, z(2026, 12, 4, 8), id="x-thu-20"),
    ],
)
def test_pacing_calendar(
    channel: str, now: datetime, count: int, action: DecisionAction, until: datetime | None
) -> None:
    decision = run(
        item(channel), now, policy=PACED, counters=ChannelCounters(normal_week_count=count)
    )
    assert (decision.action, decision.until) == (action, until)
    if action is HOLD:
        assert decision.reason.startswith("pacing: ")


@pytest.mark.parametrize(("day_count", "action"), [(4, PUBLISH), (5, HOLD)])
def test_pacing_rolling_uses_the_day_count(day_count: int, action: DecisionAction) -> None:
    policy = PACED.model_copy(update={"week": "rolling"})
    counters = ChannelCounters(normal_week_count=10, normal_day_count=day_count)
    decision = run(item(), WEDNESDAY, policy=policy, counters=counters)
    assert decision.action is action  # 25 over 5 working days in the last 7: 5 a day


# --- pause, approval, schedule, rate limit (normal mode) -----------------------------------


def test_pause_and_resume() -> None:
    paused = run(item(), WEDNESDAY, incidents=(incident(7), incident(3)))
    assert (paused.action, paused.until, paused.reason) == (HOLD, None, "paused: incident 3 active")
    resumed = run(item(), WEDNESDAY, incidents=(incident(3, stood_down=z(2026, 12, 1)),))
    assert resumed.action is PUBLISH


@pytest.mark.parametrize(
    ("now", "approved_by", "action"),
    [
        pytest.param(ldn(2026, 11, 28, 12), None, APPROVE, id="saturday-unapproved"),
        pytest.param(ldn(2026, 11, 28, 12), "alice", HOLD, id="saturday-approved"),
        pytest.param(WEDNESDAY, None, APPROVE, id="weekday-unapproved"),
        pytest.param(WEDNESDAY, "alice", PUBLISH, id="weekday-approved"),
    ],
)
def test_normal_manual_approval(
    now: datetime, approved_by: str | None, action: DecisionAction
) -> None:
    policy = POLICY.model_copy(update={"normal_approval": "manual"})
    decision = run(item(approved_by=approved_by), now, policy=policy)
    assert decision.action is action
    if action is APPROVE:
        assert decision.reason == "normal-mode items need approval"


def test_not_before_holds_until_then() -> None:
    later = WEDNESDAY + timedelta(hours=2)
    decision = run(item(not_before=later), WEDNESDAY)
    assert (decision.action, decision.until) == (HOLD, later)
    assert run(item(not_before=later), later).action is PUBLISH


def test_rate_limit_in_normal_mode() -> None:
    counters = ChannelCounters(paused_until=WEDNESDAY + timedelta(minutes=15))
    decision = run(item(), WEDNESDAY, counters=counters)
    assert (decision.action, decision.until) == (HOLD, counters.paused_until)
    assert decision.reason == "rate limited by x until 10:15 Europe/London"


# --- crisis mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "count", "out_of_hours", "over_cap"),
    [
        pytest.param(WEDNESDAY, 0, False, False, id="in-hours-under-cap"),
        pytest.param(ldn(2026, 11, 28, 3), 0, True, False, id="saturday-night"),
        pytest.param(WEDNESDAY, 25, False, True, id="over-cap"),
        pytest.param(ldn(2026, 12, 25, 12), 60, True, True, id="christmas-over-cap"),
    ],
)
def test_crisis_bypasses_hours_and_caps(
    now: datetime, count: int, out_of_hours: bool, over_cap: bool
) -> None:
    decision = run(item(crisis=True), now, policy=PACED, counters=ChannelCounters(week_count=count))
    assert decision.action is PUBLISH
    assert (decision.out_of_hours, decision.over_cap) == (out_of_hours, over_cap)
    assert decision.reason.startswith("crisis bypass for incident 3")


@pytest.mark.parametrize(
    ("channel", "last_hour", "action"),
    [
        pytest.param("x", 9, PUBLISH, id="x-channel-ceiling-9"),
        pytest.param("x", 10, HOLD, id="x-channel-ceiling-10"),
        pytest.param("facebook", 19, PUBLISH, id="facebook-playbook-ceiling-19"),
        pytest.param("facebook", 20, HOLD, id="facebook-playbook-ceiling-20"),
    ],
)
def test_hourly_ceiling(channel: str, last_hour: int, action: DecisionAction) -> None:
    now = ldn(2026, 11, 28, 3)
    decision = run(
        item(channel, crisis=True), now, counters=ChannelCounters(last_hour_count=last_hour)
    )
    assert decision.action is action
    if action is HOLD:
        assert decision.until == now + CEILING_RETRY
        assert decision.reason.startswith(f"hourly safety ceiling {last_hour} reached on {channel}")


def test_hourly_ceiling_without_playbook_defaults_to_20() -> None:
    assert hourly_ceiling(item(), CHANNELS["x"], None) == 20
    assert hourly_ceiling(item(action=ActionKind.QUOTE), CHANNELS["x"], PLAYBOOK) == 10


def test_rate_limit_applies_in_crisis_mode() -> None:
    now = ldn(2026, 11, 28, 3)
    counters = ChannelCounters(paused_until=now + timedelta(minutes=10))
    decision = run(item(crisis=True), now, counters=counters)
    assert (decision.action, decision.until) == (HOLD, counters.paused_until)
    assert decision.reason == "rate limited by x until 03:10 Europe/London"
    assert run(item(crisis=True), now + timedelta(minutes=10), counters=counters).action is PUBLISH


@pytest.mark.parametrize(
    ("is_lead", "role"), [(False, "others"), (True, "lead")], ids=["others", "lead"]
)
def test_crisis_manual_approval(is_lead: bool, role: str) -> None:
    it = item(crisis=True, approval="manual", is_lead=is_lead)
    decision = run(it, ldn(2026, 11, 28, 3))
    assert decision.action is APPROVE
    assert decision.reason == f"manual approval required by playbook flood for source role {role}"
    approved = replace(it, approved_by="alice")
    assert run(approved, ldn(2026, 11, 28, 3)).action is PUBLISH


STOOD_DOWN = (incident(3, stood_down=z(2026, 11, 28, 2)),)


@pytest.mark.parametrize(
    ("key", "incidents", "action"),
    [
        pytest.param("update:42:x", STOOD_DOWN, SKIP, id="update-after-stand-down"),
        pytest.param("incident:3:x:activation", STOOD_DOWN, SKIP, id="activation-after"),
        pytest.param("incident:3:x:stand-down", STOOD_DOWN, PUBLISH, id="stand-down-message"),
        pytest.param("update:42:x", (), SKIP, id="unknown-incident"),
        pytest.param("update:42:x", (incident(3),), PUBLISH, id="active"),
    ],
)
def test_stood_down_incident(
    key: str, incidents: tuple[Incident, ...], action: DecisionAction
) -> None:
    decision = run(item(crisis=True, key=key), ldn(2026, 11, 28, 3), incidents=incidents)
    assert decision.action is action
    if action is SKIP and incidents:
        assert decision.reason == (
            "incident 3 stood down at Sat 28 Nov 02:00 Europe/London before this was sent"
        )


def test_crisis_items_ignore_the_pause_of_other_items() -> None:
    decision = run(item(crisis=True), WEDNESDAY, incidents=(incident(1), incident(3)))
    assert decision.action is PUBLISH


# --- properties ----------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(now=instants, offset_minutes=st.integers(-600, 600), length=st.integers(1, 300))
def test_hours_hold_ends_in_staffed_time(now: datetime, offset_minutes: int, length: int) -> None:
    start = now + timedelta(minutes=offset_minutes)
    windows = (LiveWindow(start, start + timedelta(minutes=length), "event"),)
    decision = run(item(), now, windows=windows)
    if decision.action is HOLD:
        assert decision.reason.startswith("outside staffed hours")
        assert decision.until is not None and decision.until > now
        assert is_staffed(decision.until, POLICY, windows)
    else:
        assert decision.action is PUBLISH
        assert is_staffed(now, POLICY, windows)
