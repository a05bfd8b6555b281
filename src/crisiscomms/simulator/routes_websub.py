"""Simulated websub push endpoint (not written yet)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def websub_routes() -> list[BaseRoute]:
    return []
