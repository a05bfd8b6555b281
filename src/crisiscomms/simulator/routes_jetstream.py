"""Simulated jetstream push endpoint (not written yet)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def jetstream_routes() -> list[BaseRoute]:
    return []
