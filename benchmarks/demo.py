"""``demo``: the wall time of what ``make demo`` runs once installed (the install step is a
no-op then): ``crisiscomms drill playbooks/drills/essex-flood.yaml --speed 0 --report ...``,
the installed console script in a fresh process, its own data dir and report path. CPU from
``RUSAGE_CHILDREN``. Repeated ``--runs`` times.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, children_cpu_seconds, summary, write_result
from benchmarks.loop import CRISISCOMMS, watch_env


def run_once(scenario: Path) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-demo-") as t:
        tmp = Path(t)
        (tmp / "home").mkdir()
        env = watch_env(tmp / "home", REPO / "playbooks", 60.0)
        del env["CRISISCOMMS_POLLING__INTERVAL_SECONDS"]
        del env["CRISISCOMMS_ALLOW_PRIVATE_SOURCES"]
        c0, t0 = children_cpu_seconds(), time.perf_counter()
        proc = subprocess.run(  # noqa: S603
            [str(CRISISCOMMS), "drill", str(scenario), "--speed", "0",
             "--report", str(tmp / "demo-report.html")],
            cwd=REPO, env=env, capture_output=True, timeout=1200)
        wall = time.perf_counter() - t0
        cpu = children_cpu_seconds() - c0
    return wall, cpu, proc.returncode


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="make demo wall time")
    p.add_argument("--scenario", type=Path,
                   default=REPO / "playbooks" / "drills" / "essex-flood.yaml")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    runs = [run_once(args.scenario) for _ in range(args.runs)]
    result: dict[str, Any] = {
        "runs": args.runs, "wall_s": summary([w for w, _, _ in runs]),
        "cpu_s": summary([c for _, c, _ in runs]), "exit_codes": [rc for _, _, rc in runs]}
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
