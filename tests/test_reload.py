"""Finding 1 (issue 13): a running watcher follows its playbooks folder.

End to end: the real run loop (``App.run_loop`` + ``RunLoop.run``, the loop ``crisiscomms watch``
runs) on the real clock with short intervals, against the loopback simulator (feeds and
Mastodon). A source added to sources.yaml while it runs is polled on the next cycle and its
update relayed; an invalid edit keeps the old sources polling, is refused once and shown by
``status``; fixing the file recovers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from crisiscomms.domain.clock import SystemClock
from crisiscomms.services import incidents
from crisiscomms.simulator import serve

from .chaos.harness import (
    CREDENTIALS,
    PLAYBOOK,
    in_process_app,
    make_scenario,
    new_world,
    write_playbooks,
)

TICK = 0.2
TIMEOUT = 30.0


async def _until(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _edit(path: Path, fn: Callable[[Any], None]) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _events(app: Any, action: str) -> list[Any]:
    return [e for e in app.store.audit_events(action_prefix="playbooks.") if e.action == action]


def _state(app: Any, key: str) -> Any:
    return next((s for s in app.store.source_states() if s.source_id == key), None)


def _item(world: Any, source: str, mark: str) -> None:
    world.add_item(source, "rss", datetime.now(UTC), {
        "guid": f"urn:reload:{mark}", "title": f"{mark} update from {source}",
        "link": f"https://example.org/reload/{mark}", "description": f"Details of {mark}."})


def _posted(world: Any, mark: str) -> bool:
    return any(mark in p.text for p in world.posts_on("mastodon"))


def test_a_running_watcher_follows_sources_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                cli: Callable[..., Any]) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    scenario = make_scenario(0, n_sources=1, n_x=0, span_s=60, seed=13, channels=("mastodon",))
    world = new_world(SystemClock(), scenario)
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "sim-playbooks", sim, scenario)
        home = tmp_path / "home"  # the database the `cli` fixture's commands use
        monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(playbooks))
        app = in_process_app(home, playbooks, sim, SystemClock(), interval_s=1, timeout_s=5,
                             worker_id="reload-test")
        sources_yaml = playbooks / "sources.yaml"
        try:
            incidents.activate(app.store, app.catalog, app.clock, playbook=PLAYBOOK,
                               reason="reload test", operator="tester")
            asyncio.run(_scenario(app, world, sim, playbooks, sources_yaml, cli))
        finally:
            app.close()


async def _scenario(app: Any, world: Any, sim: Any, playbooks: Path, sources_yaml: Path,
                    cli: Callable[..., Any]) -> None:
    stop = asyncio.Event()
    async with app.run_loop(dry_run=False, reload_seconds=TICK) as loop:
        runner = asyncio.ensure_future(loop.run(stop, tick_seconds=TICK))
        try:
            await _drive(app, world, sim, playbooks, sources_yaml, cli)
        finally:
            stop.set()
            await asyncio.wait_for(runner, timeout=15)


async def _drive(app: Any, world: Any, sim: Any, playbooks: Path, sources_yaml: Path,
                 cli: Callable[..., Any]) -> None:
    old = "rss-src-0"
    await _until(lambda: (s := _state(app, old)) and s.last_ok_at, "the first poll")

    # 1. A source added while the watcher runs: polled on the next cycle, its update relayed.
    new = {"id": "rss-added", "agency": "Agency added", "kind": "rss", "watch": "crisis",
           "allow_private_network": True, "url": sim.url_for("rss", "rss-added")}
    _edit(sources_yaml, lambda d: d["sources"].append(new))
    _edit(playbooks / f"{PLAYBOOK}.yaml", lambda d: d["sources"].append({"source": "rss-added"}))
    await _until(lambda: (s := _state(app, "rss-added")) and s.last_ok_at,
                 "the added source polled")
    reloaded = _events(app, "playbooks.reloaded")
    assert reloaded and {"sources.yaml", f"{PLAYBOOK}.yaml"} <= set(reloaded[-1].details["files"])
    _item(world, "rss-added", "MARK-ADDED")
    await _until(lambda: _posted(world, "MARK-ADDED"), "the added source's update relayed")

    # 2. An invalid edit: refused once, the old sources keep polling, status says so.
    text = sources_yaml.read_text()
    lines = text.splitlines()
    n = next(i for i, line in enumerate(lines) if "id: rss-src-0" in line)
    indent = lines[n].index("id: rss-src-0")
    lines.insert(n + 1, " " * indent + "interval_seconds: 1")  # below the minimum (5)
    sources_yaml.write_text("\n".join(lines) + "\n")
    bad_line = n + 2
    refusals = await _until(lambda: _events(app, "playbooks.reload_refused"), "the refusal")
    assert refusals[0].details == {"file": str(sources_yaml), "line": bad_line,
                                   "key": "sources.rss-src-0.interval_seconds",
                                   "error": refusals[0].details["error"]}
    assert "greater than or equal to 5" in refusals[0].details["error"]
    _item(world, old, "MARK-OLD")
    await _until(lambda: _posted(world, "MARK-OLD"), "the old source still relayed")
    polled = _state(app, "rss-added").last_polled_at
    await _until(lambda: _state(app, "rss-added").last_polled_at > polled,
                 "the running configuration polling on")
    assert len(_events(app, "playbooks.reload_refused")) == 1  # once, not every cycle

    status = await asyncio.to_thread(cli, "status")
    assert status.code == 0, status.err
    assert f"playbooks: {playbooks}" in status.out
    refused_line = next(line for line in status.out.splitlines() if "refused" in line)
    assert f"change to sources.yaml refused (line {bad_line}, key " \
           "sources.rss-src-0.interval_seconds:" in refused_line
    assert "runs the last good configuration loaded at" in refused_line
    assert refused_line.rstrip().endswith(("GMT", "BST")), refused_line
    data = json.loads((await asyncio.to_thread(cli, "status", "--json")).out)
    assert data["playbooks"]["reload"][0]["refused"]["line"] == bad_line

    # 3. The fix loads; status no longer shows the refusal.
    sources_yaml.write_text(text)
    before = len(_events(app, "playbooks.reloaded"))
    await _until(lambda: len(_events(app, "playbooks.reloaded")) > before, "the recovery")
    status = await asyncio.to_thread(cli, "status")
    assert "refused" not in status.out, status.out


# ------------------------------------------------------------------ the reloader, unit by unit

def _loop(world: Any, worker: str = "w1") -> Any:
    from crisiscomms.domain.models import WatcherInfo
    from crisiscomms.services.runloop import RunLoop

    now = world.clock.now()
    return RunLoop(store=world.store, clock=world.clock, watcher=world.watcher(),
                   dispatcher=world.dispatcher(worker),
                   identity=WatcherInfo(worker, "host", 1, now, now))


def _reloader(world: Any, playbooks_dir: Path, loop: Any, worker: str = "w1",
              built: list[Any] | None = None) -> Any:
    from crisiscomms.adapters.playbooks import PlaybookFiles
    from crisiscomms.services.reload import PlaybooksReloader
    from crisiscomms.testing import FakePublisher, FakeSource

    built = built if built is not None else []

    def make_sources(catalog: Any) -> list[Any]:
        out = [FakeSource(sid) for sid in catalog.sources]
        built.append(("sources", sorted(catalog.sources)))
        return out

    def make_publishers(catalog: Any, only: set[str]) -> dict[str, Any]:
        built.append(("publishers", sorted(only)))
        return {c: FakePublisher(c) for c in only}

    return PlaybooksReloader(store=world.store, folder=PlaybookFiles(playbooks_dir),
                             catalog=world.catalog, actor=worker, make_sources=make_sources,
                             make_publishers=make_publishers)


def _world(tmp_path: Path, playbooks_dir: Path) -> Any:
    from tests.core.helpers import make_world

    return make_world(tmp_path, playbooks_dir)


def test_plan_rebuilds_only_what_changed(playbooks_dir: Path):
    """Pinning an X id (the README's fix) rebuilds the one X adapter; RSS adapters stay."""
    from types import SimpleNamespace

    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.services.reload import plan_channels, plan_sources

    old = load_catalog(playbooks_dir)
    x_ids = tuple(s.id for s in old.sources.values() if s.kind == "x")
    adapters = [SimpleNamespace(key="x", source_ids=x_ids)] + [
        SimpleNamespace(key=s.id, source_ids=(s.id,)) for s in old.sources.values()
        if s.kind != "x"]
    _edit(playbooks_dir / "sources.yaml",
          lambda d: next(s for s in d["sources"] if s["id"] == "essex-police-x")
          .update(x_user_id="123456"))
    new = load_catalog(playbooks_dir)
    plan = plan_sources(old, new, adapters)
    assert plan.dropped == {"x"} and set(plan.to_build) == set(x_ids)
    assert plan_sources(old, old, adapters).dropped == set()
    _edit(playbooks_dir / "sources.yaml", lambda d: d.update(
        sources=[s for s in d["sources"] if s["id"] != "met-office-ee"]))
    _edit(playbooks_dir / "severe-weather.yaml", lambda d: d.update(
        sources=[s for s in d["sources"] if s["source"] != "met-office-ee"],
        default_lead="essex-police-x", allowed_leads=["essex-police-x"]))
    _edit(playbooks_dir / "flooding.yaml", lambda d: d.update(
        sources=[s for s in d["sources"] if s["source"] != "met-office-ee"]))
    _edit(playbooks_dir / "channels.yaml", lambda d: next(
        c for c in d["channels"] if c["id"] == "facebook").update(account="otherpage"))
    newer = load_catalog(playbooks_dir)
    plan = plan_sources(new, newer, adapters)
    assert "met-office-ee" in plan.dropped and "met-office-ee" not in plan.to_build
    assert plan_channels(new, newer) == ({"facebook"}, set())


def test_the_swap_waits_for_the_next_step(tmp_path: Path, playbooks_dir: Path):
    """The reload is prepared by the chore; the watcher and the dispatcher take it at the start
    of their next step, never in the middle of one."""
    world = _world(tmp_path, playbooks_dir)
    loop = _loop(world)
    built: list[Any] = []
    reloader = _reloader(world, playbooks_dir, loop, built=built)
    old = loop.watcher.catalog
    kept = {s.key: s for s in loop.watcher.sources}
    _edit(playbooks_dir / "policy.yaml", lambda d: d.update(weekly_caps={"x": 20}))
    _edit(playbooks_dir / "channels.yaml",
          lambda d: next(c for c in d["channels"] if c["id"] == "mastodon")
          .update(account="@other@mastodon.example"))
    asyncio.run(reloader.run(loop, world.clock.now()))
    assert built == [("publishers", ["mastodon"])]  # no source changed: no adapter built
    assert loop.watcher.catalog is old and loop.dispatcher.catalog is old  # not yet
    old_pub = loop.dispatcher.publishers["mastodon"]
    asyncio.run(loop.watcher.poll_cycle(world.clock.now()))
    assert loop.watcher.catalog.policy.weekly_caps == {"x": 20}
    assert {s.key: s for s in loop.watcher.sources} == kept  # the same adapters, state kept
    loop.dispatcher.tick(world.clock.now())
    assert loop.dispatcher.catalog.policy.weekly_caps == {"x": 20}
    assert loop.dispatcher.publishers["mastodon"] is not old_pub
    events = world.store.audit_events(action_prefix="playbooks.")
    # The first run records the policy file the watcher runs; the reload, the new one.
    assert [e.action for e in events] == ["playbooks.loaded", "playbooks.reloaded"]
    assert events[0].details["policy_file"] == str(playbooks_dir / "policy.yaml")
    assert events[1].details == {
        "files": ["channels.yaml", "policy.yaml"],
        "policy_file": str(playbooks_dir / "policy.yaml"),
        "policy_sha256": hashlib.sha256((playbooks_dir / "policy.yaml").read_bytes())
        .hexdigest()}
    assert events[0].details["policy_sha256"] != events[1].details["policy_sha256"]


def test_several_watchers_refuse_each_distinct_content_once(tmp_path: Path,
                                                            playbooks_dir: Path):
    world = _world(tmp_path, playbooks_dir)
    loops = [_loop(world, "w1"), _loop(world, "w2")]
    reloaders = [_reloader(world, playbooks_dir, loop, worker)
                 for loop, worker in zip(loops, ("w1", "w2"), strict=True)]

    def cycles(n: int) -> None:
        for _ in range(n):
            for loop, reloader in zip(loops, reloaders, strict=True):
                asyncio.run(reloader.run(loop, world.clock.now()))

    def refusals() -> list[Any]:
        return [e for e in world.store.audit_events(action_prefix="playbooks.")
                if e.action == "playbooks.reload_refused"]

    target = playbooks_dir / "flooding.yaml"
    target.write_text(target.read_text().replace("hourly_ceiling: 20", "hourly_ceiling 20"))
    cycles(3)
    assert sorted(e.actor for e in refusals()) == ["w1", "w2"]
    assert refusals()[0].details["file"] == str(target)
    assert set(refusals()[0].details) == {"file", "line", "key", "error"}
    target.write_text(target.read_text().replace("hourly_ceiling 20", "hourly_ceiling: twenty"))
    cycles(3)
    assert len(refusals()) == 4  # a different mistake: refused again, once per watcher
    assert refusals()[-1].details["key"] == "hourly_ceiling"
    assert all(loop.watcher.catalog is world.catalog for loop in loops)  # the last good one


def test_a_change_made_while_the_watcher_starts_is_not_missed(tmp_path: Path,
                                                              playbooks_dir: Path):
    """The running configuration's contents are read before it is loaded; a file written
    between that read and the reloader's start is still reloaded on the first run."""
    from crisiscomms.adapters.playbooks import PlaybookFiles
    from crisiscomms.services.reload import PlaybooksReloader

    world = _world(tmp_path, playbooks_dir)
    loop = _loop(world)
    running = PlaybookFiles(playbooks_dir).digests()
    _edit(playbooks_dir / "policy.yaml", lambda d: d.update(weekly_caps={"x": 20}))
    reloader = PlaybooksReloader(store=world.store, folder=PlaybookFiles(playbooks_dir),
                                 catalog=world.catalog, actor="w1",
                                 make_sources=lambda c: [], make_publishers=lambda c, o: {},
                                 running=running)
    asyncio.run(reloader.run(loop, world.clock.now()))
    asyncio.run(loop.watcher.poll_cycle(world.clock.now()))
    assert loop.watcher.catalog.policy.weekly_caps == {"x": 20}
