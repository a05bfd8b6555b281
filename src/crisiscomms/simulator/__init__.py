"""Loopback platform simulator for drills, ``make demo`` and end-to-end tests.

It plays both sides: the official sources (RSS/Atom, CAP, EA floods, X, Mastodon, Bluesky
accounts) and our own channels (X, Facebook, Mastodon, Bluesky), all driven by an injected
clock, with quotas, fault injection and a request log. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

from crisiscomms.simulator.app import build_app
from crisiscomms.simulator.quotas import DEFAULT_QUOTAS, Quota, QuotaDecision
from crisiscomms.simulator.server import RunningSimulator, check_loopback, run_forever, serve
from crisiscomms.simulator.world import Faults, RequestRecord, SimPost, VisibleItem, World, XUser

__all__ = [
    "DEFAULT_QUOTAS",
    "Faults",
    "Quota",
    "QuotaDecision",
    "RequestRecord",
    "RunningSimulator",
    "SimPost",
    "VisibleItem",
    "World",
    "XUser",
    "build_app",
    "check_loopback",
    "run_forever",
    "serve",
]
