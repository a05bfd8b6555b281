"""Paging the on-call team (stub: filled in by issue 13's notifications work)."""

from __future__ import annotations

from typing import Any

from crisiscomms.services.runloop import Chore


def build_notice_chores(app: Any) -> list[Chore]:
    """The watcher's notification chores for this deployment (none until configured)."""
    return []
