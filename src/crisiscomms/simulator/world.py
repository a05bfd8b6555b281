"""The simulator's in-memory world: scripted source items, our accounts' posts, quotas, faults.

Everything is keyed to an injected ``Clock`` (simulated time): an item scripted ``at`` a time
is visible once ``clock.now() >= at``. One re-entrant lock guards all state, because the
server thread and the test (or drill) thread touch it concurrently; route handlers that do a
read-modify-write take ``world.lock`` themselves.

Kinds of scripted items and their identity key (used by ``edit_item``/``remove_item``):

    rss        guid (else link, else title)   served as RSS 2.0 and as Atom
    cap        identifier                      Atom index + one CAP 1.2 document per alert
    x          id (generated when absent)      source_id is the numeric X user id
    mastodon   id (generated when absent)      source_id is the account's acct
    bluesky    rkey (generated when absent)    source_id is the handle
    ea-floods  floodAreaID                     source_id is only a label; filter by county
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crisiscomms.domain.clock import utc
from crisiscomms.ports import Clock
from crisiscomms.simulator.ids import did_for, mastodon_id, numeric_id, tid, x_snowflake
from crisiscomms.simulator.quotas import Quota, QuotaBook, QuotaDecision
from crisiscomms.simulator.records import (
    FaultRoll,
    Faults,
    RequestRecord,
    SimPost,
    VisibleItem,
    XUser,
)

__all__ = [
    "KINDS",
    "FaultRoll",
    "Faults",
    "RequestRecord",
    "SimPost",
    "VisibleItem",
    "World",
    "XUser",
]

KINDS = ("rss", "cap", "x", "mastodon", "bluesky", "ea-floods")
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "rss": ("guid", "link", "title"),
    "cap": ("identifier",),
    "x": ("id",),
    "mastodon": ("id",),
    "bluesky": ("rkey", "id"),
    "ea-floods": ("floodAreaID",),
}


@dataclass(slots=True)
class _Version:
    at: datetime
    seq: int
    item: dict[str, Any] | None


@dataclass
class _Accounts:
    """Our own accounts, as the simulator presents them."""

    x_me: XUser
    mastodon_acct: str
    mastodon_id: str
    bluesky_handle: str
    bluesky_did: str
    x_users: dict[str, XUser] = field(default_factory=dict)


class World:
    """All simulator state. Thread-safe; read the clock through ``now()``."""

    def __init__(
        self,
        clock: Clock,
        *,
        x_me_id: str = "990001",
        x_me_username: str = "nhs_comms",
        mastodon_acct: str = "nhscomms",
        bluesky_handle: str = "nhscomms.bsky.social",
        quotas: Mapping[str, Quota] | None = None,
    ) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.accounts = _Accounts(
            x_me=XUser(x_me_id, x_me_username, "NHS Comms"),
            mastodon_acct=mastodon_acct,
            mastodon_id=numeric_id(mastodon_acct),
            bluesky_handle=bluesky_handle,
            bluesky_did=did_for(bluesky_handle),
        )
        self.accounts.x_users[x_me_id] = self.accounts.x_me
        # What a second retweet of the same tweet returns: the v2 behaviour is undocumented
        # (platform-facts.md), so drills can choose. 403 = "You have already retweeted".
        self.x_repeat_retweet_status = 403
        # Platform-specific mutable state, owned by the route modules (use under ``lock``).
        self.state: dict[str, Any] = {}
        self._items: dict[tuple[str, str], dict[str, list[_Version]]] = {}
        self._posts: list[SimPost] = []
        self._accept_hook: Callable[[SimPost], None] | None = None
        self._log: list[RequestRecord] = []
        self._quotas = QuotaBook(dict(quotas) if quotas is not None else None)
        self._faults = Faults()
        self._burst_history: list[tuple[str, datetime, datetime]] = []
        self._rng = random.Random(0)
        self._seq = 0
        self._items_version = 0  # bumped by every add, edit and removal of a scripted item
        self._valid_tokens: dict[str, frozenset[str]] = {}

    # -- time and sequence ----------------------------------------------------------------

    def now(self) -> datetime:
        """Simulated time (aware UTC)."""
        return utc(self.clock.now())

    def next_seq(self) -> int:
        """A process-wide increasing number for ids and ordering."""
        with self.lock:
            self._seq += 1
            return self._seq

    # -- scripted source items ------------------------------------------------------------

    def add_item(self, source_id: str, kind: str, at: datetime, item: Mapping[str, Any]) -> str:
        """Script ``item`` to appear on ``source_id`` at simulated time ``at``; returns its key.

        Adding an existing key again replaces it from ``at`` (a re-add after a removal, or
        a wholesale edit). ``kind`` "atom" is the same store as "rss".
        """
        kind = _kind(kind)
        at = utc(at)
        data = dict(item)
        with self.lock:
            seq = self.next_seq()
            if kind == "x":
                data.setdefault("id", x_snowflake(at, seq))
                self._ensure_x_user(source_id, data)
            elif kind == "mastodon":
                data.setdefault("id", mastodon_id(at, seq))
            elif kind == "bluesky" and not any(data.get(f) for f in ("rkey", "id")):
                data["rkey"] = tid(at, seq)
            key = _item_key(kind, data)
            versions = self._items.setdefault((kind, source_id), {}).setdefault(key, [])
            versions.append(_Version(at, seq, data))
            self._items_version += 1
            versions.sort(key=lambda v: (v.at, v.seq))
            return key

    def edit_item(
        self,
        source_id: str,
        kind: str,
        key: str,
        changes: Mapping[str, Any],
        *,
        at: datetime | None = None,
    ) -> None:
        """From ``at`` (default: now), the item shows ``changes`` merged over its last version."""
        kind = _kind(kind)
        with self.lock:
            versions = self._versions(source_id, kind, key)
            base = next((v.item for v in reversed(versions) if v.item is not None), {})
            merged = {**base, **changes}
            versions.append(_Version(utc(at) if at else self.now(), self.next_seq(), merged))
            self._items_version += 1
            versions.sort(key=lambda v: (v.at, v.seq))

    def remove_item(
        self, source_id: str, kind: str, key: str, *, at: datetime | None = None
    ) -> None:
        """From ``at`` (default: now), the item is gone from the source (re-add with add_item)."""
        kind = _kind(kind)
        with self.lock:
            versions = self._versions(source_id, kind, key)
            versions.append(_Version(utc(at) if at else self.now(), self.next_seq(), None))
            self._items_version += 1
            versions.sort(key=lambda v: (v.at, v.seq))

    def _versions(self, source_id: str, kind: str, key: str) -> list[_Version]:
        try:
            return self._items[(kind, source_id)][key]
        except KeyError:
            raise KeyError(f"no {kind} item {key!r} on source {source_id!r}") from None

    def visible_items(self, kind: str, source_id: str | None = None) -> list[VisibleItem]:
        """Items visible now (on one source, or all sources of ``kind``), newest first."""
        kind = _kind(kind)
        now = self.now()
        out: list[VisibleItem] = []
        with self.lock:
            for (k, sid), by_key in self._items.items():
                if k != kind or (source_id is not None and sid != source_id):
                    continue
                for key, versions in by_key.items():
                    seen = _visible_version(versions, now)
                    if seen is not None:
                        first_at, changed_at, item = seen
                        out.append(VisibleItem(sid, kind, key, dict(item), first_at, changed_at))
        out.sort(key=lambda v: (v.first_at, v.key), reverse=True)
        return out

    def items_version(self) -> int:
        """A number that changes whenever a scripted item is added, edited or removed: with
        ``last_changed``, what a source shows now is the same as before while both are (a
        feed's rendering may be kept)."""
        with self.lock:
            return self._items_version

    def last_changed(self, kind: str, source_id: str) -> datetime | None:
        """The latest simulated instant (<= now) at which anything on this source changed."""
        now = self.now()
        with self.lock:
            by_key = self._items.get((_kind(kind), source_id), {})
            times = [v.at for versions in by_key.values() for v in versions if v.at <= now]
        return max(times) if times else None

    def known_sources(self, kind: str) -> list[str]:
        """Source ids with anything scripted for ``kind``."""
        kind = _kind(kind)
        with self.lock:
            return sorted({sid for k, sid in self._items if k == kind})

    # -- accounts ---------------------------------------------------------------------------

    def add_x_user(self, user_id: str, username: str, name: str = "") -> XUser:
        """Register an X account (sources are pinned by numeric id; handles may change)."""
        user = XUser(str(user_id), username, name or username)
        with self.lock:
            self.accounts.x_users[user.id] = user
        return user

    def x_user(self, id_or_username: str) -> XUser | None:
        """Look an X account up by numeric id or (case-insensitive) username."""
        needle = id_or_username.lstrip("@").lower()
        with self.lock:
            for user in self.accounts.x_users.values():
                if user.id == needle or user.username.lower() == needle:
                    return user
        return None

    def _ensure_x_user(self, source_id: str, item: Mapping[str, Any]) -> None:
        if source_id not in self.accounts.x_users:
            username = str(item.get("username") or f"user{source_id}")
            self.accounts.x_users[source_id] = XUser(source_id, username, username)

    # -- tokens ---------------------------------------------------------------------------

    def set_valid_tokens(self, platform: str, tokens: Iterable[str] | None) -> None:
        """Accept only ``tokens`` on ``platform`` (``None``: any non-empty token, the default)."""
        with self.lock:
            if tokens is None:
                self._valid_tokens.pop(platform, None)
            else:
                self._valid_tokens[platform] = frozenset(tokens)

    def token_ok(self, platform: str, token: str) -> bool:
        """Whether a bearer/access token is accepted on ``platform``."""
        if not token:
            return False
        with self.lock:
            allowed = self._valid_tokens.get(platform)
        return allowed is None or token in allowed

    # -- our posts ----------------------------------------------------------------------

    def record_post(self, post: SimPost) -> SimPost:
        """Remember an accepted post (route handlers call this under ``lock``), then run the
        accept hook, if one is set, before the client can see the answer."""
        with self.lock:
            self._posts.append(post)
            hook = self._accept_hook
        if hook is not None:
            hook(post)
        return post

    def set_accept_hook(self, hook: Callable[[SimPost], None] | None) -> None:
        """Run ``hook(post)`` each time a post is accepted, before the response is sent: the
        chaos tests kill the worker there, between "the platform accepted" and "we recorded"."""
        with self.lock:
            self._accept_hook = hook

    @property
    def posts(self) -> list[SimPost]:
        """A snapshot of every accepted post, in order of receipt."""
        with self.lock:
            return list(self._posts)

    def posts_on(self, platform: str) -> list[SimPost]:
        """Accepted posts on one platform, in order of receipt."""
        return [p for p in self.posts if p.platform == platform]

    def duplicates(self) -> list[list[SimPost]]:
        """Groups of posts that repeat each other.

        Native amplifications (retweet/boost/repost) repeat when platform, channel, kind and
        ``ref`` match; posts and quotes when platform, channel and text (stripped) match.
        """
        groups: dict[tuple[str, ...], list[SimPost]] = {}
        for post in self.posts:
            if post.kind in ("retweet", "boost", "repost"):
                key: tuple[str, ...] = (post.platform, post.channel, post.kind, post.ref)
            else:
                key = (post.platform, post.channel, "text", post.text.strip())
            groups.setdefault(key, []).append(post)
        return [g for g in groups.values() if len(g) > 1]

    # -- quotas -------------------------------------------------------------------------

    def set_quota(self, key: str, limit: int | None, window: timedelta | None = None) -> None:
        """Set (or with ``limit=None`` remove) the quota ``key`` (see ``quotas.DEFAULT_QUOTAS``)."""
        with self.lock:
            if limit is None:
                self._quotas.set(key, None)
            else:
                current = self._quotas.get(key)
                span = window or (current.window if current else timedelta(minutes=15))
                self._quotas.set(key, Quota(limit, span))

    def spend(self, key: str, cost: int = 1) -> QuotaDecision | None:
        """Spend from quota ``key`` at simulated now; ``None`` when it has no quota."""
        with self.lock:
            return self._quotas.spend(key, self.now(), cost)

    def peek_quota(self, key: str) -> QuotaDecision | None:
        """The state of quota ``key`` without spending."""
        with self.lock:
            return self._quotas.peek(key, self.now())

    # -- faults ---------------------------------------------------------------------------

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the fault configuration (``None`` clears it) and reseed its generator."""
        with self.lock:
            self._faults = faults or Faults()
            self._rng = random.Random(self._faults.seed)
            self._burst_history.extend(self._faults.burst_429)

    @property
    def burst_history(self) -> list[tuple[str, datetime, datetime]]:
        """Every 429 burst window ever configured, even after the faults were cleared."""
        with self.lock:
            return list(self._burst_history)

    @property
    def faults(self) -> Faults:
        """The current fault configuration."""
        with self.lock:
            return self._faults

    def roll_faults(self, method: str, path: str) -> FaultRoll:
        """Decide the random faults for one request (deterministic for a given seed)."""
        with self.lock:
            f = self._faults
            if f.paths and not any(path.startswith(p) for p in f.paths):
                return FaultRoll(False, False, False, 0.0)
            # Always draw three numbers so one rate does not shift the others' sequence.
            r_drop, r_error, r_hang = (self._rng.random() for _ in range(3))
            # A fourth only when slow accepts are asked for (older seeds replay unchanged).
            slow_accept = f.slow_accept_rate > 0 and method == "POST" and \
                self._rng.random() < f.slow_accept_rate
            accept_5xx = f.accept_then_5xx_rate > 0 and method == "POST" and \
                self._rng.random() < f.accept_then_5xx_rate
        return FaultRoll(
            drop=r_drop < f.drop_rate,
            error=r_error < f.error_rate_5xx,
            hang=method == "POST" and r_hang < f.accept_then_timeout_rate,
            slow_seconds=f.slow_seconds,
            slow_accept=slow_accept,
            accept_5xx=accept_5xx,
        )

    def burst_reset(self, platform: str, method: str = "") -> datetime | None:
        """End of the ``burst_429`` window covering now on ``platform``, if any
        (only for ``Faults.burst_methods`` when that is set, e.g. POST for write quotas)."""
        now = self.now()
        faults = self.faults
        if faults.burst_methods and method and method.upper() not in faults.burst_methods:
            return None
        for name, start, end in faults.burst_429:
            if name == platform and start <= now < end:
                return end
        return None

    # -- request log ----------------------------------------------------------------------

    def log_request(self, record: RequestRecord) -> None:
        """Append one record to the request log."""
        with self.lock:
            self._log.append(record)

    @property
    def request_log(self) -> list[RequestRecord]:
        """A snapshot of every request seen, in order."""
        with self.lock:
            return list(self._log)

    def rate_limit_violations(self) -> list[RequestRecord]:
        """Requests sent to a quota after it refused with a reset that had not yet passed."""
        blocked: dict[str, datetime] = {}
        bad: list[RequestRecord] = []
        for rec in self.request_log:
            until = blocked.get(rec.quota_key) if rec.quota_key else None
            if until is not None and rec.at < until:
                bad.append(rec)
            if rec.reset_at is not None and rec.quota_key:
                blocked[rec.quota_key] = max(rec.reset_at, blocked.get(rec.quota_key, rec.reset_at))
        return bad


def _kind(kind: str) -> str:
    kind = "rss" if kind == "atom" else kind
    if kind not in KINDS:
        raise ValueError(f"unknown simulator item kind {kind!r}; expected one of {KINDS}")
    return kind


def _item_key(kind: str, item: Mapping[str, Any]) -> str:
    for name in _KEY_FIELDS[kind]:
        value = item.get(name)
        if value not in (None, ""):
            return str(value)
    raise ValueError(f"{kind} item needs one of {_KEY_FIELDS[kind]}")


def _visible_version(
    versions: list[_Version], now: datetime
) -> tuple[datetime, datetime, dict[str, Any]] | None:
    first_at: datetime | None = None
    current: _Version | None = None
    for version in versions:
        if version.at > now:
            break
        if version.item is None:
            first_at, current = None, None
        else:
            first_at = first_at or version.at
            current = version
    if current is None or current.item is None or first_at is None:
        return None
    return first_at, current.at, current.item
