"""What the CLI's quick commands import: a fresh interpreter runs the console script's entry
point, then lists ``sys.modules``. ``--help``, ``status``, ``queue list`` and ``activate`` stay
cheap to start only while they leave the watcher's machinery (HTTP clients, the event loop,
the adapters, the simulator, the report renderer, the calendars) unimported; a change that
imports one of these at module level again fails here, naming the chain that pulled it in.
No timing is asserted: ``make bench`` measures the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Run as the console script does, then record every loaded module and who imported it first.
SCRIPT = """
import builtins, json, os, sys
first = {}
real_import = builtins.__import__
def traced(name, globals=None, locals=None, fromlist=(), level=0):
    before = set(sys.modules)
    try:
        return real_import(name, globals, locals, fromlist, level)
    finally:
        by = (globals or {}).get("__name__", "?")
        for new in set(sys.modules) - before:
            first.setdefault(new, by)
builtins.__import__ = traced
from crisiscomms.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
with open(os.environ["IMPORTS_OUT"], "w") as f:
    json.dump(first, f)
"""

# Never needed to print help, read the store, list the queue or raise the crisis flag.
WATCHER_ONLY = (
    "httpx", "httpcore", "anyio", "tweepy", "requests", "feedparser", "tldextract",
    "defusedxml", "apprise", "psycopg", "psycopg_pool", "starlette", "uvicorn", "jinja2",
    "matplotlib", "holidays", "twitter_text", "tenacity",
    "crisiscomms.services.watch", "crisiscomms.services.dispatch",
    "crisiscomms.services.runloop", "crisiscomms.services.audit_seal",
    "crisiscomms.adapters.sources", "crisiscomms.adapters.publishers",
    "crisiscomms.adapters.notify", "crisiscomms.adapters.xhttp",
    "crisiscomms.adapters.store.postgres", "crisiscomms.simulator", "crisiscomms.drill",
    "crisiscomms.report", "crisiscomms.retry",
)
# Not even what the store and the settings need: help is only typer (and rich to print it).
HELP_ALSO_WITHOUT = (
    "pydantic", "pydantic_settings", "structlog", "asyncio", "yaml", "regex",
    "crisiscomms.bootstrap", "crisiscomms.settings", "crisiscomms.logs",
    "crisiscomms.adapters.store", "crisiscomms.adapters.playbooks",
    "crisiscomms.domain.config", "crisiscomms.domain.models", "crisiscomms.services",
)
# status and queue list do not compose posts (the post text rules bring `regex`).
READS_ALSO_WITHOUT = ("regex", "structlog", "crisiscomms.domain.posttext",
                      "crisiscomms.domain.matching", "crisiscomms.services.queue",
                      "crisiscomms.services.incidents")


def imported(args: list[str], tmp_path: Path) -> dict[str, str]:
    """The modules a fresh ``crisiscomms ARGS`` loaded, each with the module that imported it."""
    out = tmp_path / "imports.json"
    env = {**os.environ, "IMPORTS_OUT": str(out)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert out.exists(), proc.stderr
    loaded: dict[str, str] = json.loads(out.read_text())
    return loaded


def offenders(loaded: dict[str, str], banned: tuple[str, ...]) -> dict[str, str]:
    """Each banned module (or submodule) that was loaded, with its chain of importers."""
    found = {}
    for name in sorted(loaded):
        if any(name == b or name.startswith(b + ".") for b in banned):
            chain, by = [name], loaded[name]
            while by in loaded and by not in chain and len(chain) < 12:
                chain.append(by)
                by = loaded[by]
            chain.append(by)
            found[name] = " <- ".join(chain)
    return found


@pytest.mark.slow
def test_help_imports_only_the_command_line(home: Path, tmp_path: Path) -> None:
    loaded = imported(["--help"], tmp_path)
    assert "typer" in loaded and "crisiscomms.cli.queue_cmd" in loaded  # the test sees imports
    assert offenders(loaded, WATCHER_ONLY + HELP_ALSO_WITHOUT) == {}


# A command builds and imports only its own command module (cli/__init__.py's COMMANDS and
# GROUPS say which): typer then builds one command, not the whole tree. The standalone click is
# never needed (typer vendors its own; crisiscomms.cli looks for click's errors only when
# something else loaded it).
OTHER_COMMANDS = ("click", "crisiscomms.cli.audit_cmd", "crisiscomms.cli.drill_cmd",
                  "crisiscomms.cli.notify_cmd", "crisiscomms.cli.playbooks_cmd",
                  "crisiscomms.cli.queue_cmd", "crisiscomms.cli.runtime_cmd")
NOT_FOR_STATUS = OTHER_COMMANDS
NOT_FOR_QUEUE_LIST = tuple(m for m in OTHER_COMMANDS if m != "crisiscomms.cli.queue_cmd")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "others"), [
    (["status"], NOT_FOR_STATUS),
    (["status", "--json"], NOT_FOR_STATUS),
    (["--log-level", "info", "status"], NOT_FOR_STATUS),
    (["queue", "list"], NOT_FOR_QUEUE_LIST),
])
def test_reading_commands_leave_the_watcher_unimported(home: Path, tmp_path: Path,
                                                       args: list[str],
                                                       others: tuple[str, ...]) -> None:
    loaded = imported(args, tmp_path)
    assert "crisiscomms.adapters.store.sqlite" in loaded  # it did read the store
    assert offenders(loaded, WATCHER_ONLY + READS_ALSO_WITHOUT + others) == {}


# activate composes (twitter-text counts X lengths) and asks which credentials each platform
# needs, a table that still lives in adapters.publishers (whose package imports every
# publisher, httpx and tweepy with it).
ACTIVATE_USES = ("twitter_text", "crisiscomms.adapters.publishers", "httpx", "httpcore",
                 "anyio", "tweepy", "requests", "tenacity", "crisiscomms.retry",
                 "crisiscomms.adapters.xhttp")


@pytest.mark.slow
def test_activate_leaves_the_watcher_unimported(home: Path, tmp_path: Path) -> None:
    loaded = imported(["activate", "flooding", "--reason", "drill"], tmp_path)
    assert "crisiscomms.services.incidents" in loaded  # it did activate
    banned = tuple(m for m in WATCHER_ONLY if m not in ACTIVATE_USES)
    assert offenders(loaded, banned) == {}
