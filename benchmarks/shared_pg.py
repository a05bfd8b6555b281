"""``shared-pg``: two real ``crisiscomms watch`` processes share 20,000 sources on one
PostgreSQL database (issue 14: "two watchers on PostgreSQL share 20,000").

Set-up (not measured): a throw-away cluster (``common.pg_server``) and one database, its schema
made once by ``open_store`` (so the watchers do not race to migrate); the loopback feed server
with ``--feeds`` feeds on ``--hosts`` loopback addresses, in a process of its own (the one of
``benchmarks.feedserver``, wrapped here so it notes every feed request: when, which feed, on
which TCP connection, 200 or 304); the bundled playbooks plus one RSS source per feed
(``loop.bench_playbooks``). Then ``--watchers`` installed ``crisiscomms watch`` subprocesses, each
with its own ``CRISISCOMMS_HOME`` and worker id (``bench-w1`` ...), the same playbooks and the
same ``CRISISCOMMS_DATABASE_URL``, started together, default polling settings but the interval
(``--interval``) and the jitter (``--jitter``, 5 s as by default).

The first cycle is the baseline (every feed answers 200 once), followed in the store every 5 s
(sources baselined, failing, leased, claims so far) until every source is baselined, or until
``--baseline-timeout`` (300 s) has passed: then the window starts all the same and the report
says the first cycle did not end. Then the world moves on one cycle per interval, as in
``watch-loop`` (1 % of the feeds publish one entry, the others answer 304), for ``--cycles``
intervals: the measured window. The watchers' warnings (failed polls by error class, polls
overtaken) are counted from their JSON logs, for the first cycle and the window apart.

Who polled what comes from the feed server, which sees every request: each TCP connection it
accepted is matched to the watcher whose process tree holds the other end (the socket inodes in
``/proc/<pid>/fd`` against ``/proc/net/tcp``, sampled every 0.5 s; the watchers keep their
connections open, so a request on a connection never matched is counted as unattributed). The
store says the same from its side: each claim of a source increments its fence
(``SqlSources.claim``), so the fences' growth over the window is the number of claims, set
beside the number of polls served.

Reported over the measured window:

* polls served per 30 s (all watchers), against what the interval asks for: every source once
  per ``interval + jitter / 2`` on average (the jitter adds 0..``jitter`` s to each interval);
* per watcher: polls per 30 s and their share, per measured interval too (a watcher that
  starves, or two that take turns polling everything, shows there); the share of polls made by
  another watcher than the source's previous poll ("handovers");
* duplicates: two polls of one source less than half an interval apart (the interval asked for
  one); late: a source whose gap between polls (or from its last poll to the window's end)
  exceeded ``interval + jitter + 2 ticks + 1 s``, and the gaps' p50 / p99 / max;
* each watcher's CPU per 30 s (its process tree, ``/proc``) and peak RSS (the largest sum of
  VmRSS over its tree in the 0.5 s samples, baseline included), PostgreSQL's CPU per 30 s (the
  postmaster and its backends), the feed server's CPU;
* exactly once: after the window and a grace of one jitter and two ticks more, each changed
  feed's new entry must be in ``updates`` exactly once (not missing, no second row), and no
  update may have two outbox items; the watchers' ``source.poll_overtaken`` warnings and the
  ``audit_events`` of that name are counted too.

If PostgreSQL cannot run here the result is ``{"skipped": "<reason>"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FeedServer,
    PgServer,
    percentile,
    pg_server,
    proc_tree_cpu_seconds,
    served,
    stop_process,
    write_result,
)
from benchmarks.feeds import changed_feeds
from benchmarks.feedserver import Handler, State
from benchmarks.loop import CRISISCOMMS, bench_playbooks, watch_env

TICK_S = 2.0  # ``crisiscomms watch --tick`` default: a due source waits at most this long
SAMPLE_S = 0.5  # connections and RSS are read this often
Conn = tuple[str, int, str, int]  # client ip, client port, server ip, server port


# -- the feed server, noting every feed request ------------------------------------------
class _Log:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.polls: list[tuple[float, int, int, int]] = []  # monotonic, feed, conn, status
        self.conns: list[Conn] = []


class NotingHandler(Handler):
    """``feedserver.Handler`` that notes each feed request and the connection it came on;
    ``POST /_control/polls {"since": n}`` returns the requests from the n-th on."""

    poll_log: _Log
    conn_id = -1
    status = 0

    def setup(self) -> None:
        super().setup()
        peer, local = self.client_address, self.connection.getsockname()
        with self.poll_log.lock:
            self.conn_id = len(self.poll_log.conns)
            self.poll_log.conns.append((str(peer[0]), int(peer[1]), str(local[0]), int(local[1])))

    def send_response(self, code: int, message: str | None = None) -> None:
        self.status = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        at = time.monotonic()
        self.status = 0
        super().do_GET()
        path = self.path.split("?", 1)[0]
        if self.status in (200, 304) and path.startswith("/feed/"):
            feed = int(path[len("/feed/"):-len(".xml")])
            with self.poll_log.lock:
                self.poll_log.polls.append((at, feed, self.conn_id, self.status))

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/_control/polls":
            super().do_POST()
            return
        since = int(json.loads(self._body() or b"{}").get("since", 0))
        with self.state.lock:
            self.state.counts["control"] += 1
        with self.poll_log.lock:
            polls, conns = self.poll_log.polls[since:], list(self.poll_log.conns)
        self._json({"since": since, "polls": polls, "conns": conns})


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a watcher gave a poll up
            super().handle_error(request, client_address)


def serve(feeds: int, hosts: int, seed: int, entries: int) -> None:
    """``benchmarks.feedserver.main`` with ``NotingHandler`` (run with ``--serve``)."""
    state, log = State(feeds, seed, entries), _Log()
    handler = type("BoundHandler", (NotingHandler,), {"state": state, "poll_log": log})
    first = _Server(("127.0.0.1", 0), handler)
    servers = [first]
    port = first.server_address[1]
    for k in range(2, hosts + 1):
        try:
            servers.append(_Server((f"127.0.0.{k}", port), handler))
        except OSError:
            break  # not every system routes all of 127/8
    for s in servers:
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    names = [str(s.server_address[0]) for s in servers]
    sys.stdout.write(json.dumps({"port": port, "hosts": names}) + "\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


@contextlib.contextmanager
def noting_feed_server(feeds: int, hosts: int) -> Iterator[FeedServer]:
    """The noting feed server in its own process (its CPU is not the watchers')."""
    with served(["benchmarks.shared_pg", "--serve", "--feeds", str(feeds),
                 "--hosts", str(hosts)]) as server:
        yield server


# -- which watcher holds which connection -------------------------------------------------
def _addr(text: str) -> tuple[str, int]:
    ip, port = text.split(":")
    return socket.inet_ntoa(struct.pack("<I", int(ip, 16))), int(port, 16)


def _tcp_by_inode() -> dict[int, Conn]:
    """IPv4 TCP sockets of this network namespace: inode -> (local ip, port, remote ip, port)."""
    out: dict[int, Conn] = {}
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            local, remote = _addr(f[1]), _addr(f[2])
            out[int(f[9])] = (*local, *remote)
    return out


def _trees(roots: list[int]) -> list[list[int]]:
    """Each root and its live descendants, from one pass over ``/proc``."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(entry.name))
    out = []
    for root in roots:
        tree = [root]
        k = 0
        while k < len(tree):
            tree += kids.get(tree[k], [])
            k += 1
        out.append(tree)
    return out


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def rss_mb(pids: list[int]) -> float:
    """VmRSS summed over ``pids``, in MB."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
                    break
    return total


class Sampler(threading.Thread):
    """Every ``SAMPLE_S``: which watcher holds each TCP connection (as the feed server sees
    it: client ip, port, server ip, port), and each watcher tree's RSS (the peak is kept)."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True, name="sampler")
        self.roots = roots
        self.owner: dict[Conn, int] = {}
        self.peak_rss = [0.0] * len(roots)
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> None:
        tcp = _tcp_by_inode()
        found: dict[Conn, int] = {}
        for w, pids in enumerate(_trees(self.roots)):
            for inode in _socket_inodes(pids):
                conn = tcp.get(inode)
                if conn is not None:
                    found[conn] = w
            self.peak_rss[w] = max(self.peak_rss[w], rss_mb(pids))
        with self.lock:
            self.owner.update(found)

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            with contextlib.suppress(OSError, ValueError, StopIteration):
                self.sample()

    def owner_of(self, conn: Conn) -> int | None:
        with self.lock:
            return self.owner.get(conn)


# -- the store's side ------------------------------------------------------------------
def _q(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql, params or None).fetchall()]  # type: ignore[arg-type]


def fences(url: str) -> dict[str, int]:
    """Each bench source's fence (one more per claim)."""
    return {str(k): int(f) for k, f in _q(
        url, "SELECT key, fence FROM source_state WHERE key LIKE 'bench-%'")}


def store_state(url: str) -> dict[str, int]:
    """The bench sources as the store has them: baselined, failing (a failure not yet
    followed by a success), leased now, and the claims so far (the fences' sum)."""
    (row,) = _q(url, "SELECT count(*) FILTER (WHERE baseline_done = 1), "
                "count(*) FILTER (WHERE failures > 0), "
                "count(*) FILTER (WHERE lease_owner IS NOT NULL), coalesce(sum(fence), 0) "
                "FROM source_state WHERE key LIKE 'bench-%'")
    return dict(zip(("baselined", "failing", "leased", "claims"), map(int, row), strict=True))


def exactly_once(url: str, feeds: int, cycles: int) -> dict[str, Any]:
    """Each changed feed's new entry of each measured cycle, counted in ``updates``; outbox
    items per update and channel (one at most)."""
    expected = {(f"bench-{i:04d}", f"urn:bench:feed{i}:c{c}")
                for c in range(1, cycles + 1) for i in changed_feeds(feeds, c)}
    rows = _q(url, "SELECT source_id, external_id, count(*) FROM updates WHERE baseline = 0 "
              "AND source_id LIKE 'bench-%' GROUP BY source_id, external_id")
    found = {(str(s), str(e)): int(n) for s, e, n in rows}
    dispositions = Counter({str(d): int(n) for d, n in _q(
        url, "SELECT disposition, count(*) FROM updates WHERE baseline = 0 AND source_id "
        "LIKE 'bench-%' GROUP BY disposition")})
    outbox = _q(url, "SELECT count(*), count(DISTINCT (update_id, channel_id)), "
                "count(DISTINCT update_id) FROM outbox WHERE source_id LIKE 'bench-%'")[0]
    overtaken = _q(url, "SELECT count(*) FROM audit_events WHERE action = "
                   "'source.poll_overtaken'")[0][0]
    missing = sorted(expected - set(found))
    twice = sorted(k for k, n in found.items() if n > 1)
    unexpected = sorted(set(found) - expected)
    return {"expected": len(expected), "recorded": sum(1 for k in found if k in expected),
            "missing": len(missing), "recorded_twice": len(twice),
            "unexpected": len(unexpected), "missing_examples": [list(k) for k in missing[:5]],
            "twice_examples": [list(k) for k in twice[:5]],
            "dispositions": dict(dispositions), "outbox_items": int(outbox[0]),
            "outbox_updates": int(outbox[2]),
            "outbox_items_twice": int(outbox[0]) - int(outbox[1]),
            "audit_poll_overtaken": int(overtaken),
            "ok": not missing and not twice and not unexpected and outbox[0] == outbox[1]}


# -- the analysis ----------------------------------------------------------------------
def analyse(polls: list[tuple[float, int, int | None]], *, feeds: int, watchers: int,
            t0: float, interval: float, cycles: int, late_after: float) -> dict[str, Any]:
    """The polls (time, feed, watcher or None) over the window ``[t0, t0 + cycles x interval)``,
    with every poll before it (to know each source's previous poll)."""
    t1 = t0 + cycles * interval
    per = 30.0 / (t1 - t0)
    by_feed: list[list[tuple[float, int | None]]] = [[] for _ in range(feeds)]
    windows = [Counter[int | None]() for _ in range(cycles)]
    for t, feed, w in polls:
        if t < t1:
            by_feed[feed].append((t, w))
        if t0 <= t < t1:
            windows[int((t - t0) // interval)][w] += 1
    gaps: list[float] = []
    duplicates = late = handovers = in_window = 0
    late_sources: set[int] = set()
    dup_sources: set[int] = set()
    dup_examples: list[dict[str, Any]] = []
    zero = [0] * cycles
    twice = [0] * cycles
    for feed, seen in enumerate(by_feed):
        seen.sort()
        counts = [0] * cycles
        prev: tuple[float, int | None] | None = None
        for t, w in seen:
            if t >= t0:
                in_window += 1
                counts[int((t - t0) // interval)] += 1
                if prev is not None:
                    gap = t - prev[0]
                    gaps.append(gap)
                    if gap < interval / 2:
                        duplicates += 1
                        dup_sources.add(feed)
                        if len(dup_examples) < 5:
                            dup_examples.append({"feed": feed, "gap_s": round(gap, 3),
                                                 "watchers": [prev[1], w]})
                    elif gap > late_after:
                        late += 1
                        late_sources.add(feed)
                    handovers += int(prev[1] != w)
            prev = (t, w)
        if prev is None or t1 - prev[0] > late_after:
            late += 1
            late_sources.add(feed)
        for k, n in enumerate(counts):
            zero[k] += int(n == 0)
            twice[k] += int(n > 1)
    total = sum(sum(c.values()) for c in windows)
    per_watcher = [sum(c[w] for c in windows) for w in range(watchers)]
    unattributed = sum(c[None] for c in windows)
    return {
        "window_s": t1 - t0, "polls": total, "polls_per_30s": total * per,
        "per_watcher_polls": per_watcher,
        "per_watcher_polls_per_30s": [n * per for n in per_watcher],
        "per_watcher_share": [n / total if total else float("nan") for n in per_watcher],
        "unattributed_polls": unattributed,
        "per_interval": [{"polls": sum(c.values()),
                          "per_watcher": [c[w] for w in range(watchers)],
                          "unattributed": c[None], "sources_not_polled": zero[k],
                          "sources_polled_twice_or_more": twice[k]}
                         for k, c in enumerate(windows)],
        "duplicates": duplicates, "sources_with_duplicates": len(dup_sources),
        "duplicate_examples": dup_examples,
        "late": late, "sources_late": len(late_sources), "late_after_s": late_after,
        "gap_p50_s": percentile(gaps, 50), "gap_p99_s": percentile(gaps, 99),
        "gap_max_s": max(gaps) if gaps else float("nan"),
        "handovers": handovers, "handover_share": handovers / in_window if in_window else 0.0,
    }


# -- the run ----------------------------------------------------------------------------
def _fetch_polls(server: FeedServer, since: int) -> tuple[list[list[Any]], list[Conn]]:
    data = server.control("polls", {"since": since})
    conns = [(str(a), int(b), str(c), int(d)) for a, b, c, d in data["conns"]]
    return list(data["polls"]), conns


def _log_events(path: Path, marks: list[float]) -> list[dict[str, int]]:
    """A watcher's JSON log, split at the wall-clock ``marks`` (the window's start and end):
    per part, ``level:<level>`` counts and each warning and error event by name (a failed
    poll by its error class: ``warning:source.failed:deadline``)."""
    from datetime import datetime

    parts: list[Counter[str]] = [Counter() for _ in range(len(marks) + 1)]
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                at = datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                parts[0]["unparsed_lines"] += 1
                continue
            out = parts[sum(at.timestamp() >= m for m in marks)]
            level = str(rec.get("level"))
            out[f"level:{level}"] += 1
            if level in ("warning", "error", "critical"):
                name = f"{level}:{rec.get('event')}"
                if rec.get("error_class"):
                    name += f":{rec['error_class']}"
                out[name] += 1
    return [dict(c) for c in parts]


def run(server: PgServer, *, feeds: int, watchers: int, cycles: int, interval: float,
        jitter: float, hosts: int, baseline_timeout: float, tmp: Path) -> dict[str, Any]:
    from crisiscomms.adapters.store import open_store

    url = server.create_database("bench_shared")
    open_store(url).close()  # the schema, once (the watchers do not race to make it)
    late_after = interval + jitter + 2 * TICK_S + 1.0
    with noting_feed_server(feeds, hosts) as feedsrv:
        playbooks = bench_playbooks(tmp / "playbooks", [feedsrv.url(i) for i in range(feeds)])
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for w in range(watchers):
                home = tmp / f"home-{w + 1}"
                home.mkdir()
                env = watch_env(home, playbooks, interval, jitter=jitter)
                env.update({"CRISISCOMMS_DATABASE_URL": url,
                            "CRISISCOMMS_WORKER_ID": f"bench-w{w + 1}"})
                log = open(tmp / f"watch-{w + 1}.log", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(subprocess.Popen(  # noqa: S603
                    [str(CRISISCOMMS), "watch", "--tick", str(TICK_S)], cwd=home, env=env,
                    stdout=log, stderr=subprocess.STDOUT))
            sampler = Sampler([p.pid for p in procs])
            sampler.start()
            started = time.perf_counter()

            def alive() -> None:
                for k, p in enumerate(procs):
                    if p.poll() is not None:
                        tail = (tmp / f"watch-{k + 1}.log").read_bytes()[-600:]
                        raise RuntimeError(f"crisiscomms watch {k + 1} exited {p.returncode}: "
                                           f"{tail.decode('utf-8', 'replace')}")

            # The first cycle, followed in the store every 5 s until every source is
            # baselined or ``baseline_timeout`` has passed (then the window is measured all the
            # same: what a first cycle that does not end does to the next ones is reported).
            series: list[dict[str, float]] = []
            first_cycle = float("nan")
            while True:
                alive()
                state = store_state(url)
                elapsed = time.perf_counter() - started
                if not series or elapsed - series[-1]["t_s"] >= 5.0:
                    series.append({"t_s": round(elapsed, 1), **state})
                if state["baselined"] >= feeds:
                    first_cycle = elapsed
                    break
                if elapsed > baseline_timeout:
                    series.append({"t_s": round(elapsed, 1), **state})
                    break
                time.sleep(0.5)
            time.sleep(2.0)  # the last baseline commits
            at_start = store_state(url)
            base_polls, _ = _fetch_polls(feedsrv, 0)
            fence_marks = [fences(url)]
            cpu0 = [proc_tree_cpu_seconds(p.pid) for p in procs]
            pg0, fs0 = server.cpu_seconds, feedsrv.cpu_seconds
            t0, m0, w0 = time.perf_counter(), time.monotonic(), time.time()
            for c in range(1, cycles + 1):
                feedsrv.control("cycle", {"cycle": c, "interval": interval})
                time.sleep(max(0.0, t0 + c * interval - time.perf_counter()))
                fence_marks.append(fences(url))
            cpu1 = [proc_tree_cpu_seconds(p.pid) for p in procs]
            pg1, fs1 = server.cpu_seconds, feedsrv.cpu_seconds
            t1, w1 = time.perf_counter(), time.time()
            at_end = store_state(url)
            alive()
            time.sleep(jitter + 2 * TICK_S + 1.0)  # the last cycle's changes, polled late
            polls, conns = _fetch_polls(feedsrv, 0)
            sampler.sample()
            sampler.stopping.set()
            alive()
        finally:
            for p in procs:
                if p.poll() is None:
                    stop_process(p)
            for log in logs:
                log.close()
    owner = {k: sampler.owner_of(c) for k, c in enumerate(conns)}
    tagged = [(float(t) - m0 + t0, int(f), owner.get(int(c))) for t, f, c, _s in polls]
    window = t1 - t0
    shares = analyse(tagged, feeds=feeds, watchers=watchers, t0=t0, interval=interval,
                     cycles=cycles, late_after=late_after)
    claims = [sum(after.get(k, 0) - before.get(k, 0) for k in after)
              for before, after in itertools.pairwise(fence_marks)]
    base_owner = Counter(owner.get(int(c)) for _t, _f, c, s in base_polls if s == 200)
    expected = feeds * 30.0 / (interval + jitter / 2)
    events = [_log_events(tmp / f"watch-{w + 1}.log", [w0, w1]) for w in range(watchers)]
    return {
        "sources": feeds, "watchers": watchers, "cycles": cycles, "interval_s": interval,
        "jitter_s": jitter, "tick_s": TICK_S, "hosts": len(feedsrv.hosts),
        "first_cycle_wall_s": first_cycle, "baseline_converged": not math.isnan(first_cycle),
        "baseline_timeout_s": baseline_timeout, "baseline_series": series,
        "store_at_window_start": at_start, "store_at_window_end": at_end,
        "baseline_200s_per_watcher": [base_owner.get(w, 0) for w in range(watchers)],
        "baseline_200s_unattributed": base_owner.get(None, 0),
        "expected_polls_per_30s": expected,
        **shares,
        "window_s": window,
        "store_claims_per_interval": claims, "store_claims": sum(claims),
        "cpu_per_30s": [(b - a) / window * 30.0 for a, b in zip(cpu0, cpu1, strict=True)],
        "peak_rss_mb": sampler.peak_rss,
        "postgres_cpu_per_30s": (pg1 - pg0) / window * 30.0,
        "feed_server_cpu_per_30s": (fs1 - fs0) / window * 30.0,
        "exactly_once": exactly_once(url, feeds, cycles),
        "log_events_first_cycle": [e[0] for e in events],
        "log_events_window": [e[1] for e in events],
        "log_events_after": [e[2] for e in events],
        "exit_codes": [p.returncode for p in procs],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="shared-pg benchmark: watchers sharing sources")
    p.add_argument("--feeds", type=int, default=20_000)
    p.add_argument("--watchers", type=int, default=2)
    p.add_argument("--cycles", type=int, default=4, help="measured intervals")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--jitter", type=float, default=5.0,
                   help="polling.jitter_seconds (0..this added to each interval; default 5)")
    p.add_argument("--hosts", type=int, default=10, help="loopback addresses of the feeds")
    p.add_argument("--baseline-timeout", type=float, default=300.0,
                   help="seconds the first cycle may take before the window starts anyway")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.serve:
        serve(args.feeds, args.hosts, seed=1, entries=10)
        return
    with pg_server() as server:
        if isinstance(server, str):
            result: dict[str, Any] = {"skipped": server}
        else:
            with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-shared-") as t:
                result = run(server, feeds=args.feeds, watchers=args.watchers,
                             cycles=args.cycles, interval=args.interval, jitter=args.jitter,
                             hosts=args.hosts, baseline_timeout=args.baseline_timeout,
                             tmp=Path(t))
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
