"""The command line: thin typer commands that parse, call one use case and render.

Exit codes: 0 ok, 1 operational failure, 2 usage or validation error, 3 refused.
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

import typer
from typer.exceptions import Abort as TyperAbort
from typer.exceptions import Exit as TyperExit
from typer.exceptions import TyperException

from crisiscomms.cli import state
from crisiscomms.domain.errors import CrisisCommsError

# Which module holds each command: a command line builds (and imports) only the command it
# runs, so typer turns one function into a click command, not the whole tree, and ``status``
# never imports the modules of ``audit``, ``watch`` or ``drill``. ``--help``, no command or a
# name not listed here builds every command (``app``). tests/test_cli_lazy.py holds these
# tables equal to what the modules register.
COMMANDS: dict[str, str] = {  # top-level command -> module whose register() adds it
    "activate": "incident_cmd", "deactivate": "incident_cmd", "lead": "incident_cmd",
    "watch": "runtime_cmd", "report": "runtime_cmd",
    "status": "status_cmd",
    "drill": "drill_cmd", "simulate": "drill_cmd",
}
GROUPS: dict[str, tuple[str, str]] = {  # sub-command group -> (module, its typer.Typer)
    "playbooks": ("playbooks_cmd", "app"),
    "audit": ("audit_cmd", "app"),
    "notify": ("notify_cmd", "app"),
    "queue": ("queue_cmd", "app"),
    "window": ("queue_cmd", "window_app"),
    "policy": ("queue_cmd", "policy_app"),
}
# The global options (state.global_options) that take a value, to find the command after them.
_VALUE_OPTIONS = frozenset({"--at", "--home", "--playbooks-dir", "--log-level", "--log-format"})


def _module(name: str) -> ModuleType:
    # through __import__, as an import statement goes (what the import tests trace)
    __import__(f"crisiscomms.cli.{name}")
    return sys.modules[f"crisiscomms.cli.{name}"]


def build(only: str | None = None) -> typer.Typer:
    """The command line: every command, or (``only``) just that command or group."""
    cli = typer.Typer(
        name="crisiscomms",
        help="Relay official crisis updates to our channels, exactly once, with an audit "
        "trail.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    cli.callback()(state.global_options)
    registered: set[str] = set()
    for name, module in COMMANDS.items():
        if only in (None, name) and module not in registered:
            registered.add(module)
            # register() adds all of its module's commands (a few, never the tree)
            _module(module).register(cli)
    for name, (module, attr) in GROUPS.items():
        if only in (None, name):
            cli.add_typer(getattr(_module(module), attr), name=name)
    return cli


def command_of(args: Sequence[str]) -> str | None:
    """The command or group ``args`` run, when one of ours follows the global options; None
    for help, no command or anything else (the whole command line then parses it)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            if arg in ("-h", "--help", "--") or arg.split("=", 1)[0] not in (
                    _VALUE_OPTIONS | {"--debug", "--at-on-live-database"}):
                return None
            i += 1
            continue
        return arg if arg in COMMANDS or arg in GROUPS else None
    return None


_full: typer.Typer | None = None


def whole() -> typer.Typer:
    """The whole command line (every command), built once."""
    global _full
    if _full is None:
        _full = build()
    return _full


def __getattr__(name: str) -> typer.Typer:
    """``crisiscomms.cli.app``: the whole command line, built when first asked for."""
    if name == "app":
        return whole()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _click_errors() -> tuple[tuple[type[BaseException], ...], ...]:
    """click's own Exit, Abort and ClickException, if something loaded click (typer vendors
    its own copy and raises those; importing click just to catch its errors costs CPU)."""
    click = sys.modules.get("click")
    if click is None:
        return (), (), ()
    exc = click.exceptions
    return (exc.Exit,), (exc.Abort,), (exc.ClickException,)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``crisiscomms`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli = build(only) if (only := command_of(args)) else whole()
        result = cli(args=args, prog_name="crisiscomms", standalone_mode=False)
    except BaseException as exc:
        code = _exit_code(exc, debug)
    else:
        code = result if isinstance(result, int) else 0
    finally:
        state.close()
    sys.exit(code)


def _exit_code(exc: BaseException, debug: bool) -> int:
    """Report a failed command as main always has; its exit code."""
    click_exit, click_abort, click_error = _click_errors()
    if isinstance(exc, (TyperExit, *click_exit)):
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if isinstance(exc, (TyperAbort, *click_abort)):
        print("crisiscomms: aborted", file=sys.stderr)
        return 130
    if isinstance(exc, (TyperException, *click_error)):
        # typer vendors click: usage errors (exit 2) come as either family.
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if isinstance(exc, CrisisCommsError):
        if debug:
            traceback.print_exception(exc)
        print(f"crisiscomms: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if not isinstance(exc, Exception):
        raise exc  # SystemExit and the like go on as before
    if debug:
        traceback.print_exception(exc)
    print(f"crisiscomms: internal error: {type(exc).__name__}: {exc} "
          "(run with --debug for the traceback)", file=sys.stderr)
    return 1
