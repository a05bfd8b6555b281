"""Bounded feed parsing: feedparser in a small pool of worker processes.

feedparser is not safe on hostile input: its author-email regex backtracks
quadratically (kurtmckee/feedparser#562, unfixed in 6.0.14) and a one-line entity bomb
relies on expat's own limits. So every parse runs in a persistent worker process
(``python -m crisiscomms.adapters.sources._feedworker``) whose address space is capped with
``RLIMIT_AS`` and which the parent kills, and later replaces, when it overruns the time
bound. Workers are plain subprocesses rather than ``multiprocessing`` children: nothing
is forked from a threaded event-loop process and the caller's ``__main__`` is never
re-imported. The parent only sees JSON data, turned here into ``ParsedFeed``.

Cost: one pipe round-trip per parse (well under a millisecond for a typical feed), and
only changed feeds are parsed (a 304 never gets here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

from crisiscomms.adapters.sources._feedworker import REPLY_HEADER, REQUEST_HEADER
from crisiscomms.adapters.sources.text import fallback_id
from crisiscomms.domain.errors import PermanentSourceError, TransientSourceError

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 2.0
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
MAX_REPLY_BYTES = 64 * 1024 * 1024
_STARTUP_TIMEOUT = 30.0
_SRC_ROOT = str(Path(__file__).resolve().parents[3])  # src/ (adapters/sources/parsing.py)


@dataclass(frozen=True, slots=True)
class FeedLink:
    """One ``<link>`` of an entry."""

    href: str
    type: str = ""
    rel: str = ""


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One feed entry, plain text, times aware UTC (``None`` when absent or invalid)."""

    external_id: str
    link: str
    title: str
    text: str
    published: datetime | None = None
    updated: datetime | None = None
    updated_raw: str = ""
    links: tuple[FeedLink, ...] = ()
    cap: Mapping[str, str] = field(default_factory=dict)
    author: str = ""


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """What a feed said. ``version`` is feedparser's (``rss20``, ``atom10``, ... or ``""``)."""

    version: str
    bozo: bool
    bozo_reason: str = ""
    title: str = ""
    link: str = ""
    entries: tuple[FeedEntry, ...] = ()

    @property
    def is_feed(self) -> bool:
        """False for an HTML page, JSON, or noise: no feed version and no entries."""
        return bool(self.version) or bool(self.entries)


# -------------------------------------------------------------------------- parent side


# What the parser worker's environment keeps: enough to run Python, nothing more.
WORKER_ENV = frozenset({"PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR",
                        "SYSTEMROOT", "PYTHONHASHSEED"})


class _WorkerDied(Exception):
    pass


class _Worker:
    """One ``_feedworker`` subprocess and its pipes."""

    def __init__(self, memory_bytes: int) -> None:
        # A minimal environment: the worker parses untrusted bytes and needs none of our
        # settings or tokens (an exploit of the parser must not find a credential there).
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV}
        # The worker must import this very package even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_SRC_ROOT, env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "crisiscomms.adapters.sources._feedworker", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        try:
            kind, _ = self.receive(_STARTUP_TIMEOUT)
        except (_WorkerDied, TimeoutError):
            self.kill()
            raise
        if kind != "ready":
            self.kill()
            raise _WorkerDied(kind)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, body: bytes, headers: Mapping[str, str]) -> None:
        raw = json.dumps(dict(headers)).encode()
        try:
            self.stdin.write(REQUEST_HEADER.pack(len(raw), len(body)) + raw)
            self.stdin.write(body)
            self.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _WorkerDied("send") from exc

    def _read_exact(self, size: int, deadline: float) -> bytes:
        fd = self.stdout.fileno()
        data = bytearray()
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(size - len(data), 1 << 20))
            if not chunk:
                raise _WorkerDied("eof")
            data += chunk
        return bytes(data)

    def receive(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        (size,) = REPLY_HEADER.unpack(self._read_exact(REPLY_HEADER.size, deadline))
        if size > MAX_REPLY_BYTES:
            raise _WorkerDied("reply too large")
        try:
            reply = json.loads(self._read_exact(size, deadline))
        except ValueError as exc:
            raise _WorkerDied("bad reply") from exc
        return str(reply.get("kind")), reply.get("payload")

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self._reap()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()  # EOF ends the worker loop
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def _shutdown(workers: set[_Worker], executor: ThreadPoolExecutor) -> None:
    for worker in list(workers):
        worker.stop()
    workers.clear()
    executor.shutdown(wait=False, cancel_futures=True)


class FeedParserPool:
    """A few persistent feedparser workers with a time and memory bound per parse.

    Owned by the composition root (``close()`` it; a finalizer also stops the workers at
    interpreter exit). ``start()`` starts every worker at once in the pool's own threads (off
    the event loop), so the first parse after start-up does not wait for a worker's
    interpreter to boot (1-1.5 s each); without it workers start on first use. A worker is
    replaced after a kill.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.timeout = timeout
        self._size = workers
        self._starting: list[Future[None]] = []
        self.memory_bytes = memory_bytes
        # One thread per worker: threads hand bodies to workers and wait with a timeout,
        # so the event loop never blocks and the default executor is not starved.
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="feedparse")
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(workers):
            self._idle.put(None)
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._all, self._executor)

    def start(self) -> list[Future[None]]:
        """Start the workers not yet running, each in one of the pool's threads; returns at
        once (the futures end when each worker is ready or failed to start, then it starts
        on first use). Safe to call more than once."""
        if self._closed:
            return []
        self._starting = [self._executor.submit(self._warm) for _ in range(self._size)]
        return list(self._starting)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the workers ``start()`` began are up (or failed); False on timeout."""
        _done, pending = wait(self._starting, timeout=timeout)
        return not pending

    def _warm(self) -> None:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive:
                worker = self._start("")
                if self._closed:  # closed while it booted: it must not outlive the pool
                    worker.stop()
                    with self._lock:
                        self._all.discard(worker)
                    worker = None
        except TransientSourceError as exc:
            log.warning("source.parser_start_failed", error=str(exc))
            worker = None
        finally:
            self._idle.put(worker)

    async def parse(
        self, body: bytes, headers: Mapping[str, str] | None = None, *, source_id: str = ""
    ) -> ParsedFeed:
        """Parse a feed body within the bounds, or raise a ``SourceError``.

        error_class: ``parse_timeout`` (over the time bound), ``parse_memory`` (over the
        memory bound), ``parse_crash`` (the worker died), ``parse`` (feedparser raised).
        """
        if self._closed:
            raise TransientSourceError(
                f"{source_id}: feed parser pool is closed", source_id=source_id,
                error_class="parser_closed",
            )
        plain = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(
            self._executor, self._parse_blocking, body, plain, source_id
        )
        return _to_parsed(raw)

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers."""
        with self._lock:
            return sorted(w.proc.pid for w in self._all if w.alive)

    def _parse_blocking(
        self, body: bytes, headers: dict[str, str], source_id: str
    ) -> dict[str, Any]:
        worker = self._idle.get()
        healthy = False
        try:
            if worker is None or not worker.alive:
                worker = self._start(source_id)
            try:
                worker.send(body, headers)
                kind, payload = worker.receive(self.timeout)
            except TimeoutError:
                log.warning("source.parse_timeout", source_id=source_id,
                            timeout=self.timeout, size=len(body))
                raise PermanentSourceError(
                    f"{source_id}: feed took longer than {self.timeout:g}s to parse",
                    source_id=source_id, error_class="parse_timeout",
                ) from None
            except _WorkerDied as exc:
                raise PermanentSourceError(
                    f"{source_id}: feed parser worker died ({exc})", source_id=source_id,
                    error_class="parse_crash",
                ) from None
            if kind == "ok" and isinstance(payload, dict):
                healthy = True
                return payload
            if kind == "memory":
                raise PermanentSourceError(
                    f"{source_id}: feed needs more than {self.memory_bytes // 2**20} MiB",
                    source_id=source_id, error_class="parse_memory",
                )
            healthy = kind == "error"
            raise PermanentSourceError(
                f"{source_id}: feed parser failed: {str(payload)[:100]}",
                source_id=source_id, error_class="parse",
            )
        finally:
            if worker is not None and not healthy:
                worker.kill()
                with self._lock:
                    self._all.discard(worker)
                worker = None
            self._idle.put(worker)

    def _start(self, source_id: str) -> _Worker:
        try:
            worker = _Worker(self.memory_bytes)
        except (OSError, _WorkerDied, TimeoutError) as exc:
            raise TransientSourceError(
                f"{source_id}: cannot start a feed parser worker ({type(exc).__name__})",
                source_id=source_id, error_class="parser_start",
            ) from exc
        with self._lock:
            self._all.add(worker)
        return worker

    def close(self) -> None:
        """Stop every worker. Safe to call more than once."""
        self._closed = True
        self._finalizer()


def _when(epoch: object) -> datetime | None:
    if not isinstance(epoch, float | int):
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _to_parsed(raw: dict[str, Any]) -> ParsedFeed:
    entries = []
    for e in raw.get("entries", []):
        guid = str(e.get("id") or "").strip()
        link = str(e.get("link") or "").strip()
        title = str(e.get("title") or "")
        entries.append(
            FeedEntry(
                external_id=guid or fallback_id(link, title),
                link=link,
                title=title,
                text=str(e.get("text") or ""),
                published=_when(e.get("published")),
                updated=_when(e.get("updated")),
                updated_raw=str(e.get("updated_raw") or ""),
                links=tuple(FeedLink(*lk) for lk in e.get("links", [])),
                cap=dict(e.get("cap") or {}),
                author=str(e.get("author") or ""),
            )
        )
    return ParsedFeed(
        version=str(raw.get("version") or ""),
        bozo=bool(raw.get("bozo")),
        bozo_reason=str(raw.get("bozo_reason") or ""),
        title=str(raw.get("title") or ""),
        link=str(raw.get("link") or ""),
        entries=tuple(entries),
    )
