"""Real local receivers for the notification tests: an HTTP endpoint on loopback (Apprise's
json://) and an SMTP server (aiosmtpd, for mailto://)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class JsonReceiver:
    """What the HTTP endpoint received: one dict per POST (path, headers, JSON body)."""

    port: int
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0

    def url(self, path: str = "/hook", userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"json://{at}127.0.0.1:{self.port}{path}"

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.posts


@contextmanager
def json_receiver() -> Iterator[JsonReceiver]:
    received = JsonReceiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if received.delay:
                time.sleep(received.delay)
            received.posts.append({"path": self.path, "headers": dict(self.headers),
                                   "at": time.monotonic(),
                                   "body": json.loads(body or b"{}")})
            self.send_response(received.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
                conns.append(c)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield int(s.getsockname()[1])
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        s.close()


@dataclass
class Mailbox:
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """aiosmtpd on loopback, no TLS, no auth: every message kept in ``messages``."""
    from aiosmtpd.controller import Controller

    box = Mailbox(port=0)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                 "data": envelope.content.decode("utf-8", "replace")})
            return "250 Message accepted for delivery"

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    box.port = port
    try:
        yield box
    finally:
        controller.stop()
