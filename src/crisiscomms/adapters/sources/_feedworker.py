"""The feedparser worker process (run as ``python -m crisiscomms.adapters.sources._feedworker``).

It reads framed requests on stdin and writes framed JSON replies on stdout; the parent
(``parsing.FeedParserPool``) enforces the time bound by killing it. It caps its own
address space with ``RLIMIT_AS`` once its imports are done.

Frames: request = ``>II`` (header length, body length) + JSON headers + body bytes;
reply = ``>I`` length + JSON ``{"kind": "ok"|"error"|"memory", "payload": ...}``.
"""

from __future__ import annotations

import calendar
import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO

from crisiscomms.adapters.sources.text import html_to_text, tidy

MAX_ENTRIES = 1_000  # more than any official feed carries; bounds the reply size
_BENIGN_BOZO = frozenset({"CharacterEncodingOverride", "NonXMLContentType"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
REQUEST_HEADER = struct.Struct(">II")
REPLY_HEADER = struct.Struct(">I")


def limit_memory(memory_bytes: int) -> None:
    """Cap the address space at what the process uses now plus ``memory_bytes``."""
    try:
        import resource

        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # pragma: no cover - non-Linux
        pass


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(calendar.timegm(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _plain(value: Any, detail: Any) -> str:
    text = value if isinstance(value, str) else ""
    kind = detail.get("type", "") if isinstance(detail, dict) else ""
    return html_to_text(text) if kind in _HTML_TYPES else tidy(text)


def _entry(entry: Any) -> dict[str, Any]:
    content = [c for c in (entry.get("content") or []) if isinstance(c, dict)]
    best = max(content, key=lambda c: len(c.get("value", "")), default=None)
    if best is not None and len(best.get("value", "")) >= len(entry.get("summary", "")):
        text = _plain(best.get("value"), best)
    else:
        text = _plain(entry.get("summary"), entry.get("summary_detail"))
    links = [
        [str(lk.get("href", ""))[:2000], str(lk.get("type", ""))[:200],
         str(lk.get("rel", ""))[:50]]
        for lk in (entry.get("links") or [])[:20]
        if isinstance(lk, dict)
    ]
    cap = {
        k: tidy(v, 2000) for k, v in entry.items()
        if isinstance(k, str) and k.startswith("cap_") and isinstance(v, str)
    }
    # dict.get: FeedParserDict aliases updated->published with a DeprecationWarning.
    updated_raw = dict.get(entry, "updated") or dict.get(entry, "published") or ""
    return {
        "id": str(entry.get("id", ""))[:2000],
        "link": str(entry.get("link", ""))[:2000],
        "title": _plain(entry.get("title"), entry.get("title_detail"))[:2000],
        "text": text,
        "published": _epoch(dict.get(entry, "published_parsed")),
        "updated": _epoch(dict.get(entry, "updated_parsed")),
        "updated_raw": str(updated_raw)[:200],
        "links": links,
        "cap": cap,
        "author": tidy(str(entry.get("author", "")), 500),
    }


def parse(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Run feedparser on ``body`` and return plain JSON-able data."""
    import feedparser  # here, not at the top: the parent imports this module for its frames

    parsed = feedparser.parse(io.BytesIO(body), response_headers=headers)
    exc = parsed.get("bozo_exception")
    reason = type(exc).__name__ if exc is not None else ""
    feed = parsed.get("feed", {})
    return {
        "version": str(parsed.get("version", "") or ""),
        "bozo": bool(parsed.get("bozo")) and reason not in _BENIGN_BOZO,
        "bozo_reason": reason,
        "title": _plain(feed.get("title"), feed.get("title_detail"))[:500],
        "link": str(feed.get("link", ""))[:2000],
        "entries": [_entry(e) for e in parsed.get("entries", [])[:MAX_ENTRIES]],
    }


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _send(out: BinaryIO, kind: str, payload: Any) -> None:
    raw = json.dumps({"kind": kind, "payload": payload}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    out.write(REPLY_HEADER.pack(len(raw)) + raw)
    out.flush()


def main() -> None:
    """Serve parse requests until stdin closes."""
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 64 * 1024 * 1024
    # Our stdout is the reply channel: keep stray prints (from any library) off it.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    import feedparser  # noqa: F401 - loaded before the cap is measured, never under it

    limit_memory(memory)
    _send(out, "ready", None)
    while True:
        try:
            hlen, blen = REQUEST_HEADER.unpack(_read_exact(stdin, REQUEST_HEADER.size))
            headers = json.loads(_read_exact(stdin, hlen))
            body = _read_exact(stdin, blen)
        except (EOFError, OSError, ValueError):
            return
        try:
            _send(out, "ok", parse(body, headers))
        except MemoryError:
            _send(out, "memory", None)
            return  # the heap may be fragmented near the cap: let the parent start afresh
        except RecursionError:
            _send(out, "error", "RecursionError")
        except Exception as exc:
            _send(out, "error", type(exc).__name__)


if __name__ == "__main__":
    main()
