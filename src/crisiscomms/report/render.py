"""Render a report (the JSON data) as Markdown, CSV or one self-contained HTML file."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import jinja2

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


_env.filters["secs"] = _secs


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (md, html, json, csv)."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return to_csv(report)
    kind = report["kind"]
    if fmt == "md":
        return _env.get_template(f"{kind}.md.j2").render(r=report)
    charts = {}
    if kind == "incident":
        charts = {"timeline": timeline_svg(report), "tta": tta_svg(report)}
    return _env.get_template(f"{kind}.html.j2").render(r=report, charts=charts)


CSV_FIELDS = ["incident", "update", "source", "agency", "lead", "source_published_at",
              "title", "url", "disposition", "channel", "action", "state", "reason", "post_id",
              "post_url", "our_published_at", "time_to_amplify_s", "attempts", "out_of_hours",
              "over_cap"]


def to_csv(report: dict[str, Any]) -> str:
    """One row per (update, channel); updates with no channel outcome get one row."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    if report["kind"] == "period":
        for o in report["published"]:
            w.writerow({"channel": o["channel"], "action": o["action"], "state": o["state"],
                        "reason": o["reason"], "post_id": o["post_id"],
                        "post_url": o["post_url"], "our_published_at": o["published_at"],
                        "attempts": o["attempts"], "out_of_hours": o["out_of_hours"],
                        "over_cap": o["over_cap"]})
        return buf.getvalue()
    inc = report["header"]["incident"]
    for u in report["timeline"]:
        base = {"incident": inc, "update": u["update"], "source": u["source"],
                "agency": u["agency"], "lead": u["lead"],
                "source_published_at": u["published_at"], "title": u["title"], "url": u["url"],
                "disposition": u["disposition"]}
        if not u["outcomes"]:
            w.writerow(base)
        for o in u["outcomes"]:
            w.writerow({**base, "channel": o["channel"], "action": o["action"],
                        "state": o["state"], "reason": o["reason"], "post_id": o["post_id"],
                        "post_url": o["post_url"], "our_published_at": o["published_at"],
                        "time_to_amplify_s": o.get("time_to_amplify_s"),
                        "attempts": o["attempts"], "out_of_hours": o["out_of_hours"],
                        "over_cap": o["over_cap"]})
    return buf.getvalue()
