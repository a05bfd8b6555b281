"""The dispatch policy: one pure function that says what to do with one pending item now.

``decide`` does no I/O and reads no clock; everything it needs is a parameter, so it is tested
with tables of cases. It implements the team's social media policy (sections 7, 8 and 11):

Normal mode (``item.incident_id is None``), checked in this order, first match wins:

1. **Pause.** While any incident is active, normal-mode posting stops:
   HOLD ``"paused: incident N active"`` (N = lowest active id) with ``until=None``; it resumes
   when the crisis flag goes off.
2. **Approval.** ``policy.normal_approval == "manual"`` (or the item itself asks for manual
   approval) and nobody approved it: NEEDS_APPROVAL. This comes before hours and caps so an
   operator can approve in the day what will go out later; once approved the rest applies.
3. **Schedule.** ``item.not_before`` in the future: HOLD until then.
4. **Staffed hours.** Outside staffed hours and outside every live-event window: HOLD until the
   next staffed opening (exact, in UTC, across clock changes).
5. **Weekly cap** (``policy.weekly_caps[channel.id]``; no entry means no cap). Only
   normal-mode posts count against it (``normal_week_count``): a crisis's posts are reported
   as over the cap, but do not silence the team's routine posts for the rest of the week.
   ``normal_week_count``
   at or over the cap: HOLD. Calendar weeks hold until the first staffed instant of next week;
   rolling weeks cannot know when the oldest post leaves the window, so they re-check at the
   next day's opening.
6. **Pacing** (``policy.pacing`` and a cap). Calendar week: allowed so far =
   ``ceil(cap * working days elapsed including today / working days in the week)``; HOLD when
   ``week_count`` has reached it. Rolling week: a day may use ``ceil(cap / working days in the
   last 7 days)``, compared with ``counters.normal_day_count`` (a rolling window has no "elapsed").
   Either way the hold lasts until the next day's opening, when the allowance grows.
7. **Rate limit.** ``counters.paused_until`` in the future: HOLD until it.

Crisis mode (``item.incident_id`` set):

1. **Stood down.** The item's incident is not active (or not in ``incidents`` at all): SKIP,
   except the stand-down message itself, recognised by a ``dedupe_key`` ending in
   ``":stand-down"`` (queued as ``incident:{id}:{channel}:stand-down``). Activation messages
   (``...:activation``) are skipped like any other item.
2. **Approval.** ``item.approval == "manual"`` and not approved: NEEDS_APPROVAL naming the
   playbook and the source role (``lead`` or ``others``).
3. **Schedule.** ``item.not_before`` in the future: HOLD until then.
4. **Rate limit.** As in normal mode: the platform's word always applies.
5. **Hourly safety ceiling.** The playbook's ``hourly_ceiling`` for this channel (a
   ``ChannelAction`` for the channel, preferring the item's action, else the playbook's;
   20 if the playbook is unknown). ``last_hour_count`` at or over it: HOLD for
   ``CEILING_RETRY`` (5 minutes), except the lead agency's own updates (``item.is_lead``):
   the ceiling is against runaway loops and must not delay the lead below the platform's
   own limit, so they go (every post still counts towards the ceiling for the others).
   The counters do not say when the oldest post of the hour
   leaves the window, so the dispatcher simply asks again shortly.
6. Otherwise PUBLISH, bypassing staffed hours and weekly caps ("crisis bypass").

Flags: every decision carries ``out_of_hours`` (``now`` is outside the *regular* staffed hours;
live windows do not count) and ``over_cap`` (the channel has a cap and ``week_count`` is at or
over it). They describe ``now`` and the counters whatever the action; reports count them on
published items.

Every reason is one sentence; times in it are local (``policy.timezone``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from crisiscomms.domain.clock import utc
from crisiscomms.domain.config import ChannelConfig, Playbook, PolicyConfig
from crisiscomms.domain.models import (
    ChannelCounters,
    Decision,
    DecisionAction,
    Incident,
    LiveWindow,
    OutboxItem,
)
from crisiscomms.domain.workcal import (
    daily_allowance,
    fmt_local,
    in_regular_hours,
    live_window_at,
    local,
    next_day_opening,
    next_opening,
    paced_allowance,
    week_bounds,
    working_days_elapsed,
    working_days_in_week,
)

__all__ = [
    "ACTIVATION_SUFFIX",
    "CEILING_RETRY",
    "DEFAULT_HOURLY_CEILING",
    "STAND_DOWN_SUFFIX",
    "LiveWindow",
    "decide",
    "hourly_ceiling",
]

STAND_DOWN_SUFFIX = ":stand-down"
ACTIVATION_SUFFIX = ":activation"
CEILING_RETRY = timedelta(minutes=5)
DEFAULT_HOURLY_CEILING = 20  # Playbook.hourly_ceiling's default, used if the playbook is gone


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What every rule needs, computed once per call."""

    item: OutboxItem
    channel: ChannelConfig
    now: datetime
    counters: ChannelCounters
    policy: PolicyConfig
    cap: int | None
    out_of_hours: bool
    over_cap: bool

    @property
    def tz(self) -> str:
        return self.policy.timezone

    def at(self, when: datetime, *, date_too: bool = False) -> str:
        return fmt_local(when, self.policy, date_too=date_too)

    def until_text(self, when: datetime) -> str:
        """``14:05 Europe/London``, with the date when it is not today."""
        wall = local(when, self.policy)
        if wall.date() == local(self.now, self.policy).date():
            return f"{wall:%H:%M} {self.tz}"
        return f"{self.at(when, date_too=True)} {self.tz}"

    def decision(
        self, action: DecisionAction, reason: str, until: datetime | None = None
    ) -> Decision:
        return Decision(action, reason, until, self.out_of_hours, self.over_cap)


def hourly_ceiling(item: OutboxItem, channel: ChannelConfig, playbook: Playbook | None) -> int:
    """The hourly safety ceiling for ``item`` on ``channel`` under ``playbook``.

    A ``ChannelAction`` for this channel with its own ``hourly_ceiling`` wins (the one for the
    item's action first), then the playbook-wide ceiling; with no playbook, 20.
    """
    if playbook is None:
        return DEFAULT_HOURLY_CEILING
    actions = [c for c in playbook.channels if c.channel == channel.id]
    actions.sort(key=lambda c: c.action != item.action)  # the item's own action first
    for action in actions:
        if action.hourly_ceiling is not None:
            return action.hourly_ceiling
    return playbook.hourly_ceiling


def decide(
    item: OutboxItem,
    channel: ChannelConfig,
    now: datetime,
    counters: ChannelCounters,
    policy: PolicyConfig,
    incidents: Sequence[Incident],
    playbooks: Mapping[str, Playbook],
    windows: Sequence[LiveWindow] = (),
) -> Decision:
    """Decide what to do with one pending outbox item at ``now``. Pure: see the module doc.

    ``incidents`` must include the item's own incident even after stand-down (an unknown
    incident is treated as stood down). ``windows`` are the live-event windows in force.
    """
    now = utc(now)
    cap = policy.weekly_caps.get(channel.id)
    ctx = _Ctx(
        item=item,
        channel=channel,
        now=now,
        counters=counters,
        policy=policy,
        cap=cap,
        out_of_hours=not in_regular_hours(now, policy),
        over_cap=cap is not None
        and max(counters.week_count, counters.normal_week_count) >= cap,
    )
    if item.expires_at is not None and now >= utc(item.expires_at):
        # An alert past its CAP expires is no longer true: never relay it late.
        when = ctx.at(item.expires_at, date_too=True)
        return ctx.decision(DecisionAction.SKIP, f"expired: the alert expired at {when} {ctx.tz}")
    if item.incident_id is not None:
        return _decide_crisis(ctx, item.incident_id, incidents, playbooks)
    return _decide_normal(ctx, incidents, windows)


def _not_before(ctx: _Ctx) -> Decision | None:
    nb = ctx.item.not_before
    if nb is not None and ctx.now < utc(nb):
        return ctx.decision(
            DecisionAction.HOLD,
            f"scheduled: not before {ctx.at(nb, date_too=True)} {ctx.tz}",
            utc(nb),
        )
    return None


def _rate_limit(ctx: _Ctx) -> Decision | None:
    until = ctx.counters.paused_until
    if until is not None and ctx.now < utc(until):
        return ctx.decision(
            DecisionAction.HOLD,
            f"rate limited by {ctx.channel.id} until {ctx.until_text(until)}",
            utc(until),
        )
    return None


def _decide_normal(
    ctx: _Ctx, incidents: Sequence[Incident], windows: Sequence[LiveWindow]
) -> Decision:
    active = sorted(i.id for i in incidents if i.active)
    if active:
        return ctx.decision(DecisionAction.HOLD, f"paused: incident {active[0]} active")
    if ctx.item.approved_by is None and (
        ctx.policy.normal_approval == "manual" or ctx.item.approval == "manual"
    ):
        return ctx.decision(DecisionAction.NEEDS_APPROVAL, "normal-mode items need approval")
    scheduled = _not_before(ctx)
    if scheduled is not None:
        return scheduled

    window = live_window_at(ctx.now, windows)
    if not ctx.out_of_hours:
        where = f"within staffed hours ({ctx.at(ctx.now)} {ctx.tz})"
    elif window is not None:
        label = f" {window.reason!r}" if window.reason else ""
        where = (
            f"in live-event window{label} ({ctx.at(ctx.now)} {ctx.tz}, "
            f"until {ctx.until_text(window.end)})"
        )
    else:
        opening = next_opening(ctx.now, ctx.policy, windows)
        return ctx.decision(
            DecisionAction.HOLD,
            f"outside staffed hours ({ctx.at(ctx.now)} {ctx.tz}); "
            f"next opening {ctx.at(opening, date_too=True)}",
            opening,
        )

    held = _cap_and_pacing(ctx, windows)
    if held is not None:
        return held
    limited = _rate_limit(ctx)
    if limited is not None:
        return limited
    usage = (
        f"; {ctx.counters.normal_week_count} of {ctx.cap} this week on {ctx.channel.id}"
        if ctx.cap is not None
        else ""
    )
    return ctx.decision(DecisionAction.PUBLISH, f"{where}{usage}")


def _cap_and_pacing(ctx: _Ctx, windows: Sequence[LiveWindow]) -> Decision | None:
    cap, policy, count = ctx.cap, ctx.policy, ctx.counters.normal_week_count
    if cap is None:
        return None
    if count >= cap:
        if policy.week == "calendar":
            # Nothing changes before the week turns over; wait for the first staffed moment.
            until = next_opening(week_bounds(ctx.now, policy)[1], policy, windows)
            when = f"next week opens {ctx.at(until, date_too=True)} {ctx.tz}"
        else:
            until = next_day_opening(ctx.now, policy, windows)
            when = f"rolling week, checking again {ctx.at(until, date_too=True)} {ctx.tz}"
        return ctx.decision(
            DecisionAction.HOLD,
            f"weekly cap {cap} reached for {ctx.channel.id} ({count} this week); {when}",
            until,
        )
    if not policy.pacing:
        return None
    if policy.week == "calendar":
        allowed = paced_allowance(cap, ctx.now, policy)
        used = count
        detail = (
            f"{used} of {allowed} allowed by {ctx.at(ctx.now)[:3]} "
            f"({working_days_elapsed(ctx.now, policy)} of "
            f"{working_days_in_week(ctx.now, policy)} working days, cap {cap})"
        )
    else:
        allowed = daily_allowance(cap, ctx.now, policy)
        used = ctx.counters.normal_day_count
        detail = f"{used} of {allowed} allowed today (cap {cap} over a rolling week)"
    if used < allowed:
        return None
    until = next_day_opening(ctx.now, policy, windows)
    return ctx.decision(
        DecisionAction.HOLD,
        f"pacing: {detail} used on {ctx.channel.id}; "
        f"the allowance grows at the next opening, {ctx.at(until, date_too=True)} {ctx.tz}",
        until,
    )


def _decide_crisis(
    ctx: _Ctx,
    incident_id: int,
    incidents: Sequence[Incident],
    playbooks: Mapping[str, Playbook],
) -> Decision:
    incident = next((i for i in incidents if i.id == incident_id), None)
    stand_down = ctx.item.dedupe_key.endswith(STAND_DOWN_SUFFIX)
    if incident is None and not stand_down:
        return ctx.decision(
            DecisionAction.SKIP,
            f"incident {incident_id} is unknown, so treated as stood down "
            f"({ctx.at(ctx.now)} {ctx.tz})",
        )
    if incident is not None and not incident.active and not stand_down:
        ended = incident.deactivated_at or ctx.now
        return ctx.decision(
            DecisionAction.SKIP,
            f"incident {incident_id} stood down at {ctx.at(ended, date_too=True)} {ctx.tz} "
            "before this was sent",
        )
    playbook_name = incident.playbook if incident is not None else "?"
    playbook = playbooks.get(playbook_name)

    if ctx.item.approval == "manual" and ctx.item.approved_by is None:
        role = "lead" if ctx.item.is_lead else "others"
        return ctx.decision(
            DecisionAction.NEEDS_APPROVAL,
            f"manual approval required by playbook {playbook_name} for source role {role}",
        )
    scheduled = _not_before(ctx)
    if scheduled is not None:
        return scheduled
    limited = _rate_limit(ctx)
    if limited is not None:
        return limited
    ceiling = hourly_ceiling(ctx.item, ctx.channel, playbook)
    # The ceiling guards against runaway loops (a source repeating itself, a bad playbook); it
    # never holds back the lead agency's own updates, which only the platform's limits bound.
    if ctx.counters.last_hour_count >= ceiling and not ctx.item.is_lead:
        retry = ctx.now + CEILING_RETRY
        return ctx.decision(
            DecisionAction.HOLD,
            f"hourly safety ceiling {ceiling} reached on {ctx.channel.id} "
            f"({ctx.counters.last_hour_count} in the last hour); "
            f"checking again at {ctx.until_text(retry)}",
            retry,
        )

    bypassed = []
    if ctx.out_of_hours:
        bypassed.append("outside staffed hours")
    if ctx.over_cap:
        bypassed.append(f"weekly cap {ctx.cap} reached for {ctx.channel.id}")
    what = "; ".join(bypassed) if bypassed else "no normal limit hit"
    return ctx.decision(
        DecisionAction.PUBLISH,
        f"crisis bypass for incident {incident_id} ({ctx.at(ctx.now)} {ctx.tz}): {what}",
    )
