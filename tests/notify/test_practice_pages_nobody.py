"""`make practice` (`crisiscomms simulate --watch`) is a rehearsal: it must never page the real
on-call team nor sign its audit trail with the real audit key, whatever the environment or the
.env of the shell that runs it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crisiscomms.drill import practice
from crisiscomms.services.notices import build_notice_chores

ROOT = Path(__file__).resolve().parents[2]
ESSEX = ROOT / "playbooks" / "drills" / "essex-flood.yaml"


def test_a_practice_run_builds_no_notice_chore_and_holds_no_audit_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISCOMMS_NOTIFY_URLS", "json://127.0.0.1:9/on-call-team")
    monkeypatch.setenv("CRISISCOMMS_AUDIT_KEY", "the-real-service-audit-key-0123456789")
    seen: dict[str, Any] = {}

    async def fake_watch(app: Any, **_: Any) -> None:
        seen["chores"] = build_notice_chores(app)
        seen["notify_urls"] = app.settings.notify_urls
        seen["audit_key"] = app.settings.audit_key

    monkeypatch.setattr(practice, "run_watch", fake_watch)
    practice.run_practice(ESSEX, tmp_path / "practice", every_seconds=1, poll_seconds=1,
                          tick_seconds=0.25, max_ticks=1)
    assert seen == {"chores": [], "notify_urls": None, "audit_key": None}
