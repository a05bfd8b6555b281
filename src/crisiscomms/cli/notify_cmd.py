"""notify: check the on-call team's page targets (CRISISCOMMS_NOTIFY_URLS) by hand."""

from __future__ import annotations

import socket
from datetime import tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from crisiscomms.cli.state import echo_json, get_app
from crisiscomms.domain.errors import ConfigError, CrisisCommsError

app = typer.Typer(help="Page targets of the on-call team (CRISISCOMMS_NOTIFY_URLS).",
                  no_args_is_help=True)


class NotifyFailedError(CrisisCommsError):
    """A test page did not reach every target (exit 1)."""


@app.command("test")
def test_(
    message: Annotated[str, typer.Option(
        "--message", help="Text of the test page.")] = "test page: no action needed",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send one test page to every target now and say which took it (targets are named by
    number and kind only: the URLs are secrets). Exit 1 if any target failed."""
    from crisiscomms.adapters.notify import AppriseNotifier
    from crisiscomms.services.notices import send_test_page

    a = get_app()
    urls = a.settings.notify_url_list()
    if not urls:
        raise ConfigError("CRISISCOMMS_NOTIFY_URLS is not set (environment, .env or a secret "
                          "file in CRISISCOMMS_SECRETS_DIR): there is no target to test")
    notifier = AppriseNotifier(urls, timeout=a.settings.notify.timeout_seconds)
    who = f"{_sender(a)}@{socket.gethostname()}"
    outcomes = send_test_page(notifier, _tz(a), a.clock.now(), who, message)
    if json_out:
        echo_json([{"target": label, "delivered": ok, "error": why or None}
                   for label, ok, why in outcomes])
    else:
        for label, ok, why in outcomes:
            typer.echo(f"target {label}: " + ("delivered" if ok else f"FAILED: {why}"))
    failed = [label for label, ok, _ in outcomes if not ok]
    if failed:
        raise NotifyFailedError(f"the test page did not reach target(s) {', '.join(failed)}")


def _sender(a: object) -> str:
    """The real OS user (never ``$USER``, which anyone can set); ``SUDO_USER`` from root only
    when the policy trusts it (and the playbooks can be read)."""
    from crisiscomms.bootstrap import default_operator

    try:
        trust = bool(a.catalog.policy.trust_sudo_user)  # type: ignore[attr-defined]
    except CrisisCommsError:
        trust = False
    return default_operator(trust_sudo_user=trust)


def _tz(a: object) -> tzinfo:
    """The policy's zone for the time in the page (London if the playbooks cannot be read:
    testing the pager must not depend on them)."""
    try:
        return a.catalog.policy.tz  # type: ignore[attr-defined,no-any-return]
    except CrisisCommsError:
        return ZoneInfo("Europe/London")
