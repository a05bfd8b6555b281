"""Finding 1 (issue 13): a running watcher follows its playbooks folder.

End to end: the real run loop (``App.run_loop`` + ``RunLoop.run``, the loop ``crisiscomms watch``
runs) on the real clock with short intervals, against the loopback simulator (feeds and
Mastodon). A source added to sources.yaml while it runs is polled on the next cycle and its
update relayed; an invalid edit keeps the old sources polling, is refused once and shown by
``status``; fixing the file recovers."""

from __future__ import annotations

import asyncio
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
