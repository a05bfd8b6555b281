"""Compose the text of a post from a playbook template, fitted to one platform.

``compose`` runs at queue time, so the text an operator approves is exactly the text that is
sent. The rules per platform (what counts as one "character"):

* X          280, weighted: most Latin/Greek/Cyrillic code points weigh 1, CJK and others 2,
             an emoji sequence 2, and every URL 23 (t.co).
* Mastodon   500 grapheme clusters, every URL 23.
* Bluesky    300 grapheme clusters (URLs count in full) and at most 3,000 UTF-8 bytes.
* Facebook   63,206 characters.

When the rendered text is too long, the free text (``text``, then ``title``, then the other
descriptive fields) is shortened at a word boundary with an ellipsis; the URL and the hashtags
are never cut. Only if they alone do not fit are hashtags dropped (last first) and, as a last
resort, the whole text cut.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence

import regex

from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import Platform

TEMPLATE_FIELDS = (
    "title",
    "text",
    "url",
    "hashtags",
    "agency",
    "source",
    "handle",
    "severity",
    "area",
    "event",
)

LIMITS: dict[Platform, int] = {
    Platform.X: 280,
    Platform.MASTODON: 500,
    Platform.BLUESKY: 300,
    Platform.FACEBOOK: 63_206,
}
BLUESKY_MAX_BYTES = 3000
SHORT_URL_WEIGHT = 23
ELLIPSIS = "…"

# Shortened first to last. ``url`` and ``hashtags`` are deliberately absent: they are kept whole.
_SHRINK_ORDER = ("text", "title", "area", "event", "agency", "source", "handle", "severity")

# A URL runs to the next whitespace; trailing punctuation is not part of it (as on X), which
# makes our count err on the long side.
URL_RE = regex.compile(r"https?://[^\s<>\"]+", regex.IGNORECASE)
_TRAILING_PUNCT = ".,;:!?)]}'\"…"
_WHITESPACE = regex.compile(r"\s+")
_GRAPHEME = regex.compile(r"\X")
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}]")
# twitter-text v3: code points in these ranges weigh 1, every other one 2.
_X_LIGHT_RANGES = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
_SAFE_FIELD = regex.compile(r"^[a-z_]+$")


def url_spans(text: str) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` character offsets of the http(s) URLs in ``text``."""
    spans: list[tuple[int, int]] = []
    for match in URL_RE.finditer(text):
        url = match.group().rstrip(_TRAILING_PUNCT)
        if len(url) > len("https://"):
            spans.append((match.start(), match.start() + len(url)))
    return spans


def _shortened_by_platform(url: str) -> bool:
    """X and Mastodon shorten only what they recognise as a link: a host with a dot in it."""
    host = url.split("://", 1)[1].split("/", 1)[0]
    return "." in host


def _x_weight(chunk: str) -> int:
    weight = 0
    for grapheme in _GRAPHEME.findall(chunk):
        if _EMOJI.search(grapheme):
            weight += 2
            continue
        for char in grapheme:
            cp = ord(char)
            weight += 1 if any(lo <= cp <= hi for lo, hi in _X_LIGHT_RANGES) else 2
    return weight


def _graphemes(chunk: str) -> int:
    return len(_GRAPHEME.findall(chunk))


def weighted_length(text: str, platform: Platform) -> int:
    """Length of ``text`` as ``platform`` counts it against its limit (see module docstring)."""
    text = unicodedata.normalize("NFC", text)
    if platform is Platform.FACEBOOK:
        return len(text)
    if platform is Platform.BLUESKY:
        return _graphemes(text)
    measure: Callable[[str], int] = _x_weight if platform is Platform.X else _graphemes
    total = 0
    pos = 0
    for start, end in url_spans(text):
        total += measure(text[pos:start])
        url = text[start:end]
        total += SHORT_URL_WEIGHT if _shortened_by_platform(url) else measure(url)
        pos = end
    return total + measure(text[pos:])


def fits(text: str, platform: Platform) -> bool:
    """True if ``platform`` would accept ``text`` as the body of one post."""
    if weighted_length(text, platform) > LIMITS[platform]:
        return False
    return platform is not Platform.BLUESKY or len(text.encode("utf-8")) <= BLUESKY_MAX_BYTES


def collapse_whitespace(text: str) -> str:
    """Turn every run of whitespace (newlines included) into one space and trim the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """Split a template into (literal, field) pairs. Unknown or dotted fields render empty."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"template {template!r} is not valid: {exc}") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, field_name, _spec, _conversion in parsed:
        # Only bare names: attribute or index lookups ("{title.__class__}") are never evaluated
        # (they render empty), and format specs are ignored so a template cannot pad a post.
        safe = field_name is not None and _SAFE_FIELD.match(field_name) is not None
        pieces.append((literal, field_name if safe else None))
    return pieces


def _contains_tag(text: str, tag: str) -> bool:
    pattern = r"(?<![\w#])" + regex.escape(tag) + r"(?!\w)"
    return regex.search(pattern, text, regex.IGNORECASE) is not None


def _render(pieces: list[tuple[str, str | None]], values: Mapping[str, str]) -> str:
    out = []
    for literal, name in pieces:
        out.append(literal)
        if name:
            out.append(values.get(name, ""))
    return unicodedata.normalize("NFC", collapse_whitespace("".join(out)))


def truncate(value: str, graphemes: int) -> str:
    """Shorten ``value`` to at most ``graphemes`` clusters plus an ellipsis, at a word break.

    ``truncate(v, 0)`` is ``""``; a value that is already short enough comes back unchanged.
    """
    clusters = _GRAPHEME.findall(value)
    if graphemes >= len(clusters):
        return value
    if graphemes <= 0:
        return ""
    cut = "".join(clusters[:graphemes])
    # Prefer to break between words, unless that would throw away most of what is left.
    if not clusters[graphemes].isspace():
        space = cut.rfind(" ")
        if space >= len(cut) * 0.6:
            cut = cut[:space]
    cut = cut.rstrip(" ,;:-–—")
    return cut + ELLIPSIS if cut else ""


def _shrink(
    pieces: list[tuple[str, str | None]],
    values: dict[str, str],
    name: str,
    platform: Platform,
) -> str:
    """The longest truncation of ``values[name]`` that makes the whole post fit (or ``""``)."""
    original = values[name]

    def fits_with(n: int) -> bool:
        return fits(_render(pieces, {**values, name: truncate(original, n)}), platform)

    lo, hi = 0, len(_GRAPHEME.findall(original)) - 1
    if not fits_with(0):
        return ""
    # Invariant: fits_with(lo) is True; find the largest such n by bisection.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_with(mid):
            lo = mid
        else:
            hi = mid - 1
    return truncate(original, lo)


def _hard_cut(text: str, platform: Platform) -> str:
    clusters = _GRAPHEME.findall(text)
    lo, hi = 0, len(clusters)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = "".join(clusters[:mid]).rstrip() + ELLIPSIS
        if fits(candidate, platform):
            lo = mid
        else:
            hi = mid - 1
    return "".join(clusters[:lo]).rstrip() + ELLIPSIS if lo else ""


def compose(
    template: str,
    fields: Mapping[str, str],
    hashtags: Sequence[str],
    platform: Platform,
) -> str:
    """Render ``template`` with ``fields`` and fit the result to ``platform``.

    ``fields`` may hold any of ``TEMPLATE_FIELDS``; missing ones render empty. ``hashtags``
    (``["#Flood", ...]``) fill ``{hashtags}``, overriding ``fields["hashtags"]`` when given;
    if the template has no ``{hashtags}``, those of them its text lacks are appended.
    Whitespace is collapsed. If the text is too long, free text is shortened with an ellipsis
    and the URL and hashtags are kept whole (see the module docstring for the order).
    Raises ``ConfigError`` if the template cannot be parsed.
    """
    pieces = _parse_template(template)
    used = {name for _literal, name in pieces if name}
    values = {name: collapse_whitespace(str(fields.get(name, ""))) for name in TEMPLATE_FIELDS}
    tags = [collapse_whitespace(t) for t in hashtags if t.strip()]
    if tags and "hashtags" not in used:
        # Incident hashtags go on every post: a template without {hashtags} gets the ones its
        # own wording does not already contain, at the end.
        literal = "".join(lit for lit, _name in pieces)
        tags = [t for t in tags if not _contains_tag(literal, t)]
        if tags:
            pieces.append((" ", "hashtags"))
            used.add("hashtags")
    if tags:
        values["hashtags"] = " ".join(tags)

    text = _render(pieces, values)
    if fits(text, platform):
        return text
    for name in _SHRINK_ORDER:
        if name not in used or not values[name]:
            continue
        values[name] = _shrink(pieces, values, name, platform)
        text = _render(pieces, values)
        if fits(text, platform):
            return text
    # URL and hashtags alone do not fit: drop hashtags, the last (least important) first.
    tag_list = values["hashtags"].split(" ") if values["hashtags"] else []
    while tag_list and "hashtags" in used:
        tag_list.pop()
        values["hashtags"] = " ".join(tag_list)
        text = _render(pieces, values)
        if fits(text, platform):
            return text
    return _hard_cut(text, platform)
