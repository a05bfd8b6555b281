"""``demo``: the wall time of what ``make demo`` runs once installed (the install step is a
no-op then): ``crisiscomms drill playbooks/drills/essex-flood.yaml --speed 0 --report ...``,
the installed console script in a fresh process, its own data dir and report path.

Run as a person runs it: on a terminal (a pseudo-terminal here, 120x40, its output read and
thrown away), so the drill draws its live progress view as it does for ``make demo``, and with
no ``CRISISCOMMS_LOG_*`` in the environment, so the drill logs at its own level (warning), not
at the benchmarks' info. ``--no-tty`` runs it with its output piped instead (CI, ``| tee``).
CPU from ``RUSAGE_CHILDREN`` (the drill and its feed-parser workers). Repeated ``--runs``
times; the drill's exit codes are kept (a failed expectation is not a fast demo).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pty
import struct
import subprocess
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, children_cpu_seconds, summary, write_result
from benchmarks.loop import CRISISCOMMS, watch_env


def demo_env(home: Path) -> dict[str, str]:
    """A shell's environment for ``make demo``: nothing of ``CRISISCOMMS_*`` but a data dir of
    its own (the real one is never touched) and the repository's playbooks."""
    env = watch_env(home, REPO / "playbooks", 60.0)
    for key in ("CRISISCOMMS_POLLING__INTERVAL_SECONDS", "CRISISCOMMS_ALLOW_PRIVATE_SOURCES",
                "CRISISCOMMS_LOG_FORMAT", "CRISISCOMMS_LOG_LEVEL"):
        env.pop(key, None)
    env.update({"TERM": env.get("TERM") or "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    return env


def _drain(fd: int) -> None:
    """Read a pseudo-terminal's output until its last writer is gone."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def _run(cmd: list[str], env: dict[str, str], *, tty: bool) -> int:
    if not tty:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,  # noqa: S603
                              timeout=1200).returncode
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    reader = threading.Thread(target=_drain, args=(master,), daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                                stdout=slave, stderr=slave)
        os.close(slave)
        rc = proc.wait(timeout=1200)
    finally:
        with contextlib.suppress(OSError):
            os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    return rc


def run_once(scenario: Path, *, tty: bool = True) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-demo-") as t:
        tmp = Path(t)
        (tmp / "home").mkdir()
        cmd = [str(CRISISCOMMS), "drill", str(scenario), "--speed", "0",
               "--report", str(tmp / "demo-report.html")]
        c0, t0 = children_cpu_seconds(), time.perf_counter()
        rc = _run(cmd, demo_env(tmp / "home"), tty=tty)
        wall = time.perf_counter() - t0
        cpu = children_cpu_seconds() - c0
    return wall, cpu, rc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="make demo wall time")
    p.add_argument("--scenario", type=Path,
                   default=REPO / "playbooks" / "drills" / "essex-flood.yaml")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-tty", action="store_true",
                   help="pipe the drill's output instead of giving it a terminal")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    runs = [run_once(args.scenario, tty=not args.no_tty) for _ in range(args.runs)]
    result: dict[str, Any] = {
        "runs": args.runs, "terminal": not args.no_tty,
        "wall_s": summary([w for w, _, _ in runs]),
        "cpu_s": summary([c for _, c, _ in runs]), "exit_codes": [rc for _, _, rc in runs]}
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
