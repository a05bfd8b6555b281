"""``drill-tta``: run the bundled Essex flood drill (the real watcher and dispatcher against
the loopback simulator on a simulated clock) and measure time-to-amplify.

For every post the simulator accepted that relays a source update, TTA = the simulator's
``received_at`` minus the source's publish time, in simulated seconds. The simulator and the
dispatcher share the drill's ``FixedClock``, so ``received_at`` equals the published outbox
item's ``done_at``; the pairs are read from the drill's store (``drill.db``): published
outbox items joined with their ``updates`` row (``published_at``). Crisis-mode relays
(``incident_id`` set) are the headline; normal-mode relays (which wait for a person's
approval and staffed hours by design) are counted separately, and so are the "live" crisis
relays: updates published after the incident was activated (the others are the backfill of
the lead agency's earlier updates, whose TTA includes the wait for someone to activate).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, percentile, quiet_logging, self_peak_rss_mb, write_result


def run(scenario: Path) -> dict[str, Any]:
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import parse_instant
    from crisiscomms.drill import run_drill

    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-drill-") as tmp:
        home = Path(tmp) / "home"
        c0, t0 = time.process_time(), time.perf_counter()
        result = run_drill(scenario, home=home)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        store = open_store(f"sqlite:///{result.home / 'drill.db'}")
        try:
            rows = store.query(
                "SELECT o.done_at, o.incident_id, u.published_at, i.activated_at FROM outbox o "
                "JOIN updates u ON u.id = o.update_id "
                "LEFT JOIN incidents i ON i.id = o.incident_id WHERE o.state = 'published'")
        finally:
            store.close()
    crisis: list[float] = []
    live: list[float] = []  # crisis relays of updates published after activation
    normal: list[float] = []
    for r in rows:
        published = parse_instant(r["published_at"])
        tta = (parse_instant(r["done_at"]) - published).total_seconds()
        if r["incident_id"] is None:
            normal.append(tta)
            continue
        crisis.append(tta)
        if published >= parse_instant(r["activated_at"]):
            live.append(tta)
    return {
        "scenario": str(scenario.relative_to(REPO) if scenario.is_relative_to(REPO)
                        else scenario),
        "expectations_ok": result.ok,
        "failed_expectations": [str(o) for o in result.outcomes if not o.ok],
        "wall_s": wall, "cpu_s": cpu,
        "relays_crisis": len(crisis), "relays_normal": len(normal),
        "tta_p50_s": percentile(crisis, 50), "tta_p95_s": percentile(crisis, 95),
        "tta_p99_s": percentile(crisis, 99), "tta_max_s": max(crisis, default=float("nan")),
        "relays_live": len(live), "tta_live_p50_s": percentile(live, 50),
        "tta_live_p95_s": percentile(live, 95), "tta_live_p99_s": percentile(live, 99),
        "tta_live_max_s": max(live, default=float("nan")),
        "tta_normal_p50_s": percentile(normal, 50),
        "tta_normal_max_s": max(normal, default=float("nan")),
        "peak_rss_mb": self_peak_rss_mb(),
        "method": ("TTA = simulator received_at (= outbox done_at, same simulated clock) "
                   "- update published_at, over published items relaying an update"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="drill-tta benchmark")
    p.add_argument("--scenario", type=Path,
                   default=REPO / "playbooks" / "drills" / "essex-flood.yaml")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    sink = quiet_logging()
    try:
        result = run(args.scenario.resolve())
    finally:
        sink.close()
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
