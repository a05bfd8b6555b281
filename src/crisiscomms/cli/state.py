"""Global options and the lazily built application shared by the commands.

Every command module imports this one, and ``crisiscomms --help`` imports every command
module: what a command needs (settings, the store, the playbooks, logging) is imported when
it first asks for it, never here (``tests/core/test_cli_imports.py`` holds this)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from crisiscomms.domain.clock import SystemClock, is_naive, parse_local_instant, shown
from crisiscomms.domain.errors import ConfigError

if TYPE_CHECKING:
    from crisiscomms.bootstrap import App
    from crisiscomms.domain.models import Operator
    from crisiscomms.settings import Settings

_app: App | None = None
_overrides: dict[str, Any] = {}


def global_options(
    at: Annotated[str | None, typer.Option(
        "--at", help="Run as of this ISO-8601 instant (drills, tests, what-if). "
        "Also CRISISCOMMS_AT.")] = None,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Data dir (default CRISISCOMMS_HOME or the XDG data dir).")] = None,
    playbooks_dir: Annotated[Path | None, typer.Option(
        "--playbooks-dir", help="Playbooks folder (default CRISISCOMMS_PLAYBOOKS_DIR or "
        "./playbooks).")] = None,
    log_level: Annotated[str | None, typer.Option(
        "--log-level", help="debug, info, warning or error.")] = None,
    log_format: Annotated[str | None, typer.Option(
        "--log-format", help="auto (console on a TTY, JSON lines otherwise), json or console."
    )] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    at_on_live_database: Annotated[bool, typer.Option(
        "--at-on-live-database", help="Allow changes with --at on a database a watcher uses "
        "(audited; the real time is recorded too).")] = False,
) -> None:
    """Relay official crisis updates to our channels, exactly once, with an audit trail."""
    global _app
    _app = None
    _overrides.clear()
    for key, value in (("at", at), ("home", home), ("playbooks_dir", playbooks_dir),
                       ("log_level", log_level), ("log_format", log_format)):
        if value is not None:
            _overrides[key] = value
    _overrides["_debug"] = debug
    _overrides["_at_on_live_database"] = at_on_live_database


def settings() -> Settings:
    from pydantic import ValidationError

    from crisiscomms.settings import Settings

    kwargs = {k: v for k, v in _overrides.items() if not k.startswith("_")}
    try:
        return Settings(**kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"settings: {key}: {first['msg']}") from None


def get_app() -> App:
    """Build the application once per command (settings, logging, clock)."""
    global _app
    if _app is None:
        from crisiscomms.bootstrap import build_app, make_clock
        from crisiscomms.logs import configure

        s = settings()
        configure(s.log_level, s.log_format, sys.stderr)
        app = build_app(s, clock=SystemClock())
        if s.at:
            # --at: a naive instant is wall time in the policy's zone (read only then).
            app.clock = make_clock(s.at, lambda: app.catalog.policy.tz,
                                   live_ok=bool(_overrides.get("_at_on_live_database")))
        _app = app
    return _app


def policy_tz() -> tzinfo:
    """The policy's time zone: what times are shown in and naive input means."""
    return get_app().catalog.policy.tz


def when(dt: datetime | None, *, seconds: bool = False) -> str:
    """A time for people, in the policy's zone with its name (``2026-07-01 02:00 BST``)."""
    return shown(dt, policy_tz(), seconds=seconds)


def current_operator(requested: str | None) -> Operator:
    """Who is acting: the real OS user (``SUDO_USER`` from root only if the policy trusts it);
    ``--operator NAME`` naming someone else makes this a delegate acting for NAME, which the
    operator check allows only where policy ``delegates`` does."""
    from crisiscomms.bootstrap import default_operator
    from crisiscomms.domain.models import Operator

    policy = get_app().catalog.policy
    user = default_operator(trust_sudo_user=policy.trust_sudo_user)
    name = (requested or "").strip()
    if not name or name == user:
        return Operator(user)
    return Operator(user, acting_for=name)


def close() -> None:
    global _app
    if _app is not None:
        _app.close()
        _app = None


def option_instant(option: str, text: str | None) -> datetime | None:
    """Parse an ISO-8601 option value typed by a person, or fail naming the option: an offset
    or ``Z`` is honoured; a naive value is wall time in the policy's zone."""
    if text is None:
        return None
    try:
        if not is_naive(text):
            return parse_local_instant(text, UTC)
        return parse_local_instant(text, policy_tz())
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an ISO-8601 instant") from None


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))
