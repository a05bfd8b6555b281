"""``claim-contention-pg``: one queue drained by 1, 2 and 4 concurrent dispatchers on
PostgreSQL, and proof that every item went out exactly once.

A throw-away cluster is started here and stopped afterwards (if PostgreSQL cannot run, the
result is ``{"skipped": "<reason>"}``). For each worker count a fresh database gets the
``dispatch-10k`` queue (``benchmarks.dispatch.fill``: the flooding incident active, every item
pending and allowed out). Then that many threads, each with its own ``open_store(url)`` (its
own connection pool) and its own ``Dispatcher`` (worker id ``bench-<i>``, dry-run publishers
shared by all, as one platform is), start together and call ``tick(now)`` until a tick finds
nothing pending. Claims are ``SELECT ... FOR UPDATE SKIP LOCKED``: a worker that loses an item
moves on.

Reported per worker count: items/s (published / wall time from the common start to the last
worker's end), client CPU (all threads of this process) and server CPU (the cluster's
processes), items published by each worker, and "lost claims" (pending items a worker decided
on that another worker published). The exactly-once check, per run: the number of items in
state ``published`` equals the number queued; each of them has exactly one ``published``
history event (``outbox_events``) and one ``outbox.published`` audit event; and the
publishers were called once per item (a second call would be a second post on a real
platform). Any duplicate, anything left unpublished or a worker that crashed fails the check.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import PgServer, pg_server, quiet_logging, self_peak_rss_mb, write_result
from benchmarks.dispatch import NOW, Workload, fill, pending_count, workload
from crisiscomms.testing import enqueue

if TYPE_CHECKING:
    from crisiscomms.domain.models import OutboxItem, PublishResult, Update
    from crisiscomms.ports import Publisher, Store

MAX_TICKS = 50  # per worker: far more than a drain needs; a guard against a hang


class CountingPublisher:
    """A publisher that notes every ``publish`` call (the dry-run one answers a repeat with
    its first record, so only the calls show a duplicate send)."""

    def __init__(self, inner: Publisher, calls: list[int]) -> None:
        self.inner = inner
        self.calls = calls  # list.append is atomic: shared by every worker thread

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        self.calls.append(item.id)
        return self.inner.publish(item, update)

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        return self.inner.find_existing(item, update)

    def close(self) -> None:
        self.inner.close()


def exactly_once(url: str) -> dict[str, int]:
    """What the database says was published, counted straight in SQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        def one(sql: str) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        return {
            "items_published": one("SELECT count(*) FROM outbox WHERE state = 'published'"),
            "items_not_published": one("SELECT count(*) FROM outbox WHERE state <> 'published'"),
            "items_with_published_event": one(
                "SELECT count(DISTINCT item_id) FROM outbox_events WHERE state = 'published'"),
            "items_with_2_published_events": one(
                "SELECT count(*) FROM (SELECT item_id FROM outbox_events WHERE state = "
                "'published' GROUP BY item_id HAVING count(*) > 1) AS d"),
            "audit_published": one(
                "SELECT count(*) FROM audit_events WHERE action = 'outbox.published'"),
            "audit_published_subjects": one(
                "SELECT count(DISTINCT subject) FROM audit_events WHERE action = "
                "'outbox.published'"),
        }


def run_workers(server: PgServer, w: Workload, items: int, workers: int) -> dict[str, Any]:
    from crisiscomms.adapters.publishers import DryRunPublisher
    from crisiscomms.adapters.store import open_store
    from crisiscomms.services.dispatch import Dispatcher
    from crisiscomms.settings import DispatchSettings

    url = server.create_database(f"bench_contention_{workers}")
    setup = open_store(url)
    try:
        enqueue(setup, fill(setup, w, items), now=NOW, actor="bench")
        queued = pending_count(setup)
    finally:
        setup.close()

    calls: list[int] = []
    publishers = {cid: CountingPublisher(DryRunPublisher(cid, w.clock), calls)
                  for cid in w.catalog.channels}
    stores: list[Store] = [open_store(url) for _ in range(workers)]
    per_worker: list[dict[str, Any]] = [
        {"published": 0, "decided": 0, "overtaken": 0, "ticks": 0} for _ in range(workers)]
    errors: list[str] = []
    start = threading.Barrier(workers + 1)
    t0 = 0.0  # set by the main thread just before it releases the workers

    dispatchers = [Dispatcher(store=stores[i], catalog=w.catalog, publishers=publishers,
                              settings=DispatchSettings(), worker_id=f"bench-{i}",
                              rng=random.Random(i), sleep=lambda _s: None)
                   for i in range(workers)]

    def work(i: int) -> None:
        mine, dispatcher = per_worker[i], dispatchers[i]
        start.wait()
        try:
            while mine["ticks"] < MAX_TICKS:
                stats = dispatcher.tick(w.clock.now())
                mine["ticks"] += 1
                mine["published"] += stats.published
                mine["decided"] += stats.decided
                mine["overtaken"] += stats.overtaken
                if stats.decided == 0:  # nothing was pending when the tick began
                    break
        except Exception as exc:
            errors.append(f"bench-{i}: {type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        mine["wall_s"] = time.perf_counter() - t0

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-{i}")
               for i in range(workers)]
    try:
        for t in threads:
            t.start()
        s0 = server.cpu_seconds
        c0, t0 = time.process_time(), time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        server_cpu = server.cpu_seconds - s0
    finally:
        for s in stores:
            s.close()

    db = exactly_once(url)
    repeated = {item: n for item, n in Counter(calls).items() if n > 1}
    published = sum(p["published"] for p in per_worker)
    duplicates = (len(repeated) + db["items_with_2_published_events"]
                  + db["audit_published"] - db["audit_published_subjects"])
    ok = (not errors and duplicates == 0 and published == queued
          and db["items_published"] == queued and db["items_not_published"] == 0
          and db["items_with_published_event"] == queued
          and db["audit_published_subjects"] == queued and len(calls) == queued)
    return {
        "workers": workers, "queued": queued, "published": published,
        "wall_s": wall, "cpu_s": cpu, "server_cpu_s": server_cpu,
        "items_per_s": published / wall if wall else float("nan"),
        "per_worker": per_worker,
        "lost_claims": sum(p["decided"] for p in per_worker) - published,
        "publish_calls": len(calls), "items_published_twice": len(repeated),
        "db": db, "duplicates": duplicates, "errors": errors, "exactly_once_ok": ok,
    }


def run(items: int, worker_counts: list[int]) -> dict[str, Any]:
    with pg_server() as server:
        if isinstance(server, str):
            return {"skipped": server}
        with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-contention-") as tmp:
            w = workload(Path(tmp))
            runs = [run_workers(server, w, items, n) for n in worker_counts]
    base = runs[0]["items_per_s"]
    for r in runs:
        r["speedup_vs_first"] = r["items_per_s"] / base if base else float("nan")
    return {
        "items": items, "runs": runs,
        "duplicates": sum(r["duplicates"] for r in runs),
        "exactly_once_ok": all(r["exactly_once_ok"] for r in runs),
        "peak_rss_mb": self_peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="claim-contention-pg benchmark")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--workers", default="1,2,4",
                   help="comma-separated worker counts, one run (fresh database) each")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    sink = quiet_logging()
    try:
        result = run(args.items, counts)
    finally:
        sink.close()
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
