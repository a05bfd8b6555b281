"""``watch --once`` (a cron-style single cycle) pays only for what its one cycle uses: the
source adapters of the kinds its playbooks list, a feed parser worker only when a feed body
must be parsed (none when every feed answers 304), twitter-text only when a post is composed.
Each run is a fresh interpreter running the console script's entry point (``SCRIPT``), which
then lists the modules it loaded and the parser workers it started. The long-running watcher
still starts its workers and imports twitter-text at start (tests/sources/test_parser_eager.py
and test_watch_warm_up_stays_for_the_long_running_watcher below). No timing is asserted:
``benchmarks/feed2toot_cmp.py`` measures the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.simulator import World, serve

MON_MORNING = "2026-11-30T09:00:00Z"

# The entry point, with every parser worker it starts and every module it loads recorded.
SCRIPT = """
import json, os, subprocess, sys
workers = []
real_init = subprocess.Popen.__init__
def recording_init(self, args, *a, **kw):
    if any("_feedworker" in str(arg) for arg in args):
        workers.append(list(map(str, args)))
    real_init(self, args, *a, **kw)
subprocess.Popen.__init__ = recording_init
from crisiscomms.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
with open(os.environ["ONCE_OUT"], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules), "workers": workers}, f)
"""

# What a --once cycle over RSS and EA-floods sources (the X ones lack a token) never needs.
NOT_FOR_RSS = ("crisiscomms.adapters.sources.x", "crisiscomms.adapters.sources.bluesky",
               "crisiscomms.adapters.sources.mastodon", "crisiscomms.adapters.sources.cap",
               "crisiscomms.adapters.sources.push", "websockets", "httpx_sse",
               # CAP's XML reader: these feeds carry no CAP fields
               "crisiscomms.adapters.sources.capxml", "defusedxml",
               # structlog is loaded without rich (crisiscomms.logs), nothing else wants it
               "rich",
               # the Public Suffix List is read only when a feed redirects (none here)
               "tldextract",
               # a dry run builds no platform's publisher, so no platform SDK is loaded
               "crisiscomms.adapters.publishers.x", "crisiscomms.adapters.publishers.facebook",
               "crisiscomms.adapters.publishers.mastodon",
               "crisiscomms.adapters.publishers.bluesky", "tweepy", "requests")
# ... nor, when nothing is new, the parser (it runs in the workers) or the post text rules.
NOT_WHEN_UNCHANGED = ("feedparser", "twitter_text")


def once(at: str, tmp_path: Path, *extra: str) -> dict[str, Any]:
    """One fresh ``crisiscomms --at AT [extra] watch --once --dry-run --json``."""
    out = tmp_path / "once.json"
    env = {**os.environ, "ONCE_OUT": str(out)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "--at", at, *extra, "watch", "--once",
                           "--dry-run", "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert out.exists(), proc.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["code"] == 0, proc.stderr
    result["stats"] = json.loads(proc.stdout)
    return result


def loaded(result: dict[str, Any], banned: tuple[str, ...]) -> list[str]:
    return [m for m in result["modules"]
            if any(m == b or m.startswith(b + ".") for b in banned)]


def point_sources_at(sim: Any, playbooks_dir: Path) -> None:
    path = playbooks_dir / "sources.yaml"
    data = yaml.safe_load(path.read_text())
    for s in data["sources"]:
        if s["kind"] == "rss":
            s["url"] = sim.url_for("rss", s["id"])
        elif s["kind"] == "ea-floods":
            s["url"] = sim.url_for("ea-floods")
    path.write_text(yaml.safe_dump(data))


@pytest.mark.slow
def test_once_parses_only_changed_feeds_and_loads_only_what_it_uses(
        home: Path, playbooks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISCOMMS_ALLOW_PRIVATE_SOURCES", "true")
    world = World(FixedClock(parse_instant(MON_MORNING)))
    world.add_item("met-office-ee", "rss", parse_instant("2026-11-30T08:00:00Z"), {
        "guid": "w0", "title": "Yellow warning of rain affecting East of England",
        "link": "https://www.metoffice.gov.uk/w0", "description": "Heavy rain."})
    with serve(world) as sim:
        point_sources_at(sim, playbooks_dir)
        # 1. The first cycle reads the feed (a 200): one worker parses it; the entry already
        # there is the baseline, not news.
        first = once(MON_MORNING, tmp_path)
        assert first["stats"]["polled"] == 2 and first["stats"]["failed"] == 0
        assert len(first["workers"]) == 1  # started when the body came, not at start-up
        assert loaded(first, NOT_FOR_RSS) == []

        # 2. Nothing new: the feed answers 304; no worker, no feedparser, no twitter-text.
        second = once("2026-11-30T09:10:00Z", tmp_path, "--at-on-live-database")
        assert second["stats"]["not_modified"] >= 1 and second["stats"]["new_updates"] == 0
        assert second["workers"] == []
        assert loaded(second, NOT_FOR_RSS + NOT_WHEN_UNCHANGED) == []
        assert "crisiscomms.adapters.sources.rss" in second["modules"]  # it did poll

        # 3. A new warning: parsed in a worker started for it, matched, composed for every
        # channel (twitter-text weighs the X post, imported for it) and queued.
        world.add_item("met-office-ee", "rss", parse_instant(MON_MORNING), {
            "guid": "w1", "title": "Yellow warning of wind affecting East of England",
            "link": "https://www.metoffice.gov.uk/w1", "description": "Gusts of 60 mph."})
        third = once("2026-11-30T09:20:00Z", tmp_path, "--at-on-live-database")
        assert third["stats"]["new_updates"] == 1 and third["stats"]["queued"] == 2
        assert len(third["workers"]) == 1
        assert "twitter_text" in third["modules"]
        assert loaded(third, NOT_FOR_RSS) == []


def test_watch_warm_up_stays_for_the_long_running_watcher(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_loop`` warms up (twitter-text, the parser workers) unless it runs ``once``."""
    import asyncio

    from crisiscomms import bootstrap
    from crisiscomms.domain import posttext

    calls: list[str] = []
    monkeypatch.setattr(posttext, "warm_up", lambda: calls.append("warm_up"))
    starts: list[bool] = []
    real = bootstrap.App.build_sources

    def recording(self: bootstrap.App, **kw: Any) -> Any:
        starts.append(kw.get("start_parsers", True))
        return real(self, **kw)

    monkeypatch.setattr(bootstrap.App, "build_sources", recording)
    app = bootstrap.build_app()

    async def enter(once: bool) -> None:
        async with app.run_loop(dry_run=True, once=once):
            pass

    try:
        asyncio.run(enter(once=True))
        assert calls == [] and starts == [False]
        asyncio.run(enter(once=False))
        assert calls == ["warm_up"] and starts == [False, True]
    finally:
        app.close()


def test_structlog_loads_without_rich_and_rich_stays_importable(tmp_path: Path) -> None:
    """``logs.configure`` before structlog's first import: structlog comes without rich (its
    tracebacks are plain on a console anyway), and rich can still be imported afterwards."""
    code = ("import sys\n"
            "from crisiscomms import logs\n"
            "logs.configure('info', 'console')\n"
            "import structlog\n"
            "assert 'rich' not in sys.modules and structlog.dev.rich is None\n"
            "import rich.console\n"
            "log = structlog.get_logger()\n"
            "try:\n"
            "    1 / 0\n"
            "except ZeroDivisionError:\n"
            "    log.exception('boom')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items()
                                           if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert "boom" in proc.stderr and "Traceback (most recent call last)" in proc.stderr
    assert "ZeroDivisionError: division by zero" in proc.stderr
