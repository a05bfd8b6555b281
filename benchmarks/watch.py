"""``watch-1000``: the real watcher (RssSource, HttpFetcher, FeedParserPool, SQLite store)
polling N RSS/Atom feeds on the loopback feed server, cycle after cycle.

Cycle 0 is the baseline: every feed answers 200 and is parsed; nothing is queued (first sight
of a source floods nothing). Each later cycle is 30 simulated seconds on; 1 % of the feeds
publish one new entry in the interval before it, so most answers are 304.

Measured per cycle (all in this process, which runs nothing but the watcher):

* ``cpu_self``: ``time.process_time()`` delta of the watcher process (event loop, httpx,
  SQLite, the parse hand-off threads);
* ``cpu_workers``: utime+stime delta of the feedparser worker subprocesses, read from
  ``/proc/<pid>/stat``. ``getrusage(RUSAGE_CHILDREN)`` only counts children once they have
  been reaped, and the workers are persistent, so it is read once at the end (after the pool
  is closed) as a cross-check of the workers' total;
* ``wall``: ``perf_counter`` around ``Watcher.poll_cycle``;
* peak RSS: ``ru_maxrss`` of this process plus the ``VmHWM`` of each worker.

Detection latency, per changed feed: the change becomes visible on the server at a uniformly
random simulated instant in ``(t[c-1], t[c]]`` (also the entry's pubDate); the watcher can only
see it at its next poll of that feed, cycle ``c`` at ``t[c]``. Latency =
``(t[c] - visible_at)`` (simulated) ``+`` the real time from the start of ``poll_cycle`` to the
commit of the transaction that queued the feed's items (``SQLiteStore.record_poll``, timed by
wrapping that method on the instance). A change not queued in its cycle counts as missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    FeedServer,
    children_cpu_seconds,
    feed_server,
    percentile,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    quiet_logging,
    self_peak_rss_mb,
    write_result,
)
from benchmarks.feeds import START, changed_feeds, cycle_time, visible_at


def child_pids(exclude: set[int]) -> list[int]:
    """Live child processes of this process (the feedparser workers), minus ``exclude``."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            out.append(int(name))
    return out


@dataclass
class CycleRecord:
    cycle: int
    cpu_self: float
    cpu_workers: float
    wall: float
    polled: int
    not_modified: int
    failed: int
    new_updates: int
    queued: int
    server_cpu: float
    latencies: list[float] = field(default_factory=list)
    missed: int = 0

    @property
    def cpu_total(self) -> float:
        return self.cpu_self + self.cpu_workers

    def as_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "cpu_self_s": round(self.cpu_self, 4),
                "cpu_workers_s": round(self.cpu_workers, 4),
                "cpu_total_s": round(self.cpu_total, 4), "wall_s": round(self.wall, 4),
                "polled": self.polled, "not_modified": self.not_modified,
                "failed": self.failed, "new_updates": self.new_updates,
                "queued": self.queued, "server_cpu_s": round(self.server_cpu, 4),
                "detected": len(self.latencies), "missed": self.missed}


@dataclass
class WatchRun:
    feeds: int
    interval: float
    baseline: CycleRecord
    steady: list[CycleRecord]
    peak_rss_self_mb: float
    peak_rss_workers_mb: float
    workers_cpu_rusage: float
    errors: dict[str, str]
    # TCP connections the watcher opened to the feed server during the steady cycles: with
    # keep-alive working it stays near the per-host limit x hosts, whatever the poll count.
    steady_connections: int = -1


async def watch_cycles(server: FeedServer, feeds: int, cycles: int, *,
                       interval: float = 30.0, changes: bool = True,
                       on_cycle: Callable[[CycleRecord], None] | None = None) -> WatchRun:
    """Run the baseline plus ``cycles`` polling cycles of the real watcher over ``feeds``
    feeds of ``server``. With ``changes`` off the server stays at cycle 0 (nothing new)."""
    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.adapters.sources import (
        FeedParserPool,
        FetchLimits,
        build_sources,
        make_async_client,
    )
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.domain.config import Catalog, SourceConfig
    from crisiscomms.domain.models import SourceKind
    from crisiscomms.services.watch import Watcher
    from crisiscomms.settings import PollingSettings

    polling = PollingSettings(interval_seconds=interval, jitter_seconds=0)
    base = load_catalog(REPO / "playbooks")  # policy and channels as bundled
    configs = {
        f"bench-{i:04d}": SourceConfig(
            id=f"bench-{i:04d}", agency=f"Bench agency {i % 50}", kind=SourceKind.RSS,
            watch="always", url=server.url(i), allow_private_network=True)
        for i in range(feeds)
    }
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-watch-") as tmp:
        catalog = Catalog(Path(tmp), base.policy, configs, base.channels, {})
        store = open_store(f"sqlite:///{tmp}/watch.db")
        commits: dict[str, float] = {}
        original = Watcher._record_updates

        def timed_record_updates(uow: Any, updates: Any, baseline: bool) -> Any:
            recorded = original(uow, updates, baseline)  # committed right after, same tick
            for r in recorded:
                commits[r.update.source_id] = time.perf_counter()
            return recorded

        Watcher._record_updates = staticmethod(timed_record_updates)  # type: ignore[method-assign]
        client = make_async_client(timeout=polling.timeout_seconds)
        parser = FeedParserPool()
        rusage_before = children_cpu_seconds()
        worker_cpu: dict[int, float] = {}
        worker_rss: dict[int, float] = {}
        server_pid = server.proc.pid
        errors: dict[str, str] = {}
        records: list[CycleRecord] = []
        try:
            sources = build_sources(
                list(configs.values()), client=client, parser=parser,
                limits=FetchLimits(per_host=polling.per_host, total=polling.concurrency))
            watcher = Watcher(store=store, catalog=catalog, sources=sources,
                              settings=polling, rng=random.Random(1))
            clock = FixedClock(START)
            conn_start: dict[str, int] = {}
            for c in range(cycles + 1):
                if c == 1:
                    conn_start = server.control("stats")
                now: datetime = clock.now()
                assert now == cycle_time(c, interval)
                expected: dict[str, datetime] = {}
                if changes:
                    server.control("cycle", {"cycle": c, "interval": interval})
                    expected = {f"bench-{i:04d}": visible_at(i, c, interval, 1)
                                for i in changed_feeds(feeds, c)}
                commits.clear()
                pids = child_pids({server_pid})
                w0 = {p: proc_cpu_seconds(p) for p in pids}
                s0 = server.cpu_seconds
                c0, t0 = time.process_time(), time.perf_counter()
                stats = await watcher.poll_cycle(now)
                t1, c1 = time.perf_counter(), time.process_time()
                s1 = server.cpu_seconds
                pids = child_pids({server_pid})
                w_delta = 0.0
                for p in pids:
                    cpu = proc_cpu_seconds(p)
                    w_delta += cpu - w0.get(p, 0.0)
                    worker_cpu[p] = cpu
                    worker_rss[p] = proc_peak_rss_mb(p)
                rec = CycleRecord(c, c1 - c0, w_delta, t1 - t0, stats.polled, stats.not_modified,
                                  stats.failed, stats.new_updates, stats.queued, s1 - s0)
                for sid, visible in expected.items():
                    if sid in commits:
                        rec.latencies.append((now - visible).total_seconds()
                                             + (commits[sid] - t0))
                    else:
                        rec.missed += 1
                errors.update(stats.errors)
                records.append(rec)
                if on_cycle:
                    on_cycle(rec)
                clock.advance(timedelta(seconds=interval))
            steady_connections = -1
            if conn_start:
                end = server.control("stats")
                steady_connections = (
                    end.get("connections", 0) - conn_start.get("connections", 0)
                    - (end.get("control", 0) - conn_start.get("control", 0)))
            for src in sources:
                await src.aclose()
        finally:
            await client.aclose()
            parser.close()
            store.close()
        workers_cpu_rusage = children_cpu_seconds() - rusage_before
    return WatchRun(feeds, interval, records[0], records[1:], self_peak_rss_mb(),
                    sum(worker_rss.values()), workers_cpu_rusage, errors, steady_connections)


def summarise(run: WatchRun) -> dict[str, Any]:
    steady = run.steady
    lat = [x for r in steady for x in r.latencies]
    per_k = 1000.0 / run.feeds

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    cpu_total = [r.cpu_total for r in steady]
    return {
        "sources": run.feeds, "cycles": len(steady), "interval_s": run.interval,
        "baseline": run.baseline.as_dict(),
        "steady_cycles": [r.as_dict() for r in steady],
        "steady_cpu_self_s_mean": mean([r.cpu_self for r in steady]),
        "steady_cpu_workers_s_mean": mean([r.cpu_workers for r in steady]),
        "steady_cpu_total_s_mean": mean(cpu_total),
        "steady_cpu_total_s_max": max(cpu_total) if cpu_total else float("nan"),
        "steady_cpu_total_per_1000_sources_s": mean(cpu_total) * per_k,
        "steady_wall_s_mean": mean([r.wall for r in steady]),
        "steady_wall_s_max": max((r.wall for r in steady), default=float("nan")),
        "steady_share_304": (sum(r.not_modified for r in steady)
                             / max(1, sum(r.polled for r in steady))),
        "steady_polls": sum(r.polled for r in steady),
        "steady_new_connections": run.steady_connections,
        "peak_rss_self_mb": run.peak_rss_self_mb,
        "peak_rss_workers_mb": run.peak_rss_workers_mb,
        "peak_rss_total_mb": run.peak_rss_self_mb + run.peak_rss_workers_mb,
        "workers_cpu_total_proc_s": run.baseline.cpu_workers + sum(r.cpu_workers
                                                                   for r in steady),
        "workers_cpu_total_rusage_s": run.workers_cpu_rusage,
        "detection_latency_p50_s": percentile(lat, 50),
        "detection_latency_p95_s": percentile(lat, 95),
        "detection_latency_max_s": max(lat) if lat else float("nan"),
        "changes_detected": len(lat),
        "changes_missed": sum(r.missed for r in steady),
        "errors": run.errors,
        "method": ("latency = (poll instant - uniformly random visibility instant in the "
                   "previous interval, simulated) + (real seconds from poll_cycle start to "
                   "the commit that queued the item)"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="watch-1000 benchmark")
    p.add_argument("--feeds", type=int, default=1000)
    p.add_argument("--cycles", type=int, default=6, help="steady-state cycles after baseline")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    sink = quiet_logging()
    try:
        with feed_server(args.feeds) as server:
            run = asyncio.run(watch_cycles(server, args.feeds, args.cycles,
                                           interval=args.interval))
            result = summarise(run)
            result["server_hosts"] = len(server.hosts)
    finally:
        sink.close()
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
