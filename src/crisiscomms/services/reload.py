"""A running watcher follows its playbooks folder: a changed file is validated and, if the whole
catalogue is valid, used from the next cycle on; an invalid change is refused and the last good
configuration keeps running.

``PlaybooksReloader`` is a run-loop chore. Each run it compares the files' stamps (modification
time and size: cheap); only when a stamp moved does it hash the contents, and only when the
contents differ from the configuration running (or from a change already refused) does it load
the catalogue, strictly. Then:

* first run: ``playbooks.loaded`` records the folder and the SHA-256 of the policy.yaml the
  watcher runs (so does every ``playbooks.reloaded``): the operator check refuses a change made
  with a different policy file (``services.operators.check_policy_file``).
* valid: the source adapters of added or changed sources are built (unchanged ones keep their
  adapters; a source's state, cursor and ETag, is kept as a restart would keep it), and so are
  the publishers of added or changed channels; ``playbooks.reloaded`` is audited (details:
  the changed files); the watcher and the dispatcher take the new configuration at the start
  of their next step (``Watcher.reconfigure``, ``Dispatcher.reconfigure``), never in the
  middle of a poll or a send.
* invalid: an error is logged and ``playbooks.reload_refused`` audited ONCE per distinct
  content (details exactly ``{"file", "line", "key", "error"}``); ``status`` shows it until a
  good change loads (or the files are put back as they were running:
  ``playbooks.reloaded`` with no changed files).

Each watcher on a database follows the folder on its own (one event per watcher per distinct
content): the actor of the events is the watcher's worker id, so ``status`` says which.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import NewAuditEvent, SourceKind, WatcherInfo
from crisiscomms.logs import get_logger
from crisiscomms.ports import Publisher, Source, Store

if TYPE_CHECKING:
    from crisiscomms.services.runloop import RunLoop

log = get_logger(__name__)

LOADED = "playbooks.loaded"
RELOADED = "playbooks.reloaded"
POLICY_FILE = "policy.yaml"
REFUSED = "playbooks.reload_refused"
RELOAD_SECONDS = 2.0  # how often the folder's stamps are looked at


class PlaybookFolder(Protocol):
    """The playbooks folder as the reloader reads it (``adapters.playbooks.PlaybookFiles``)."""

    directory: Path

    def stamp(self) -> Mapping[str, object]: ...

    def digests(self) -> dict[str, str]: ...

    def load(self) -> Catalog: ...

    def locate(self, exc: ConfigError) -> dict[str, Any]:
        """An error of ``load`` as its file, line, key and error."""


def _problem(folder: PlaybookFolder, exc: Exception, changed: Sequence[str]) -> dict[str, Any]:
    """The details of ``playbooks.reload_refused``: exactly file, line, key and error."""
    first = str(folder.directory / changed[0]) if changed else str(folder.directory)
    if isinstance(exc, ConfigError):
        where = folder.locate(exc)
        return {"file": where.get("file") or first, "line": where.get("line"),
                "key": where.get("key"), "error": where.get("error") or str(exc)}
    return {"file": first, "line": None, "key": None,
            "error": f"{type(exc).__name__}: {exc}"[:500]}


@dataclass(frozen=True)
class SourcePlan:
    """Which adapters a reload stops (by key) and which sources need new ones."""

    dropped: set[str]
    to_build: dict[str, Any]


def plan_sources(old: Catalog, new: Catalog, adapters: Sequence[Source]) -> SourcePlan:
    """An adapter is kept when none of its sources changed (X sources share one adapter: any
    change to an X source rebuilds it); every source no kept adapter serves gets a new one."""
    ids = old.sources.keys() | new.sources.keys()
    changed = {i for i in ids if old.sources.get(i) != new.sources.get(i)}
    x_ids = {i for i in ids for cat in (old, new)
             if i in cat.sources and cat.sources[i].kind is SourceKind.X}
    dropped: set[str] = set()
    kept: set[str] = set()
    for adapter in adapters:
        served = set(adapter.source_ids)
        if served & changed or (served & x_ids and changed & x_ids) or \
                not served <= new.sources.keys():
            dropped.add(adapter.key)
        else:
            kept |= served
    return SourcePlan(dropped, {i: c for i, c in new.sources.items() if i not in kept})


def plan_channels(old: Catalog, new: Catalog) -> tuple[set[str], set[str]]:
    """(channels added or changed, channels removed)."""
    changed = {c for c, cfg in new.channels.items() if old.channels.get(c) != cfg}
    return changed, set(old.channels) - set(new.channels)


class PlaybooksReloader:
    """The chore that follows the playbooks folder (see the module's docstring)."""

    name = "playbooks.reload"

    def __init__(self, *, store: Store, folder: PlaybookFolder, catalog: Catalog, actor: str,
                 make_sources: Callable[[Catalog], list[Source]],
                 make_publishers: Callable[[Catalog, set[str]], dict[str, Publisher]],
                 on_reload: Callable[[Catalog], None] | None = None,
                 interval_seconds: float = RELOAD_SECONDS,
                 running: dict[str, str] | None = None) -> None:
        self.store = store
        self.folder = folder
        self.catalog = catalog
        self.actor = actor
        self.make_sources = make_sources
        self.make_publishers = make_publishers
        self.on_reload = on_reload
        self.interval_seconds = interval_seconds
        # No stamp yet: the first run hashes the files once, so a change made while the
        # watcher was starting (after ``running`` was read) is not missed.
        self._stamp: Mapping[str, object] | None = None
        # The contents of the configuration running (read before it was loaded, if given).
        self._digests = running if running is not None else folder.digests()
        self._refused: dict[str, str] | None = None  # contents last refused
        self.refusal: dict[str, Any] | None = None
        self._recorded = False  # playbooks.loaded written (the first run)

    def _changed(self, digests: Mapping[str, str]) -> list[str]:
        names = sorted(digests.keys() | self._digests.keys())
        return [n for n in names if digests.get(n) != self._digests.get(n)]

    def policy_record(self, digests: Mapping[str, str]) -> dict[str, str]:
        """The policy file a configuration runs: the operator check refuses a change made
        with another one (``services.operators.check_policy_file``)."""
        return {"policy_file": str(self.folder.directory / POLICY_FILE),
                "policy_sha256": digests.get(POLICY_FILE, "")}

    async def run(self, loop: RunLoop, now: datetime) -> None:
        import asyncio  # loaded by the running loop; not at import (`status` reads this module)

        if not self._recorded:
            self._audit(LOADED, now, "the watcher runs the playbooks in "
                        f"{self.folder.directory}", {"directory": str(self.folder.directory),
                                                    **self.policy_record(self._digests)})
            self._recorded = True
        stamp = self.folder.stamp()
        if stamp == self._stamp:
            return
        digests = await asyncio.to_thread(self.folder.digests)
        if digests == self._digests:
            self._stamp = stamp
            if self._refused is not None:
                self._audit(RELOADED, now, "the refused change was undone: the files are "
                            "the configuration running again",
                            {"files": [], **self.policy_record(digests)})
                self._refused, self.refusal = None, None
            return
        if digests == self._refused:
            self._stamp = stamp
            return
        changed = self._changed(digests)
        try:
            catalog = await asyncio.to_thread(self.folder.load)
        except ConfigError as exc:
            if await asyncio.to_thread(self.folder.digests) != digests:
                return  # written while we read it: looked at again next run
            self._refuse(_problem(self.folder, exc, changed), digests, now)
            self._stamp = stamp
            return
        if await asyncio.to_thread(self.folder.digests) != digests:
            return  # written while we read it: looked at again next run
        try:
            await self._apply(loop, catalog, changed, now, digests)
        except ConfigError as exc:  # an adapter could not be built from the new files
            self._refuse(_problem(self.folder, exc, changed), digests, now)
        self._stamp = stamp
        if self._refused is None:
            self._digests = digests

    def _refuse(self, problem: dict[str, Any], digests: dict[str, str], now: datetime) -> None:
        log.error("playbooks.reload_refused", **problem,
                  note="the watcher keeps running the last good configuration")
        self._audit(REFUSED, now, f"change refused: {problem['error']}"[:500]
                    + "; the last good configuration keeps running", problem)
        self._refused, self.refusal = digests, problem

    async def _apply(self, loop: RunLoop, catalog: Catalog, changed: list[str],
                     now: datetime, digests: Mapping[str, str]) -> None:
        old = self.catalog
        plan = plan_sources(old, catalog, loop.watcher.sources)
        added: list[Source] = []
        if plan.to_build:
            added = self.make_sources(replace(catalog, sources=plan.to_build))
        channels, removed = plan_channels(old, catalog)
        try:
            publishers = self.make_publishers(catalog, channels) if channels else {}
            self._audit(RELOADED, now, "playbooks changed: the new configuration is used from "
                        "the next cycle", {"files": changed, **self.policy_record(digests)})
        except BaseException:
            for src in added:
                with contextlib.suppress(Exception):
                    await src.aclose()
            raise
        loop.watcher.reconfigure(catalog, added, plan.dropped)
        loop.dispatcher.reconfigure(catalog, publishers, removed)
        self.catalog = catalog
        self._refused, self.refusal = None, None
        if self.on_reload is not None:
            self.on_reload(catalog)
        log.info("playbooks.reloaded", files=changed, sources_started=sorted(
            a.key for a in added), sources_stopped=sorted(plan.dropped),
            channels_changed=sorted(channels), channels_removed=sorted(removed))

    def _audit(self, action: str, now: datetime, reason: str, details: dict[str, Any]) -> None:
        with self.store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(self.actor, action, "playbooks", reason, now,
                                           details))
            uow.commit()


@dataclass(frozen=True)
class ReloadState:
    """How one watcher follows the playbooks, as ``status`` shows it: ``refused`` is the
    details of its refusal still in force (``None``: it runs the files as they are)."""

    worker: str
    loaded_at: datetime  # when the configuration it runs was loaded
    refused: dict[str, Any] | None = None
    refused_at: datetime | None = None


def reload_states(store: Store, watchers: Sequence[WatcherInfo]) -> list[ReloadState]:
    """Each watcher's reload state, from its audit events since it started."""
    events = store.audit_events(action_prefix="playbooks.reload")
    out = []
    for w in watchers:
        mine = [e for e in events if e.actor == w.worker_id and e.at >= w.started_at
                and e.action in (RELOADED, REFUSED)]
        loaded = [e.at for e in mine if e.action == RELOADED and e.details.get("files")]
        loaded_at = loaded[-1] if loaded else w.started_at
        last = mine[-1] if mine else None
        if last is not None and last.action == REFUSED:
            out.append(ReloadState(w.worker_id, loaded_at, dict(last.details), last.at))
        else:
            out.append(ReloadState(w.worker_id, loaded_at))
    return out
