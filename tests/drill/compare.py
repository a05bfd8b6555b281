"""What two runs of one drill must agree on: the store (less what the wall clock and the
simulator's port make differ from run to run), the published set, the outcomes, the report."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from crisiscomms.drill.runner import DrillResult

# What differs between any two runs, jumping or not: wall-clock stamps, the simulator's port
# and every hash of something that carries one of them (the audit chain, content hashes of
# updates whose URL names the simulator, ETags); and the watcher's last heartbeat (not
# written at a jumped-over step).
_RUN_SPECIFIC = {
    "schema_migrations": None, "audit_head": None, "watchers": None,
    "audit_events": {"recorded_at"},
}
_PORT = re.compile(r"127\.0\.0\.1:\d+")
_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{16,}\b")


def _clean(value: Any) -> Any:
    return _HASH.sub("HASH", _PORT.sub("SIM", value)) if isinstance(value, str) else value


def store_dump(result: DrillResult) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(result.home / "drill.db")
    try:
        tables = [t for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in tables:
            if table in _RUN_SPECIFIC and _RUN_SPECIFIC[table] is None:
                continue
            cur = conn.execute(f"SELECT * FROM {table} ORDER BY rowid")
            names = [d[0] for d in cur.description]
            keep = [i for i, n in enumerate(names) if n not in (_RUN_SPECIFIC.get(table) or ())]
            out[table] = [tuple(_clean(row[i]) for i in keep) for row in cur]
        return out
    finally:
        conn.close()


def report_data(result: DrillResult) -> Any:
    assert result.report_path is not None
    return json.loads(_clean(result.report_path.with_suffix(".json").read_text()))


def differences(a: DrillResult, b: DrillResult) -> list[str]:
    """Everything two runs of the same scenario disagree on (empty: the same run)."""
    problems: list[str] = []
    if a.published != b.published:
        problems.append(f"published: {a.published} != {b.published}")
    outcomes = [[(o.name, o.ok, _clean(o.detail)) for o in r.outcomes] for r in (a, b)]
    if outcomes[0] != outcomes[1]:
        problems.append(f"outcomes: {outcomes[0]} != {outcomes[1]}")
    if report_data(a) != report_data(b):
        problems.append("the reports differ")
    da, db = store_dump(a), store_dump(b)
    for table in sorted(set(da) | set(db)):
        ra, rb = da.get(table, []), db.get(table, [])
        if ra != rb:
            first = next((x, y) for x, y in zip([*ra, None], [*rb, None]) if x != y)
            problems.append(f"{table}: {len(ra)} rows != {len(rb)} rows; first difference "
                            f"{first[0]} != {first[1]}")
    return problems
