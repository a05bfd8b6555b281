"""The benchmark harness runs end to end at its smallest size and prints every row.

No timing is asserted: the machine is shared and benchmarks are noisy. This only proves that
``make bench`` still works after a change (loopback feed server, real watcher, dispatcher, and
the PostgreSQL rows on a throw-away cluster, or their "skipped" row where PostgreSQL cannot run)
and that 1, 2 and 4 concurrent dispatchers on PostgreSQL published every item exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

WATCH_METRICS = [
    "sources x steady cycles", "baseline CPU (every answer 200)", "baseline wall",
    "steady CPU/cycle, mean (max)", "steady CPU per 1,000 sources",
    "parser CPU, /proc vs RUSAGE_CHILDREN", "steady wall/cycle, mean (max)",
    "steady answers that were 304",
    "peak RSS (watcher + parsers)", "detection latency p50", "detection latency p95",
    "changes detected / missed",
]
DISPATCH_METRICS = [
    "items (incl. activation msgs)", "throughput", "wall per item",
    "decision latency p50 / p99", "enqueue (one call)",
]
DISPATCH_PG_METRICS = [*DISPATCH_METRICS, "server CPU (PostgreSQL processes)",
                       "vs SQLite (same workload)"]
CONTENTION_METRICS = [
    "queue per run", "1 worker", "2 workers", "2 workers: published each, lost claims",
    "4 workers", "4 workers: published each, lost claims", "published exactly once",
]
PG_BENCHES = {"dispatch-10k-pg": DISPATCH_PG_METRICS, "claim-contention-pg": CONTENTION_METRICS}


@pytest.mark.slow
def test_quick_benchmarks_print_every_row(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out_json)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    out = proc.stdout
    assert out.startswith("machine: ")
    for name in ("watch-1000", "dispatch-10k", *PG_BENCHES, "drill-tta", "feed2toot"):
        assert name in out
    for metric in WATCH_METRICS + DISPATCH_METRICS:
        assert metric in out, metric
    assert "ERROR" not in out

    data = json.loads(out_json.read_text())
    machine = data["machine"]
    for key in ("cpu_model", "cores", "memory_gib", "python", "os"):
        assert machine[key], key
    assert data["quick"] is True
    assert data["results"]["drill-tta"] == {"skipped": "--quick"}
    assert data["results"]["feed2toot"] == {"skipped": "--quick"}
    watch = data["results"]["watch-1000"]
    assert watch["sources"] == 100
    assert watch["changes_missed"] == 0 and watch["changes_detected"] > 0
    assert watch["errors"] == {}
    assert watch["steady_share_304"] > 0.9  # conditional GETs really answered 304
    dispatch = data["results"]["dispatch-10k"]
    assert dispatch["published"] == dispatch["pending_at_start"] > 500
    rows = {(r["benchmark"], r["metric"]) for r in data["table"]}
    assert {("watch-1000", m) for m in WATCH_METRICS} <= rows
    assert {("dispatch-10k", m) for m in DISPATCH_METRICS} <= rows

    for name, metrics in PG_BENCHES.items():
        result = data["results"][name]
        if "skipped" in result:  # PostgreSQL cannot run here: one row says why
            assert result["skipped"] and result["skipped"] != "--quick"
            assert (name, "skipped") in rows, name
            continue
        for metric in metrics:
            assert metric in out, metric
        assert {(name, m) for m in metrics} <= rows, name
    dispatch_pg = data["results"]["dispatch-10k-pg"]
    if "skipped" not in dispatch_pg:
        assert dispatch_pg["published"] == dispatch_pg["pending_at_start"] \
            == dispatch["pending_at_start"]
        assert dispatch_pg["server_cpu_s"] >= 0
    contention = data["results"]["claim-contention-pg"]
    if "skipped" not in contention:
        assert [r["workers"] for r in contention["runs"]] == [1, 2, 4]
        for run in contention["runs"]:
            assert run["errors"] == [], run["errors"]
            assert run["published"] == run["queued"] == run["publish_calls"] > 0
            assert run["items_published_twice"] == 0
            assert run["db"]["items_published"] == run["queued"]
            assert run["db"]["items_with_2_published_events"] == 0
            assert run["exactly_once_ok"]
        assert contention["duplicates"] == 0
        verdicts = {r["metric"]: r["verdict"] for r in data["table"]
                    if r["benchmark"] == "claim-contention-pg"}
        assert verdicts["published exactly once"] == "ok"
