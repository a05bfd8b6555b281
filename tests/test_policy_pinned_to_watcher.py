"""The operator check cannot be bypassed with a private policy file: the watcher records the
SHA-256 of the policy.yaml it runs (``playbooks.loaded`` at start, ``playbooks.reloaded`` on
each reload); a change made with a different policy.yaml is refused (exit 3, audited), naming
both files. With the same files, or on a database no watcher ever recorded, nothing changes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from crisiscomms.adapters.playbooks import PlaybookFiles, load_catalog
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.clock import SystemClock
from crisiscomms.services.reload import PlaybooksReloader
from tests.identity_helpers import become


def set_policy(playbooks: Path, **values: Any) -> None:
    path = playbooks / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy.update(values)
    path.write_text(yaml.safe_dump(policy))


def watcher_runs(home: Path, playbooks: Path, cycles: int = 1) -> PlaybooksReloader:
    """A watcher's reloader on the shared database, run ``cycles`` times."""
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    try:
        reloader = PlaybooksReloader(store=store, folder=PlaybookFiles(playbooks),
                                     catalog=load_catalog(playbooks), actor="watcher-1",
                                     make_sources=lambda c: [],
                                     make_publishers=lambda c, o: {})

        class Loop:  # the reload swaps nothing here: only its audit records matter
            class watcher:
                sources: list[Any] = []

                @staticmethod
                def reconfigure(*a: Any) -> None: ...

            class dispatcher:
                @staticmethod
                def reconfigure(*a: Any) -> None: ...

        loop: Any = Loop()
        for _ in range(cycles):
            asyncio.run(reloader.run(loop, SystemClock().now()))
        return reloader
    finally:
        store.close()


def audit(cli: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(cli("audit", "log", "--json").out)
    return out


@pytest.fixture
def shared(cli: Any, home: Path, playbooks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    set_policy(playbooks_dir, operators=["alice"])
    cli("status")  # creates the database
    watcher_runs(home, playbooks_dir)
    become(monkeypatch, "bob")
    return playbooks_dir


def test_the_watcher_records_the_policy_file_it_runs(cli, shared: Path):
    loaded = [e for e in audit(cli) if e["action"] == "playbooks.loaded"]
    assert len(loaded) == 1 and loaded[0]["actor"] == "watcher-1"
    digest = hashlib.sha256((shared / "policy.yaml").read_bytes()).hexdigest()
    assert loaded[0]["details"]["policy_sha256"] == digest
    assert loaded[0]["details"]["directory"] == str(shared)


def test_a_private_policy_file_is_refused_naming_both(cli, shared: Path, tmp_path: Path,
                                                      monkeypatch):
    private = tmp_path / "bobs-playbooks"
    shutil.copytree(shared, private)
    set_policy(private, operators=["alice", "bob"], delegates={"bob": ["alice"]})
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(private))
    r = cli("activate", "flooding", "--reason", "r", "--operator", "alice")
    assert r.code == 3, r.err
    line = r.err.strip()
    assert len(line.splitlines()) == 1
    assert f"your policy.yaml ({private / 'policy.yaml'}) differs from the one the watcher " \
           "runs" in line
    assert str(shared / "policy.yaml") in line
    assert "recorded by watcher-1 at " in line and ("GMT" in line or "BST" in line)
    assert "playbooks_dir" in line
    last = audit(cli)[-1]
    assert last["action"] == "incident.activate.refused" and last["actor"] == "bob"
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(shared))
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False


def test_the_shared_files_pass_and_a_reload_moves_the_record(cli, shared: Path, home: Path,
                                                             tmp_path: Path, monkeypatch):
    r = cli("window", "add", "--from", "2026-12-01T10:00", "--to", "2026-12-01T11:00",
            "--reason", "w", "--operator", "alice")
    assert r.code == 3 and "delegates" in r.err  # the shared policy: bob is no delegate
    become(monkeypatch, "alice")
    r = cli("window", "add", "--from", "2026-12-01T10:00", "--to", "2026-12-01T11:00",
            "--reason", "w")
    assert r.code == 0, r.err
    old = tmp_path / "old-copy"
    shutil.copytree(shared, old)
    set_policy(shared, operators=["alice", "carol"])  # the admin changes the shared file
    watcher_runs(home, shared, cycles=1)  # a watcher (re)starts: records the new one
    r = cli("window", "add", "--from", "2026-12-02T10:00", "--to", "2026-12-02T11:00",
            "--reason", "w")
    assert r.code == 0, r.err
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(old))
    r = cli("window", "add", "--from", "2026-12-03T10:00", "--to", "2026-12-03T11:00",
            "--reason", "w")
    assert r.code == 3 and "differs from the one the watcher runs" in r.err


def test_a_reload_records_the_new_policy_file(home: Path, playbooks_dir: Path, cli):
    cli("status")
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    try:
        reloader = watcher_runs(home, playbooks_dir)
        set_policy(playbooks_dir, operators=["alice", "carol"])
        reloader.store = store
        loop: Any = type("L", (), {})()
        loop.watcher = type("W", (), {"sources": [], "reconfigure": lambda *a: None})()
        loop.dispatcher = type("D", (), {"reconfigure": lambda *a: None})()
        asyncio.run(reloader.run(loop, SystemClock().now()))
        reloaded = [e for e in store.audit_events(action_prefix="playbooks.")
                    if e.action == "playbooks.reloaded"]
        digest = hashlib.sha256((playbooks_dir / "policy.yaml").read_bytes()).hexdigest()
        assert reloaded and reloaded[-1].details["policy_sha256"] == digest
    finally:
        store.close()


def test_no_watcher_ever_recorded_means_no_check(cli, home: Path, playbooks_dir: Path,
                                                 tmp_path: Path, monkeypatch):
    cli("status")
    private = tmp_path / "private"
    shutil.copytree(playbooks_dir, private)
    set_policy(private, operators=["alice"], delegates={"bob": ["alice"]})
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(private))
    become(monkeypatch, "bob")
    r = cli("activate", "flooding", "--reason", "r", "--operator", "alice")
    assert r.code == 0, r.err
