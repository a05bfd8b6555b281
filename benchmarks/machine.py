"""A description of the machine the benchmarks ran on."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from typing import Any

from benchmarks.common import REPO


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,  # noqa: S607
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if out.returncode != 0:
        return ""
    commit = out.stdout.strip()
    try:  # what ran is the working tree: say when it differs from the commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
                               cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return commit
    if dirty.returncode == 0 and dirty.stdout.strip():
        n = len(dirty.stdout.strip().splitlines())
        return f"{commit} + {n} uncommitted file(s)"
    return commit


def _postgres() -> str:
    """The version of the PostgreSQL server the PostgreSQL benchmarks would start ("" if
    there is none)."""
    try:
        from tests.pgserver import find_bindir

        bindir = find_bindir()
        if bindir is None:
            return ""
        out = subprocess.run([str(bindir / "postgres"), "--version"],  # noqa: S603
                             capture_output=True, text=True, timeout=10)
    except (ImportError, OSError, subprocess.SubprocessError):
        return ""
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
    words = out.stdout.split()
    return words[2] if out.returncode == 0 and len(words) > 2 else ""


def describe() -> dict[str, Any]:
    """CPU model, cores, memory, Python, OS, SQLite, PostgreSQL, kernel, load and the commit
    measured."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "os": _os_name(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": _postgres(),
        "load_avg_at_start": load,
        "executable": sys.executable,
        "commit": _commit(),
    }
