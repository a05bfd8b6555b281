"""The bundled Essex drill's report agrees with the drill: the lead count is the drill's, the
approved-then-rejected Environment Agency warning appears with its decisions, and every
operator approval names the update it was about."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def test_essex_drill_report_agrees_with_the_drill(essex_drill: Any):
    result = essex_drill  # tests/conftest.py: one run per worker, shared with other tests
    report = Path(result.report_path)
    data = json.loads(report.with_suffix(".json").read_text())
    lead = [o for o in result.outcomes if o.name.startswith("lead_amplified")]
    assert lead
    for o in lead:
        m = re.match(r"(\d+)/(\d+) lead updates", o.detail)
        assert m, o.detail
        assert int(m.group(2)) == data["figures"]["lead_coverage"]["lead_updates"], o.detail
    warning = next(u for u in data["timeline"] if u["source"] == "ea-floods-essex"
                   and u["outcomes"] and u["outcomes"][0]["mode"] == "normal")
    assert {o["state"] for o in warning["outcomes"]} == {"rejected"}
    for o in warning["outcomes"]:
        assert [d["action"] for d in o["decisions"]] == ["approve", "reject"]
        assert all(d["by"] and d["reason"] and d["at"].endswith("Z") for d in o["decisions"])
    approvals = [e for e in data["operators"] if e["action"].startswith("queue.")]
    assert approvals and all(e["about"] and e["about"]["title"] for e in approvals)
    md = report.with_suffix(".md").read_text()
    assert " BST" in md and data["integrity"]["audit_head_hash"] in md
