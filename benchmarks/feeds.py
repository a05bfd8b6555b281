"""The deterministic world of the feed benchmarks: which feed changes at which cycle, when
the change became visible (simulated time), and what each feed says at each cycle.

Shared by the feed server process and the benchmark process, so both agree without
talking: the benchmark only tells the server which cycle it is.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape

START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # cycle 0 (the baseline) polls here
CHANGE_SHARE = 100  # one feed in CHANGE_SHARE changes per cycle (1 %)


def cycle_time(cycle: int, interval: float) -> datetime:
    """When cycle ``cycle`` polls, in simulated time."""
    return START + timedelta(seconds=cycle * interval)


def changed_feeds(feeds: int, cycle: int) -> list[int]:
    """The feeds that publish a new entry during the interval ending at ``cycle`` (1 %)."""
    if cycle < 1:
        return []
    residue = (cycle * 37) % CHANGE_SHARE
    return [i for i in range(feeds) if i % CHANGE_SHARE == residue]


def visible_at(feed: int, cycle: int, interval: float, seed: int) -> datetime:
    """The simulated instant the change became visible: uniform in (t[c-1], t[c]]."""
    u = 1.0 - random.Random(f"{seed}:{feed}:{cycle}").random()  # (0, 1]
    return cycle_time(cycle - 1, interval) + timedelta(seconds=u * interval)


def change_cycles(feed: int, upto: int) -> list[int]:
    """The cycles (1..upto) at which ``feed`` changed."""
    return [c for c in range(1, upto + 1)
            if feed % CHANGE_SHARE == (c * 37) % CHANGE_SHARE]


_LOREM = ("Officers are dealing with flooding on the road between the two junctions; "
          "please avoid the area, allow extra time and follow the advice of crews on scene. "
          "More updates will follow on this page as the situation develops.")


def _entries(feed: int, cycle: int, interval: float, seed: int,
             base: int) -> list[tuple[str, str, str, datetime]]:
    """(guid, title, text, published) newest first."""
    out = []
    for c in change_cycles(feed, cycle):
        at = visible_at(feed, c, interval, seed)
        out.append((f"urn:bench:feed{feed}:c{c}", f"Update {c} from bench feed {feed}",
                    f"New at cycle {c}. {_LOREM}", at))
    for k in range(base):
        at = START - timedelta(hours=k + 1)
        out.append((f"urn:bench:feed{feed}:base{k}", f"Earlier item {k} of bench feed {feed}",
                    f"Background item {k}. {_LOREM}", at))
    out.sort(key=lambda e: e[3], reverse=True)
    return out


def etag(feed: int, cycle: int) -> str:
    """A strong ETag that changes exactly when the feed's content does."""
    last = max(change_cycles(feed, cycle), default=0)
    return f'"bench-{feed}-v{last}"'


def render(feed: int, cycle: int, interval: float, seed: int, base: int,
           url: str) -> tuple[bytes, str]:
    """The feed body and its content type: RSS 2.0 for even feeds, Atom for odd ones."""
    entries = _entries(feed, cycle, interval, seed, base)
    if feed % 2 == 0:
        items = "".join(
            f"<item><title>{escape(t)}</title><link>{escape(url)}#{escape(g)}</link>"
            f"<guid isPermaLink=\"false\">{escape(g)}</guid>"
            f"<pubDate>{format_datetime(at, usegmt=True)}</pubDate>"
            f"<description>{escape(x)}</description></item>"
            for g, t, x, at in entries)
        body = (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
                f"<title>Bench feed {feed}</title><link>{escape(url)}</link>"
                f"<description>Generated feed {feed}</description>{items}</channel></rss>")
        return body.encode(), "application/rss+xml; charset=utf-8"
    updated = entries[0][3] if entries else START
    items = "".join(
        f"<entry><title>{escape(t)}</title><id>{escape(g)}</id>"
        f'<link href="{escape(url)}#{escape(g)}"/>'
        f"<updated>{at.isoformat().replace('+00:00', 'Z')}</updated>"
        f"<published>{at.isoformat().replace('+00:00', 'Z')}</published>"
        f'<summary type="text">{escape(x)}</summary></entry>'
        for g, t, x, at in entries)
    body = (f'<?xml version="1.0" encoding="utf-8"?>'
            f'<feed xmlns="http://www.w3.org/2005/Atom"><title>Bench feed {feed}</title>'
            f"<id>urn:bench:feed{feed}</id><link href=\"{escape(url)}\"/>"
            f"<updated>{updated.isoformat().replace('+00:00', 'Z')}</updated>{items}</feed>")
    return body.encode(), "application/atom+xml; charset=utf-8"
