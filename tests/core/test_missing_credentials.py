"""A channel without credentials is broken, loudly (issue 12): outside a drill or an explicit
dry run its items wait as failed (resendable once fixed), never as silent dry runs counted as
published; ``status`` shows the channel as broken and ``activate`` warns."""

from __future__ import annotations

import json
from pathlib import Path

from crisiscomms.adapters.publishers.dryrun import DryRunPublisher
from crisiscomms.bootstrap import App, MappingCredentials
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.models import ActionKind, NewOutboxItem
from crisiscomms.services import incidents
from crisiscomms.services import queue as ops
from crisiscomms.settings import Settings
from crisiscomms.testing import FakePublisher, enqueue
from tests.core.helpers import FRI_EVENING, make_world


def test_a_channel_without_credentials_is_not_a_dry_run(tmp_path: Path, playbooks_dir: Path):
    app = App(settings=Settings(home=tmp_path, playbooks_dir=playbooks_dir),
              clock=FixedClock(FRI_EVENING), credential_source=MappingCredentials({}))
    try:
        pubs = app.build_publishers(dry_run=False)
        assert not any(isinstance(p, DryRunPublisher) for p in pubs.values())
        assert all("credentials missing for channel" in str(getattr(p, "unavailable", ""))
                   for p in pubs.values())
        # An explicit dry run is still a dry run.
        assert all(isinstance(p, DryRunPublisher)
                   for p in app.build_publishers(dry_run=True).values())
    finally:
        app.close()


def test_items_of_a_channel_without_credentials_fail_loudly_and_can_be_resent(
        tmp_path: Path, playbooks_dir: Path):
    from crisiscomms.adapters.publishers.unavailable import UnavailablePublisher

    world = make_world(tmp_path, playbooks_dir)
    world.publishers["x"] = UnavailablePublisher(
        "x", "credentials missing for channel x (CRISISCOMMS_X_ACCESS_TOKEN unset)")
    inc = incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                             reason="t", operator="alice")
    (item_id,) = enqueue(world.store, [NewOutboxItem(
        dedupe_key="k", channel_id="x", action=ActionKind.POST, text="Road closed",
        incident_id=inc.id, is_lead=True)], now=world.clock.now())
    world.dispatcher().tick(world.clock.now())
    item = world.store.get_item(item_id)
    assert str(item.state) == "failed" and item.reason.startswith(
        "credentials missing for channel x")
    assert item.attempts == 0  # nothing was sent
    assert world.store.channel_states()["x"].problem.startswith("credentials missing")
    # Fixed: the credentials are there again; the item is resent on request, once.
    world.publishers["x"] = FakePublisher("x")
    ops.retry(world.store, world.catalog, world.clock, item_id, "alice")
    world.dispatcher().tick(world.clock.now())
    assert str(world.store.get_item(item_id).state) == "published"
    assert world.store.channel_states()["x"].problem is None


def test_status_shows_a_broken_channel_and_activate_warns(cli, home, monkeypatch):
    for var in ("CRISISCOMMS_X_CONSUMER_KEY", "CRISISCOMMS_X_ACCESS_TOKEN",
                "CRISISCOMMS_FACEBOOK_PAGE_TOKEN", "CRISISCOMMS_MASTODON_TOKEN",
                "CRISISCOMMS_BLUESKY_APP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    r = cli("activate", "flooding", "--reason", "River Chelmer")
    assert r.code == 0, r.err
    assert "warning: channel x cannot post: credentials missing" in r.err
    from crisiscomms.adapters.store import open_store

    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    with store.unit_of_work() as uow:
        uow.channels.set_problem("x", "credentials missing for channel x")
        uow.commit()
    r = cli("status")
    assert "channel x broken: credentials missing for channel x" in r.out
    data = json.loads(cli("status", "--json").out)
    assert data["channels"]["x"]["problem"] == "credentials missing for channel x"


def test_activate_trusts_the_watchers_report_of_a_healthy_channel(cli, home, monkeypatch):
    """The officer's shell holds no channel credentials (the service does): once the watcher
    has reported a channel healthy, activate must not cry wolf about this shell's environment."""
    for var in ("CRISISCOMMS_X_CONSUMER_KEY", "CRISISCOMMS_X_ACCESS_TOKEN",
                "CRISISCOMMS_FACEBOOK_PAGE_TOKEN", "CRISISCOMMS_MASTODON_TOKEN",
                "CRISISCOMMS_BLUESKY_APP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert cli("status").code == 0
    from crisiscomms.adapters.store import open_store

    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    with store.unit_of_work() as uow:
        for channel in ("x", "facebook", "mastodon"):
            uow.channels.set_problem(channel, None)  # the watcher's first tick: healthy
        uow.channels.set_problem("bluesky", "credentials missing for channel bluesky")
        uow.commit()
    store.close()
    r = cli("activate", "flooding", "--reason", "River Chelmer")
    assert r.code == 0, r.err
    assert "credentials missing here" not in r.err
    assert "channel bluesky cannot post: credentials missing for channel bluesky" in r.err
