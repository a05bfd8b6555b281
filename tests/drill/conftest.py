"""The drills log every poll at debug level (thousands of lines a drill, most of them "not
modified"); here they log from info up, which is what a failure's captured output needs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _drill_logs_from_info() -> Iterator[None]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield  # tests/conftest.py puts structlog's defaults back after each test
