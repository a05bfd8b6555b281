"""At full scale (``make chaos``): the bundled Essex flood drill run twice, jumping over its
quiet steps and stepping through every minute, is the same run (store, published set,
outcomes, report). The suite checks the same for the small drills (``tests/drill``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisiscomms.drill import run_drill
from tests.drill.compare import differences

from .harness import FULL

pytestmark = [pytest.mark.chaos, pytest.mark.slow,
              pytest.mark.skipif(not FULL, reason="full scale only (make chaos)")]

DRILLS = Path(__file__).resolve().parents[2] / "playbooks" / "drills"


def test_essex_drill_jumping_is_the_same_run_as_stepping(tmp_path: Path):
    jumped = run_drill(DRILLS / "essex-flood.yaml", home=tmp_path / "jump")
    stepped = run_drill(DRILLS / "essex-flood.yaml", home=tmp_path / "step", jump=False)
    assert jumped.ok and stepped.ok
    problems = differences(jumped, stepped)
    assert not problems, "\n".join(problems)
    print(f"\nessex-flood: {jumped.ticks} ticks jumping, {stepped.ticks} stepping")
