"""The loopback feed server (run as ``python -m benchmarks.feedserver``), plus a fake
Mastodon for feed2toot.

It listens on 127.0.0.1 and the next ``--hosts - 1`` loopback addresses (127.0.0.2, ...) on
one port, so the watcher's per-host politeness limit sees several hosts as it would in
production; feed ``i`` is served on host ``i % hosts``. Feeds carry strong ETags and
``If-None-Match`` gets a 304. The benchmark moves the world on with
``POST /_control/cycle {"cycle": c, "interval": s}``; ``POST /_control/stats`` returns the
request counters, with ``connections`` (TCP connections accepted) and ``control`` (control
requests, one connection each): the watcher's connections are the difference. First line on
stdout: ``{"port": ..., "hosts": [...]}``.

Fake Mastodon (what Mastodon.py 2.x calls for feed2toot's ``status_post``): ``GET
/api/v1/instance``, ``GET /api/v2/instance``, ``GET /api/v1/accounts/verify_credentials``,
``POST /api/v1/statuses``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.feeds import START, changed_feeds, etag, render, visible_at


class State:
    def __init__(self, feeds: int, seed: int, entries: int) -> None:
        self.feeds = feeds
        self.seed = seed
        self.entries = entries
        self.cycle = 0
        self.interval = 30.0
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.cache: dict[tuple[int, str], tuple[bytes, str]] = {}
        self.statuses: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-feeds/1"
    state: State

    def log_message(self, format: str, *args: Any) -> None:
        return

    def setup(self) -> None:
        super().setup()  # one handler per accepted connection (keep-alive loops inside)
        with self.state.lock:
            self.state.counts["connections"] += 1

    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304 and body:
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode())

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:
        st = self.state
        path = self.path.split("?", 1)[0]
        if path.startswith("/feed/") and path.endswith(".xml"):
            try:
                feed = int(path[len("/feed/"):-len(".xml")])
            except ValueError:
                feed = -1
            if not 0 <= feed < st.feeds:
                self._send(404, b"no such feed", "text/plain")
                return
            with st.lock:
                cycle, interval = st.cycle, st.interval
            tag = etag(feed, cycle)
            if self.headers.get("If-None-Match") == tag:
                with st.lock:
                    st.counts["304"] += 1
                self._send(304, headers={"ETag": tag})
                return
            key = (feed, tag)
            cached = st.cache.get(key)
            if cached is None:
                url = f"http://{self.headers.get('Host', '127.0.0.1')}{path}"
                cached = render(feed, cycle, interval, st.seed, st.entries, url)
                st.cache[key] = cached
            with st.lock:
                st.counts["200"] += 1
            self._send(200, cached[0], cached[1], {"ETag": tag, "Cache-Control": "max-age=0"})
            return
        if path.rstrip("/") in ("/api/v1/instance", "/api/v2/instance"):
            self._json({"uri": "bench.invalid", "domain": "bench.invalid", "title": "bench",
                        "version": "4.2.0", "description": "", "urls": {},
                        "api_versions": {"mastodon": 2}})
            return
        if path == "/api/v1/accounts/verify_credentials":
            self._json(_account())
            return
        self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        st = self.state
        path = self.path.split("?", 1)[0]
        raw = self._body()
        if path.startswith("/_control/"):
            with st.lock:
                st.counts["control"] += 1
        if path == "/_control/cycle":
            data = json.loads(raw or b"{}")
            with st.lock:
                st.cycle = int(data.get("cycle", 0))
                st.interval = float(data.get("interval", st.interval))
                cycle, interval = st.cycle, st.interval
            changed = [[i, visible_at(i, cycle, interval, st.seed).isoformat()]
                       for i in changed_feeds(st.feeds, cycle)]
            self._json({"cycle": cycle, "changed": changed})
            return
        if path == "/_control/stats":
            with st.lock:
                self._json({**st.counts, "statuses": len(st.statuses)})
            return
        if path == "/api/v1/statuses":
            with st.lock:
                st.counts["statuses"] += 1
                n = len(st.statuses) + 1
                st.statuses.append(raw.decode("utf-8", "replace")[:2000])
            self._json({
                "id": str(n), "uri": f"https://bench.invalid/statuses/{n}",
                "url": f"https://bench.invalid/@bench/{n}", "content": "<p>ok</p>",
                "created_at": START.isoformat().replace("+00:00", "Z"),
                "visibility": "public", "sensitive": False, "spoiler_text": "",
                "account": _account(), "media_attachments": [], "mentions": [],
                "tags": [], "emojis": [], "reblogs_count": 0, "favourites_count": 0,
                "replies_count": 0, "reblog": None, "in_reply_to_id": None,
                "in_reply_to_account_id": None, "language": "en"})
            return
        self._send(404, b"not found", "text/plain")


def _account() -> dict[str, Any]:
    return {"id": "1", "username": "bench", "acct": "bench", "display_name": "bench",
            "url": "https://bench.invalid/@bench", "created_at": "2020-01-01T00:00:00Z",
            "note": "", "avatar": "", "header": "", "followers_count": 0,
            "following_count": 0, "statuses_count": 0, "locked": False, "bot": True,
            "fields": [], "emojis": []}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--feeds", type=int, default=1000)
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--entries", type=int, default=10)
    args = p.parse_args(argv)
    state = State(args.feeds, args.seed, args.entries)
    handler = type("BoundHandler", (Handler,), {"state": state})
    servers: list[ThreadingHTTPServer] = []
    first = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    first.daemon_threads = True
    servers.append(first)
    port = first.server_address[1]
    for k in range(2, args.hosts + 1):
        try:
            srv = ThreadingHTTPServer((f"127.0.0.{k}", port), handler)
        except OSError:
            break  # not every system routes all of 127/8; fewer hosts is fine
        srv.daemon_threads = True
        servers.append(srv)
    hosts = [str(s.server_address[0]) for s in servers]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    sys.stdout.write(json.dumps({"port": port, "hosts": hosts}) + "\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


if __name__ == "__main__":
    main()
