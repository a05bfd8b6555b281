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


def chain_state(i: dict[str, Any], short: bool = False) -> str:
    """The audit chain as a reader should take it: "verified", "verified; not fully checked:
    <reasons>" (intact, but not every event could be checked here) or "DID NOT VERIFY:
    <problem>" (only when it is broken). ``short``: without the reasons."""
    if not i.get("audit_chain_ok"):
        return "DID NOT VERIFY" if short else f"DID NOT VERIFY: {i.get('problem') or 'broken'}"
    if i.get("audit_fully_checked", True):
        return "verified"
    if short:
        return "verified; not fully checked"
    reasons = "; ".join(i.get("audit_not_fully_checked") or []) or "see crisiscomms audit verify"
    return f"verified; not fully checked: {reasons}"


def _seqs(seqs: list[int]) -> str:
    shown_ = ", ".join(str(s) for s in seqs[:10])
    more = f" and {len(seqs) - 10} more" if len(seqs) > 10 else ""
    return f"event{'s' if len(seqs) > 1 else ''} {shown_}{more}"


def chain_notes(i: dict[str, Any]) -> list[str]:
    """Warnings about an intact chain that do not make it fail: time going backwards, events
    an older version wrote after newer ones."""
    out = []
    if i.get("audit_time_backwards_at"):
        out.append(f"time went backwards at {_seqs(i['audit_time_backwards_at'])} (the "
                   "recorded wall time is before an earlier event's: the clock was set back, "
                   "or events were inserted)")
    if i.get("audit_old_format_after_new"):
        out.append(f"{_seqs(i['audit_old_format_after_new'])} written in the old format (no "
                   "wall time) after newer ones, by a process of an older version")
    return out


_env.globals["chain_state"] = chain_state
_env.globals["chain_notes"] = chain_notes
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
              "audit_fully_checked", "audit_events", "audit_head_hash"]


def _decisions_text(decisions: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['action']}{_self(d)} by {d['by']} at {d['at']}: {d['reason']}"
                     for d in decisions)


def _self(d: dict[str, Any]) -> str:
    """``, self-approval (role oncall-lead),`` after a self-approval's action, else nothing."""
    role = d.get("self_approval")
    return f", self-approval (role {role})," if role else ""


_env.filters["self_approval"] = _self


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
            "audit_fully_checked": "true" if i.get("audit_fully_checked", True) else "false",
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
