"""The command line: thin typer commands that parse, call one use case and render.

Exit codes: 0 ok, 1 operational failure, 2 usage or validation error, 3 refused.
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

import click
import typer
from typer.exceptions import Abort as TyperAbort
from typer.exceptions import Exit as TyperExit
from typer.exceptions import TyperException

from crisiscomms.cli import (
    audit_cmd,
    drill_cmd,
    incident_cmd,
    notify_cmd,
    playbooks_cmd,
    queue_cmd,
    runtime_cmd,
    state,
    status_cmd,
)
from crisiscomms.domain.errors import CrisisCommsError

app = typer.Typer(
    name="crisiscomms",
    help="Relay official crisis updates to our channels, exactly once, with an audit trail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(state.global_options)
incident_cmd.register(app)
runtime_cmd.register(app)
status_cmd.register(app)
drill_cmd.register(app)
app.add_typer(playbooks_cmd.app, name="playbooks")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(notify_cmd.app, name="notify")
app.add_typer(queue_cmd.app, name="queue")
app.add_typer(queue_cmd.window_app, name="window")
app.add_typer(queue_cmd.policy_app, name="policy")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``crisiscomms`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="crisiscomms", standalone_mode=False)
    except (click.exceptions.Exit, TyperExit) as exc:
        code = exc.exit_code
    except (click.exceptions.Abort, TyperAbort):
        print("crisiscomms: aborted", file=sys.stderr)
        code = 130
    except (click.ClickException, TyperException) as exc:
        # typer vendors click: usage errors (exit 2) come as either family.
        exc.show()  # type: ignore[union-attr]
        code = exc.exit_code
    except CrisisCommsError as exc:
        if debug:
            traceback.print_exc()
        print(f"crisiscomms: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"crisiscomms: internal error: {type(exc).__name__}: {exc} "
              "(run with --debug for the traceback)", file=sys.stderr)
        code = 1
    else:
        code = result if isinstance(result, int) else 0
    finally:
        state.close()
    sys.exit(code)
