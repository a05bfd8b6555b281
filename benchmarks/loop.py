"""``watch-loop``: the real ``crisiscomms watch`` process and the HTTP path under it.

Four measurements, each repeated ``--runs`` times (min/median/max are reported):

* **watch loop CPU** (issue 14 row 3): ``crisiscomms watch`` (the installed console script, a
  subprocess: ticks, dispatcher, state reloads, parser workers, everything) over ``--feeds``
  RSS/Atom feeds on the loopback feed server, polling every ``--interval`` seconds (jitter as
  configured by default). After its first cycle (every feed answered 200 once), the world moves
  on one cycle per interval (1 % of the feeds publish, so 99 % answer 304) and the CPU of the
  watcher's whole process tree (utime+stime of every live descendant plus what reaped children
  used, from ``/proc``) is read over ``--cycles`` intervals: CPU-s per 30 s = CPU / window x 30,
  and CPU-s per 1,000 polls (what 1,000 sources polled once per 30 s cost per 30 s: the
  polls a window holds vary with the jitter, so the target is judged on this one).
* **connections** (row 5): the TCP connections the feed server accepted from the watcher over
  the same window (its accept counter, minus the benchmark's own control requests), per 1,000
  polls answered.
* **idle conditional GET** (row 4): one feed answering 304, requested ``--gets`` times per
  round by three clients on the same loopback server, interleaved round by round: the
  crisiscomms source path (``RssSource.poll`` with the stored ETag: fetcher, limits, checks,
  sent through ``make_async_client``'s ``wire`` path: llhttp via httptools on pinned asyncio
  streams), the same path through a plain ``httpx.AsyncHTTPTransport`` client
  (``crisiscomms_httpx``: what the fetcher cost with httpx, httpcore, h11 and anyio), a bare
  ``httpx.AsyncClient`` loop, and raw asyncio sockets (one keep-alive connection, the request
  written and the 304 head read by hand). CPU per GET = ``process_time`` delta / GETs.
* **CLI start-up** (row 7): ``crisiscomms --help`` and ``crisiscomms status`` (a fresh
  interpreter each time, an empty data dir), CPU from ``RUSAGE_CHILDREN``; the minimum of
  three per run ("cold" = a new process; the page cache is warm).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    FeedServer,
    children_cpu_seconds,
    feed_server,
    proc_tree_cpu_seconds,
    stop_process,
    summary,
    write_result,
)

CRISISCOMMS = Path(sys.executable).parent / "crisiscomms"


def bench_playbooks(target: Path, urls: list[str], *, watch: str = "always") -> Path:
    """A copy of the bundled playbooks whose own sources are watched only in a crisis (no
    internet), plus one RSS source per URL (``bench-0000`` ...), private network allowed."""
    import shutil

    import yaml

    shutil.copytree(REPO / "playbooks", target, ignore=shutil.ignore_patterns("drills"))
    path = target / "sources.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in data.get("sources") or []:
        entry["watch"] = "crisis"
    data["sources"] = list(data.get("sources") or []) + [
        {"id": f"bench-{i:04d}", "agency": f"Bench agency {i % 50}", "kind": "rss",
         "url": url, "watch": watch, "allow_private_network": True}
        for i, url in enumerate(urls)]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return target


def watch_env(home: Path, playbooks: Path, interval: float, *,
              jitter: float | None = None) -> dict[str, str]:
    """The environment of a benchmark ``crisiscomms`` process: its own data dir and
    playbooks, loopback sources allowed, JSON logs, nothing paged."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRISISCOMMS_") and k != "PYTHONPATH"}
    env.update({"CRISISCOMMS_HOME": str(home), "CRISISCOMMS_PLAYBOOKS_DIR": str(playbooks),
                "CRISISCOMMS_ALLOW_PRIVATE_SOURCES": "true",
                "CRISISCOMMS_POLLING__INTERVAL_SECONDS": str(interval),
                "CRISISCOMMS_LOG_FORMAT": "json", "CRISISCOMMS_LOG_LEVEL": "info"})
    if jitter is not None:
        env["CRISISCOMMS_POLLING__JITTER_SECONDS"] = str(jitter)
    return env


def _served(server: FeedServer) -> tuple[int, int]:
    """(polls answered, watcher connections) so far: the control requests taken out."""
    s = server.control("stats")
    polls = int(s.get("200", 0)) + int(s.get("304", 0))
    # this control request's own connection is counted already
    return polls, int(s.get("connections", 0)) - int(s.get("control", 0))


def _wait_polls(server: FeedServer, n: int, proc: subprocess.Popen[bytes],
                timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"crisiscomms watch exited {proc.returncode}")
        if _served(server)[0] >= n:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise RuntimeError(f"the watcher polled fewer than {n} feeds in {timeout:g} s")


def watch_loop_once(feeds: int, cycles: int, interval: float,
                    tmp: Path) -> dict[str, Any]:
    """One run: start the watcher, let it do its first cycle, measure ``cycles`` intervals."""
    with feed_server(feeds) as server:
        playbooks = bench_playbooks(tmp / "playbooks", [server.url(i) for i in range(feeds)])
        home = tmp / "home"
        home.mkdir()
        log = open(tmp / "watch.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([str(CRISISCOMMS), "watch"], cwd=tmp,  # noqa: S603
                                env=watch_env(home, playbooks, interval),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            first = _wait_polls(server, feeds, proc, timeout=max(120.0, feeds * 0.05))
            time.sleep(2.0)  # the first cycle's parsing and commit
            polls0, conns0 = _served(server)
            c0, t0 = proc_tree_cpu_seconds(proc.pid), time.perf_counter()
            for c in range(1, cycles + 1):
                server.control("cycle", {"cycle": c, "interval": interval})
                time.sleep(max(0.0, t0 + c * interval - time.perf_counter()))
            c1, t1 = proc_tree_cpu_seconds(proc.pid), time.perf_counter()
            polls1, conns1 = _served(server)
            rss = proc_tree_rss_mb(proc.pid)
            if proc.poll() is not None:
                raise RuntimeError(f"crisiscomms watch exited {proc.returncode}")
        finally:
            stop_process(proc)
            log.close()
    window = t1 - t0
    polls = polls1 - polls0
    conns = conns1 - conns0
    return {"first_cycle_wall_s": first, "window_s": window, "cpu_s": c1 - c0,
            "cpu_per_30s": (c1 - c0) / window * 30.0, "polls": polls,
            # Per 30 s of 1,000 sources each polled once per 30 s: the CPU divided by the
            # polls the window held (jitter makes the mean interval longer than 30 s and the
            # polls falling in a window vary by a third from run to run).
            "cpu_per_1000_polls": 1000.0 * (c1 - c0) / polls if polls else float("nan"),
            "new_connections": conns,
            "connections_per_1000_polls": 1000.0 * conns / polls if polls else float("nan"),
            "rss_mb": rss, "exit_code": proc.returncode}


def proc_tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and its live descendants, in MB."""
    from benchmarks.common import proc_tree

    total = 0.0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


async def _idle_gets(server: FeedServer, gets: int, rounds: int) -> dict[str, list[float]]:
    import httpx

    from benchmarks.feeds import etag
    from crisiscomms.adapters.sources import (
        FeedParserPool,
        FetchLimits,
        build_sources,
        make_async_client,
    )
    from crisiscomms.domain.config import SourceConfig
    from crisiscomms.domain.models import SourceKind, SourceState

    url = server.url(0)
    tag = etag(0, 0)
    config = SourceConfig(id="bench-0000", agency="Bench", kind=SourceKind.RSS, watch="always",
                          url=url, allow_private_network=True)
    client = make_async_client(timeout=20.0)
    via_httpx = make_async_client(timeout=20.0, transport=httpx.AsyncHTTPTransport())
    parser = FeedParserPool()
    bare = httpx.AsyncClient(timeout=20.0)
    host, port = server.hosts[0], server.port
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET /feed/0.xml HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"If-None-Match: {tag}\r\nAccept: */*\r\n\r\n").encode()
    out: dict[str, list[float]] = {"crisiscomms": [], "crisiscomms_httpx": [], "httpx": [],
                                   "sockets": []}
    try:
        (source,) = build_sources([config], client=client, parser=parser,
                                  limits=FetchLimits(per_host=2, total=20))
        (layered,) = build_sources([config], client=via_httpx, parser=parser,
                                   limits=FetchLimits(per_host=2, total=20))
        state = SourceState(source_id=config.id, etag=tag, baseline_done=True)

        async def ours() -> None:
            result = await source.poll(state, datetime.now(UTC))
            assert result.not_modified, "expected a 304"

        async def ours_httpx() -> None:
            result = await layered.poll(state, datetime.now(UTC))
            assert result.not_modified, "expected a 304"

        async def plain() -> None:
            r = await bare.get(url, headers={"If-None-Match": tag})
            assert r.status_code == 304

        async def raw() -> None:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 304"), head[:40]

        calls = {"crisiscomms": ours, "crisiscomms_httpx": ours_httpx, "httpx": plain,
                 "sockets": raw}
        for fn in calls.values():  # warm up (connections, caches)
            for _ in range(20):
                await fn()
        for _ in range(rounds):
            for name, fn in calls.items():
                c0 = time.process_time()
                for _ in range(gets):
                    await fn()
                out[name].append((time.process_time() - c0) / gets * 1000.0)
        await source.aclose()
        await layered.aclose()
    finally:
        writer.close()
        await bare.aclose()
        await client.aclose()
        await via_httpx.aclose()
        parser.close()
    return out


def idle_get(gets: int, rounds: int) -> dict[str, Any]:
    from benchmarks.common import quiet_logging

    sink = quiet_logging()
    try:
        with feed_server(1, hosts=1) as server:
            per = asyncio.run(_idle_gets(server, gets, rounds))
    finally:
        sink.close()
    return {"gets_per_round": gets, "rounds": rounds,
            **{f"{k}_ms": summary(v) for k, v in per.items()},
            "samples_ms": per}


def cli_startup(runs: int) -> dict[str, Any]:
    """CPU of ``crisiscomms --help`` and ``crisiscomms status`` in fresh interpreters."""
    out: dict[str, list[float]] = {"help": [], "status": []}
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-cli-") as t:
        tmp = Path(t)
        env = watch_env(tmp / "home", REPO / "playbooks", 60.0)
        (tmp / "home").mkdir()
        subprocess.run([str(CRISISCOMMS), "status"], cwd=tmp, env=env,  # noqa: S603
                       capture_output=True, timeout=120)  # creates the database
        for _ in range(runs):
            for name, args in (("help", ["--help"]), ("status", ["status"])):
                best = float("inf")
                for _ in range(3):
                    c0 = children_cpu_seconds()
                    proc = subprocess.run([str(CRISISCOMMS), *args], cwd=tmp,  # noqa: S603
                                          env=env, capture_output=True, timeout=120)
                    cpu = children_cpu_seconds() - c0
                    if proc.returncode not in (0, 1):
                        raise RuntimeError(f"crisiscomms {' '.join(args)} exited "
                                           f"{proc.returncode}: {proc.stderr[-300:]!r}")
                    best = min(best, cpu)
                out[name].append(best)
    return {"help_cpu_s": summary(out["help"]), "status_cpu_s": summary(out["status"]),
            "samples": out}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="watch-loop benchmark")
    p.add_argument("--feeds", type=int, default=1000)
    p.add_argument("--cycles", type=int, default=2, help="measured intervals per run")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--gets", type=int, default=500, help="idle GETs per client per round")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    loops = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-loop-") as t:
            loops.append(watch_loop_once(args.feeds, args.cycles, args.interval, Path(t)))
    result: dict[str, Any] = {
        "sources": args.feeds, "cycles": args.cycles, "interval_s": args.interval,
        "runs": args.runs, "loop_runs": loops,
        "cpu_per_30s": summary([r["cpu_per_30s"] for r in loops]),
        "cpu_per_1000_polls": summary([r["cpu_per_1000_polls"] for r in loops]),
        "connections_per_1000_polls": summary([r["connections_per_1000_polls"]
                                               for r in loops]),
        "polls_per_run": [r["polls"] for r in loops],
        "idle_get": idle_get(args.gets, args.runs),
        "cli": cli_startup(args.runs),
    }
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
