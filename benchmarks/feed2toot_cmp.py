"""``feed2toot``: the same 200 feeds polled by feed2toot 0.17 and by crisiscomms's watcher,
with nothing new, side by side.

feed2toot is installed into its own venv (never into the project's): ``.venv-bench/feed2toot``
(or ``$CRISISCOMMS_BENCH_F2T_VENV``), from the project's ``benchmarks/requirements-feed2toot.txt``
(``make bench`` does it first; this module does it too when the venv is absent), and the
benchmark is skipped with the reason if that fails.

feed2toot is a one-shot program run from cron: one run = one polling cycle. It fetches every
feed with ``feedparser.parse(url)`` (no ETag kept, so every answer is a full 200) and parses
it, then compares entry ids with its cache file. Its config (``uri_list`` file, Mastodon
client/user credential files pointing at the fake Mastodon of the feed server, cache and
lock files) is written to a temp dir. A first run with ``--populate-cache`` fills the cache
without posting; then each measured run finds nothing new. Its CPU is the reaped child's
``RUSAGE_CHILDREN`` delta, its wall time ``perf_counter`` around the run; ``--version`` runs
give its start-up cost (interpreter + imports), reported separately.

Two comparisons, each ``--runs`` times, interleaved (feed2toot, then crisiscomms, and again):

* whole process against whole process: one feed2toot run against one ``crisiscomms watch
  --once`` process (interpreter, imports, database, one cycle over the 200 feeds, all 304
  after a first baseline run), both CPU from ``RUSAGE_CHILDREN``;
* steady loop against steady loop: the long-running ``crisiscomms watch`` (a subprocess: 2 s
  ticks, dispatcher, parser workers) over one 30 s polling interval, its process tree's CPU
  from ``/proc``, against one feed2toot run less its start-up (feed2toot has no loop of its
  own: cron starts it once per cycle). The feed2toot run happens inside the window (the
  watcher is mostly asleep; 2 cores).

Both programs run from compiled bytecode, as installed programs do (pip compiles a package's
``.pyc`` files when it installs it; feed2toot's venv has them): crisiscomms's own package is
compiled first (``compileall``), since a working tree run with ``PYTHONDONTWRITEBYTECODE`` (or
just edited) would otherwise compile some forty modules from source in every run, about 0.15
CPU-s that no installed watcher pays.

The floor under any Python watcher is reported beside it, from the same interpreter and
environment: ``python -c pass`` (the interpreter alone) and ``python -c "import httpx"`` (one
HTTP library; crisiscomms also needs pydantic, typer, structlog, SQLite and the adapters).

Last, one feed2toot run after 2 feeds publish a new entry checks that the
fake Mastodon really receives its posts (so the measured runs were doing real work).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    FeedServer,
    children_cpu_seconds,
    compile_package,
    feed_server,
    proc_tree_cpu_seconds,
    stop_process,
    summary,
    write_result,
)
from benchmarks.loop import CRISISCOMMS, bench_playbooks, watch_env

F2T_VERSION = "0.17"
REQUIREMENTS = REPO / "benchmarks" / "requirements-feed2toot.txt"  # pins F2T_VERSION


def venv_dir() -> Path:
    env = os.environ.get("CRISISCOMMS_BENCH_F2T_VENV")
    if env:
        return Path(env)
    return REPO / ".venv-bench" / "feed2toot"


def ensure_feed2toot(venv: Path) -> tuple[Path | None, str]:
    """``(path to the feed2toot script, "")``, or ``(None, why not)``."""
    exe = venv / "bin" / "feed2toot"
    if exe.exists():
        return exe, ""
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,  # noqa: S603
                       capture_output=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",  # noqa: S603
                        "-r", str(REQUIREMENTS)], check=True, capture_output=True,
                       timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = ""
        if isinstance(exc, subprocess.CalledProcessError):
            lines = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
            detail = f": {lines[-1]}" if lines else ""
        return None, f"could not install feed2toot {F2T_VERSION} into {venv}{detail}"
    if not exe.exists():
        return None, f"feed2toot installed but {exe} is missing"
    return exe, ""


def write_config(tmp: Path, server: FeedServer, feeds: int) -> Path:
    uris = tmp / "rsslist.txt"
    uris.write_text("".join(f"{server.url(i)}\n" for i in range(feeds)))
    client = tmp / "feed2toot_clientcred.txt"
    client.write_text(f"bench-client-id\nbench-client-secret\n{server.base}\n")
    user = tmp / "feed2toot_usercred.txt"
    user.write_text(f"bench-access-token\n{server.base}\n")
    ini = tmp / "feed2toot.ini"
    ini.write_text(f"""[mastodon]
instance_url={server.base}
user_credentials={user}
client_credentials={client}
toot_visibility=public

[cache]
cachefile={tmp / 'feed2toot.db'}
cache_limit=100000

[lock]
lock_file={tmp / 'feed2toot.lock'}
lock_timeout=3600

[rss]
uri_list={uris}
toot={{title}} {{link}}

[feedparser]
accept_bozo_exceptions=true
""")
    return ini


def run_f2t(exe: Path, args: list[str], tmp: Path) -> tuple[float, float, str]:
    """(cpu seconds, wall seconds, stderr tail) of one feed2toot run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update({"HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)})
    c0, t0 = children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run([str(exe), *args], capture_output=True, env=env,  # noqa: S603
                          cwd=tmp, timeout=600)
    wall = time.perf_counter() - t0
    cpu = children_cpu_seconds() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"feed2toot {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace')[-500:]}")
    return cpu, wall, proc.stderr.decode("utf-8", "replace")[-300:]


def _watch_once(env: dict[str, str], tmp: Path) -> tuple[float, float]:
    """(CPU, wall) of one whole ``crisiscomms watch --once`` process."""
    c0, t0 = children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run([str(CRISISCOMMS), "watch", "--once"], cwd=tmp, env=env,  # noqa: S603
                          capture_output=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"crisiscomms watch --once exited {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace')[-500:]}")
    return children_cpu_seconds() - c0, wall


def _python_cpu(env: dict[str, str], tmp: Path, code: str) -> float:
    """CPU of one ``python -c CODE`` in the benchmark's interpreter and environment."""
    c0 = children_cpu_seconds()
    subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, check=True,  # noqa: S603
                   capture_output=True, timeout=120)
    return children_cpu_seconds() - c0


def _polls(server: FeedServer) -> tuple[int, int]:
    s = server.control("stats")
    return int(s.get("304", 0)), int(s.get("200", 0))


def run(feeds: int, runs: int, interval: float, *, install: bool = True) -> dict[str, Any]:
    venv = venv_dir()
    if not install and not (venv / "bin" / "feed2toot").exists():
        return {"skipped": f"no feed2toot venv at {venv} (make bench installs it)"}
    exe, why = ensure_feed2toot(venv)
    if exe is None:
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-f2t-") as t, \
            feed_server(feeds) as server:
        tmp = Path(t)
        ini = write_config(tmp, server, feeds)
        playbooks = bench_playbooks(tmp / "playbooks", [server.url(i) for i in range(feeds)])
        home = tmp / "home"
        home.mkdir()
        # Every source due at every run: a 1 s interval, no jitter, runs > 1 s apart.
        once_env = watch_env(home, playbooks, 1.0, jitter=0.0)
        compile_package()
        startup = [run_f2t(exe, ["--version"], tmp)[:2] for _ in range(3)]
        floor_python = [_python_cpu(once_env, tmp, "pass") for _ in range(3)]
        floor_httpx = [_python_cpu(once_env, tmp, "import httpx") for _ in range(3)]
        run_f2t(exe, ["-c", str(ini), "--populate-cache"], tmp)
        _watch_once(once_env, tmp)  # the baseline: every feed 200, nothing queued
        # 1. Whole process against whole process, interleaved: one cron-style feed2toot run,
        # then one `crisiscomms watch --once` (interpreter, imports, database, one cycle).
        f2t: list[tuple[float, float]] = []
        ours: list[tuple[float, float]] = []
        ours_304: list[int] = []
        for _ in range(runs):
            f2t.append(run_f2t(exe, ["-c", str(ini)], tmp)[:2])
            time.sleep(1.1)
            n0, _ = _polls(server)
            ours.append(_watch_once(once_env, tmp))
            ours_304.append(_polls(server)[0] - n0)
        # 2. Steady loop against steady loop: the long-running `crisiscomms watch` (ticks and
        # dispatcher included) over one polling interval, against one feed2toot run less its
        # start-up (feed2toot has no loop: cron starts it once per cycle).
        loop_cpu: list[float] = []
        f2t_steady: list[float] = []
        log = open(tmp / "watch.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(CRISISCOMMS), "watch"], cwd=tmp,  # noqa: S603
                                env=watch_env(home, playbooks, interval),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            n0, _ = _polls(server)
            t_end = time.perf_counter() + 120
            while _polls(server)[0] - n0 < feeds and time.perf_counter() < t_end:
                time.sleep(0.2)  # its first cycle (all 304: the database is baselined)
            time.sleep(2.0)
            for _ in range(runs):
                c0, t0 = proc_tree_cpu_seconds(proc.pid), time.perf_counter()
                cpu, _wall, _ = run_f2t(exe, ["-c", str(ini)], tmp)
                f2t_steady.append(cpu - min(c for c, _ in startup))
                time.sleep(max(0.0, t0 + interval - time.perf_counter()))
                window = time.perf_counter() - t0
                loop_cpu.append((proc_tree_cpu_seconds(proc.pid) - c0) / window * interval)
        finally:
            stop_process(proc)
            log.close()
        served = server.control("stats")
        # Sanity: feed2toot really posts to the fake Mastodon when something is new.
        changed = server.control("cycle", {"cycle": 1, "interval": 30.0})["changed"]
        before = server.control("stats").get("statuses", 0)
        run_f2t(exe, ["-c", str(ini)], tmp)
        posted = server.control("stats").get("statuses", 0) - before

    whole_ratio = [a[0] / b[0] for a, b in zip(f2t, ours, strict=True) if b[0]]
    steady_ratio = [a / b for a, b in zip(f2t_steady, loop_cpu, strict=True) if b > 0]
    return {
        "feeds": feeds, "runs": runs, "interval_s": interval,
        "feed2toot_version": F2T_VERSION,
        "feed2toot_startup_cpu_s": summary([c for c, _ in startup]),
        "floor_python_cpu_s": summary(floor_python),
        "floor_import_httpx_cpu_s": summary(floor_httpx),
        "whole_feed2toot_cpu_s": summary([c for c, _ in f2t]),
        "whole_feed2toot_wall_s": summary([w for _, w in f2t]),
        "whole_crisiscomms_cpu_s": summary([c for c, _ in ours]),
        "whole_crisiscomms_wall_s": summary([w for _, w in ours]),
        "whole_crisiscomms_304": ours_304,
        "whole_cpu_ratio": summary(whole_ratio),
        "steady_feed2toot_cpu_s": summary(f2t_steady),
        "steady_crisiscomms_cpu_per_cycle_s": summary(loop_cpu),
        "steady_cpu_ratio": summary(steady_ratio),
        "server_counts": served,
        "sanity_new_entries": len(changed), "sanity_feed2toot_posted": posted,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="feed2toot side-by-side benchmark")
    p.add_argument("--feeds", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--interval", type=float, default=30.0,
                   help="the watcher's polling interval (the steady-loop window)")
    p.add_argument("--no-install", action="store_true",
                   help="skip (with the reason) instead of installing feed2toot")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    write_result(args.json_out, run(args.feeds, args.runs, args.interval,
                                    install=not args.no_install))


if __name__ == "__main__":
    main()
