"""``feed2toot``: the same 200 feeds polled by feed2toot 0.17 and by crisiscomms's watcher,
with nothing new, side by side.

feed2toot is installed into its own venv (never into the project's): by default
``$TMPDIR/crisiscomms-bench/feed2toot-venv``, or ``$CRISISCOMMS_BENCH_F2T_VENV``; it is created
with ``python -m venv`` + ``pip install feed2toot==0.17`` when absent, and the benchmark is
skipped with the reason if that fails.

feed2toot is a one-shot program run from cron: one run = one polling cycle. It fetches every
feed with ``feedparser.parse(url)`` (no ETag kept, so every answer is a full 200) and parses
it, then compares entry ids with its cache file. Its config (``uri_list`` file, Mastodon
client/user credential files pointing at the fake Mastodon of the feed server, cache and
lock files) is written to a temp dir. A first run with ``--populate-cache`` fills the cache
without posting; then each measured run finds nothing new. Its CPU is the reaped child's
``RUSAGE_CHILDREN`` delta, its wall time ``perf_counter`` around the run; ``--version`` runs
give its start-up cost (interpreter + imports), reported separately.

crisiscomms: the real watcher over the same 200 feeds (baseline cycle, then the same number of
cycles, all 304). Last, one feed2toot run after 2 feeds publish a new entry checks that the
fake Mastodon really receives its posts (so the measured runs were doing real work).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FeedServer,
    children_cpu_seconds,
    feed_server,
    quiet_logging,
    write_result,
)
from benchmarks.watch import watch_cycles

F2T_VERSION = "0.17"


def venv_dir() -> Path:
    env = os.environ.get("CRISISCOMMS_BENCH_F2T_VENV")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "crisiscomms-bench" / "feed2toot-venv"


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
                        f"feed2toot=={F2T_VERSION}"], check=True, capture_output=True,
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


def run(feeds: int, cycles: int) -> dict[str, Any]:
    exe, why = ensure_feed2toot(venv_dir())
    if exe is None:
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-f2t-") as t, \
            feed_server(feeds) as server:
        tmp = Path(t)
        ini = write_config(tmp, server, feeds)
        startup = [run_f2t(exe, ["--version"], tmp)[:2] for _ in range(3)]
        run_f2t(exe, ["-c", str(ini), "--populate-cache"], tmp)
        f2t = [run_f2t(exe, ["-c", str(ini)], tmp)[:2] for _ in range(cycles)]
        served = server.control("stats")
        sink = quiet_logging()
        try:
            ours = asyncio.run(watch_cycles(server, feeds, cycles, changes=False))
        finally:
            sink.close()
        # Sanity: feed2toot really posts to the fake Mastodon when something is new.
        changed = server.control("cycle", {"cycle": 1, "interval": 30.0})["changed"]
        before = server.control("stats").get("statuses", 0)
        run_f2t(exe, ["-c", str(ini)], tmp)
        posted = server.control("stats").get("statuses", 0) - before

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    f2t_cpu = mean([c for c, _ in f2t])
    f2t_wall = mean([w for _, w in f2t])
    start_cpu = mean([c for c, _ in startup])
    our_cpu = mean([r.cpu_total for r in ours.steady])
    our_wall = mean([r.wall for r in ours.steady])
    return {
        "feeds": feeds, "cycles": cycles, "feed2toot_version": F2T_VERSION,
        "feed2toot_cpu_s": f2t_cpu, "feed2toot_wall_s": f2t_wall,
        "feed2toot_startup_cpu_s": start_cpu,
        "feed2toot_cpu_excl_startup_s": f2t_cpu - start_cpu,
        "crisiscomms_cpu_s": our_cpu, "crisiscomms_wall_s": our_wall,
        "crisiscomms_baseline_cpu_s": ours.baseline.cpu_total,
        "crisiscomms_share_304": (sum(r.not_modified for r in ours.steady)
                                  / max(1, sum(r.polled for r in ours.steady))),
        "cpu_ratio": f2t_cpu / our_cpu if our_cpu else float("nan"),
        "cpu_ratio_excl_startup": (f2t_cpu - start_cpu) / our_cpu if our_cpu else float("nan"),
        "wall_ratio": f2t_wall / our_wall if our_wall else float("nan"),
        "server_counts_during_feed2toot": served,
        "sanity_new_entries": len(changed), "sanity_feed2toot_posted": posted,
        "errors": ours.errors,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="feed2toot side-by-side benchmark")
    p.add_argument("--feeds", type=int, default=200)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    write_result(args.json_out, run(args.feeds, args.cycles))


if __name__ == "__main__":
    main()
