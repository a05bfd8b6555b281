"""Store faults: the database locked by another process, the disk full, a migration that
fails half-way. Each gives one clear line and exit code 1, leaves nothing half-written, and
everything works again once the fault is gone."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crisiscomms.adapters.store import migrations as store_base
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.clock import SystemClock
from crisiscomms.domain.errors import StoreError
from crisiscomms.simulator import serve

from .harness import PLAYBOOK, cli, db_query, make_scenario, new_world, sim_env, write_playbooks

pytestmark = pytest.mark.chaos


@pytest.fixture
def env(tmp_path: Path):
    """A data dir (already migrated) and playbooks; no worker runs."""
    scenario = make_scenario(0, span_s=1, seed=1)
    with serve(new_world(SystemClock(), scenario)) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
    env = sim_env(tmp_path / "home", playbooks, sim)
    done = cli(env, "status", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return env


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crisiscomms: error: "), stderr
    return lines[0]


def audit_ok(env, cwd: Path) -> None:
    verify = cli(env, "audit", "verify", cwd=cwd)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def integrity(db: Path) -> str:
    return db_query(db, "PRAGMA integrity_check")[0][0]


def n_incidents(db: Path) -> int:
    return db_query(db, "SELECT count(*) FROM incidents")[0][0]


def test_activate_while_another_process_holds_the_database(env, tmp_path: Path):
    db = tmp_path / "home" / "crisiscomms.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\n"
         "print('locked', flush=True)\n"
         "sys.stdin.read()\n"
         "c.execute('ROLLBACK')\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # The store waits out its busy timeout (5 s) before giving up.
        done = cli(env, "activate", PLAYBOOK, "--reason", "while locked", cwd=tmp_path)
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "locked by another process" in line
    assert str(db) in line
    assert n_incidents(db) == 0
    audit_ok(env, tmp_path)

    again = cli(env, "activate", PLAYBOOK, "--reason", "after release", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert n_incidents(db) == 1
    audit_ok(env, tmp_path)


# Run the CLI with a file-size limit: a write past it fails with EFBIG, which SQLite reports
# as a full disk. SIGXFSZ is ignored so the process is not killed by it.
LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["crisiscomms", *sys.argv[2:]]
runpy.run_module("crisiscomms", run_name="__main__")
"""


def test_disk_full_gives_a_clear_error_and_no_corruption(env, tmp_path: Path):
    db = tmp_path / "home" / "crisiscomms.db"
    before = {p.name: p.stat().st_size for p in db.parent.iterdir()}
    limit = max(before.values()) + 16 * 1024
    # A reason far larger than the space left: the transaction cannot fit. (At most 128 KiB:
    # the limit of one argument on Linux.)
    huge = "flood " * 16_000
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), "activate", PLAYBOOK, "--reason", huge],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    line = one_error_line(done.stderr)
    assert "disk" in line and "full" in line, line
    assert str(db) in line
    assert integrity(db) == "ok"
    assert n_incidents(db) == 0
    audit_ok(env, tmp_path)

    # Space returns: the same command goes through.
    again = cli(env, "activate", PLAYBOOK, "--reason", huge, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert n_incidents(db) == 1
    assert integrity(db) == "ok"
    audit_ok(env, tmp_path)


LATEST = max(v for v, _, _ in store_base.SQLITE_MIGRATIONS)
NEXT = LATEST + 1
BROKEN = (NEXT, "half_done", "CREATE TABLE half_done (id INTEGER PRIMARY KEY);\n"
                             "INSERT INTO no_such_table VALUES (1);")
GOOD = (NEXT, "half_done", "CREATE TABLE half_done (id INTEGER PRIMARY KEY);")


def test_a_migration_failing_half_way_leaves_the_previous_version(
        env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_in_process):
    db = tmp_path / "home" / "crisiscomms.db"
    store = open_store(f"sqlite:///{db}")
    assert store.schema_version == LATEST
    store.close()
    original = list(store_base.SQLITE_MIGRATIONS)
    monkeypatch.setattr(store_base, "SQLITE_MIGRATIONS", [*original, BROKEN])

    with pytest.raises(StoreError, match=f"migration {NEXT} \\(half_done\\)"):
        open_store(f"sqlite:///{db}")
    code, err = cli_in_process("status")
    assert code == 1
    assert f"migration {NEXT} (half_done)" in one_error_line(err)

    tables = {r[0] for r in db_query(db, "SELECT name FROM sqlite_master")}
    assert "half_done" not in tables
    assert db_query(db, "SELECT max(version) FROM schema_migrations") == [(LATEST,)]
    assert integrity(db) == "ok"

    # A restart with the good migrations works, and a fixed migration 2 applies whole.
    monkeypatch.setattr(store_base, "SQLITE_MIGRATIONS", original)
    store = open_store(f"sqlite:///{db}")
    assert store.schema_version == LATEST
    assert store.verify_audit().ok
    store.close()
    monkeypatch.setattr(store_base, "SQLITE_MIGRATIONS", [*original, GOOD])
    store = open_store(f"sqlite:///{db}")
    assert store.schema_version == NEXT
    store.close()
    assert "half_done" in {r[0] for r in db_query(db, "SELECT name FROM sqlite_master")}


@pytest.fixture
def cli_in_process(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]):
    """The real entry point in this process (so monkeypatched migrations apply)."""
    from crisiscomms.cli import main

    for key, value in env.items():
        if key.startswith("CRISISCOMMS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return int(exc.value.code or 0), capsys.readouterr().err

    return run


def test_sqlite_sees_no_open_transaction_after_a_failed_migration(tmp_path: Path,
                                                                  monkeypatch):
    """The failed script's transaction is rolled back, not left open on the connection."""
    db = tmp_path / "x.db"
    open_store(f"sqlite:///{db}").close()
    monkeypatch.setattr(store_base, "SQLITE_MIGRATIONS", [*store_base.SQLITE_MIGRATIONS, BROKEN])
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{db}")
    other = sqlite3.connect(db, timeout=0.1, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # would raise 'database is locked' if it were open
        other.execute("ROLLBACK")
    finally:
        other.close()
