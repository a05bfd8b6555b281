"""Global options and the lazily built application shared by the commands."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from crisiscomms.bootstrap import App, build_app
from crisiscomms.domain.clock import parse_instant
from crisiscomms.domain.errors import ConfigError
from crisiscomms.logs import configure
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


def settings() -> Settings:
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
        s = settings()
        configure(s.log_level, s.log_format, sys.stderr)
        _app = build_app(s)
    return _app


def close() -> None:
    global _app
    if _app is not None:
        _app.close()
        _app = None


def option_instant(option: str, text: str | None) -> datetime | None:
    """Parse an ISO-8601 option value, or fail naming the option."""
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an ISO-8601 instant") from None


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))
