"""SVG charts for the HTML report, drawn with matplotlib (Agg backend, no display)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from crisiscomms.domain.clock import parse_instant

# Deterministic SVG output: fixed ids, no creation date.
matplotlib.rcParams["svg.hashsalt"] = "crisiscomms"
matplotlib.rcParams["svg.fonttype"] = "none"
matplotlib.rcParams["font.size"] = 8


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def timeline_svg(report: dict[str, Any]) -> str:
    """Source updates and our posts per channel over time, the activation window shaded."""
    header = report["header"]
    rows: list[str] = []
    points: dict[str, list[Any]] = {}
    for entry in report["timeline"]:
        label = f"source: {entry['source']}"
        points.setdefault(label, []).append(parse_instant(entry["published_at"]))
    for entry in [*report["timeline"], {"outcomes": report["messages"]}]:
        for o in entry["outcomes"]:
            if o["state"] == "published" and o["published_at"]:
                points.setdefault(f"ours: {o['channel']}", []).append(
                    parse_instant(o["published_at"]))
    rows = sorted(points, key=lambda r: (not r.startswith("source"), r))
    fig, ax = plt.subplots(figsize=(9.5, 0.45 * max(3, len(rows)) + 1))
    start = parse_instant(header["activated_at"])
    end = parse_instant(header["deactivated_at"]) if header["deactivated_at"] else None
    for y, row in enumerate(rows):
        colour = "#1f5fa8" if row.startswith("source") else "#2e8b57"
        ax.plot(points[row], [y] * len(points[row]), "|" if row.startswith("ours") else "o",
                color=colour, markersize=9 if row.startswith("ours") else 4)
    last = end or max((p for v in points.values() for p in v), default=start)
    ax.axvspan(mdates.date2num(start), mdates.date2num(last),  # type: ignore[no-untyped-call]
               color="#f4c542", alpha=0.25, label="incident active")
    ax.set_yticks(range(len(rows)), rows)
    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%a %H:%M", tz="Europe/London"))  # type: ignore[no-untyped-call]
    ax.set_xlabel("time (Europe/London)")
    ax.set_title("Official updates and our posts")
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def tta_svg(report: dict[str, Any]) -> str:
    """Time to amplify (source published -> our post), p50 / p95 / max per channel."""
    by_channel = report["figures"]["time_to_amplify"]["by_channel"]
    names = list(by_channel)
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(2, len(names)) + 1))
    for i, key in enumerate(("p50_s", "p95_s", "max_s")):
        values = [by_channel[n][key] or 0 for n in names]
        ax.barh([y + i * 0.25 for y in range(len(names))], values, height=0.25,
                label=key.removesuffix("_s"))
    ax.set_yticks([y + 0.25 for y in range(len(names))], names)
    ax.set_xlabel("seconds from the source's publication to our post")
    ax.set_title("Time to amplify by channel")
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)
