"""Shared fixtures: an isolated data dir, a pinned copy of the bundled playbooks, a CLI runner."""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from crisiscomms import retry
from crisiscomms.cli import main
from crisiscomms.testing import SIMULATED_X_IDS, pinned_playbooks

REPO = Path(__file__).resolve().parent.parent
PINNED = SIMULATED_X_IDS

# Seconds the slowest tests took (``pytest -n 2 --durations=25`` on the 2-core machine,
# 2026-12-02, the machine shared with other runs: load average 5-6): a scheduling hint only,
# never a limit. pytest-xdist's load scheduler first hands each worker a
# contiguous chunk of the collection and then feeds whichever worker runs dry; in collection
# order every chaos test landed in the first worker's chunk and the benchmark smoke test came
# last, leaving the other worker idle at the end. These are dealt out over the first chunks,
# longest first, each to the worker with the least hinted time so far; every other test keeps
# its place. A test missing here (new, renamed) is simply not moved.
SLOW_TESTS = {
    "tests/report/test_drill_report.py::test_essex_drill_report_agrees_with_the_drill": 72,
    "tests/chaos/test_crash.py::test_watch_survives_random_sigkills": 61,
    "tests/test_benchmarks_smoke.py::test_quick_benchmarks_print_every_row": 56,
    "tests/chaos/test_several_watchers.py::test_several_watchers_publish_everything_exactly_once"
    "[postgres-3]": 39,
    "tests/chaos/test_several_watchers.py::test_several_watchers_publish_everything_exactly_once"
    "[sqlite-2]": 37,
    "tests/drill/test_practice.py::"
    "test_practice_relays_after_the_officer_activates_from_another_shell": 23,
    "tests/hostile/test_hostile_watcher.py::test_watcher_survives_every_hostile_source_at_once":
    19,
    "tests/hostile/test_hostile_end_to_end.py::test_what_the_hostile_corpus_would_post": 14,
    "tests/chaos/test_two_watchers.py::test_two_watchers_on_one_database_post_nothing_twice": 12,
    "tests/push/test_push_end_to_end.py::"
    "test_pushed_updates_are_relayed_in_seconds_once_each_and_a_gap_is_caught_up": 12,
    "tests/chaos/test_platform_faults.py::"
    "test_everything_delivered_once_through_5xx_timeouts_and_429s": 12,
    "tests/cli/test_once_imports.py::"
    "test_once_parses_only_changed_feeds_and_loads_only_what_it_uses": 11,
    "tests/drill/test_drills.py::test_small_drills_pass_and_are_reproducible[fediverse]": 11,
    "tests/chaos/test_slow_feed.py::test_a_trickling_feed_neither_blocks_posting_nor_a_stop": 10,
    "tests/drill/test_drills.py::test_small_drills_pass_and_are_reproducible[cap-alerts]": 9,
    "tests/chaos/test_store_faults.py::test_disk_full_gives_a_clear_error_and_no_corruption": 8,
    "tests/chaos/test_store_faults.py::test_activate_while_another_process_holds_the_database": 8,
    "tests/test_settings_logging.py::test_secrets_never_logged": 7,
    "tests/core/test_exactly_once_property.py::"
    "test_each_update_queued_exactly_once_per_channel_action": 7,
    "tests/drill/test_drills.py::test_small_drills_pass_and_are_reproducible[x-reactivation]": 6,
    "tests/test_reload.py::test_a_running_watcher_follows_sources_yaml": 6,
    "tests/test_cli_on_call.py::test_ctrl_c_on_watch_exits_130": 3,
}
# Tests that share a session fixture with a test above (one run per worker): dealt to that
# test's worker, right behind it, so the fixture is built once in the whole run, not once on
# each worker. {follower: the test it follows}.
SAME_WORKER = {
    "tests/drill/test_drills.py::test_bundled_essex_flood_drill":  # the ``essex_drill``
    "tests/report/test_drill_report.py::test_essex_drill_report_agrees_with_the_drill",
    "tests/drill/test_drills.py::test_jumping_skips_quiet_steps_only":  # ``jumped``
    "tests/drill/test_drills.py::test_small_drills_pass_and_are_reproducible[x-reactivation]",
}


def _xdist_workers(config: pytest.Config) -> int:
    """How many xdist workers share the run (1 without xdist); only workers collect."""
    workerinput = getattr(config, "workerinput", None)
    return int(workerinput.get("workercount", 1)) if workerinput else 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deal the slowest tests out over the workers' first chunks (see ``SLOW_TESTS``), each
    with the tests that follow it (``SAME_WORKER``); the same deterministic order on every
    worker, as xdist requires."""
    present = {it.nodeid for it in items}
    followers: dict[str, list[pytest.Item]] = {}
    for it in items:
        leader = SAME_WORKER.get(it.nodeid)
        if leader in present and leader in SLOW_TESTS:
            followers.setdefault(leader, []).append(it)
    moved = {it.nodeid for group in followers.values() for it in group}
    slow = sorted((it for it in items if it.nodeid in SLOW_TESTS),
                  key=lambda it: (-SLOW_TESTS[it.nodeid], it.nodeid))
    if not slow:
        return
    workers = _xdist_workers(config)
    rest = [it for it in items if it.nodeid not in SLOW_TESTS and it.nodeid not in moved]

    def with_followers(group: list[pytest.Item]) -> list[pytest.Item]:
        return [x for it in group for x in (it, *followers.get(it.nodeid, ()))]

    if workers == 1:
        items[:] = with_followers(slow) + rest
        return
    # xdist's LoadScheduling: with at least 2 tests a worker, worker i is first sent the
    # collection's [i*chunk, (i+1)*chunk); with fewer, tests go round robin.
    maxchunk = getattr(config.option, "maxschedchunk", None) or len(items)
    chunk = max(min(len(items) // workers // 4, maxchunk), 2)
    lanes: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for it in slow:
        i = min(range(workers), key=lambda w: (load[w], w))
        lanes[i] += with_followers([it])
        load[i] += SLOW_TESTS[it.nodeid]
    if len(items) < 2 * workers or any(len(lane) > chunk for lane in lanes):
        items[:] = with_followers(slow) + rest
        return
    ordered: list[pytest.Item] = []
    fill = iter(rest)
    for lane in lanes:
        ordered += lane
        ordered += itertools.islice(fill, chunk - len(lane))
    ordered += fill
    items[:] = ordered


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    with retry.no_waits():
        yield


@pytest.fixture(autouse=True)
def _no_system_config(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the real /etc/crisiscomms/config.yaml (a missing file is fine)."""
    monkeypatch.setenv("CRISISCOMMS_SYSTEM_CONFIG",
                       str(tmp_path_factory.getbasetemp() / "no-system-config.yaml"))


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A CLI test configures logging onto capsys's stream; never let the next test inherit it."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_crisiscomms", False):
            root.removeHandler(h)


@pytest.fixture(scope="session")
def essex_drill(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bundled Essex flood drill, run once per worker and shared read-only: it is
    deterministic and the longest drill (most of a minute), and several tests check what it
    produced. Its ``DrillResult``; the report is at ``result.report_path`` (HTML, with the
    JSON and Markdown beside it). Logged from info up, as in tests/drill."""
    from crisiscomms.drill.runner import run_drill

    out = tmp_path_factory.mktemp("essex-drill")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        return run_drill(REPO / "playbooks" / "drills" / "essex-flood.yaml", home=out / "home",
                         report_path=out / "out" / "essex-flood.html")
    finally:
        structlog.reset_defaults()


@pytest.fixture(scope="session")
def _pinned_playbooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled playbooks with the X ids pinned, made once per worker (a YAML round trip:
    about 10 ms, and hundreds of tests start from it)."""
    return pinned_playbooks(REPO / "playbooks", tmp_path_factory.mktemp("pinned") / "playbooks")


@pytest.fixture
def playbooks_dir(tmp_path: Path, _pinned_playbooks: Path) -> Path:
    """A copy of the bundled playbooks with the X ids pinned (they are empty in the repo);
    the test's own, to edit as it likes."""
    return Path(shutil.copytree(_pinned_playbooks, tmp_path / "playbooks"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, playbooks_dir: Path) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("CRISISCOMMS_HOME", str(h))
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(playbooks_dir))
    monkeypatch.delenv("CRISISCOMMS_DATABASE_URL", raising=False)
    monkeypatch.delenv("CRISISCOMMS_AT", raising=False)
    monkeypatch.delenv("CRISISCOMMS_CONFIG", raising=False)
    monkeypatch.setenv("CRISISCOMMS_LOG_LEVEL", "warning")
    monkeypatch.chdir(tmp_path)
    return h


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the real entry point in-process; returns exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        captured = capsys.readouterr()
        return Result(int(exc.value.code or 0), captured.out, captured.err)

    return run
