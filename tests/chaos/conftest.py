"""Fixtures of the chaos tests (see harness.py for the scenario and the checks)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so --strict-markers never trips on it.
    config.addinivalue_line(
        "markers", "chaos: fault-injection tests (small scale by default; "
        "CRISISCOMMS_CHAOS_SCALE=full for make chaos)")
