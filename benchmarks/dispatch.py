"""``dispatch-10k``: 10,000 queued crisis-mode items through ``Dispatcher.tick`` with the
dry-run publisher on every channel, on a SQLite store (``--store sqlite``, the default) or on
PostgreSQL (``--store postgresql``: a throw-away cluster started here and stopped afterwards).

Setup (not timed): the bundled playbooks copied to a temp dir with the X ids pinned (as
``tests/conftest.py`` does); the ``flooding`` playbook's hourly ceiling raised to 100,000 and
its per-channel ceilings removed so every item may go; the incident activated through
``crisiscomms.services.incidents.activate``; 2,500 source updates recorded and matched into 4
channel items each (10,000 ``NewOutboxItem``), enqueued with one unit of work (timed
separately). Then ``Dispatcher(measure=True).tick(now)`` until nothing is pending. The
workload is the same on both stores, so their figures can be compared.

Reported: items/s (published / wall time of the ticks), p50/p99 of the per-item policy
decision time (``DispatchStats.decision_seconds``) and the mean wall time per item; on
PostgreSQL also the CPU the server's processes used during the ticks. If PostgreSQL cannot
run here the result is ``{"skipped": "<reason>"}``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    REPO,
    PgServer,
    percentile,
    pg_server,
    quiet_logging,
    self_peak_rss_mb,
    write_result,
)
from crisiscomms.testing import enqueue, pinned_playbooks, record_updates

if TYPE_CHECKING:
    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.domain.config import Catalog
    from crisiscomms.domain.models import NewOutboxItem
    from crisiscomms.ports import Store

NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)  # a Friday evening: out of hours


@dataclass
class Workload:
    """The catalog every item may go out under, and the clock the dispatch runs at."""

    catalog: Catalog
    clock: FixedClock


def workload(tmp: Path) -> Workload:
    """The bundled catalog, with the flooding playbook's ceilings out of the way."""
    from dataclasses import replace

    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.domain.clock import FixedClock

    base = load_catalog(pinned_playbooks(REPO / "playbooks", tmp / "playbooks"))
    pb = base.playbooks["flooding"]
    pb = pb.model_copy(update={
        "hourly_ceiling": 100_000,
        "channels": [c.model_copy(update={"hourly_ceiling": None}) for c in pb.channels]})
    return Workload(replace(base, playbooks={**base.playbooks, "flooding": pb}), FixedClock(NOW))


def fill(store: Store, w: Workload, items: int) -> list[NewOutboxItem]:
    """Activate the flooding incident (its activation messages are queued) and record
    ``items / channels`` updates; returns their matched channel items, not yet enqueued."""
    from crisiscomms.domain.matching import match
    from crisiscomms.domain.models import RecordedUpdate, SourceKind, Update
    from crisiscomms.services import incidents

    catalog = w.catalog
    incident = incidents.activate(store, catalog, w.clock, playbook="flooding",
                                  reason="benchmark", operator="bench")
    per_update = len(catalog.playbooks["flooding"].channels)
    n_updates = max(1, items // per_update)
    sources = ["essex-police-x", "ecfrs-x", "eeast-x"]
    recorded: list[RecordedUpdate] = []
    for k, sid in enumerate(sources):
        cfg = catalog.sources[sid]
        batch = [
            Update(source_id=sid, agency=cfg.agency, kind=SourceKind.X,
                   external_id=str(10_000_000 + j), url=f"https://example.org/{sid}/{j}",
                   title=f"Flooding update {j}", text=f"Road closed near junction {j}.",
                   published_at=NOW - timedelta(seconds=j), fetched_at=NOW).with_hash()
            for j in range(k, n_updates, len(sources))]
        recorded += record_updates(store, batch, baseline=False)
    return [it for r in recorded for it in match(r, catalog=catalog, incidents=[incident]).items]


def pending_count(store: Store) -> int:
    counts = store.queue_counts()
    return sum(counts.get(s, 0) for s in ("queued", "held", "needs_approval"))


def run(items: int, database_url: str | None = None,
        server: PgServer | None = None) -> dict[str, Any]:
    from crisiscomms.adapters.publishers import DryRunPublisher
    from crisiscomms.adapters.store import open_store
    from crisiscomms.services.dispatch import Dispatcher
    from crisiscomms.settings import DispatchSettings

    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-dispatch-") as tmp:
        w = workload(Path(tmp))
        catalog, clock = w.catalog, w.clock
        store = open_store(database_url or f"sqlite:///{tmp}/dispatch.db")
        try:
            new_items = fill(store, w, items)
            t0 = time.perf_counter()
            enqueue(store, new_items, now=NOW, actor="bench")
            enqueue_s = time.perf_counter() - t0
            pending0 = pending_count(store)
            publishers = {cid: DryRunPublisher(cid, clock) for cid in catalog.channels}
            dispatcher = Dispatcher(store=store, catalog=catalog, publishers=publishers,
                                    settings=DispatchSettings(), worker_id="bench",
                                    rng=random.Random(1), sleep=lambda _s: None, measure=True)
            decisions: list[float] = []
            published = ticks = 0
            s0 = server.cpu_seconds if server else 0.0
            c0, t0 = time.process_time(), time.perf_counter()
            while ticks < 10:
                stats = dispatcher.tick(clock.now())
                ticks += 1
                decisions += stats.decision_seconds
                published += stats.published
                if stats.published == 0:
                    break
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            server_cpu = server.cpu_seconds - s0 if server else None
            counts = store.queue_counts()
        finally:
            store.close()
    result = {
        "store": "postgresql" if database_url else "sqlite",
        "items_enqueued": len(new_items), "pending_at_start": pending0,
        "enqueue_s": enqueue_s, "published": published, "ticks": ticks,
        "wall_s": wall, "cpu_s": cpu,
        "items_per_s": published / wall if wall else float("nan"),
        "wall_per_item_ms": 1000 * wall / max(1, published),
        "decision_p50_ms": 1000 * percentile(decisions, 50),
        "decision_p99_ms": 1000 * percentile(decisions, 99),
        "decision_max_ms": 1000 * max(decisions) if decisions else float("nan"),
        "final_states": counts, "peak_rss_mb": self_peak_rss_mb(),
    }
    if server_cpu is not None:
        result["server_cpu_s"] = server_cpu
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="dispatch-10k benchmark")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    sink = quiet_logging()
    try:
        if args.store == "sqlite":
            result = run(args.items)
        else:
            with pg_server() as server:
                if isinstance(server, str):
                    result = {"skipped": server}
                else:
                    result = run(args.items, server.create_database("bench_dispatch"), server)
    finally:
        sink.close()
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
