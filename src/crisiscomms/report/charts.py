"""SVG charts for the HTML report, drawn with matplotlib (Agg backend, no display).

A chart with nothing to draw is not drawn: ``*_figure`` returns None and the page says
"Nothing to chart" instead of showing empty axes. Legends sit outside the plotting area, so
they never cover a data point."""

from __future__ import annotations

import io
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from crisiscomms.domain.clock import parse_instant

# Deterministic SVG output: fixed ids, no creation date.
matplotlib.rcParams["svg.hashsalt"] = "crisiscomms"
matplotlib.rcParams["svg.fonttype"] = "none"
matplotlib.rcParams["font.size"] = 8

SOURCE_COLOUR, OURS_COLOUR, ACTIVE_COLOUR = "#1f5fa8", "#2e8b57", "#f4c542"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _zone(report: dict[str, Any]) -> str:
    return str(report["header"].get("time_zone") or "Europe/London")


def timeline_figure(report: dict[str, Any]) -> Figure | None:
    """Source updates and our posts per channel over time, the activation window shaded;
    None when there is neither an update nor a post to show."""
    header = report["header"]
    points: dict[str, list[Any]] = {}
    for entry in report["timeline"]:
        points.setdefault(f"source: {entry['source']}", []).append(
            parse_instant(entry["published_at"]))
    for entry in [*report["timeline"], {"outcomes": report["messages"]}]:
        for o in entry["outcomes"]:
            if o["state"] == "published" and o["published_at"] and o.get("mode") != "normal":
                points.setdefault(f"ours: {o['channel']}", []).append(
                    parse_instant(o["published_at"]))
    if not points:
        return None
    rows = sorted(points, key=lambda r: (not r.startswith("source"), r))
    fig = plt.figure(figsize=(7.4, 0.3 * len(rows) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    for y, row in enumerate(rows):
        ours = row.startswith("ours")
        ax.plot(points[row], [y] * len(points[row]), "|" if ours else "o",
                color=OURS_COLOUR if ours else SOURCE_COLOUR, markersize=9 if ours else 4)
    start = parse_instant(header["activated_at"])
    end = parse_instant(header["deactivated_at"]) if header["deactivated_at"] else None
    last = end or max((p for v in points.values() for p in v), default=start)
    ax.axvspan(mdates.date2num(start), mdates.date2num(last),  # type: ignore[no-untyped-call]
               color=ACTIVE_COLOUR, alpha=0.25)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    zone = _zone(report)
    locator = mdates.AutoDateLocator(tz=ZoneInfo(zone), maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(  # type: ignore[no-untyped-call]
        locator, tz=ZoneInfo(zone)))
    ax.set_xlabel(f"time ({zone})")
    ax.set_title("Official updates and our posts")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=[
        Line2D([], [], marker="o", linestyle="", color=SOURCE_COLOUR, label="official update"),
        Line2D([], [], marker="|", linestyle="", markersize=9, color=OURS_COLOUR,
               label="our post"),
        Patch(color=ACTIVE_COLOUR, alpha=0.25, label="incident active")],
        loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    return fig


def tta_figure(report: dict[str, Any]) -> Figure | None:
    """Time to amplify (source published -> our post), p50 / p95 / max per channel; None when
    nothing was amplified."""
    by_channel = report["figures"]["time_to_amplify"]["by_channel"]
    names = [n for n, s in by_channel.items() if s["count"]]
    if not names:
        return None
    fig = plt.figure(figsize=(7, 0.45 * len(names) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    for i, key in enumerate(("p50_s", "p95_s", "max_s")):
        values = [by_channel[n][key] or 0 for n in names]
        ax.barh([y + i * 0.25 for y in range(len(names))], values, height=0.25,
                label=key.removesuffix("_s"))
    ax.set_yticks([y + 0.25 for y in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the source's publication to our post")
    ax.set_title("Time to amplify by channel")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    return fig


def timeline_svg(report: dict[str, Any]) -> str | None:
    """The timeline chart as inline SVG, or None when there is nothing to chart."""
    fig = timeline_figure(report)
    return None if fig is None else _svg(fig)


def tta_svg(report: dict[str, Any]) -> str | None:
    """The time-to-amplify chart as inline SVG, or None when there is nothing to chart."""
    fig = tta_figure(report)
    return None if fig is None else _svg(fig)
