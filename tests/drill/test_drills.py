"""The bundled drills run end to end in CI: real watcher and dispatcher, simulated platforms."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from crisiscomms.domain.errors import ConfigError
from crisiscomms.drill import run_drill

from .compare import differences

DRILLS = Path(__file__).resolve().parents[2] / "playbooks" / "drills"


@pytest.fixture(scope="module")
def jumped(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """A small drill's jumping run, made once per module: two tests check it."""
    runs: dict[str, Any] = {}

    def run(name: str) -> Any:
        if name not in runs:
            home = tmp_path_factory.mktemp(f"drill-{name}") / "a"
            runs[name] = run_drill(DRILLS / f"{name}.yaml", home=home)
        return runs[name]

    return run


@pytest.mark.parametrize("name", ["fediverse", "cap-alerts", "x-reactivation"])
def test_small_drills_pass_and_are_reproducible(name: str, tmp_path: Path,
                                                jumped: Callable[[str], Any]):
    first = jumped(name)
    assert first.ok, [o for o in first.outcomes if not o.ok]
    # The second run steps through every instant instead of jumping over the quiet ones:
    # the same run all the same (store, published set, outcomes, report).
    second = run_drill(DRILLS / f"{name}.yaml", home=tmp_path / "b", jump=False)
    assert second.ok
    assert first.published == second.published  # the same published set, run after run
    assert first.report_path is not None and first.report_path.exists()
    assert not differences(first, second)
    assert first.ticks < second.ticks


def test_jumping_skips_quiet_steps_only(jumped: Callable[[str], Any]):
    """A step with a scenario event, a source due or an item to decide is always ticked."""
    result = jumped("x-reactivation")
    scenario = result.scenario
    steps = int((scenario.end - scenario.start).total_seconds() // scenario.step_seconds) + 1
    # Ten days between two incidents, polled hourly on 10-minute steps: most steps are quiet.
    assert result.ticks < steps / 3, (result.ticks, steps)


def test_bundled_essex_flood_drill(essex_drill: Any):
    result = essex_drill  # tests/conftest.py: one run per worker, shared with other tests
    report = Path(result.report_path)
    failed = [f"{o.name}: {o.detail}" for o in result.outcomes if not o.ok]
    assert not failed
    assert {o.name for o in result.outcomes} >= {
        "no_duplicates", "nothing_left_queued", "audit_chain_verifies",
        "no_normal_post_outside_staffed_hours", "published_matches_simulator"}
    html = report.read_text()
    assert "chart-timeline" in html and "chart-tta" in html
    data = json.loads(report.with_suffix(".json").read_text())
    # The report's figures agree with what was published (and the simulator, checked above).
    incident_posts = [p for p in result.published if p[2].startswith(("i1:", "incident:1:"))]
    assert data["figures"]["posts_published"] == len(incident_posts)
    assert data["header"]["lead"] == "essex-police-x"
    assert data["header"]["hashtags"] == ["#EssexFloods"]
    assert data["figures"]["posts_out_of_staffed_hours"] > 20
    assert data["figures"]["rate_limit_waits"] >= 1
    assert data["integrity"]["audit_chain_ok"] is True


def _broken(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((DRILLS / "cap-alerts.yaml").read_text())
    mutate(data)
    path = tmp_path / "drills" / "broken.yaml"
    path.parent.mkdir()
    (tmp_path / "playbooks").symlink_to(DRILLS.parent)
    data["playbooks_dir"] = str(DRILLS.parent)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(colour="red"), "colour: unknown key"),
    (lambda d: d["events"][0].update(at="2027-01-14T15:30:00"), "events[0].at: Value error, "
     "needs a UTC offset"),
    (lambda d: d["events"][0].update(at="2030-01-01T00:00:00+00:00"), "outside start..end"),
    (lambda d: d["expectations"].append({"kind": "vibes"}), "unknown expectation 'vibes'"),
    (lambda d: d["events"][1]["publish"].update(source="nope"), "publish.source: unknown"),
    (lambda d: d["events"][0]["activate"].update(playbook="nope"), "unknown playbook"),
])
def test_scenario_mistakes_are_named(tmp_path: Path, mutate, message: str):
    path = _broken(tmp_path, mutate)
    with pytest.raises(ConfigError) as exc:
        run_drill(path, home=tmp_path / "h")
    text = str(exc.value)
    assert "broken.yaml" in text and "\n" not in text
    assert message.replace("Value error, ", "") in text.replace("Value error, ", "")


def test_drill_cli_reports_and_exit_codes(cli, tmp_path: Path):
    r = cli("drill", str(DRILLS / "cap-alerts.yaml"), "--json", "--report",
            str(tmp_path / "r.html"))
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["ok"] is True and (tmp_path / "r.html").exists()
    r = cli("drill", str(tmp_path / "missing.yaml"))
    assert r.code == 2 and "missing.yaml: file not found" in r.err
