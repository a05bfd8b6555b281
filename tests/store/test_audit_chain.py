"""The audit chain on every backend (memory, SQLite, PostgreSQL): the real wall-clock time
beside the claimed ``at``, time going backwards, a key (HMAC-SHA256) that an attacker without it
cannot forge, and a witnessed head that shows truncation."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from crisiscomms.adapters.store import MemoryStore, open_store
from crisiscomms.domain.audit import (
    KEYED,
    LEGACY,
    PLAIN,
    StoredLink,
    event_hash,
    parse_expected_head,
)
from crisiscomms.domain.clock import FixedClock, isoformat
from crisiscomms.domain.models import NewAuditEvent
from crisiscomms.ports import Store

from .conftest import Backend

NOW = datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
KEY = "correct horse battery staple"


def reopen(backend: Backend, *, key: str | None = None,
           wall: FixedClock | None = None) -> Store:
    """Another connection to the same database, with or without the audit key."""
    secret = SecretStr(key) if key else None
    if backend.memory is not None:
        m = MemoryStore(audit_key=key.encode() if key else None, wall_clock=wall)
        m._tables, m._lock = backend.memory._tables, backend.memory._lock
        return m
    store = open_store(backend.url, audit_key=secret, wall_clock=wall)
    backend.opened.append(store)
    return store


def append(store: Store, n: int, *, at: datetime = NOW, actor: str = "alice") -> None:
    for i in range(n):
        with store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(actor, "test.event", f"s{i}", f"reason {i}", at,
                                           {"i": i}))
            uow.commit()


# -- raw access to the rows, as an attacker with write access to the database has ---------------
def raw_links(backend: Backend) -> list[StoredLink]:
    if backend.memory is not None:
        return list(backend.memory._tables.audit)
    rows = _sql(backend, "SELECT * FROM audit_events ORDER BY seq", fetch=True)

    def text(v: Any) -> str | None:
        return v if v is None or isinstance(v, str) else isoformat(v)

    return [StoredLink(int(r["seq"]), text(r["at"]) or "", r["actor"], r["action"],
                       r["subject"], r["reason"], r["details"], r["prev_hash"], r["hash"],
                       text(r["recorded_at"]), r["scheme"]) for r in rows]


def write_links(backend: Backend, links: list[StoredLink]) -> None:
    """Replace the whole trail and its head, as a rewrite by SQL would."""
    head = (links[-1].seq, links[-1].hash) if links else (0, "0" * 64)
    if backend.memory is not None:
        backend.memory._tables.audit = list(links)
        backend.memory._tables.head = head
        return
    _sql(backend, "DELETE FROM audit_events")
    for r in links:
        at: Any = r.at
        recorded: Any = r.recorded_at
        if backend.name == "postgres":
            at = datetime.fromisoformat(r.at.replace("Z", "+00:00"))
            recorded = (datetime.fromisoformat(r.recorded_at.replace("Z", "+00:00"))
                        if r.recorded_at else None)
        _sql(backend, "INSERT INTO audit_events (seq, at, actor, action, subject, reason, "
             "details, prev_hash, hash, recorded_at, scheme) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
             (r.seq, at, r.actor, r.action, r.subject, r.reason, r.details, r.prev_hash,
              r.hash, recorded, r.scheme))
    _sql(backend, "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", head)


def _sql(backend: Backend, sql: str, params: tuple[Any, ...] = (), *,
         fetch: bool = False) -> list[Any]:
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.url.removeprefix("sqlite:///"))
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(sql, params).fetchall() if fetch else []
            if not fetch:
                conn.execute(sql, params)
            conn.commit()
            return rows
        finally:
            conn.close()
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(backend.url, row_factory=dict_row, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if fetch else []


def rehash(links: list[StoredLink], *, scheme: str, key: bytes | None = None) -> list[StoredLink]:
    """Recompute every hash in order, as someone rewriting the trail would."""
    out, prev = [], "0" * 64
    for r in links:
        r = replace(r, prev_hash=prev, scheme=scheme)
        h = event_hash(r.seq, r.at, r.actor, r.action, r.subject, r.reason, r.details, prev,
                       recorded_at=r.recorded_at, scheme=scheme, key=key)
        out.append(replace(r, hash=h))
        prev = h
    return out


# -- wall time -----------------------------------------------------------------------------------
def test_every_event_records_the_real_wall_time_beside_the_claimed_at(backend: Backend):
    wall = FixedClock(NOW + timedelta(days=30))
    store = reopen(backend, wall=wall)
    append(store, 1, at=NOW)  # a change made "as of" a month earlier (--at)
    wall.advance(timedelta(seconds=1))
    append(store, 1, at=NOW + timedelta(days=30))
    e1, e2 = store.audit_events()
    assert e1.at == NOW and e1.recorded_at == NOW + timedelta(days=30)
    assert e2.recorded_at == NOW + timedelta(days=30, seconds=1)
    assert e1.scheme == e2.scheme == PLAIN
    report = store.verify_audit()
    assert report.ok and report.count == 2 and report.fully_checked
    assert report.drifted == (1,) and report.backwards == ()


def test_verify_reports_wall_time_going_backwards(backend: Backend):
    wall = FixedClock(NOW)
    store = reopen(backend, wall=wall)
    append(store, 2)
    wall.set(NOW - timedelta(hours=1))  # the clock was set back (or a row was forged)
    append(store, 1, at=NOW - timedelta(hours=1))
    report = store.verify_audit()
    # Named, but a warning: a clock stepped back once must not fail verify for ever.
    assert report.backwards == (3,) and report.fully_checked
    assert report.ok  # the links themselves are intact


def test_the_wall_time_is_part_of_the_hash(backend: Backend):
    store = reopen(backend)
    append(store, 3)
    links = raw_links(backend)
    links[1] = replace(links[1], recorded_at=isoformat(NOW - timedelta(days=1)))
    write_links(backend, links)
    report = store.verify_audit()
    assert not report.ok and report.bad_seq == 2


# -- the key ------------------------------------------------------------------------------------
def test_a_keyed_trail_verifies_with_the_key_and_is_not_ok_without_it(backend: Backend):
    keyed = reopen(backend, key=KEY)
    append(keyed, 3)
    assert {e.scheme for e in keyed.audit_events()} == {KEYED}
    report = keyed.verify_audit()
    assert report.ok and report.fully_checked and report.keyed == 3 and report.unchecked == 0
    plain = reopen(backend)
    without = plain.verify_audit()
    assert without.unchecked == 3 and not without.fully_checked
    other = reopen(backend, key="another key").verify_audit()
    assert not other.ok and other.bad_seq == 1 and "key" in other.problem


@pytest.mark.parametrize("scheme", [PLAIN, LEGACY])
def test_an_edit_with_every_hash_recomputed_is_caught_when_keyed(backend: Backend, scheme: str):
    """The attacker can write to the database but has no key: they edit event 3 and recompute
    every hash with plain SHA-256 (either unkeyed scheme). Unkeyed, that is undetectable (the
    README says so); keyed, verify catches it."""
    keyed = reopen(backend, key=KEY)
    append(keyed, 5)
    links = raw_links(backend)
    links[2] = replace(links[2], reason="nothing happened here")
    if scheme == LEGACY:
        links = [replace(r, recorded_at=None) for r in links]
    write_links(backend, rehash(links, scheme=scheme))
    report = reopen(backend, key=KEY).verify_audit()
    assert not report.fully_checked, report
    assert report.unprotected == 5 and report.keyed == 0


def test_an_edit_before_a_keyed_event_is_caught_even_if_rehashed(backend: Backend):
    """Rewriting events 1-3 unkeyed cannot re-link events 4 and 5: their keyed hash covers
    the link before them."""
    keyed = reopen(backend, key=KEY)
    append(keyed, 5)
    links = raw_links(backend)
    links[1] = replace(links[1], actor="mallory")
    links = rehash(links[:3], scheme=PLAIN) + links[3:]
    write_links(backend, links)
    report = reopen(backend, key=KEY).verify_audit()
    assert not report.ok and report.bad_seq == 4


def test_events_written_without_the_key_are_protected_once_a_keyed_one_follows(
        backend: Backend):
    keyed, plain = reopen(backend, key=KEY), reopen(backend)
    append(keyed, 2)
    append(plain, 1)  # an operator's shell without CRISISCOMMS_AUDIT_KEY
    report = keyed.verify_audit()
    assert report.ok and report.unprotected == 1 and not report.fully_checked
    append(keyed, 1)
    assert keyed.verify_audit().fully_checked


def test_an_edit_with_every_hash_recomputed_is_not_caught_unkeyed(backend: Backend):
    """What the README states plainly: without a key, a full rewrite verifies."""
    store = reopen(backend)
    append(store, 5)
    links = raw_links(backend)
    links[2] = replace(links[2], reason="nothing happened here")
    write_links(backend, rehash(links, scheme=PLAIN))
    assert store.verify_audit().ok


def test_an_old_unkeyed_trail_still_verifies_and_keyed_events_follow_it(backend: Backend):
    store = reopen(backend)
    append(store, 2)
    # Make them what schema 7 wrote: no wall time, plain SHA-256 of the old fields.
    old = [replace(r, recorded_at=None) for r in raw_links(backend)]
    write_links(backend, rehash(old, scheme=LEGACY))
    keyed = reopen(backend, key=KEY)
    before = keyed.verify_audit()
    assert before.ok and before.legacy == 2 and before.unprotected == 2
    assert store.verify_audit().fully_checked  # unkeyed: nothing more to check
    append(keyed, 2)
    report = keyed.verify_audit()
    assert report.ok and report.count == 4 and report.legacy == 2 and report.keyed == 2
    assert report.fully_checked


def old_watcher_appends(backend: Backend, n: int) -> None:
    """Rows as a watcher of the version before schema 8 writes them while the new version
    already runs: its INSERT names the old columns, so each row gets the column defaults
    (``scheme='sha256'``, no wall time) and the old-format hash over the current head."""
    links = raw_links(backend)
    prev = links[-1].hash if links else "0" * 64
    for i in range(n):
        seq = len(links) + 1
        r = StoredLink(seq, isoformat(NOW), "old-watcher", "watch.tick", f"old{i}", "r",
                       f'{{"i":{i}}}', prev, "", None, LEGACY)
        r = replace(r, hash=event_hash(r.seq, r.at, r.actor, r.action, r.subject, r.reason,
                                       r.details, prev, scheme=LEGACY))
        links.append(r)
        prev = r.hash
    write_links(backend, links)


def test_an_old_version_still_writing_after_migration_8_is_a_warning_not_a_broken_chain(
        backend: Backend):
    store = reopen(backend)
    append(store, 2)  # the new version: sha256-v2 with wall time
    old_watcher_appends(backend, 2)  # an old watcher not yet restarted (or a rolling upgrade)
    report = store.verify_audit()
    assert report.ok, report.problem
    assert report.old_after_new == (3, 4) and report.old_tail == 2
    assert not report.fully_checked  # an old version is still writing: not fully checked
    append(store, 1)  # upgraded: the new version writes after them
    after = store.verify_audit()
    assert after.ok and after.fully_checked and after.old_after_new == (3, 4)
    assert after.old_tail == 0


def test_old_format_rows_after_keyed_ones_are_protected_once_a_keyed_event_follows(
        backend: Backend):
    keyed = reopen(backend, key=KEY)
    append(keyed, 2)
    old_watcher_appends(backend, 1)
    before = keyed.verify_audit()
    assert before.ok and before.unprotected == 1 and not before.fully_checked
    append(keyed, 1)
    after = keyed.verify_audit()
    assert after.ok and after.fully_checked and after.old_after_new == (3,)


def test_an_edited_old_format_row_after_new_ones_still_breaks_the_chain(backend: Backend):
    store = reopen(backend)
    append(store, 2)
    old_watcher_appends(backend, 2)
    links = raw_links(backend)
    links[2] = replace(links[2], reason="edited")
    write_links(backend, links)
    report = store.verify_audit()
    assert not report.ok and report.bad_seq == 3 and "does not match its hash" in report.problem


# -- truncation and the witnessed head -----------------------------------------------------------
def test_deleting_the_last_ten_events_and_updating_the_head_is_caught_by_the_witness(
        backend: Backend):
    keyed = reopen(backend, key=KEY)
    append(keyed, 20)
    witnessed = keyed.verify_audit()
    assert witnessed.count == 20
    write_links(backend, raw_links(backend)[:10])
    after = reopen(backend, key=KEY)
    assert after.verify_audit().ok  # indistinguishable without a witness
    for expect in (witnessed.head, witnessed.head_hash):
        report = after.verify_audit(expect_head=parse_expected_head(expect))
        assert not report.ok and "deleted" in report.problem, expect
    # A head witnessed earlier is still in a chain that has grown since.
    append(after, 1)
    early = raw_links(backend)[4]
    assert after.verify_audit(expect_head=(5, early.hash)).ok
    assert not after.verify_audit(expect_head=(6, early.hash)).ok


def test_parse_expected_head():
    h = "a" * 64
    assert parse_expected_head(h) == (None, h)
    assert parse_expected_head(f"12:{h.upper()}") == (12, h)
    for bad in ("12:xyz", "x:" + h, "abc"):
        with pytest.raises(ValueError):
            parse_expected_head(bad)


def test_the_genesis_head_is_witnessed_by_every_chain() -> None:
    """``0:000…`` (a new, empty trail's head) is in every chain: its first link points at it."""
    from crisiscomms.domain.audit import GENESIS, verify_chain

    report = verify_chain([], (0, GENESIS), expect_head=(0, GENESIS))
    assert report.ok, report.problem
