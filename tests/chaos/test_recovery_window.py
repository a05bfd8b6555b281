"""The crash and fault tests' findings, made deterministic. In each, worker A's request
reached the platform and A died before recording the answer; worker B takes over once A's
lease has expired and must recognise the post instead of sending it again or asking a human.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.models import ActionKind, NewOutboxItem
from crisiscomms.services import incidents
from crisiscomms.simulator import Faults, World, serve
from crisiscomms.testing import claim_and_start_send, enqueue

from .harness import (
    CREDENTIALS,
    PLAYBOOK,
    dispatcher_for,
    in_process_app,
    make_scenario,
    new_world,
    write_playbooks,
)

pytestmark = pytest.mark.chaos

START = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
CHANNELS = ["x", "facebook", "mastodon"]


@dataclass
class Crashed:
    """A's item is on the platform but 'sending' in the store; B is ready to take over."""

    app: Any
    world: World
    clock: FixedClock
    victim: int
    b: Any

    def tick(self, minutes: float = 0) -> None:
        self.clock.set(self.clock.now() + timedelta(minutes=minutes))
        self.b.tick(self.clock.now())

    def state(self) -> str:
        return next(str(i.state) for i in self.app.store.items() if i.id == self.victim)

    def copies(self, channel: str) -> int:
        return sum("CHAOS-0000" in p.text for p in self.world.posts_on(channel))


@contextmanager
def crashed_while_sending(tmp_path: Path, channel: str, monkeypatch: pytest.MonkeyPatch,
                          others: int) -> Iterator[Crashed]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    scenario = make_scenario(0, span_s=1, seed=1)
    clock = FixedClock(START)
    world = new_world(clock, scenario, quotas={})
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        app = in_process_app(tmp_path / "home", playbooks, sim, clock)
        try:
            store = app.store
            incident = incidents.activate(store, app.catalog, clock, playbook=PLAYBOOK,
                                          reason="chaos", operator="chaos")
            ids = enqueue(store, [
                NewOutboxItem(dedupe_key=f"chaos:{channel}:{n}", channel_id=channel,
                              action=ActionKind.POST, text=f"CHAOS-{n:04d} post number {n}",
                              incident_id=incident.id, url=f"https://example.org/chaos/{n}")
                for n in range(1 + others)], now=clock.now())
            publishers = app.build_publishers(dry_run=False)
            lease = timedelta(seconds=app.settings.dispatch.lease_seconds)
            claimed = claim_and_start_send(store, ids[0], worker="A", now=clock.now(),
                                           lease_seconds=lease.total_seconds())
            publishers[channel].publish(claimed, None)  # ...and A dies here
            yield Crashed(app, world, clock, ids[0], dispatcher_for(app, publishers, "B"))
        finally:
            app.close()


# X and Facebook page back to the item's first send; Mastodon has its Idempotency-Key.
@pytest.mark.parametrize("channel", ["x", "facebook", "mastodon"])
def test_recovery_finds_a_post_older_than_the_newest_page(tmp_path: Path, channel: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    with crashed_while_sending(tmp_path, channel, monkeypatch, others=60) as run:
        run.tick()  # B sends the other 60 before A's lease runs out
        for _ in range(4):
            run.tick(minutes=2)  # B takes A's item over, and retries it if it found nothing
        assert run.copies(channel) == 1
        assert run.state() == "published"


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_failed_lookup_is_asked_again_later(tmp_path: Path, channel: str,
                                              monkeypatch: pytest.MonkeyPatch):
    with crashed_while_sending(tmp_path, channel, monkeypatch, others=0) as run:
        run.world.set_faults(Faults(error_rate_5xx=1.0, paths=(f"/{channel}",)))
        run.tick(minutes=1)  # A's lease has expired: B asks the platform, which answers 503
        run.world.set_faults(None)
        for _ in range(4):
            run.tick(minutes=2)
        assert run.copies(channel) == 1
        assert run.state() == "published"
