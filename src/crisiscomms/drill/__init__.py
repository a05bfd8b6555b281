"""Drill mode: rehearse a crisis end to end against the loopback platform simulator."""

from __future__ import annotations

from crisiscomms.drill.runner import Drill, DrillResult, Progress, run_drill
from crisiscomms.drill.scenario import Scenario, load_scenario

__all__ = ["Drill", "DrillResult", "Progress", "Scenario", "load_scenario", "run_drill"]
