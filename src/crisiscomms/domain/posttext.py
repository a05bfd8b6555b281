"""Compose the text of a post from a playbook template, fitted to one platform.

``compose`` runs at queue time, so the text an operator approves is exactly the text that is
sent. The rules per platform (what counts as one "character"):

* X          280, weighted by twitter-text v3 (the ``twitter-text-parser`` package, the port of
             the official library): most Latin/Greek/Cyrillic code points weigh 1, CJK and
             others 2, an emoji sequence 2, and every URL X links 23 (t.co), bare domains
             such as ``essex.police.uk`` or ``gov.uk/floods`` included. twitter-text's URL
             regex is quadratic on long runs like ``a.a.a.a...``, so text is weighed one
             whitespace-separated word at a time (no URL spans whitespace), each word
             cached; a word over 128 characters is weighed by the simpler rule (an
             ``http(s)://`` URL with a dotted host is 23, the rest by code point), and
             ``fits`` first rejects text that is too long whatever its links weigh.
* Mastodon   500 grapheme clusters, every URL 23.
* Bluesky    300 grapheme clusters (URLs count in full) and at most 3,000 UTF-8 bytes.
* Facebook   63,206 characters.

When the rendered text is too long, the free text (``text``, then ``title``, then the other
descriptive fields) is shortened at a word boundary with an ellipsis; the URL and the hashtags
are never cut. Only if they alone do not fit are hashtags dropped (last first) and, as a last
resort, the whole text cut. ``fit_body`` applies the same rule to a text already composed (an
item queued before a counting fix, or edited): its words are shortened, its links and
hashtags kept.
"""

from __future__ import annotations

import functools
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
_X_WORD_OR_SPACE = regex.compile(r"\s+|\S+")
_LINE_ENDING = regex.compile(r"\r\n|\r|\n")
_X_MAX_WORD = 128  # longer words skip twitter-text's (quadratic) URL regex


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


def _by_url_spans(text: str, measure: Callable[[str], int]) -> int:
    """``http(s)://`` URLs with a dotted host weigh 23, everything else ``measure``."""
    total = 0
    pos = 0
    for start, end in url_spans(text):
        total += measure(text[pos:start])
        url = text[start:end]
        total += SHORT_URL_WEIGHT if _shortened_by_platform(url) else measure(url)
        pos = end
    return total + measure(text[pos:])


def warm_up() -> None:
    """Import what composing a post needs now (the watcher calls it at start-up: the first
    update after a start does not pay twitter-text's 0.2 s import inside its relay)."""
    import twitter_text  # type: ignore[import-untyped]  # noqa: F401


@functools.lru_cache(maxsize=8192)
def _x_word_weight(word: str, first: bool = True) -> int:
    """One whitespace-free word as X counts it (twitter-text v3; see the module docstring).
    ``first``: it opens the text. After whitespace twitter-text links more than at the start
    (``" égov.uk"`` links ``égov.uk``, ``"égov.uk"`` only ``gov.uk``): a later word is
    measured after a space, whose weight (1) is taken off again."""
    if len(word) > _X_MAX_WORD:
        return _by_url_spans(word, _x_weight)
    from twitter_text import parse_tweet  # type: ignore[import-untyped]  # 0.2 s: lazily

    if first:
        return int(parse_tweet(word).weightedLength)
    return int(parse_tweet(" " + word).weightedLength) - 1


def _x_space_weight(space: str) -> int:
    # twitter-text counts a CR LF pair as one line break.
    return _x_weight(_LINE_ENDING.sub("\n", space))


def _x_length(text: str) -> int:
    total = 0
    for match in _X_WORD_OR_SPACE.finditer(text):
        piece = match.group()
        total += _x_space_weight(piece) if piece[0].isspace() else \
            _x_word_weight(piece, match.start() == 0)
    return total


def _x_lower_bound(text: str) -> int:
    """At most X's count, cheap: a word weighs at least its graphemes or one link (23)."""
    total = 0
    for match in _X_WORD_OR_SPACE.finditer(text):
        piece = match.group()
        total += len(_LINE_ENDING.sub("\n", piece)) if piece[0].isspace() else \
            min(_graphemes(piece), SHORT_URL_WEIGHT)
    return total


def x_link_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets of what X links in ``text`` (bare domains included)."""
    spans: list[tuple[int, int]] = []
    for match in _X_WORD_OR_SPACE.finditer(text):
        word = match.group()
        if word[0].isspace():
            continue
        if len(word) > _X_MAX_WORD:
            found = [(s, e) for s, e in url_spans(word) if _shortened_by_platform(word[s:e])]
        else:
            lead = 0 if match.start() == 0 else 1  # after whitespace, as in _x_word_weight
            found = [(int(u["indices"][0]) - lead, int(u["indices"][1]) - lead)
                     for u in _extract_urls(" " * lead + word)]
        spans += [(match.start() + s, match.start() + e) for s, e in found]
    return spans


def weighted_length(text: str, platform: Platform) -> int:
    """Length of ``text`` as ``platform`` counts it against its limit (see module docstring)."""
    text = unicodedata.normalize("NFC", text)
    if platform is Platform.FACEBOOK:
        return len(text)
    if platform is Platform.BLUESKY:
        return _graphemes(text)
    if platform is Platform.X:
        return _x_length(text)
    return _by_url_spans(text, _graphemes)


def fits(text: str, platform: Platform) -> bool:
    """True if ``platform`` would accept ``text`` as the body of one post."""
    if platform is Platform.X and \
            _x_lower_bound(unicodedata.normalize("NFC", text)) > LIMITS[platform]:
        return False
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


def _render(pieces: list[tuple[str, str | None]], values: Mapping[str, str], *,
            paragraphs: bool = False) -> str:
    out = []
    for literal, name in pieces:
        out.append(literal)
        if name:
            out.append(values.get(name, ""))
    tidy = _keep_paragraphs if paragraphs else collapse_whitespace
    return unicodedata.normalize("NFC", tidy("".join(out)))


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


# Relayed words are the agency's, but our account must never tag people or causes with them:
# "@name" gets a WORD JOINER after the "@" (invisible, and no platform's mention syntax matches
# it any more), and a foreign "#tag" loses its "#" unless the playbook keeps source hashtags.
SOURCE_FIELDS = ("title", "text", "area", "event", "severity")
WORD_JOINER = "\u2060"
_MENTION = regex.compile(r"(?<![\w@＠/])([@＠])(?=\w)")
_HASHTAG = regex.compile(r"(?<![\w#&/=?])[#＃](\w+)")
_PARAGRAPHS = regex.compile(r"\n\s*\n")


def inert(value: str, *, keep_hashtags: bool, ours: Sequence[str] = ()) -> str:
    """``value`` with its mentions made inert and, unless kept, foreign hashtags made words."""
    value = _MENTION.sub(lambda m: m.group(1) + WORD_JOINER, value)
    if keep_hashtags:
        return value
    mine = {t.lower() for t in ours}
    return _HASHTAG.sub(lambda m: m.group(0) if m.group(0).lower() in mine else m.group(1),
                        value)


def _keep_paragraphs(text: str) -> str:
    """Whitespace tidied, but paragraph breaks kept (Facebook shows them)."""
    parts = [collapse_whitespace(p) for p in _PARAGRAPHS.split(text)]
    return "\n\n".join(p for p in parts if p)


def compose(
    template: str,
    fields: Mapping[str, str],
    hashtags: Sequence[str],
    platform: Platform,
    *,
    keep_source_hashtags: bool = False,
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
    paragraphs = platform is Platform.FACEBOOK
    tidy = _keep_paragraphs if paragraphs else collapse_whitespace
    values = {name: tidy(str(fields.get(name, ""))) for name in TEMPLATE_FIELDS}
    tags = [collapse_whitespace(t) for t in hashtags if t.strip()]
    for name in SOURCE_FIELDS:
        values[name] = inert(values[name], keep_hashtags=keep_source_hashtags, ours=tags)
    title, body = values["title"].rstrip("…. "), values["text"]
    if "title" in used and "text" in used and title and body.startswith(title):
        values["title"] = ""  # an X post's title is its text: say it once
    if tags and "hashtags" in used:
        # Our hashtags once: not again when the relayed words already carry them.
        said = " ".join(values[n] for n in used if n != "hashtags")
        tags = [t for t in tags if not _contains_tag(said, t)]
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

    text = _render(pieces, values, paragraphs=paragraphs)
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


def _link_or_tag(word: str, platform: Platform) -> bool:
    if regex.match(r"#\w", word):
        return True
    return bool(x_link_spans(word) if platform is Platform.X else url_spans(word))


def fit_body(text: str, platform: Platform) -> str:
    """Fit an already composed post to ``platform`` by the rule ``compose`` follows.

    A text that fits comes back unchanged. Otherwise its words are dropped from the end and
    an ellipsis marks the cut; words holding a link (on X: anything X links, bare domains
    included) and hashtags are kept whole, in order. Only if they alone do not fit are
    hashtags dropped (last first), and as a last resort the whole text is cut. Pure and
    deterministic, so a publisher can apply it both when sending and when looking for what
    it sent.
    """
    if fits(text, platform):
        return text
    text = unicodedata.normalize("NFC", text).strip()
    pieces = _X_WORD_OR_SPACE.findall(text)
    words = [i for i, piece in enumerate(pieces) if not piece[0].isspace()]
    kept = [i for i in words if _link_or_tag(pieces[i], platform)]
    free = [i for i in words if i not in set(kept)]

    def render(n_free: int, fixed: list[int]) -> str:
        chosen = sorted(set(free[:n_free]) | set(fixed))
        out: list[str] = []
        for i in chosen:
            word = pieces[i]
            if n_free < len(free) and n_free and i == free[n_free - 1]:
                word = word.rstrip(" ,;:-–—") + ELLIPSIS
            out.append((pieces[i - 1] if out and i > 0 else "") + word)
        return "".join(out).strip()

    if fits(render(0, kept), platform):
        lo, hi = 0, len(free) - 1
        while lo < hi:  # fits(render(lo)) holds; find the largest such lo
            mid = (lo + hi + 1) // 2
            if fits(render(mid, kept), platform):
                lo = mid
            else:
                hi = mid - 1
        return render(lo, kept)
    tags = [i for i in kept if pieces[i].startswith("#")]
    while tags:
        kept.remove(tags.pop())
        candidate = render(0, kept)
        if fits(candidate, platform):
            return candidate
    return _hard_cut(render(0, kept), platform)


def _extract_urls(text: str) -> list[dict[str, Any]]:
    """twitter-text's URL extraction (imported on first use: it costs 0.2 s at start-up)."""
    from twitter_text import extract_urls_with_indices

    urls: list[dict[str, Any]] = extract_urls_with_indices(text)
    return urls
