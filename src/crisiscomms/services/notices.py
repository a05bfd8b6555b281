"""Paging the on-call team: what needs a person, told once, with the command to act.

The watcher's ``NoticeChore`` looks at the store every ``notify.check_seconds`` and pages
(through a ``Notifier``, Apprise in production) when:

- items need approval, or need review (the outcome of a send is unknown);
- a source has failed ``polling.failure_alert_after`` polls in a row;
- a channel cannot post (``problem``) or is paused by its platform (``paused_until``);
- an incident is activated or stood down (read from the audit trail, whoever did it, with
  the audit head: count and hash);
- a playbook change was refused (audit ``playbooks.reload_refused``: file, line, key, error).

Each condition is paged once while it lasts, reminded at most every ``remind_minutes``
(a condition that clears and comes back within that time is not paged anew: a flapping
source pages once), and at most ``max_per_window`` pages go out per ``window_minutes``, the
last of them a digest of the rest. Of several watchers on one database only one pages: of
the live watchers that can page (their heartbeat says so), the one that started first. Every
page is recorded in the audit trail (``notice.sent`` / ``notice.failed``: what was said, to
which targets by number and kind, never a URL), which is where a new leader learns what was
already paged and where ``status_lines`` reads the last page and any failure.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from crisiscomms.domain.audit import ChainReport
from crisiscomms.domain.clock import shown
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.models import (
    AuditEvent,
    Incident,
    ItemState,
    NewAuditEvent,
    OutboxItem,
    WatcherInfo,
)
from crisiscomms.logs import get_logger
from crisiscomms.ports import Store

if TYPE_CHECKING:
    # The run loop brings the watcher and the dispatcher: `status` reads this module.
    from crisiscomms.services.runloop import Chore, RunLoop
    from crisiscomms.settings import NotifySettings

log = get_logger(__name__)

URGENT, HIGH, INFO = "urgent", "high", "info"
_RANK = {URGENT: 0, HIGH: 1, INFO: 2}
LEADER_LIVE_SECONDS = 60.0  # a watcher heartbeats every 10 s: a minute of silence, gone
STATUS_LOOKBACK = timedelta(days=7)
EVENT_ACTIONS = ("incident.activated", "incident.deactivated", "playbooks.reload_refused")
MAX_LINES = 12  # items listed in one page; the rest counted


class Notifier(Protocol):
    """Where pages go (``adapters.notify.AppriseNotifier``). ``send`` blocks; it returns
    ``(target label, delivered, why not)`` for each target and never raises for a target."""

    @property
    def labels(self) -> list[str]: ...

    def send(self, title: str, body: str, urgency: str) -> list[tuple[str, bool, str]]: ...


@dataclass(frozen=True)
class Condition:
    """Something a person must know: ``key`` identifies it for deduplication."""

    key: str
    kind: str  # approval | review | source | channel | incident | playbooks
    urgency: str
    line: str  # what, for a list of such conditions
    commands: tuple[str, ...] = ()
    detail: str = ""  # more, for a page of its own (an activation's audit head)
    level: bool = True  # a state that lasts (else an event from the audit trail)
    title: str = ""  # the title of a page of its own


@dataclass(frozen=True)
class Notice:
    """One page."""

    kind: str
    urgency: str
    title: str
    body: str
    keys: tuple[str, ...]


# -- what needs a person -----------------------------------------------------------------------

def current_conditions(store: Store, catalog: Catalog, now: datetime, *,
                       failure_alert_after: int) -> dict[str, Condition]:
    """The lasting conditions now: items waiting for a person, failing sources, channels."""
    tz = catalog.policy.tz
    active = store.active_incidents()
    crisis_ids = {i.id for i in active}
    crisis_sources = {s.source for i in active if i.playbook in catalog.playbooks
                      for s in catalog.playbooks[i.playbook].sources}
    crisis_channels = {c.channel for i in active if i.playbook in catalog.playbooks
                       for c in catalog.playbooks[i.playbook].channels}
    out: dict[str, Condition] = {}
    for item in store.items(states=[ItemState.NEEDS_APPROVAL]):
        crisis = item.incident_id in crisis_ids
        out[f"approval:{item.id}"] = Condition(
            f"approval:{item.id}", "approval", URGENT if crisis else HIGH,
            f"item {item.id} on {item.channel_id}{_incident(item)}, waiting since "
            f"{shown(item.created_at, tz)}: {_snippet(item)}",
            (f'crisiscomms queue approve {item.id} --reason "..."',
             f'crisiscomms queue reject {item.id} --reason "..."',
             f"crisiscomms queue show {item.id}"))
    for item in store.items(states=[ItemState.NEEDS_REVIEW]):
        crisis = item.incident_id in crisis_ids
        out[f"review:{item.id}"] = Condition(
            f"review:{item.id}", "review", URGENT if crisis else HIGH,
            f"item {item.id} on {item.channel_id}{_incident(item)}: did it go out? "
            f"{item.reason or 'the platform could not tell'}: {_snippet(item)}",
            (f"crisiscomms queue show {item.id}",
             f"crisiscomms queue retry {item.id}   (asks the platform before any resend)",
             f'crisiscomms queue reject {item.id} --reason "..."   (if it did go out)'))
    for st in store.failing_sources(failure_alert_after):
        out[f"source:{st.source_id}"] = Condition(
            f"source:{st.source_id}", "source",
            URGENT if st.source_id in crisis_sources else HIGH,
            f"source {st.source_id} failing: {st.failures} polls in a row "
            f"({st.last_error_class or 'error'}: {(st.last_error or '')[:160]}); "
            f"last good poll {shown(st.last_ok_at, tz)}",
            ("crisiscomms status",
             "crisiscomms playbooks validate   (after fixing its entry in sources.yaml)"))
    for cid, ch in sorted(store.channel_states().items()):
        urgency = URGENT if cid in crisis_channels else HIGH
        if ch.problem:
            out[f"channel:{cid}:problem"] = Condition(
                f"channel:{cid}:problem", "channel", urgency,
                f"channel {cid} cannot post: {ch.problem[:200]}",
                ("crisiscomms status",
                 "sudo systemctl restart crisiscomms   (after setting the credential)",
                 f"crisiscomms queue list --state failed --channel {cid}   "
                 "(then 'crisiscomms queue retry ID')"))
        if ch.paused_until is not None and ch.paused_until > now:
            out[f"channel:{cid}:paused"] = Condition(
                f"channel:{cid}:paused", "channel", urgency if active else INFO,
                f"channel {cid} paused by its platform until {shown(ch.paused_until, tz)}"
                + (f": {ch.last_error[:160]}" if ch.last_error else "")
                + " (its items go out after; nothing to do unless it lasts)",
                ("crisiscomms status",))
    return out


def event_conditions(store: Store, catalog: Catalog, events: Iterable[AuditEvent]
                     ) -> list[Condition]:
    """Pages for audit events: activations, stand-downs and refused playbook changes."""
    tz = catalog.policy.tz
    out: list[Condition] = []
    active = bool(store.active_incidents())
    for ev in events:
        if ev.action in ("incident.activated", "incident.deactivated"):
            out.append(_incident_condition(store, catalog, ev))
        elif ev.action == "playbooks.reload_refused":
            d = ev.details
            where = ", ".join(f"{k} {d[k]}" for k in ("file", "line", "key")
                              if d.get(k) not in (None, ""))
            key = f"playbooks:{d.get('file')}:{d.get('line')}:{d.get('key')}:{d.get('error')}"
            out.append(Condition(
                key, "playbooks", URGENT if active else HIGH,
                f"playbook change refused at {shown(ev.at, tz)} ({where}): "
                f"{str(d.get('error') or ev.reason)[:300]}; the watcher keeps running the "
                "last good configuration",
                ("crisiscomms playbooks validate   (fix the file; the watcher reloads it on "
                 "its next cycle)", "crisiscomms status"), level=False,
                title=f"playbook change refused ({where or 'playbooks'})"))
    return out


def _incident_condition(store: Store, catalog: Catalog, ev: AuditEvent) -> Condition:
    tz = catalog.policy.tz
    incident_id = ev.subject.split(":", 1)[1] if ":" in ev.subject else ev.subject
    inc: Incident | None
    try:
        inc = store.get_incident(int(incident_id))
    except Exception:
        inc = None
    head = store.verify_audit()
    chain = (f"audit head {head.head} ({head.count} events; keep a copy: "
             f"crisiscomms audit verify --expect-head {head.head})")
    if not head.ok:
        chain = f"AUDIT CHAIN BROKEN: {head.problem} (head {head.head})"
    else:
        caveats = chain_caveats(head)
        if not caveats and not head.fully_checked:
            caveats = ["NOT fully checked here (crisiscomms audit verify says why)"]
        chain += "".join(f" - {c}" for c in caveats)
    playbook = ev.details.get("playbook") or (inc.playbook if inc else "?")
    if ev.action == "incident.activated":
        line = (f"incident {incident_id} ACTIVATED ({playbook}) by {ev.who} at "
                f"{shown(ev.at, tz)}: {ev.reason}")
        detail = "\n".join([
            f"lead: {ev.details.get('lead') or (inc.lead if inc else '?')}",
            f"hashtags: {' '.join(ev.details.get('hashtags') or (inc.hashtags if inc else []))}",
            f"channels: {', '.join(ev.details.get('channels') or []) or '-'}",
            chain])
        commands = ("crisiscomms status",
                    "crisiscomms queue list --state needs_approval",
                    f'crisiscomms deactivate {incident_id} --reason "..."   (to stand down)')
        return Condition(f"incident:{incident_id}:activated", "incident", URGENT, line,
                         commands, detail, level=False,
                         title=f"incident {incident_id} ACTIVATED ({playbook}) by {ev.who}")
    line = (f"incident {incident_id} STOOD DOWN ({playbook}) by {ev.who} at "
            f"{shown(ev.at, tz)}: {ev.reason}")
    return Condition(f"incident:{incident_id}:deactivated", "incident", HIGH, line,
                     (f"crisiscomms report {incident_id} --output incident-{incident_id}.html",
                      "crisiscomms status"), chain, level=False,
                     title=f"incident {incident_id} STOOD DOWN ({playbook}) by {ev.who}")


def chain_caveats(head: ChainReport) -> list[str]:
    """Why an intact chain is not fully trusted here, by cause, for a page: no key here, the
    newest events not yet sealed by the key, time going backwards, an older version writing."""
    from crisiscomms.services.audit_seal import SEAL_SECONDS

    out: list[str] = []
    if head.unchecked:
        out.append(f"NOT fully checked here: {_n(head.unchecked, 'keyed event')} could not be "
                   "checked (this watcher lacks CRISISCOMMS_AUDIT_KEY)")
    if head.unprotected:
        out.append(f"{_last(head.unprotected)} not yet covered by the audit key (the watcher "
                   f"holding CRISISCOMMS_AUDIT_KEY seals them within {SEAL_SECONDS:g} s: check "
                   "again then with crisiscomms audit verify)")
    if head.backwards:
        seqs = ", ".join(str(s) for s in head.backwards[:5])
        more = f" and {len(head.backwards) - 5} more" if len(head.backwards) > 5 else ""
        out.append(f"time went backwards at event{'s' if len(head.backwards) > 1 else ''} "
                   f"{seqs}{more} (a clock stepped back, or events were rewritten: "
                   "crisiscomms audit verify lists them)")
    if head.old_tail:
        out.append(f"{_last(head.old_tail)} in the old format (a process of an older version is "
                   "still writing)")
    return out


def _last(n: int) -> str:
    return "the last event is" if n == 1 else f"the last {n} events are"


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _incident(item: OutboxItem) -> str:
    return f" (incident {item.incident_id})" if item.incident_id is not None else ""


def _snippet(item: OutboxItem) -> str:
    text = " ".join(item.body.split())
    return f'"{text[:100]}{"..." if len(text) > 100 else ""}"'


# -- composing pages ------------------------------------------------------------------------

_TITLES = {
    "approval": ("{n} item needs approval", "{n} items need approval"),
    "review": ("{n} item needs review", "{n} items need review"),
    "source": ("{n} source failing", "{n} sources failing"),
    "channel": ("{n} channel problem", "{n} channel problems"),
    "playbooks": ("playbook change refused", "{n} playbook changes refused"),
}


def compose(kind: str, conditions: Sequence[Condition], *, reminder: bool = False,
            recovered: bool = False) -> Notice:
    """One page for conditions of one kind (or a reminder of several kinds)."""
    urgency = min((c.urgency for c in conditions), key=_RANK.__getitem__)
    n = len(conditions)
    if recovered:
        title = f"recovered: {', '.join(c.line.split(':', 1)[0] for c in conditions)}"
        urgency = INFO
    elif reminder:
        title = f"still open: {n} condition{'s' if n > 1 else ''} (reminder)"
    elif n == 1 and conditions[0].title:
        title = conditions[0].title
    else:
        one, many = _TITLES.get(kind, ("{n} notice", "{n} notices"))
        title = (one if n == 1 else many).format(n=n)
    lines: list[str] = []
    for c in conditions[:MAX_LINES]:
        lines.append(f"- {c.line}")
        if c.detail:
            lines += [f"  {d}" for d in c.detail.splitlines()]
        if not recovered:
            lines += [f"    $ {cmd}" for cmd in c.commands]
    if n > MAX_LINES:
        lines.append(f"- and {n - MAX_LINES} more: crisiscomms queue list / crisiscomms status")
    head = f"[{urgency.upper()}] crisiscomms: {title}"
    body = f"urgency: {urgency}\n" + "\n".join(lines)
    return Notice("recovered" if recovered else "reminder" if reminder else kind, urgency,
                  head, body, tuple(c.key for c in conditions))


def digest(notices: Sequence[Notice], window_minutes: float) -> Notice:
    """The rest, in one page, when the rate limit is reached."""
    urgency = min((n.urgency for n in notices), key=_RANK.__getitem__)
    body = (f"urgency: {urgency}\nrate limit reached (pages per {window_minutes:g} minutes): "
            f"{len(notices)} more in this digest\n\n"
            + "\n\n".join(f"{n.title}\n{n.body.split(chr(10), 1)[-1]}" for n in notices))
    return Notice("digest", urgency,
                  f"[{urgency.upper()}] crisiscomms: digest of {len(notices)} more notices",
                  body, tuple(k for n in notices for k in n.keys))


# -- who pages ------------------------------------------------------------------------------

def is_leader(watchers: Sequence[WatcherInfo], me: WatcherInfo, now: datetime) -> bool:
    """Of the live watchers on this database that can page (their heartbeat says so: notify
    URLs, the real clock) and this one (the caller pages), the one that started first (then
    the smallest worker id) pages; the others stay quiet. Deterministic: every watcher
    reading the same heartbeats reaches the same answer, and a newcomer never takes over
    from a live leader. A watcher that cannot page (an officer's shell without the notify
    URLs, a drill) is never elected, however early it started."""
    live = [w for w in watchers if w.worker_id != me.worker_id and w.pages and
            (now - w.last_seen_at).total_seconds() <= LEADER_LIVE_SECONDS]
    first = min([*live, me], key=lambda w: (w.started_at, w.worker_id))
    return first.worker_id == me.worker_id


# -- the chore ------------------------------------------------------------------------------

@dataclass
class NoticeState:
    """What this watcher has paged (restored from the audit trail when it becomes leader)."""

    last_paged: dict[str, datetime] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)
    pending: dict[str, Condition] = field(default_factory=dict)  # events not yet paged
    sent_at: deque[datetime] = field(default_factory=deque)
    cursor: int | None = None  # the last audit seq read for events
    retry_after: datetime | None = None
    limited_logged: bool = False


@dataclass
class NoticeChore:
    """The watcher's pager (a run-loop ``Chore``)."""

    notifier: Notifier
    settings: NotifySettings
    failure_alert_after: int
    name: str = "notices"
    interval_seconds: float = 10.0
    state: NoticeState = field(default_factory=NoticeState)
    leader: bool = False

    async def run(self, loop: RunLoop, now: datetime) -> None:
        store, catalog = loop.store, loop.watcher.catalog
        if not is_leader(store.watchers(), loop.identity, now):
            if self.leader:
                log.info("notify.standing_by", worker=loop.identity.worker_id)
            self.leader = False
            return
        if not self.leader:  # (again) the one that pages: start from the audit trail
            self.state = NoticeState()
            self.restore(store, now)
            self.leader = True
        from crisiscomms.services.runloop import in_daemon_thread

        notices = self.plan(store, catalog, now)
        for notice in notices:
            outcomes = await in_daemon_thread(functools.partial(
                self.notifier.send, notice.title, notice.body, notice.urgency))
            self.record(store, notice, outcomes, loop.clock.now())

    # -- state -------------------------------------------------------------------------------
    @property
    def remind(self) -> timedelta:
        return timedelta(minutes=self.settings.remind_minutes)

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.settings.window_minutes)

    def restore(self, store: Store, now: datetime) -> None:
        """Learn from the audit trail what was paged lately (by any watcher), so a restart
        or a new leader does not page again what was just paged."""
        st = self.state
        since = now - max(self.remind, self.window)
        for ev in store.audit_events(since=since, action_prefix="notice."):
            if ev.action != "notice.sent":
                continue
            for key in ev.details.get("keys") or []:
                st.last_paged[str(key)] = max(ev.at, st.last_paged.get(str(key), ev.at))
            if ev.at >= now - self.window:
                st.sent_at.append(ev.at)
        # Events (activations, refusals) of the last reminder period are still worth a page
        # unless one was paged already; older ones are history.
        day = self._events(store, now - timedelta(days=1))
        recent = [e for e in day if e.at >= now - self.remind]
        st.cursor = (min(e.seq for e in recent) - 1 if recent
                     else max((e.seq for e in day), default=0))

    def _events(self, store: Store, since: datetime) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        for action in EVENT_ACTIONS:
            out += store.audit_events(since=since, action_prefix=action)
        return sorted((e for e in out if e.action in EVENT_ACTIONS), key=lambda e: e.seq)

    def plan(self, store: Store, catalog: Catalog, now: datetime) -> list[Notice]:
        """The pages to send now (state is updated by ``record`` once they went out)."""
        st = self.state
        if st.retry_after is not None and now < st.retry_after:
            return []
        st.retry_after = None
        failures = self.settings.source_failures or self.failure_alert_after
        current = current_conditions(store, catalog, now, failure_alert_after=failures)
        # New audit events since the cursor (a day back at most: --at drills aside).
        new_events = [e for e in self._events(store, now - timedelta(days=1))
                      if st.cursor is None or e.seq > st.cursor]
        if new_events:
            st.cursor = max(e.seq for e in new_events)
        for c in event_conditions(store, catalog, new_events):
            if not self._recent(c.key, now):
                st.pending[c.key] = c
        fresh: list[Condition] = []
        due: list[Condition] = []
        for key, c in current.items():
            if key in st.open:
                if now - st.last_paged.get(key, now) >= self.remind:
                    due.append(c)
            elif self._recent(key, now):
                st.open.add(key)  # came back within the reminder period: no new page
            else:
                fresh.append(c)
        gone = [k for k in st.open if k not in current]
        recovered: list[Condition] = []
        for key in gone:
            st.open.discard(key)
            if key.startswith(("source:", "channel:")) and not self._recent("ok:" + key, now):
                what = key.split(":")[1]
                kind = key.split(":", 1)[0]
                recovered.append(Condition("ok:" + key, kind, INFO,
                                           f"{kind} {what}: {_recovery(key)}"))
        notices: list[Notice] = []
        for c in sorted(st.pending.values(), key=lambda c: _RANK[c.urgency]):
            notices.append(compose(c.kind, [c]))
        by_kind: dict[str, list[Condition]] = {}
        for c in fresh:
            by_kind.setdefault(c.kind, []).append(c)
        for kind in ("approval", "review", "source", "channel"):
            if by_kind.get(kind):
                notices.append(compose(kind, by_kind[kind]))
        if due:
            notices.append(compose("reminder", due, reminder=True))
        if recovered:
            notices.append(compose("recovered", recovered, recovered=True))
        notices.sort(key=lambda n: _RANK[n.urgency])
        return self._limit(notices, now)

    def _recent(self, key: str, now: datetime) -> bool:
        at = self.state.last_paged.get(key)
        return at is not None and now - at < self.remind

    def _limit(self, notices: list[Notice], now: datetime) -> list[Notice]:
        st = self.state
        while st.sent_at and now - st.sent_at[0] >= self.window:
            st.sent_at.popleft()
        slots = self.settings.max_per_window - len(st.sent_at)
        if not notices:
            st.limited_logged = False
            return []
        if slots <= 0:
            if not st.limited_logged:
                log.warning("notify.rate_limited", waiting=len(notices),
                            per_window=self.settings.max_per_window,
                            window_minutes=self.settings.window_minutes)
                st.limited_logged = True
            return []
        st.limited_logged = False
        if len(notices) <= slots:
            return notices
        return [*notices[:slots - 1], digest(notices[slots - 1:], self.settings.window_minutes)]

    def record(self, store: Store, notice: Notice, outcomes: Sequence[tuple[str, bool, str]],
               now: datetime) -> None:
        """Remember what went out, and write it into the audit trail (no URL in it)."""
        st = self.state
        delivered = [label for label, ok, _ in outcomes if ok]
        failed = [{"target": label, "error": why} for label, ok, why in outcomes if not ok]
        if delivered:
            st.sent_at.append(now)
            for key in notice.keys:
                st.last_paged[key] = now
                st.pending.pop(key, None)
                if not key.startswith(("incident:", "playbooks:", "ok:")):
                    st.open.add(key)
            log.info("notify.sent", kind=notice.kind, urgency=notice.urgency,
                     title=notice.title, targets=delivered)
        else:
            st.retry_after = now + timedelta(seconds=self.settings.retry_seconds)
        if failed:
            log.error("notify.failed", kind=notice.kind, title=notice.title,
                      failed=[f"target {f['target']}: {f['error']}" for f in failed],
                      retry_in_s=None if delivered else self.settings.retry_seconds)
        with store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(
                "watcher", "notice.sent" if delivered else "notice.failed",
                f"notice:{notice.kind}", notice.title, now,
                {"urgency": notice.urgency, "keys": list(notice.keys),
                 "targets_ok": delivered, "targets_failed": failed, "body": notice.body}))
            uow.commit()


def _recovery(key: str) -> str:
    if key.startswith("source:"):
        return "polling again"
    if key.endswith(":paused"):
        return "no longer paused"
    return "can post again"


# -- wiring and status ------------------------------------------------------------------------

def build_notice_chores(app: Any) -> list[Chore]:
    """The watcher's notification chores for this deployment (none until
    ``CRISISCOMMS_NOTIFY_URLS`` names a target)."""
    urls = app.settings.notify_url_list()
    if not urls:
        log.info("notify.off", note="CRISISCOMMS_NOTIFY_URLS is not set: no one is paged")
        return []
    from crisiscomms.domain.clock import SystemClock

    if not isinstance(app.clock, SystemClock):
        log.info("notify.off", note="not on the real clock (a drill, or --at): no one is paged")
        return []
    from crisiscomms.adapters.notify import AppriseNotifier

    notify = app.settings.notify
    notifier = AppriseNotifier(urls, timeout=notify.timeout_seconds)
    log.info("notify.on", targets=notifier.labels)
    return [NoticeChore(notifier=notifier, settings=notify,
                        failure_alert_after=app.settings.polling.failure_alert_after,
                        interval_seconds=notify.check_seconds)]


def send_test_page(notifier: Notifier, tz: Any, now: datetime, who: str,
              message: str) -> list[tuple[str, bool, str]]:
    """``crisiscomms notify test``: one page to every target, now (blocking)."""
    title = "[INFO] crisiscomms: test page"
    body = (f"urgency: info\n{message}\nsent by {who} at {shown(now, tz, seconds=True)} with "
            "'crisiscomms notify test'")
    return notifier.send(title, body, INFO)


def status_data(store: Store, now: datetime) -> dict[str, Any]:
    """Paging as ``status --json`` shows it (times ISO-8601 UTC): the last page, whether the
    latest attempt failed and for which targets, pages in the last 24 hours."""
    from crisiscomms.domain.clock import isoformat

    events = [e for e in store.audit_events(since=now - STATUS_LOOKBACK,
                                            action_prefix="notice.")
              if e.action in ("notice.sent", "notice.failed")]
    sent = [e for e in events if e.action == "notice.sent"]
    failures = [e for e in events if e.details.get("targets_failed")]
    latest = events[-1] if events else None
    return {
        "last_page_at": isoformat(sent[-1].at) if sent else None,
        "last_page": sent[-1].reason if sent else None,
        "last_page_targets": list(sent[-1].details.get("targets_ok") or []) if sent else [],
        "pages_last_24h": sum(1 for e in sent if now - e.at <= timedelta(days=1)),
        "failing": bool(latest and latest.details.get("targets_failed")),
        "last_failure_at": isoformat(failures[-1].at) if failures else None,
        "last_failure": failures[-1].reason if failures else None,
        "last_failure_targets": list(failures[-1].details.get("targets_failed") or [])
        if failures else [],
    }


def status_lines(store: Store, catalog: Catalog, now: datetime) -> list[str]:
    """What ``crisiscomms status`` says about paging: the last page, any failure to page."""
    from crisiscomms.domain.clock import parse_instant

    tz = catalog.policy.tz
    d = status_data(store, now)
    if d["last_page_at"] is None and d["last_failure_at"] is None:
        return ["notifications: no page in the last 7 days (the watcher pages the on-call team "
                "when CRISISCOMMS_NOTIFY_URLS is set)"]
    lines: list[str] = []
    if d["last_page_at"]:
        lines.append(f"notifications: last page {shown(parse_instant(d['last_page_at']), tz)} "
                     f"to target(s) {', '.join(d['last_page_targets'])}: {d['last_page']} "
                     f"({d['pages_last_24h']} in the last 24 h)")
    if d["last_failure_at"]:
        when = shown(parse_instant(d["last_failure_at"]), tz)
        if d["failing"]:
            lines.append(f"notifications FAILING: {when}: {d['last_failure']}")
            lines += [f"  target {f.get('target')}: {f.get('error')}"
                      for f in d["last_failure_targets"]]
        else:
            lines.append(f"notifications: last failure {when} (pages have gone out since)")
    return lines
