"""Waits with a timeout that never lose a cancel.

Python 3.11's ``asyncio.wait_for`` returns the awaited result and drops an outside cancel
that lands in the same turn of the loop (gh-86296, fixed in 3.12 by building ``wait_for`` on
``asyncio.timeout``, as here). A watcher stopping then waited for ever on a push connection
that had gone back to sleep. Every wait with a timeout in crisiscomms goes through these
(ruff's TID251 refuses ``asyncio.wait_for``); ``tests/core/test_lost_cancel.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw`` within ``timeout`` seconds (``None``: no limit), else ``TimeoutError``."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
