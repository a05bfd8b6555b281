"""`crisiscomms simulate --watch`: the real watch loop on the real clock against the simulator,
with the officer's own commands (from another shell: here another App on the same data dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisiscomms.bootstrap import App
from crisiscomms.cli import main
from crisiscomms.domain.clock import SystemClock
from crisiscomms.drill.practice import PracticeInfo, run_practice
from crisiscomms.services import incidents
from crisiscomms.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ESSEX = ROOT / "playbooks" / "drills" / "essex-flood.yaml"


def test_practice_relays_after_the_officer_activates_from_another_shell(tmp_path: Path) -> None:
    home = tmp_path / "practice"
    seen: list[PracticeInfo] = []

    def officer(info: PracticeInfo) -> None:
        seen.append(info)
        # What the printed command does: the same data dir and the practice's playbooks.
        other = App(settings=Settings(home=info.home, playbooks_dir=info.playbooks_dir),
                    clock=SystemClock())
        try:
            incidents.activate(other.store, other.catalog, other.clock, playbook="flooding",
                               reason="practice", operator="alice", hashtags=[],
                               lead="essex-police-x")
        finally:
            other.close()

    run_practice(ESSEX, home, every_seconds=0.2, poll_seconds=1, tick_seconds=0.25,
                 on_ready=officer, max_ticks=40)
    info = seen[0]
    assert info.plan and info.simulator_url.startswith("http://127.0.0.1:")
    after = App(settings=Settings(home=home, playbooks_dir=info.playbooks_dir),
                clock=SystemClock())
    try:
        published = after.store.items(states=["published"])
        relayed = [i for i in published if i.source_id == "essex-police-x"]
        assert {i.channel_id for i in relayed} == {"x", "facebook", "mastodon", "bluesky"}
    finally:
        after.close()


def test_practice_refuses_a_home_that_holds_a_live_database(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (live / "crisiscomms.db").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["--home", str(live), "simulate", "--watch", "--scenario", str(ESSEX)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not a practice's" in err and str(live) in err
    assert (live / "crisiscomms.db").read_bytes() == b""
