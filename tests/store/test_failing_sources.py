"""``Store.failing_sources``: the pager's question (which sources fail ``n`` polls in a row or
more) answered by the store, on every backend."""

from __future__ import annotations

from crisiscomms.domain.models import SourceState
from crisiscomms.ports import Store


def test_only_the_sources_failing_that_often_are_returned_by_key(store: Store) -> None:
    with store.unit_of_work() as uow:
        for key, failures in (("c", 7), ("a", 5), ("b", 4), ("d", 0), ("e", 5)):
            uow.sources.save(SourceState(source_id=key, failures=failures,
                                         last_error="boom" if failures else None))
        uow.commit()
    assert [(s.source_id, s.failures) for s in store.failing_sources(5)] == [
        ("a", 5), ("c", 7), ("e", 5)]
    assert store.failing_sources(8) == []
    got = store.failing_sources(1)
    assert [s.source_id for s in got] == ["a", "b", "c", "e"]
    assert got[0] == store.source_state("a")  # the whole state, as source_state reads it
