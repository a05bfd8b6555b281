"""Regenerate ``tests/hostile/truncated/``: valid fixtures cut at many offsets.

Run from the repository root: ``.venv/bin/python -m tests.hostile.make_truncated``.
The output is committed so the corpus is stable; re-running rewrites the same files.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
FIXTURES = HERE.parent / "sources" / "fixtures"
OUT = HERE / "truncated"
SOURCES = ["rss20.xml", "rss10.xml", "atom.xml", "metoffice.xml", "cap_index.atom",
           "cap_flat_index.atom", "cap_alert.xml",
           # JSON APIs cut short too (EA floods, Mastodon statuses, Bluesky author feed)
           "ea_floods_essex.json", "mastodon_statuses.json", "bluesky_feed.json"]
FRACTIONS = [0.01, 0.05, 0.12, 0.25, 0.4, 0.5, 0.63, 0.77, 0.9, 0.99]


def offsets(body: bytes) -> list[int]:
    """Fixed fractions of the file, plus the inside of the last tag and the last byte gone."""
    cuts = {max(1, int(len(body) * f)) for f in FRACTIONS}
    if body.lstrip().startswith(b"<"):
        cuts.add(body.rstrip().rfind(b"<") + 2)  # inside the closing root tag
    cuts.add(len(body.rstrip()) - 1)
    return sorted(c for c in cuts if 0 < c < len(body))


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    count = 0
    for name in SOURCES:
        body = (FIXTURES / name).read_bytes()
        stem, _, ext = name.partition(".")
        for cut in offsets(body):
            (OUT / f"{stem}_{ext}_at_{cut:05d}.{ext}").write_bytes(body[:cut])
            count += 1
    return count


if __name__ == "__main__":
    print(f"wrote {main()} files to {OUT}")
