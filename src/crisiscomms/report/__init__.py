"""The post-incident audit report (and the normal-mode period report)."""

from __future__ import annotations

from crisiscomms.report.render import FORMATS, render
from crisiscomms.services.reports import build_incident_report, build_period_report

__all__ = ["FORMATS", "build_incident_report", "build_period_report", "render"]
