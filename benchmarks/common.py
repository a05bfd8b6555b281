"""What the benchmarks share: percentiles, per-process CPU/RSS readings, quiet logging,
the loopback feed server as a child process, a throw-away PostgreSQL cluster and the result
format."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def compile_package() -> None:
    """Compile crisiscomms's bytecode as an install does: pip compiles a package's ``.pyc``
    files when it installs it, an editable install does not, and under
    ``PYTHONDONTWRITEBYTECODE`` (or after an edit) every benchmark subprocess would otherwise
    compile crisiscomms from source again (``make bytecode`` does the same before ``make
    bench``). Unchanged modules are skipped."""
    import crisiscomms

    compileall.compile_dir(Path(crisiscomms.__file__).parent, quiet=1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" of comm: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process in MB (0.0 if unknown)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def self_peak_rss_mb() -> float:
    """Peak RSS of this process in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_cpu_seconds() -> float:
    """CPU of terminated, reaped children (``RUSAGE_CHILDREN``)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def quiet_logging() -> Any:
    """Configure crisiscomms logging as production would (JSON lines at info), into
    /dev/null: the cost of rendering log events is measured, the terminal stays clean.
    Returns the stream, to be closed by the caller."""
    from crisiscomms.logs import configure

    sink = open(os.devnull, "w")  # noqa: SIM115 - closed by the caller
    configure(level="info", fmt="json", stream=sink)
    return sink


@dataclass
class FeedServer:
    """The loopback feed server child process (``benchmarks.feedserver``)."""

    proc: subprocess.Popen[bytes]
    port: int
    hosts: list[str]

    def url(self, index: int) -> str:
        host = self.hosts[index % len(self.hosts)]
        return f"http://{host}:{self.port}/feed/{index}.xml"

    @property
    def base(self) -> str:
        return f"http://{self.hosts[0]}:{self.port}"

    def control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(f"{self.base}/_control/{path}", data=data,  # noqa: S310
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    @property
    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def feed_server(feeds: int, *, hosts: int = 10, seed: int = 1,
                entries: int = 10) -> Iterator[FeedServer]:
    """Start the feed server in its own process (its CPU is not the watcher's) and stop it."""
    with served(["benchmarks.feedserver", "--feeds", str(feeds), "--hosts", str(hosts),
                 "--seed", str(seed), "--entries", str(entries)]) as server:
        yield server


@contextlib.contextmanager
def served(module_args: list[str]) -> Iterator[FeedServer]:
    """Run ``python -m <module_args>``, a feed server whose first stdout line is its
    ``{"port": ..., "hosts": [...]}``, and stop it at the end."""
    cmd = [sys.executable, "-m", *module_args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,  # noqa: S603
                            stderr=None, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("feed server did not start")
        hello = json.loads(line)
        yield FeedServer(proc, int(hello["port"]), list(hello["hosts"]))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


class PgServer:
    """A throw-away PostgreSQL cluster (``tests.pgserver.PgCluster``: initdb in a temp dir,
    fsync and synchronous_commit off) and the CPU its processes have used."""

    def __init__(self) -> None:
        from tests.pgserver import PgCluster

        self.cluster = PgCluster()
        assert self.cluster.datadir is not None
        pidfile = self.cluster.datadir / "postmaster.pid"
        self.postmaster_pid = int(pidfile.read_text().split()[0])

    def create_database(self, name: str) -> str:
        return self.cluster.create_database(name)

    @property
    def cpu_seconds(self) -> float:
        """utime + stime of the postmaster and every live child (backends, walwriter, ...),
        plus what its exited children used (cutime + cstime): take differences."""
        pm = self.postmaster_pid
        total = 0.0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(entry.name) == pm or int(fields[1]) == pm:
                # After the ")": state, ppid, ... utime, stime, cutime, cstime (14-17 in proc(5)).
                total += sum(int(f) for f in fields[11:15]) / _CLK_TCK
        return total

    def stop(self) -> None:
        self.cluster.stop()


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer | str]:
    """A started throw-away cluster, stopped (and its dir removed) afterwards; or, if
    PostgreSQL cannot run here, the one-line reason why (the caller reports it as skipped)."""
    from tests.pgserver import PgUnavailableError

    reason = ""
    try:
        server = PgServer()
    except PgUnavailableError as exc:
        reason = str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"could not start PostgreSQL: {(str(exc).splitlines() or [repr(exc)])[0]}"
    if reason:
        yield reason
        return
    try:
        yield server
    finally:
        server.stop()


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """Write one benchmark's result as JSON (to stdout when no path is given)."""
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    if path:
        Path(path).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def summary(values: Sequence[float]) -> dict[str, float]:
    """min / median / max (and n) of repeated measurements; NaN where there are none."""
    data = sorted(v for v in values if not (isinstance(v, float) and v != v))
    if not data:
        nan = float("nan")
        return {"min": nan, "median": nan, "max": nan, "n": 0}
    return {"min": data[0], "median": percentile(data, 50), "max": data[-1], "n": len(data)}


def proc_tree(root: int) -> list[int]:
    """``root`` and every live descendant (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                parent[int(entry.name)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree = [root]
    k = 0
    while k < len(tree):
        tree += [p for p, pp in parent.items() if pp == tree[k]]
        k += 1
    return tree


def proc_tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its live descendants, plus cutime + cstime of each (what
    their reaped children used): the CPU of the whole process tree so far."""
    total = 0.0
    for pid in proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / _CLK_TCK
    return total


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Stop a benchmarked ``crisiscomms watch`` as the service manager would: SIGTERM, then
    SIGKILL if it has not exited within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
