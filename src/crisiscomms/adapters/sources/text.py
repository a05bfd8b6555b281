"""Plain-text helpers shared by the source adapters (no I/O).

Feeds and social APIs hand us HTML fragments; the watcher and the policy want plain text.
``html_to_text`` uses the stdlib ``html.parser`` (linear, no regex backtracking) and
decodes entities. Inputs are capped first so a hostile fragment cannot cost much.
"""

from __future__ import annotations

import hashlib
import html
import re
from html.parser import HTMLParser

MAX_FIELD_CHARS = 100_000  # longer fragments are cut before parsing: no real update is this long
MAX_TEXT_CHARS = 20_000  # what we keep after stripping
_BLOCK_TAGS = frozenset(
    {"p", "br", "div", "li", "ul", "ol", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
     "blockquote", "pre", "table", "section", "article", "hr"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_TAG_HINT = re.compile(r"<[A-Za-z!/]")
_TAG_STRIP = re.compile(r"<[^<>]{0,2000}>")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def tidy(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Collapse runs of spaces and blank lines, drop control characters, cap the length."""
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    out = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    return out[:limit]


def html_to_text(fragment: str | None, *, limit: int = MAX_TEXT_CHARS) -> str:
    """Return the visible text of an HTML fragment, entities decoded, whitespace tidied."""
    if not fragment:
        return ""
    fragment = fragment[:MAX_FIELD_CHARS]
    if not _TAG_HINT.search(fragment):
        return tidy(html.unescape(fragment), limit)
    parser = _TextExtractor()
    try:
        parser.feed(fragment)
        parser.close()
    except (AssertionError, ValueError):  # pragma: no cover - html.parser is lenient
        return tidy(html.unescape(_TAG_STRIP.sub(" ", fragment)), limit)
    return tidy("".join(parser.parts), limit)


def title_from_text(text: str, limit: int = 120) -> str:
    """First line of ``text`` cut at a word boundary: a title for sources that have none."""
    first = text.strip().split("\n", 1)[0].strip()
    if len(first) <= limit:
        return first
    cut = first[: limit - 1].rsplit(" ", 1)[0] or first[: limit - 1]
    return cut + "…"


def fallback_id(link: str, title: str) -> str:
    """Stable id for an entry without guid/id: sha256 of link and title."""
    return "sha256:" + hashlib.sha256(f"{link}\n{title}".encode("utf-8", "replace")).hexdigest()
