"""Run every benchmark and print one table (``make bench``).

    python -m benchmarks.run                 # everything, full size (a few minutes)
    python -m benchmarks.run --quick         # 100 sources, 500 items (PostgreSQL: 500, and
                                             # 100 per contention run); no drill, no feed2toot
    python -m benchmarks.run --only watch-1000 --only dispatch-10k
    python -m benchmarks.run --only dispatch-10k --only dispatch-10k-pg --only claim-contention-pg
    python -m benchmarks.run --profile prof/ # also write a cProfile file per benchmark

Each benchmark runs in its own process (``python -m benchmarks.<module> --json-out ...``) so
its CPU time and peak RSS are its own. The table and the machine's description are printed
and written as JSON (``--json``, default ``bench-results.json``). Targets are shown with a
verdict, never enforced: benchmarks on a shared machine are noisy. The exit status is
non-zero only when a benchmark could not run or a correctness check failed (an item published
twice, or not at all, in ``claim-contention-pg``).

The PostgreSQL benchmarks (``dispatch-10k-pg``, ``claim-contention-pg``) each start a
throw-away cluster (``tests.pgserver.PgCluster``) and stop it; where PostgreSQL cannot run they
print one "skipped" row with the reason and the run goes on.
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

from benchmarks.common import REPO
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
        ("steady CPU per 1,000 sources", f"{_f(per_k, 3)} s",
         "<= 1 s", _verdict(per_k <= 1.0)),
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


def f2t_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in r:
        return [("skipped", str(r["skipped"]), "", "")]
    return [
        ("feeds x cycles, nothing new", f"{r['feeds']} x {r['cycles']}", "", ""),
        ("feed2toot CPU/cycle",
         f"{_f(r['feed2toot_cpu_s'], 3)} s (start-up {_f(r['feed2toot_startup_cpu_s'], 3)})",
         "", ""),
        ("crisiscomms CPU/cycle",
         f"{_f(r['crisiscomms_cpu_s'], 3)} s ({100 * r['crisiscomms_share_304']:.0f} % 304)",
         "", ""),
        ("CPU ratio feed2toot / crisiscomms",
         f"{_f(r['cpu_ratio'], 1)}x ({_f(r['cpu_ratio_excl_startup'], 1)}x without "
         "feed2toot's start-up)", "", ""),
        ("wall/cycle feed2toot vs crisiscomms",
         f"{_f(r['feed2toot_wall_s'], 3)} vs {_f(r['crisiscomms_wall_s'], 3)} s "
         f"({_f(r['wall_ratio'], 1)}x)", "", ""),
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
    Bench("feed2toot", "benchmarks.feed2toot_cmp", ["--feeds", "200", "--cycles", "5"], None,
          f2t_rows),
]


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
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        result = run_one(bench, bench_args, args.profile)
        results[bench.name] = result
        if "error" in result:
            failed = True
            rows.append((bench.name, "ERROR", result["error"][:300], "", ""))
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
    payload = {"machine": machine, "quick": args.quick,
               "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": results,
               "table": [dict(zip(("benchmark", "metric", "value", "target", "verdict"), r,
                                  strict=True)) for r in rows]}
    args.json.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nresults written to {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
