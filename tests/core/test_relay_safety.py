"""Never relay the wrong thing (issue 12): a CAP entry whose status or scope is unknown, a CAP
document without them, an alert past its ``expires``."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.adapters.sources.capxml import parse_cap_document
from crisiscomms.domain.matching import match
from crisiscomms.domain.models import CapInfo, RecordedUpdate, SourceKind
from crisiscomms.services import incidents
from tests.core.helpers import make_world, update

FIXTURES = Path(__file__).resolve().parents[1] / "sources" / "fixtures"


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def activate(world):
    return incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                              reason="test", operator="alice")


def test_a_cap_entry_rebuilt_from_the_index_without_status_is_not_relayed(world):
    """The linked CAP document could not be used (DTD, too large, 404): the entry is rebuilt
    from the index with no CAP fields. Unknown status means not relayed."""
    inc = activate(world)
    u = replace(update("ea-floods-essex", "exercise-1", title="EXERCISE EXERCISE flood"),
                kind=SourceKind.CAP, cap=None, id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc])
    assert m.items == ()
    assert m.disposition.startswith("skipped: CAP status and scope unknown")


def test_a_cap_document_without_status_or_scope_is_not_relayed(world):
    inc = activate(world)
    xml = (FIXTURES / "cap_alert.xml").read_bytes()
    for tag in (b"status", b"scope"):
        start = xml.index(b"<" + tag + b">")
        end = xml.index(b"</" + tag + b">") + len(tag) + 3
        xml = xml[:start] + xml[end:]
    doc = parse_cap_document(xml, source_id="ea-floods-essex")
    assert (doc.cap.status, doc.cap.scope) == ("", "")
    u = replace(update("ea-floods-essex", doc.cap.identifier, cap=doc.cap),
                kind=SourceKind.CAP, id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc])
    assert m.items == () and m.disposition.startswith("skipped: not Actual/Public")


def test_an_alert_already_expired_when_seen_is_not_queued(world):
    inc = activate(world)
    now = world.clock.now()
    cap = CapInfo(identifier="old", severity="Severe", expires=now - timedelta(minutes=1))
    u = replace(update("ea-floods-essex", "old", cap=cap), id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc], now=now)
    assert m.items == () and m.disposition.startswith("skipped: expired at")


def test_an_alert_that_expires_before_it_is_sent_is_not_sent(world):
    activate(world)
    world.poll()  # baselines
    world.clock.advance(timedelta(minutes=6))
    expires = world.clock.now() + timedelta(minutes=10)
    cap = CapInfo(identifier="w1", severity="Severe", expires=expires)
    world.sources["ea-floods-essex"].set_snapshot([update("ea-floods-essex", "w1", cap=cap,
                                                          at=world.clock.now())])
    world.poll()
    queued = [i for i in world.store.items() if i.update_id]
    assert queued and all(i.expires_at == expires for i in queued)
    world.clock.advance(timedelta(minutes=11))  # nothing was sent in time (e.g. rate limits)
    world.dispatcher().tick(world.clock.now())
    after = [world.store.get_item(i.id) for i in queued]
    assert all(str(i.state) == "skipped" and i.reason.startswith("expired") for i in after)
    assert all(not p.posts or all(s.item_id not in {i.id for i in queued} for s in p.posts)
               for p in world.publishers.values())
