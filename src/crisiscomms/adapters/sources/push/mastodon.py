"""Push from mastodon (not written yet: builds no connection)."""

from __future__ import annotations

from collections.abc import Sequence

from crisiscomms.adapters.sources.push.base import PushConnection, PushContext
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import SourceKind

KINDS: tuple[SourceKind, ...] = ()  # the source kinds this module pushes for, once it does


def build(sources: Sequence[SourceConfig], ctx: PushContext) -> list[PushConnection]:
    """The connections for ``sources`` (all of the catalogue's; pick your kinds)."""
    return []
