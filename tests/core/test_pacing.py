"""Adaptive polling (domain.pacing.next_poll): table-driven, no clock, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crisiscomms.domain.models import PollHints, ReadBudget
from crisiscomms.domain.pacing import budget_interval, next_poll
from crisiscomms.settings import PollingSettings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S = PollingSettings()  # crisis 5 s, incident 30 s, jitter 5 s, budget share 0.8


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


CASES = [
    # id, in_crisis, normal, floor, hints, expected interval, reason
    ("normal polling unchanged", False, 60.0, 0.0, PollHints(), 60.0, "normal"),
    ("normal ignores max-age", False, 60.0, 0.0, PollHints(max_age_seconds=600), 60.0,
     "normal"),
    ("crisis default", True, 30.0, 0.0, PollHints(), 5.0, "crisis"),
    ("crisis, a source interval shorter than 5 s is kept", True, 3.0, 0.0, PollHints(), 3.0,
     "crisis"),
    ("publisher floor (EA)", True, 30.0, 60.0, PollHints(), 60.0, "floor"),
    ("publisher floor from sources.yaml", True, 300.0, 300.0, PollHints(), 300.0, "floor"),
    ("max-age above crisis interval", True, 30.0, 0.0, PollHints(max_age_seconds=12), 12.0,
     "max-age"),
    ("max-age capped at the incident interval", True, 30.0, 0.0,
     PollHints(max_age_seconds=3600), 30.0, "max-age"),
    ("max-age 0 (no-cache) is no floor", True, 30.0, 0.0, PollHints(max_age_seconds=0), 5.0,
     "crisis"),
    ("max-age below crisis interval", True, 30.0, 0.0, PollHints(max_age_seconds=2), 5.0,
     "crisis"),
    ("floor beats max-age", True, 30.0, 60.0, PollHints(max_age_seconds=20), 60.0, "floor"),
    # X recent search: 450 left of the app's window for 900 s, 2 requests a poll:
    # 0.8 * 450 / 2 = 180 polls in 900 s -> every 5 s.
    ("budget roomy", True, 30.0, 0.0,
     PollHints(budgets=(ReadBudget(450, at(900)),), requests=2), 5.0, "crisis"),
    # 40 left for 600 s, 1 request a poll: 32 polls in 600 s -> 18.75 s.
    ("budget tight", True, 30.0, 0.0, PollHints(budgets=(ReadBudget(40, at(600)),)), 18.75,
     "budget"),
    ("budget: the worst window wins", True, 30.0, 0.0,
     PollHints(budgets=(ReadBudget(450, at(900)), ReadBudget(100, at(86_400)))), 1080.0,
     "budget"),
    ("budget exhausted waits for the reset", True, 30.0, 0.0,
     PollHints(budgets=(ReadBudget(0, at(420)),)), 420.0, "budget-exhausted"),
    ("budget already reset constrains nothing", True, 30.0, 0.0,
     PollHints(budgets=(ReadBudget(0, at(-5)),)), 5.0, "crisis"),
]


@pytest.mark.parametrize(("in_crisis", "normal", "floor", "hints", "interval", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_poll(in_crisis: bool, normal: float, floor: float, hints: PollHints,
                   interval: float, reason: str) -> None:
    pace = next_poll(NOW, normal_interval=normal, in_crisis=in_crisis, floor_seconds=floor,
                     hints=hints, settings=S)
    assert pace.interval == pytest.approx(interval)
    assert pace.reason == reason
    assert pace.at == NOW + timedelta(seconds=pace.interval)


@pytest.mark.parametrize("in_crisis", [False, True])
def test_retry_after_always_holds(in_crisis: bool) -> None:
    hints = PollHints(retry_after=at(120))
    pace = next_poll(NOW, normal_interval=60, in_crisis=in_crisis, floor_seconds=0,
                     hints=hints, settings=S)
    assert pace.at == at(120) and pace.reason == "retry-after"
    sooner = next_poll(NOW, normal_interval=60, in_crisis=False, floor_seconds=0,
                       hints=PollHints(retry_after=at(1)), settings=S)
    assert sooner.at == at(60) and sooner.reason == "normal"


def test_budget_is_spread_over_the_sources_sharing_it() -> None:
    hints = PollHints(budgets=(ReadBudget(450, at(900)),))
    alone = budget_interval(NOW, hints, share=0.8, sharers=1)
    shared = budget_interval(NOW, hints, share=0.8, sharers=4)
    assert alone == (pytest.approx(2.5), "budget")
    assert shared == (pytest.approx(10.0), "budget")
    pace = next_poll(NOW, normal_interval=30, in_crisis=True, floor_seconds=0, hints=hints,
                     settings=S, sharers=4)
    assert pace.interval == pytest.approx(10.0) and pace.reason == "budget"


def test_spending_the_spread_budget_never_runs_it_dry_before_the_reset() -> None:
    """Poll as told, again and again, the budget dropping by each poll's cost: the window is
    never exhausted before its reset (two watchers drawing on one app included)."""
    for watchers in (1, 2):
        remaining, t, reset, polls = 450, 0.0, 900.0, 0
        nxt = [0.0] * watchers
        while True:
            w = min(range(watchers), key=nxt.__getitem__)
            t = nxt[w]
            if t >= reset:
                break
            assert remaining >= 1, f"budget ran dry at {t:.0f}s with {watchers} watchers"
            remaining -= 1
            polls += 1
            pace = next_poll(at(t), normal_interval=30, in_crisis=True, floor_seconds=0,
                             hints=PollHints(budgets=(ReadBudget(remaining, at(reset)),)),
                             settings=S)
            nxt[w] = t + pace.interval
        assert polls > 100  # and it still polled often


def test_jitter_is_bounded_by_a_tenth_of_a_crisis_interval() -> None:
    pace = next_poll(NOW, normal_interval=30, in_crisis=True, floor_seconds=0,
                     hints=PollHints(), settings=S, jitter=0.999)
    assert 5.0 <= (pace.at - NOW).total_seconds() < 5.5
    normal = next_poll(NOW, normal_interval=60, in_crisis=False, floor_seconds=0,
                       hints=PollHints(), settings=S, jitter=0.5)
    assert (normal.at - NOW).total_seconds() == pytest.approx(62.5)  # as before: 0-5 s
