"""The watcher seals events the officers' shells wrote without the audit key: each keyed hash
covers the links before it, so one keyed event makes the whole trail before it checkable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from crisiscomms.adapters.store import open_store
from crisiscomms.domain.clock import FixedClock
from crisiscomms.services.audit_seal import AuditSealer
from crisiscomms.testing import append_audit
from tests.sources.sources_helpers import NOW

KEY = SecretStr("k" * 32)


def test_events_written_without_the_key_are_sealed_by_the_watcher(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    watcher_store = open_store(url, audit_key=KEY)
    officer_store = open_store(url)  # an officer's shell: no key
    try:
        append_audit(watcher_store, actor="w", action="test.keyed", subject="s", reason="r",
                     now=NOW)
        append_audit(officer_store, actor="alice", action="queue.approve", subject="item:1",
                     reason="checked", now=NOW)
        before = watcher_store.verify_audit()
        assert before.ok and before.unprotected == 1 and not before.fully_checked
        sealer = AuditSealer(watcher_store, owner="w1")
        loop: Any = None
        asyncio.run(sealer.run(loop, NOW))
        after = watcher_store.verify_audit()
        assert after.fully_checked, after
        last = watcher_store.audit_events()[-1]
        assert last.action == "audit.sealed" and last.scheme == "hmac-sha256"
        asyncio.run(sealer.run(loop, NOW))  # nothing new: no second seal
        assert watcher_store.verify_audit().count == after.count
    finally:
        officer_store.close()
        watcher_store.close()


def test_a_watcher_with_the_audit_key_runs_the_sealer(tmp_path: Path, playbooks_dir: Path
                                                      ) -> None:
    from crisiscomms.bootstrap import App
    from crisiscomms.settings import Settings

    settings = Settings(home=tmp_path, playbooks_dir=playbooks_dir, audit_key=KEY)
    app = App(settings=settings, clock=FixedClock(NOW))

    async def chores() -> list[str]:
        async with app.run_loop(dry_run=True) as loop:
            return [c.name for c in loop.chores]

    try:
        assert "audit.seal" in asyncio.run(chores())
    finally:
        app.close()
