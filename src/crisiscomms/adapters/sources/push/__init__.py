"""Push sources: streaming connections beside polling (see ``base.PushConnection``).

* ``mastodon``: the Mastodon streaming API (the home timeline of a reader account that
  follows the source accounts);
* ``jetstream``: Bluesky Jetstream, filtered to the sources' DIDs;
* ``websub``: WebSub for feeds that advertise a hub (needs a public callback URL; optional).

Each connection only rings the watcher's doorbell: the source is then polled at once
through its ordinary adapter (one path for the cursor, exactly-once and the checks), and
every (re)connection rings all its sources (the catch-up after a gap).
"""

from __future__ import annotations

from collections.abc import Sequence

from crisiscomms.adapters.sources.push import jetstream, mastodon, websub
from crisiscomms.adapters.sources.push.base import PushConnection, PushContext, describe
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import SourceKind

__all__ = ["PUSH_KINDS", "PushConnection", "PushContext", "build_push_listeners", "describe"]

_MODULES = (mastodon, jetstream, websub)
PUSH_KINDS: frozenset[SourceKind] = frozenset(k for m in _MODULES for k in m.KINDS)


def build_push_listeners(sources: Sequence[SourceConfig],
                         ctx: PushContext) -> list[PushConnection]:
    """Every push connection the catalogue's sources and the settings allow (none when push
    is turned off). Keys are unique; a connection's sources are catalogue ids."""
    if not ctx.settings.enabled:
        return []
    out: list[PushConnection] = []
    for module in _MODULES:
        out += module.build(sources, ctx)
    return out
