"""Simulated mastodon_stream push endpoint (not written yet)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def mastodon_stream_routes() -> list[BaseRoute]:
    return []
