"""The dispatch lease's floor: 5 s in a deployment, whatever the environment says, unless the
test-only setting ``dispatch.test_only_short_leases`` is on (test suites and drills: the chaos
watchers run on 2 s leases, so their faults settle in seconds).

A lease shorter than a send under load lets a second watcher take a live send over (fencing
then refuses the slower one's writes, but the send may already be out twice): a production
lease under 5 s is refused, with the reason and the name of the setting that allows it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crisiscomms.settings import (
    MIN_LEASE_SECONDS,
    TEST_MIN_LEASE_SECONDS,
    DispatchSettings,
    Settings,
)


def test_a_deployment_refuses_a_lease_under_5_s() -> None:
    assert MIN_LEASE_SECONDS == 5
    with pytest.raises(ValidationError) as exc:
        DispatchSettings(lease_seconds=4.9)
    assert "at least 5 s" in str(exc.value) and "test_only_short_leases" in str(exc.value)
    assert DispatchSettings(lease_seconds=5).lease_seconds == 5
    assert DispatchSettings().lease_seconds == 120  # the default is untouched
    assert DispatchSettings().test_only_short_leases is False


def test_the_environment_alone_cannot_lower_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__LEASE_SECONDS", "2")
    with pytest.raises(ValidationError, match="at least 5 s"):
        Settings()
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__TEST_ONLY_SHORT_LEASES", "false")
    with pytest.raises(ValidationError, match="at least 5 s"):
        Settings()


def test_the_test_only_setting_allows_short_leases_down_to_its_own_floor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__LEASE_SECONDS", "2")
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__TEST_ONLY_SHORT_LEASES", "true")
    assert Settings().dispatch.lease_seconds == 2
    assert DispatchSettings(lease_seconds=TEST_MIN_LEASE_SECONDS,
                            test_only_short_leases=True).lease_seconds == 0.5
    with pytest.raises(ValidationError, match=r"at least 0\.5 s"):
        DispatchSettings(lease_seconds=0.4, test_only_short_leases=True)
    with pytest.raises(ValidationError):
        DispatchSettings(lease_seconds=0, test_only_short_leases=True)


def test_the_settle_margin_has_the_same_floor_and_the_dispatcher_uses_it() -> None:
    # How long after a send's deadline and time-out a request cut off by a crash is taken as
    # unable to land: 5 s in a deployment; the suite's kill tests settle in 1 s.
    assert DispatchSettings().settle_margin_seconds == 5
    with pytest.raises(ValidationError, match="settle_margin_seconds must be at least 5 s"):
        DispatchSettings(settle_margin_seconds=1)
    short = DispatchSettings(test_only_short_leases=True, lease_seconds=2,
                             settle_margin_seconds=1, send_deadline_seconds=2,
                             timeout_seconds=3)
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.models import ActionKind, ItemState, OutboxItem
    from crisiscomms.services.dispatch import Dispatcher

    sent = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    item = OutboxItem(id=1, dedupe_key="k", channel_id="x", action=ActionKind.POST, text="t",
                      state=ItemState.SENDING, created_at=sent, sent_at=sent)
    store = open_store("memory://")
    catalog = load_catalog(Path(__file__).resolve().parents[2] / "playbooks")
    try:
        d = Dispatcher(store=store, catalog=catalog, publishers={}, settings=short,
                       worker_id="w")
        assert d._settled_at(item) == sent + timedelta(seconds=2 + 3 + 1)
    finally:
        store.close()
