"""``status`` shows each live watcher's push connections (carried by its heartbeat): up with
its events, or DOWN with the reason and what that means (polled meanwhile)."""

from __future__ import annotations

import json
from datetime import timedelta


def test_status_shows_push_connections_up_and_down(cli, home):
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import PushStatus, WatcherInfo

    assert cli("status").code == 0  # creates the database
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    up = PushStatus("mastodon-stream", "mastodon", ("essex-police-m", "ecfrs-m"), connected=True,
                    since=now - timedelta(minutes=3), last_event_at=now, events=4)
    down = PushStatus("jetstream", "jetstream", ("ea-bsky",), connected=False, since=now,
                      failures=5, last_error="InvalidStatus: server rejected WebSocket (503)")
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay:1", "relay", 1, now, now, push=(up, down)))
        uow.commit()
    store.close()
    r = cli("status")
    assert r.code == 0, r.err
    lines = [ln.strip() for ln in r.out.splitlines() if ln.strip().startswith("push ")]
    assert len(lines) == 2, r.out
    assert lines[0].startswith("push mastodon-stream (mastodon, 2 sources): connected since ")
    assert "4 event(s)" in lines[0]
    assert lines[1].startswith("push jetstream (jetstream, 1 source): DOWN since ")
    assert "after 5 attempt(s): InvalidStatus: server rejected WebSocket (503)" in lines[1]
    assert "polled meanwhile" in lines[1]
    data = json.loads(cli("status", "--json").out)
    [w] = data["watchers"]
    assert [(p["connection"], p["connected"]) for p in w["push"]] == [
        ("mastodon-stream", True), ("jetstream", False)]
