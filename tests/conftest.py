"""Shared fixtures: an isolated data dir, a pinned copy of the bundled playbooks, a CLI runner."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from crisiscomms import retry
from crisiscomms.cli import main
from crisiscomms.testing import SIMULATED_X_IDS, pinned_playbooks

REPO = Path(__file__).resolve().parent.parent
PINNED = SIMULATED_X_IDS


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


@pytest.fixture
def playbooks_dir(tmp_path: Path) -> Path:
    """A copy of the bundled playbooks with the X ids pinned (they are empty in the repo)."""
    return pinned_playbooks(REPO / "playbooks", tmp_path / "playbooks")


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
