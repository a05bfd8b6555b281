"""Adaptive polling: when to poll a source next, from what its last answer said.

Outside an incident a source is polled at its normal interval, as always. A source of an
active incident is polled as often as it allows cheaply: every ``crisis_interval_seconds``
(about 5 s), but never sooner than the slowest of

* the publisher's documented floor (``min_interval_seconds`` in ``sources.yaml``, and the
  per-kind floors of the settings, e.g. the Environment Agency's);
* the answer's freshness (``Cache-Control: max-age`` less ``Age``, or ``Expires``): asking again
  while the answer is fresh only reaches a cache. It is honoured up to the incident interval,
  so a cache header never makes a source slower in a crisis than it was before;
* the read budgets the platform stated (X recent search is budgeted per app, Mastodon per
  account and per address): what is left of each window is spread evenly over the time to
  its reset, shared by the sources drawing on it, keeping a reserve. Each watcher spreads
  what the platform says is left, so several watchers on one app slow down together and
  never run it dry before the reset.

``Retry-After`` always holds, in or out of an incident. Failures back off elsewhere (the
watcher's ``backoff_delay``), unchanged. Pure: the time, the hints and the random jitter are
parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from crisiscomms.domain.models import PollHints


class PacingSettings(Protocol):
    """The settings pacing reads (``crisiscomms.settings.PollingSettings`` has them)."""

    @property
    def crisis_interval_seconds(self) -> float: ...

    @property
    def incident_interval_seconds(self) -> float: ...

    @property
    def jitter_seconds(self) -> float: ...

    @property
    def read_budget_share(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Pace:
    """The next poll: at ``at`` (``interval`` seconds on, plus jitter), and which rule set it
    (``normal``, ``crisis``, ``floor``, ``max-age``, ``budget``, ``budget-exhausted``,
    ``retry-after``)."""

    at: datetime
    interval: float
    reason: str


def budget_interval(now: datetime, hints: PollHints, *, share: float,
                    sharers: int = 1) -> tuple[float, str] | None:
    """The shortest interval that keeps every stated read budget from running dry before its
    reset: (seconds, reason), or ``None`` when no budget was stated."""
    worst: tuple[float, str] | None = None
    cost = max(1, hints.requests)
    for budget in hints.budgets:
        left = (budget.reset_at - now).total_seconds()
        if left <= 0:
            continue  # the window has reset already: it constrains nothing
        usable = budget.remaining * share / max(1, sharers)
        if usable < cost:
            candidate = (left, "budget-exhausted")  # nothing more before the reset
        else:
            candidate = (left * cost / usable, "budget")
        if worst is None or candidate[0] > worst[0]:
            worst = candidate
    return worst


def next_poll(now: datetime, *, normal_interval: float, in_crisis: bool, floor_seconds: float,
              hints: PollHints, settings: PacingSettings, jitter: float = 0.0,
              sharers: int = 1) -> Pace:
    """When to poll a source next after a successful poll at ``now``.

    ``normal_interval`` is the interval without adaptive pacing (the source's own, or the
    incident interval, with the publisher's floor applied); ``floor_seconds`` the publisher's
    documented floor; ``jitter`` a random number in [0, 1) that spreads polls (at most
    ``jitter_seconds``, and at most a tenth of a crisis interval); ``sharers`` how many of the
    watcher's sources draw on the same read budget."""
    jitter = min(max(jitter, 0.0), 1.0)
    if not in_crisis:
        interval, reason = normal_interval, "normal"
        spread = jitter * settings.jitter_seconds
    else:
        rules = [(min(settings.crisis_interval_seconds, normal_interval), "crisis"),
                 (floor_seconds, "floor")]
        if hints.max_age_seconds is not None and hints.max_age_seconds > 0:
            rules.append((min(hints.max_age_seconds, settings.incident_interval_seconds),
                          "max-age"))
        budget = budget_interval(now, hints, share=settings.read_budget_share,
                                 sharers=sharers)
        if budget is not None:
            rules.append(budget)
        interval, reason = rules[0]
        for seconds, why in rules[1:]:
            if seconds > interval:
                interval, reason = seconds, why
        spread = jitter * min(settings.jitter_seconds, interval / 10)
    at = now + timedelta(seconds=interval + spread)
    if hints.retry_after is not None and hints.retry_after > at:
        return Pace(hints.retry_after, (hints.retry_after - now).total_seconds(), "retry-after")
    return Pace(at, interval, reason)
