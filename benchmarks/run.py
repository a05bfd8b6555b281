"""Run every benchmark and print one table (``make bench``).

    python -m benchmarks.run                 # everything, full size (a few minutes)
    python -m benchmarks.run --quick         # 100 sources, 500 items (PostgreSQL: 500, and
                                             # 100 per contention run), the issue-14 rows at
                                             # their smallest; no drill, 10k or demo
    python -m benchmarks.run --only watch-1000 --only dispatch-10k
    python -m benchmarks.run --only dispatch-10k --only dispatch-10k-pg --only claim-contention-pg
    python -m benchmarks.run --profile prof/ # also write a cProfile file per benchmark

Each benchmark runs in its own process (``python -m benchmarks.<module> --json-out ...``) so
its CPU time and peak RSS are its own. The table and the machine's description are printed
and written as JSON (``--json``, default ``bench-results.json``), then issue 14's table row by
row (``ISSUE14``) with this run's figures: min / median / max of three runs (each module
repeats itself, ``watch-10k`` is run three times), the verdict on the median. Targets are shown
with a verdict, never enforced: benchmarks on a shared machine are noisy. The exit status is
non-zero only when a benchmark could not run or a correctness check failed (an item published
twice, or not at all, in ``claim-contention-pg``; a changed feed's entry recorded twice, or not
at all, in ``shared-pg``).

The PostgreSQL benchmarks (``dispatch-10k-pg``, ``claim-contention-pg``, ``shared-pg``) each
start a throw-away cluster (``tests.pgserver.PgCluster``) and stop it; where PostgreSQL cannot
run they print one "skipped" row with the reason and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, compile_package
from benchmarks.machine import describe


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    full_args: list[str]
    quick_args: list[str] | None  # None: skipped with --quick
    rows: Callable[[dict[str, Any]], list[tuple[str, str, str, str]]]
    timeout: float = 1800.0
    # Rows that compare with benchmarks run before this one (their results so far).
    compare: Callable[[dict[str, Any], dict[str, Any]], list[tuple[str, str, str, str]]] \
        | None = None
    # A correctness check on the result: False fails the run (not a target, never noise).
    check: Callable[[dict[str, Any]], bool] | None = None
    # Full runs only: run the module this many times; ``rows`` gets ``{"runs": [...]}``.
    repeat: int = 1


def _f(x: Any, digits: int = 2) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if isinstance(x, float | int):
        return f"{x:,.{digits}f}"
    return str(x)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISS")


def watch_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    b = r["baseline"]
    n = r["sources"]
    interval = r["interval_s"]
    per_k = r["steady_cpu_total_per_1000_sources_s"]
    p95 = r["detection_latency_p95_s"]
    rss = r["peak_rss_total_mb"]
    return [
        ("sources x steady cycles", f"{n} x {r['cycles']} (interval {interval:g} s)", "", ""),
        ("baseline CPU (every answer 200)",
         f"{_f(b['cpu_total_s'])} s (self {_f(b['cpu_self_s'])} + parsers "
         f"{_f(b['cpu_workers_s'])})", "", ""),
        ("baseline wall", f"{_f(b['wall_s'])} s", "", ""),
        ("steady CPU/cycle, mean (max)",
         f"{_f(r['steady_cpu_total_s_mean'], 3)} s ({_f(r['steady_cpu_total_s_max'], 3)}); "
         f"self {_f(r['steady_cpu_self_s_mean'], 3)} + parsers "
         f"{_f(r['steady_cpu_workers_s_mean'], 3)}", "", ""),
        # poll_cycle alone, in-process: the 2 s ticks are left out, so no target here (the
        # real loop, ticks included, is watch-loop's "loop CPU per 30 s").
        ("steady CPU per 1,000 sources",
         f"{_f(per_k, 3)} s (poll_cycle only, no ticks: see watch-loop)", "", ""),
        ("parser CPU, /proc vs RUSAGE_CHILDREN",
         f"{_f(r['workers_cpu_total_proc_s'])} vs {_f(r['workers_cpu_total_rusage_s'])} s "
         "(whole run; workers reaped at the end)", "", ""),
        ("steady wall/cycle, mean (max)",
         f"{_f(r['steady_wall_s_mean'])} s ({_f(r['steady_wall_s_max'])})", "", ""),
        ("steady answers that were 304", f"{100 * r['steady_share_304']:.1f} %", "", ""),
        ("new connections over the steady polls",
         f"{r['steady_new_connections']} for {r['steady_polls']} polls",
         f"<= {r.get('server_hosts', 10) * 2} (2 per host: reused)",
         _verdict(0 <= r["steady_new_connections"] <= r.get("server_hosts", 10) * 2)),
        ("peak RSS (watcher + parsers)",
         f"{_f(rss, 0)} MB ({_f(r['peak_rss_self_mb'], 0)} + "
         f"{_f(r['peak_rss_workers_mb'], 0)})", "<= 250 MB", _verdict(rss <= 250)),
        ("detection latency p50", f"{_f(r['detection_latency_p50_s'])} s", "", ""),
        ("detection latency p95", f"{_f(p95)} s", f"<= {interval + 1:g} s",
         _verdict(p95 <= interval + 1)),
        ("changes detected / missed",
         f"{r['changes_detected']} / {r['changes_missed']}", "0 missed",
         _verdict(r["changes_missed"] == 0 and not r["errors"])),
    ]


def dispatch_rows(r: dict[str, Any], *, target: bool = True) -> list[tuple[str, str, str, str]]:
    ips = r["items_per_s"]
    return [
        ("items (incl. activation msgs)",
         f"{r['published']:,} published of {r['pending_at_start']:,} in {r['ticks']} ticks",
         "", ""),
        ("throughput", f"{_f(ips, 0)} items/s ({_f(r['wall_s'])} s wall, "
         f"{_f(r['cpu_s'])} s CPU)", ">= 500 items/s" if target else "",
         _verdict(ips >= 500) if target else ""),
        ("wall per item", f"{_f(r['wall_per_item_ms'], 3)} ms", "", ""),
        ("decision latency p50 / p99",
         f"{_f(r['decision_p50_ms'], 3)} / {_f(r['decision_p99_ms'], 3)} ms "
         f"(max {_f(r['decision_max_ms'], 1)})", "", ""),
        ("enqueue (one call)", f"{_f(r['enqueue_s'], 3)} s for {r['items_enqueued']:,}",
         "", ""),
    ]


def skipped_row(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("skipped", str(r["skipped"]), "", "")]


def dispatch_pg_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return skipped_row(r)
    rows = dispatch_rows(r, target=False)
    rows.insert(2, ("server CPU (PostgreSQL processes)",
                    f"{_f(r['server_cpu_s'])} s during the ticks (client CPU above)", "", ""))
    return rows


def dispatch_compare_rows(r: dict[str, Any],
                          before: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return []
    sq = before.get("dispatch-10k", {})
    if "items_per_s" not in sq:
        return [("vs SQLite (same workload)", "n/a: dispatch-10k not in this run", "", "")]
    pg_cpu = 1000 * (r["cpu_s"] + r["server_cpu_s"]) / max(1, r["published"])
    sq_cpu = 1000 * sq["cpu_s"] / max(1, sq["published"])
    return [("vs SQLite (same workload)",
             f"{r['items_per_s'] / sq['items_per_s']:.2f}x the items/s "
             f"({_f(r['items_per_s'], 0)} vs {_f(sq['items_per_s'], 0)}); CPU/item "
             f"{pg_cpu:.2f} ms (client+server) vs {sq_cpu:.2f} ms", "", "")]


def _workers(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


def contention_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return skipped_row(r)
    runs = r["runs"]
    rows = [("queue per run", f"{runs[0]['queued']:,} items pending, crisis active, dry-run "
             "publishers; fresh database per run", "", "")]
    for k, run in enumerate(runs):
        n = run["workers"]
        speedup = f"; {_f(run['speedup_vs_first'])}x of {_workers(runs[0]['workers'])}" \
            if k else ""
        rows.append((_workers(n),
                     f"{_f(run['items_per_s'], 0)} items/s ({_f(run['wall_s'])} s wall; CPU "
                     f"{_f(run['cpu_s'])} s client, {_f(run['server_cpu_s'])} s server)"
                     f"{speedup}", "", ""))
        if n > 1:
            split = " / ".join(f"{w['published']:,}" for w in run["per_worker"])
            rows.append((f"{_workers(n)}: published each, lost claims",
                         f"{split}; {run['lost_claims']:,} items decided but taken by another "
                         "worker", "", ""))
    errors = [e for run in runs for e in run["errors"]]
    published = ", ".join(f"{run['published']:,}" for run in runs)
    value = (f"{published} of {runs[0]['queued']:,} published; {r['duplicates']} duplicates "
             "(publish calls, history, audit)")
    if errors:
        value += f"; worker crashed: {errors[0]}"
    rows.append(("published exactly once", value, "0 duplicates",
                 _verdict(bool(r["exactly_once_ok"]))))
    return rows


def contention_ok(r: dict[str, Any]) -> bool:
    return "skipped" in r or bool(r["exactly_once_ok"])


def drill_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        ("drill wall time", f"{_f(r['wall_s'])} s ({_f(r['cpu_s'])} s CPU, simulator "
         "in-process)", "", ""),
        ("expectations", "all met" if r["expectations_ok"]
         else f"FAILED: {'; '.join(r['failed_expectations'])[:200]}", "all met",
         _verdict(r["expectations_ok"])),
        ("TTA crisis relays p50/p95/p99",
         f"{_f(r['tta_p50_s'], 0)} / {_f(r['tta_p95_s'], 0)} / {_f(r['tta_p99_s'], 0)} s "
         f"(n={r['relays_crisis']}, max {_f(r['tta_max_s'], 0)})", "", ""),
        ("TTA live (after activation)",
         f"{_f(r['tta_live_p50_s'], 0)} / {_f(r['tta_live_p95_s'], 0)} / "
         f"{_f(r['tta_live_p99_s'], 0)} s (n={r['relays_live']})", "", ""),
        ("TTA normal-mode relays p50",
         f"{_f(r['tta_normal_p50_s'], 0)} s (n={r['relays_normal']}, manual approval)",
         "", ""),
    ]


def _mmm(s: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """min / median / max of a ``common.summary``."""
    if not s or not s.get("n"):
        return "n/a"
    u = f" {unit}" if unit else ""
    if s["n"] == 1:
        return f"{_f(s['median'], digits)}{u} (1 run)"
    return (f"{_f(s['min'], digits)} / {_f(s['median'], digits)} / "
            f"{_f(s['max'], digits)}{u}")


def _ok_max(s: dict[str, Any], limit: float) -> bool | None:
    """The verdict on the median of the runs (the min and max are printed beside it)."""
    if not s or not s.get("n"):
        return None
    return bool(s["median"] <= limit)


def amplify_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    polled = r["polled"]
    pipe = r["pipeline"]
    runs = r["runs"]
    pushed = ", ".join(r["push_kinds"]) if r["push_kinds"] else ""
    return [
        ("updates x channels, crisis active",
         f"{r['updates']} updates x {runs[0]['channels']} channels per run; relayed posts "
         f"{', '.join(str(x) for x in r['relayed_posts'])} "
         f"({', '.join(str(x) for x in r['relayed_updates'])} updates; the policy picks the "
         "channels); default polling settings (incident_interval_seconds "
         f"{runs[0]['poll_interval_s']:g}; the watcher's pacing decides)", "", ""),
        ("TTA polled p50 (min/med/max)", _mmm(polled["p50"], 1, "s"), "", ""),
        ("TTA polled p95 (min/med/max)", _mmm(polled["p95"], 1, "s"), "<= 8 s",
         _verdict(_ok_max(polled["p95"], 8.0))),
        ("TTA polled max (min/med/max)", _mmm(polled["max"], 1, "s"), "", ""),
        *(pushed_rows(r["pushed"], pushed) if r.get("pushed") else [
            ("TTA pushed p95 (min/med/max)", "no source kind pushes", "<= 3 s", "")]),
        ("pipeline p99 incl. first update", _mmm(pipe["p99"], 3, "s"), "<= 0.5 s",
         _verdict(_ok_max(pipe["p99"], 0.5))),
        ("pipeline first update after start", _mmm(pipe["first_update"], 3, "s"), "", ""),
    ]


def pushed_rows(p: dict[str, Any], kinds: str) -> list[tuple[str, str, str, str]]:
    return [
        ("TTA pushed: what", f"sources that push ({kinds}): the fediverse drill's Mastodon and "
         f"Bluesky accounts; relayed posts {', '.join(str(x) for x in p['relayed_posts'])} "
         f"({', '.join(str(x) for x in p['relayed_updates'])} updates) per run", "", ""),
        ("TTA pushed p50 (min/med/max)", _mmm(p["p50"], 2, "s"), "", ""),
        ("TTA pushed p95 (min/med/max)", _mmm(p["p95"], 2, "s"), "<= 3 s",
         _verdict(_ok_max(p["p95"], 3.0))),
        ("TTA pushed max (min/med/max)", _mmm(p["max"], 2, "s"), "", ""),
    ]


def loop_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    g = r["idle_get"]
    cli = r["cli"]
    runs = r["loop_runs"]
    return [
        ("real `crisiscomms watch` process",
         f"{r['sources']} sources, interval {r['interval_s']:g} s, {r['cycles']} interval(s) "
         f"measured per run, 99 % 304; polls per run {r['polls_per_run']}", "", ""),
        ("loop CPU per 30 s (process tree)",
         _mmm(r.get("cpu_per_1000_polls", r["cpu_per_30s"]), 3, "CPU-s per 1,000 polls")
         + f" (per window: {_mmm(r['cpu_per_30s'], 3, 'CPU-s per 30 s')})",
         "<= 0.5 CPU-s", _verdict(_ok_max(r.get("cpu_per_1000_polls", r["cpu_per_30s"]), 0.5))),
        ("loop RSS (process tree)",
         " / ".join(f"{x['rss_mb']:.0f}" for x in runs) + " MB", "", ""),
        ("new connections per 1,000 polls", _mmm(r["connections_per_1000_polls"], 1),
         "<= 20 (reused)", _verdict(_ok_max(r["connections_per_1000_polls"], 20.0))),
        ("idle conditional GET: crisiscomms", _mmm(g["crisiscomms_ms"], 3, "ms CPU"),
         "<= 0.5 ms", _verdict(_ok_max(g["crisiscomms_ms"], 0.5))),
        ("idle conditional GET: bare httpx", _mmm(g["httpx_ms"], 3, "ms CPU"), "", ""),
        ("idle conditional GET: raw sockets", _mmm(g["sockets_ms"], 3, "ms CPU"), "", ""),
        ("`crisiscomms --help` CPU (min of 3)", _mmm(cli["help_cpu_s"], 3, "s"), "", ""),
        ("`crisiscomms status` CPU (min of 3)", _mmm(cli["status_cpu_s"], 3, "s"), "<= 0.25 s",
         _verdict(_ok_max(cli["status_cpu_s"], 0.25))),
    ]


def scale_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    from benchmarks.common import summary

    runs = r["runs"]
    interval = runs[0]["interval_s"]
    wall = summary([x["steady_wall_s_max"] for x in runs])
    base = summary([x["baseline"]["wall_s"] for x in runs])
    rss = summary([x["peak_rss_total_mb"] for x in runs])
    missed = sum(x["changes_missed"] for x in runs)
    return [
        ("sources", f"{runs[0]['sources']:,} (one watcher, SQLite, in-process cycles)", "", ""),
        ("steady cycle wall (min/med/max)", _mmm(wall, 1, "s"), f"<= {interval:g} s",
         _verdict(_ok_max(wall, interval))),
        ("first cycle wall (all 200)", _mmm(base, 1, "s"), "", ""),
        ("peak RSS (watcher + parsers)", _mmm(rss, 0, "MB"), "<= 400 MB",
         _verdict(_ok_max(rss, 400.0))),
        ("changes missed", str(missed), "0", _verdict(missed == 0)),
    ]


def _slash(values: list[Any], digits: int = 0, unit: str = "") -> str:
    return " / ".join(_f(float(v), digits) for v in values) + (f" {unit}" if unit else "")


def _events(counts: dict[str, int], prefix: str) -> int:
    """Log events whose ``level:event[:error_class]`` name starts with ``prefix``."""
    return sum(n for k, n in counts.items() if k == prefix or k.startswith(f"{prefix}:"))


def shared_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return skipped_row(r)
    n, w, interval, jitter = r["sources"], r["watchers"], r["interval_s"], r["jitter_s"]
    expected = r["expected_polls_per_30s"]
    most = n * 30.0 / interval  # every source once per interval, never more often
    shares = r["per_watcher_share"]
    fair = 1.0 / w
    once = r["exactly_once"]
    first = r["log_events_first_cycle"]
    window = r["log_events_window"]
    start = r["store_at_window_start"]
    converged = bool(r["baseline_converged"])
    took = (f"in {_f(r['first_cycle_wall_s'], 0)} s" if converged
            else f"after {_f(r['baseline_timeout_s'], 0)} s (the window started anyway)")
    rows = [
        ("sources x watchers",
         f"{n:,} sources, {w} `crisiscomms watch` processes on one PostgreSQL database, "
         f"interval {interval:g} s + jitter 0-{jitter:g} s, {r['cycles']} interval(s) "
         f"measured, 99 % 304", "", ""),
        ("first cycle (every feed 200)",
         f"{start['baselined']:,} of {n:,} sources baselined {took}; 200s by watcher "
         f"{_slash(r['baseline_200s_per_watcher'])}; {start['claims']:,} claims; polls failed "
         f"{_slash([_events(e, 'warning:source.failed') for e in first])}, overtaken "
         f"{_slash([_events(e, 'warning:source.poll_overtaken') for e in first])}",
         "all baselined", _verdict(converged)),
        ("polls per 30 s (all watchers)",
         f"{_f(r['polls_per_30s'], 0)} ({r['polls']:,} in {_f(r['window_s'], 0)} s; each "
         f"source once per {interval:g}-{interval + jitter:g} s is {_f(expected, 0)}); store "
         f"claims {r['store_claims']:,}",
         f"{_f(0.97 * expected, 0)}-{_f(most, 0)} (interval kept)",
         _verdict(0.97 * expected <= r["polls_per_30s"] <= most)),
        ("polls per watcher per 30 s (share)",
         " / ".join(f"{_f(x, 0)} ({100 * s:.0f} %)"
                    for x, s in zip(r["per_watcher_polls_per_30s"], shares, strict=True))
         + "; per interval " + ", ".join(_slash(i["per_watcher"]) for i in r["per_interval"])
         + f"; {100 * r['handover_share']:.0f} % of polls by another watcher than the "
         f"previous one; {r['unattributed_polls']} unattributed",
         f"each >= {100 * fair / 2:.0f} %", _verdict(min(shares) >= fair / 2)),
        ("duplicate polls (< half an interval apart)",
         f"{r['duplicates']} ({r['sources_with_duplicates']} sources)", "0",
         _verdict(r["duplicates"] == 0)),
        ("sources late (gap > interval + jitter + 2 ticks + 1 s)",
         f"{r['sources_late']} ({r['late']} gaps); gap p50 / p99 / max "
         f"{_f(r['gap_p50_s'], 1)} / {_f(r['gap_p99_s'], 1)} / {_f(r['gap_max_s'], 1)} s",
         "0", _verdict(r["sources_late"] == 0)),
        ("polls failed / overtaken in the window",
         f"failed {_slash([_events(e, 'warning:source.failed') for e in window])}, overtaken "
         f"{_slash([_events(e, 'warning:source.poll_overtaken') for e in window])} (by "
         "watcher)", "0", _verdict(not any(
             _events(e, "warning:source.failed") + _events(e, "warning:source.poll_overtaken")
             for e in window))),
        ("watcher CPU per 30 s (process tree)", _slash(r["cpu_per_30s"], 2, "CPU-s"), "", ""),
        ("watcher peak RSS (process tree)", _slash(r["peak_rss_mb"], 0, "MB"),
         "<= 400 MB each", _verdict(max(r["peak_rss_mb"]) <= 400)),
        ("PostgreSQL CPU per 30 s",
         f"{_f(r['postgres_cpu_per_30s'])} CPU-s (feed server "
         f"{_f(r['feed_server_cpu_per_30s'])})", "", ""),
        ("new entries recorded exactly once",
         f"{once['recorded']} of {once['expected']} recorded, {once['recorded_twice']} twice, "
         f"{once['missing']} missing; {once['outbox_items']} outbox items, "
         f"{once['outbox_items_twice']} twice; {once['audit_poll_overtaken']} polls overtaken",
         "exactly once", _verdict(bool(once["ok"]))),
    ]
    return rows


def shared_ok(r: dict[str, Any]) -> bool:
    return "skipped" in r or bool(r["exactly_once"]["ok"])


def demo_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [("`make demo` wall (installed)", _mmm(r["wall_s"], 1, "s"), "<= 30 s",
             _verdict(_ok_max(r["wall_s"], 30.0) if not any(r["exit_codes"]) else False)),
            ("`make demo` CPU", _mmm(r["cpu_s"], 1, "s")
             + (f"; exit codes {r['exit_codes']}" if any(r["exit_codes"]) else ""), "", "")]


def f2t_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return [("skipped", str(r["skipped"]), "", "")]
    return [
        ("feeds, nothing new", f"{r['feeds']} feeds, {r['runs']} interleaved runs "
         f"(feed2toot {r['feed2toot_version']})", "", ""),
        ("whole process CPU: feed2toot", _mmm(r["whole_feed2toot_cpu_s"], 3, "s"), "", ""),
        ("whole process CPU: `watch --once`", _mmm(r["whole_crisiscomms_cpu_s"], 3, "s")
         + f" ({', '.join(str(x) for x in r['whole_crisiscomms_304'])} answers 304)", "", ""),
        ("whole process ratio feed2toot/ours", _mmm(r["whole_cpu_ratio"], 2, "x"), ">= 5x",
         _verdict(None if not r["whole_cpu_ratio"].get("n")
                  else r["whole_cpu_ratio"]["median"] >= 5)),
        ("feed2toot start-up CPU", _mmm(r["feed2toot_startup_cpu_s"], 3, "s"), "", ""),
        ("steady: feed2toot run less start-up", _mmm(r["steady_feed2toot_cpu_s"], 3, "s"),
         "", ""),
        ("steady: `watch` loop per 30 s cycle", _mmm(r["steady_crisiscomms_cpu_per_cycle_s"],
                                                   3, "s"), "", ""),
        ("steady loop ratio feed2toot/ours", _mmm(r["steady_cpu_ratio"], 1, "x"), ">= 10x",
         _verdict(None if not r["steady_cpu_ratio"].get("n")
                  else r["steady_cpu_ratio"]["median"] >= 10)),
        ("feed2toot posts when 2 entries new",
         f"{r['sanity_feed2toot_posted']} of {r['sanity_new_entries']} (fake Mastodon)",
         "all", _verdict(r["sanity_feed2toot_posted"] == r["sanity_new_entries"])),
    ]


BENCHES = [
    Bench("watch-1000", "benchmarks.watch", ["--feeds", "1000", "--cycles", "6"],
          ["--feeds", "100", "--cycles", "2"], watch_rows),
    Bench("dispatch-10k", "benchmarks.dispatch", ["--items", "10000"], ["--items", "500"],
          dispatch_rows),
    # The same workload on PostgreSQL, right after the SQLite one, so the ratio means something.
    Bench("dispatch-10k-pg", "benchmarks.dispatch", ["--items", "10000", "--store", "postgresql"],
          ["--items", "500", "--store", "postgresql"], dispatch_pg_rows,
          compare=dispatch_compare_rows),
    Bench("claim-contention-pg", "benchmarks.claim_contention",
          ["--items", "4000", "--workers", "1,2,4"], ["--items", "100", "--workers", "1,2,4"],
          contention_rows, check=contention_ok),
    Bench("drill-tta", "benchmarks.drill_tta", [], None, drill_rows),
    # Issue 14's rows: the real watch path on the real clock, the watch process, the HTTP path.
    Bench("amplify", "benchmarks.amplify", ["--updates", "20", "--runs", "3"],
          ["--updates", "2", "--runs", "1", "--poll-interval", "2", "--timeout", "40",
           "--push-spread", "2"],
          amplify_rows),
    Bench("watch-loop", "benchmarks.loop",
          ["--feeds", "1000", "--cycles", "1", "--interval", "30", "--runs", "3"],
          ["--feeds", "50", "--cycles", "1", "--interval", "3", "--runs", "1",
           "--gets", "50"], loop_rows),
    Bench("watch-10k", "benchmarks.watch", ["--feeds", "10000", "--cycles", "1"], None,
          scale_rows, repeat=3),
    # Two real watchers on one PostgreSQL database share 20,000 sources (issue 14).
    Bench("shared-pg", "benchmarks.shared_pg",
          ["--feeds", "20000", "--watchers", "2", "--cycles", "3", "--interval", "30"],
          ["--feeds", "400", "--watchers", "2", "--cycles", "2", "--interval", "5",
           "--jitter", "0.5"], shared_rows, check=shared_ok),
    Bench("feed2toot", "benchmarks.feed2toot_cmp", ["--feeds", "200", "--runs", "3"],
          ["--feeds", "20", "--runs", "1", "--interval", "3", "--no-install"], f2t_rows),
    Bench("demo", "benchmarks.demo", ["--runs", "3"], None, demo_rows),
]


# Issue 14's table, row by row: (its "what", the rows of this run that answer it).
ISSUE14 = [
    ("time to amplify, real watch path (polled)",
     [("amplify", "TTA polled p50 (min/med/max)"), ("amplify", "TTA polled p95 (min/med/max)"),
      ("amplify", "TTA polled max (min/med/max)")]),
    ("time to amplify (pushed sources)", [("amplify", "TTA pushed p95 (min/med/max)")]),
    ("internal pipeline (poll sees it -> accepted)",
     [("amplify", "pipeline p99 incl. first update"),
      ("amplify", "pipeline first update after start")]),
    ("CPU of the real watch loop, 1,000 sources",
     [("watch-loop", "loop CPU per 30 s (process tree)")]),
    ("CPU per idle conditional GET",
     [("watch-loop", "idle conditional GET: crisiscomms"),
      ("watch-loop", "idle conditional GET: bare httpx"),
      ("watch-loop", "idle conditional GET: raw sockets")]),
    ("connections", [("watch-loop", "new connections per 1,000 polls"),
                     ("watch-1000", "new connections over the steady polls")]),
    ("10,000 sources", [("watch-10k", "steady cycle wall (min/med/max)"),
                        ("watch-10k", "peak RSS (watcher + parsers)")]),
    ("two watchers on PostgreSQL, 20,000 sources",
     [("shared-pg", "first cycle (every feed 200)"),
      ("shared-pg", "polls per 30 s (all watchers)"),
      ("shared-pg", "polls per watcher per 30 s (share)"),
      ("shared-pg", "duplicate polls (< half an interval apart)"),
      ("shared-pg", "watcher peak RSS (process tree)")]),
    ("CLI start-up", [("watch-loop", "`crisiscomms --help` CPU (min of 3)"),
                      ("watch-loop", "`crisiscomms status` CPU (min of 3)")]),
    ("feed2toot, 200 unchanged feeds", [("feed2toot", "whole process ratio feed2toot/ours"),
                                        ("feed2toot", "steady loop ratio feed2toot/ours")]),
    ("`make demo`, installed", [("demo", "`make demo` wall (installed)")]),
]


def issue14_rows(rows: list[tuple[str, str, str, str, str]]) -> list[tuple[str, ...]]:
    """The closing summary: every row of issue 14's table with this run's figures."""
    by_key = {(r[0], r[1]): r for r in rows}
    skipped = {r[0]: r[2] for r in rows if r[1] in ("skipped", "ERROR")}
    out: list[tuple[str, ...]] = []
    for what, keys in ISSUE14:
        for bench, metric in keys:
            row = by_key.get((bench, metric))
            if row is not None:
                out.append((what, metric, row[2], row[3], row[4]))
            else:
                why = skipped.get(bench, "not in this run")
                out.append((what, metric, f"not measured: {why}", "", ""))
    out.append(("`make test` wall time", "-", "not measured by make bench", "<= 4 min", ""))
    return out


def run_one(bench: Bench, args: list[str], profile_dir: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable]
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["-m", "cProfile", "-o", str(profile_dir / f"{bench.name}.prof")]
        cmd += ["-m", bench.module, *args, "--json-out", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,  # noqa: S603
                                  timeout=bench.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {bench.timeout:g} s"}
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text())
        result["harness_elapsed_s"] = elapsed
        return result


def render(machine: dict[str, Any], rows: list[tuple[str, str, str, str, str]]) -> str:
    head = ("benchmark", "metric", "value", "target", "verdict")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    widths[2] = min(widths[2], 70)
    lines = [
        f"machine: {machine['cpu_model']}; {machine['cores']} cores "
        f"({machine['cores_usable']} usable); {machine['memory_gib']} GiB; "
        f"Python {machine['python']}; {machine['os']} (kernel {machine['kernel']}); "
        f"SQLite {machine['sqlite']}; PostgreSQL {machine.get('postgresql') or 'none'}; "
        f"load {machine['load_avg_at_start']}; "
        f"commit {machine['commit'] or '?'}",
        "",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths).rstrip(),
    ]
    last = None
    for row in rows:
        name = row[0] if row[0] != last else ""
        last = row[0]
        cells = (name, *row[1:])
        lines.append("  ".join(str(c).ljust(w) for c, w in
                               zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_plain(rows: list[tuple[str, ...]]) -> str:
    head = ("what", "metric", "value", "target", "verdict")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    widths[2] = min(widths[2], 70)
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths).rstrip()]
    last = None
    for row in rows:
        cells = (row[0] if row[0] != last else "", *row[1:])
        last = row[0]
        lines.append("  ".join(str(c).ljust(w) for c, w in
                               zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                description="Run every benchmark and print one table.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes (100 sources, 500 items, 100 per contention run); skip "
                   "the drill and feed2toot")
    p.add_argument("--only", action="append", choices=[b.name for b in BENCHES],
                   help="run only this benchmark (repeatable)")
    p.add_argument("--json", type=Path, default=REPO / "bench-results.json",
                   help="where to write the results (default: bench-results.json)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="write a cProfile file per benchmark into DIR")
    args = p.parse_args(argv)
    compile_package()  # every benchmark runs crisiscomms from bytecode, as installed
    machine = describe()
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str, str]] = []
    failed = False
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            continue
        bench_args = bench.quick_args if args.quick else bench.full_args
        if bench_args is None:
            results[bench.name] = {"skipped": "--quick"}
            rows.append((bench.name, "skipped", "--quick", "", ""))
            continue
        print(f"running {bench.name} ... ({time.strftime('%H:%M:%S')})", file=sys.stderr,
              flush=True)
        if bench.repeat > 1:
            each = [run_one(bench, bench_args, args.profile) for _ in range(bench.repeat)]
            bad = [r for r in each if "error" in r]
            result: dict[str, Any] = bad[0] if bad else {"runs": each}
        else:
            result = run_one(bench, bench_args, args.profile)
        results[bench.name] = result
        if "error" in result:
            failed = True
            rows.append((bench.name, "ERROR", str(result["error"])[:300], "", ""))
            continue
        try:
            rows += [(bench.name, *r) for r in bench.rows(result)]
            if bench.compare is not None:
                rows += [(bench.name, *r) for r in bench.compare(result, results)]
            if bench.check is not None and not bench.check(result):
                failed = True
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            failed = True
            rows.append((bench.name, "ERROR", f"bad result: {exc!r}", "", ""))
    table = render(machine, rows)
    print(table)
    summary_rows = issue14_rows(rows)
    print("\nissue 14, row by row (min / median / max of the runs; verdict on the median):")
    print(render_plain(summary_rows))
    payload = {"machine": machine, "quick": args.quick,
               "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": results,
               "table": [dict(zip(("benchmark", "metric", "value", "target", "verdict"), r,
                                  strict=True)) for r in rows],
               "issue14": [dict(zip(("what", "metric", "value", "target", "verdict"), r,
                                    strict=True)) for r in summary_rows]}
    args.json.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
