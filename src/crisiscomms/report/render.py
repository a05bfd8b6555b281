"""Render a report (the JSON data) as Markdown, CSV or one self-contained HTML file.

JSON and CSV keep every time as ISO-8601 UTC with ``Z``; Markdown and HTML show each one in
the policy's zone with the zone's name (``2026-07-01 02:00 BST``). Every format carries the
audit head (count and hash) and whether the chain verified."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from crisiscomms.domain.clock import parse_instant, shown
from crisiscomms.report.charts import timeline_svg, tta_svg

FORMATS = ("md", "html", "json", "csv")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("crisiscomms.report", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell or list line: one line, no bare pipes."""
    return " ".join(str(value if value is not None else "").split()).replace("|", "\\|")


def _pivot(counts: list[dict[str, Any]], channels: list[str]) -> dict[str, Any]:
    """Outcome counts as a source x channel grid: each cell a list of (outcome, count)."""
    chans = sorted({*channels, *(c["channel"] for c in counts)})
    cells: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for c in counts:
        cells.setdefault((c["source"], c["channel"]), []).append((c["outcome"], c["count"]))
    sources = sorted({c["source"] for c in counts})
    return {"channels": chans,
            "rows": [(s, [cells.get((s, ch), []) for ch in chans]) for s in sources]}


_env.filters["secs"] = _secs
_env.filters["pivot"] = _pivot
_env.filters["cell"] = _md_cell


def _when(report: dict[str, Any]) -> Callable[[str | None], str]:
    """A function showing an ISO-8601 instant of ``report`` in the report's zone, with it."""
    tz = ZoneInfo(report["header"].get("time_zone") or "Europe/London")

    def when(value: str | None, seconds: bool = False) -> str:
        return shown(parse_instant(value), tz, seconds=seconds) if value else "-"

    return when


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (md, html, json, csv)."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return to_csv(report)
    kind = report["kind"]
    when = _when(report)
    if fmt == "md":
        return _env.get_template(f"{kind}.md.j2").render(r=report, when=when)
    charts: dict[str, str | None] = {}
    if kind == "incident":
        charts = {"timeline": timeline_svg(report), "tta": tta_svg(report)}
    return _env.get_template(f"{kind}.html.j2").render(r=report, charts=charts, when=when)


CSV_FIELDS = ["incident", "update", "source", "agency", "lead", "source_published_at",
              "seen_at", "title", "url", "disposition", "item", "mode", "channel", "action",
              "state", "reason", "decisions", "post_id", "post_url", "our_published_at",
              "time_to_amplify_s", "attempts", "out_of_hours", "over_cap", "audit_chain_ok",
              "audit_events", "audit_head_hash"]


def _decisions_text(decisions: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['action']} by {d['by']} at {d['at']}: {d['reason']}"
                     for d in decisions)


def _outcome_row(o: dict[str, Any]) -> dict[str, Any]:
    return {"item": o["item"], "mode": o.get("mode"), "channel": o["channel"],
            "action": o["action"], "state": o["state"], "reason": o["reason"],
            "decisions": _decisions_text(o.get("decisions", [])), "post_id": o["post_id"],
            "post_url": o["post_url"], "our_published_at": o["published_at"],
            "time_to_amplify_s": o.get("time_to_amplify_s"), "attempts": o["attempts"],
            "out_of_hours": o["out_of_hours"], "over_cap": o["over_cap"]}


def to_csv(report: dict[str, Any]) -> str:
    """One row per (update, item); an update with no item gets one row. Every row carries the
    audit head, so a single row copied elsewhere still witnesses the trail's length."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    i = report["integrity"]
    head = {"audit_chain_ok": "true" if i["audit_chain_ok"] else "false",
            "audit_events": i["audit_events"], "audit_head_hash": i["audit_head_hash"]}
    if report["kind"] == "period":
        for o in report["published"]:
            w.writerow({**_outcome_row(o), "incident": o.get("incident"), **head})
        for h in report["held_outside_staffed_hours"]:
            w.writerow({"item": h["item"], "mode": "normal", "channel": h["channel"],
                        "source": h["source"], "title": h["title"], "url": h["url"],
                        "state": h["state_now"], "reason": h["reason_now"],
                        "decisions": _decisions_text(h["decisions"]),
                        "post_url": h["post_url"], **head})
        if not report["published"] and not report["held_outside_staffed_hours"]:
            w.writerow(head)
        return buf.getvalue()
    inc = report["header"]["incident"]
    rows = 0
    for m in report["messages"]:
        w.writerow({**_outcome_row(m), "incident": inc, **head})
        rows += 1
    for u in report["timeline"]:
        base = {"incident": inc, "update": u["update"], "source": u["source"],
                "agency": u["agency"], "lead": u["lead"],
                "source_published_at": u["published_at"], "seen_at": u["seen_at"],
                "title": u["title"], "url": u["url"], "disposition": u["disposition"], **head}
        if not u["outcomes"]:
            w.writerow(base)
            rows += 1
        for o in u["outcomes"]:
            w.writerow({**base, **_outcome_row(o)})
            rows += 1
    if not rows:
        w.writerow({"incident": inc, **head})
    return buf.getvalue()
