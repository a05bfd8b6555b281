"""A command line builds only the command it runs (``crisiscomms.cli.COMMANDS`` and ``GROUPS``
say which module holds it; tests/core/test_cli_imports.py checks what ``status`` imports).
These tables must name every command the modules register, and a command line built for one
command must parse it as the whole command line does."""

from __future__ import annotations

from typing import Any

import pytest
import typer

import crisiscomms.cli as cli_pkg
from crisiscomms.cli import COMMANDS, GROUPS, build, command_of


def _names(group: Any) -> set[str]:
    return set(group.commands)


def test_the_tables_name_every_command_of_the_whole_command_line() -> None:
    whole = typer.main.get_command(cli_pkg.app)
    assert _names(whole) == set(COMMANDS) | set(GROUPS)


@pytest.mark.parametrize("name", sorted(set(COMMANDS) | set(GROUPS)))
def test_a_command_line_built_for_one_command_has_it_alone_and_the_same(name: str) -> None:
    whole = typer.main.get_command(cli_pkg.app)
    one = typer.main.get_command(build(name))
    assert _names(one) >= {name}
    # the command's module may register its siblings (register() adds a few), never a group
    assert not (_names(one) - {name}) & set(GROUPS)
    mine, theirs = one.commands[name], whole.commands[name]  # type: ignore[attr-defined]
    assert mine.help == theirs.help
    assert [p.opts for p in mine.params] == [p.opts for p in theirs.params]
    if hasattr(theirs, "commands"):  # a group: the same sub-commands
        assert _names(mine) == _names(theirs)
    assert [p.opts for p in one.params] == [p.opts for p in whole.params]  # global options


@pytest.mark.parametrize(("args", "command"), [
    (["status"], "status"),
    (["status", "--json"], "status"),
    (["--at", "2026-11-30T09:00", "--debug", "status"], "status"),
    (["--at=2026-11-30T09:00", "--log-level", "debug", "queue", "list"], "queue"),
    (["--home", "status", "activate"], "activate"),  # --home takes "status" as its value
    (["--at-on-live-database", "watch", "--once"], "watch"),
    ([], None), (["--help"], None), (["-h", "status"], None), (["--debug"], None),
    (["no-such-command"], None), (["--no-such-option", "status"], None), (["--", "status"], None),
])
def test_command_of_finds_the_command_after_the_global_options(args: list[str],
                                                               command: str | None) -> None:
    assert command_of(args) == command


def test_status_help_and_usage_errors_read_as_before(cli: Any) -> None:
    r = cli("status", "--help")
    assert r.code == 0 and "Usage: crisiscomms status [OPTIONS]" in r.out and "--json" in r.out
    r = cli("status", "--no-such-option")
    assert r.code == 2 and "No such option: --no-such-option" in r.err
    r = cli("statu")
    assert r.code == 2 and "No such command 'statu'" in r.err
