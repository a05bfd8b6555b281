"""Throw-away PostgreSQL clusters for tests.

``session_cluster()`` lazily starts one cluster per process (initdb into a temp dir, trust auth,
durability off, listening on 127.0.0.1 and a unix socket in the temp dir) and stops it and removes
the dir at exit. As root, initdb/pg_ctl run as the ``postgres`` OS user (``subprocess`` ``user=``);
otherwise as the current user. If ``CRISISCOMMS_TEST_DATABASE_URL`` is set no cluster is started
and that server is used instead. psycopg is imported lazily; without it ``psql`` is used.

Example conftest.py::

    import uuid
    import pytest
    from tests.pgserver import PgCluster, session_cluster

    @pytest.fixture(scope="session")
    def pg_cluster() -> PgCluster:
        return session_cluster()          # skips (or fails under CI=true) if unavailable

    @pytest.fixture
    def pg_url(pg_cluster: PgCluster) -> str:    # a fresh, empty database per test
        return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

ENV_URL = "CRISISCOMMS_TEST_DATABASE_URL"
SUPERUSER = "crisis"


class PgUnavailableError(RuntimeError):
    """PostgreSQL cannot be started or reached here; the message is one line saying why."""


def find_bindir() -> Path | None:
    """Server bin dir: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            bindir = Path(out.stdout.strip())
            if out.returncode == 0 and (bindir / "initdb").is_file():
                return bindir
        except (OSError, subprocess.SubprocessError):
            pass
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    candidates = [p for p in found if (p / "initdb").is_file()]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    return max(candidates, key=version) if candidates else None


def _run_as() -> dict[str, Any]:
    """subprocess kwargs that drop root to the postgres user (PostgreSQL refuses to run as root)."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def _static_reason() -> str | None:
    if find_bindir() is None:
        return "no PostgreSQL server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def _check_connect(url: str) -> None:
    try:
        import psycopg
    except ImportError:
        raise PgUnavailableError(f"{ENV_URL} is set but psycopg is not installed") from None
    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PgUnavailableError(f"cannot connect to {ENV_URL}: {first}") from None


class PgCluster:
    """A running server: a temp cluster we own, or the ``CRISISCOMMS_TEST_DATABASE_URL`` one."""

    def __init__(self, external_url: str | None = None) -> None:
        """Start a new cluster (blocks until it accepts connections), or wrap ``external_url``."""
        self.tmpdir: Path | None = None
        self.bindir: Path | None = None
        self.port: int | None = None
        self._pid = os.getpid()
        if external_url:
            self.url = external_url
            _check_connect(external_url)
            return
        reason = _static_reason()
        if reason:
            raise PgUnavailableError(reason)
        self.bindir = find_bindir()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="crisispg-"))
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def datadir(self) -> Path | None:
        """The cluster's data directory (None for an external server)."""
        return self.tmpdir / "data" if self.tmpdir else None

    def _pg(self, tool: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        assert self.bindir and self.tmpdir
        return subprocess.run(
            [str(self.bindir / tool), *args], capture_output=True, text=True,
            cwd=self.tmpdir, timeout=timeout, stdin=subprocess.DEVNULL, **_run_as(),
        )  # fmt: skip

    def _start(self) -> None:
        assert self.tmpdir and self.datadir
        if os.geteuid() == 0:
            shutil.chown(self.tmpdir, "postgres", "postgres")
        self.tmpdir.chmod(0o700)
        init = self._pg("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        if init.returncode != 0:
            first = (init.stderr.strip().splitlines() or ["(no stderr)"])[0]
            raise PgUnavailableError(f"initdb failed: {first}")
        tail: list[str] = []
        for _attempt in range(3):  # the free port may be grabbed by someone else meanwhile
            self.port = _free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmpdir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            log = self.tmpdir / "log"
            start = self._pg("pg_ctl", "-D", str(self.datadir), "-o", opts, "-w", "-t", "60",
                             "-l", str(log), "start")  # fmt: skip
            if start.returncode == 0:
                return
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            if not any("in use" in line for line in tail):
                break
        raise PgUnavailableError(f"pg_ctl start failed: {' | '.join(tail) or start.stderr.strip()}")

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (psycopg if importable, else psql); returns its URL."""
        try:
            import psycopg
            from psycopg import sql
        except ImportError:
            if self.bindir is None:
                raise PgUnavailableError(f"psycopg is needed to use {ENV_URL}") from None
            ident = '"' + name.replace('"', '""') + '"'
            res = self._pg("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url,
                           "-c", f"CREATE DATABASE {ident}")  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(f"CREATE DATABASE failed: {res.stderr.strip()}") from None
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return _with_dbname(self.url, name)

    def stop(self) -> None:
        """Stop the server (immediate) and remove the temp dir; idempotent, no-op if external."""
        if self.tmpdir is None or os.getpid() != self._pid:  # never from a forked child
            return
        tmpdir = self.tmpdir
        if (tmpdir / "data" / "postmaster.pid").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._pg("pg_ctl", "-D", str(tmpdir / "data"), "-m", "immediate", "-w", "stop")
        self.tmpdir = None
        shutil.rmtree(tmpdir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it when running under CI (``CI=true``/``CI=1``)."""
    import pytest

    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


_session: PgCluster | None = None
_session_error: str | None = None


def _ensure_session() -> None:
    global _session, _session_error
    if _session is not None or _session_error is not None:
        return
    try:
        _session = PgCluster(os.environ.get(ENV_URL) or None)
    except PgUnavailableError as exc:
        _session_error = str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        _session_error = f"could not start PostgreSQL: {exc}"


def pg_unavailable_reason() -> str | None:
    """One line saying why PostgreSQL tests cannot run here, or None. Starts the session cluster."""
    _ensure_session()
    return _session_error


def session_cluster() -> PgCluster:
    """The per-process cluster, started on first call; skips (or fails under CI) if unavailable."""
    _ensure_session()
    if _session is None:
        skip_or_fail(_session_error or "unknown error")
    return _session
