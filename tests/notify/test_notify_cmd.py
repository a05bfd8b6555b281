"""`crisiscomms notify test`: one page to every target, each named by number and kind."""

from __future__ import annotations

import json

import pytest
import typer

from crisiscomms.cli import notify_cmd, state
from crisiscomms.domain.errors import ConfigError
from tests.notify.receivers import closed_port, json_receiver


def run(*args: str) -> None:
    root = typer.Typer()
    root.callback()(state.global_options)
    root.add_typer(notify_cmd.app, name="notify")
    try:
        root(args=list(args), prog_name="crisiscomms", standalone_mode=False)
    finally:
        state.close()


def test_notify_test_reports_each_target(home, monkeypatch, capsys):
    with json_receiver() as rx:
        down = f"json://127.0.0.1:{closed_port()}/secret-path-token-42"
        monkeypatch.setenv("CRISISCOMMS_NOTIFY_URLS", f"{rx.url('/ok')} {down}")
        with pytest.raises(notify_cmd.NotifyFailedError, match=r"target\(s\) 2 \(json\)"):
            run("notify", "test", "--message", "checking the pager")
        out = capsys.readouterr().out
        assert "target 1 (json): delivered" in out
        assert "target 2 (json): FAILED" in out
        assert "secret-path-token-42" not in out
        post = rx.wait_for(1)[0]["body"]
    assert post["title"] == "[INFO] crisiscomms: test page"
    assert "checking the pager" in post["message"]
    assert "GMT" in post["message"] or "BST" in post["message"]


def test_notify_test_json_and_all_delivered(home, monkeypatch, capsys):
    with json_receiver() as rx:
        monkeypatch.setenv("CRISISCOMMS_NOTIFY_URLS", rx.url())
        run("notify", "test", "--json")
        data = json.loads(capsys.readouterr().out)
    assert data == [{"target": "1 (json)", "delivered": True, "error": None}]


def test_notify_test_without_targets_is_a_usage_error(home, monkeypatch):
    monkeypatch.delenv("CRISISCOMMS_NOTIFY_URLS", raising=False)
    with pytest.raises(ConfigError, match="CRISISCOMMS_NOTIFY_URLS is not set"):
        run("notify", "test")


def test_the_test_page_names_the_real_os_user_not_dollar_user(home, monkeypatch):
    """``$USER``/``$LOGNAME`` are anyone's to set: the page names the real OS user."""
    from crisiscomms.bootstrap import default_operator

    with json_receiver() as rx:
        monkeypatch.setenv("CRISISCOMMS_NOTIFY_URLS", rx.url("/ok"))
        monkeypatch.setenv("USER", "mallory-not-me")
        monkeypatch.setenv("LOGNAME", "mallory-not-me")
        run("notify", "test")
        message = rx.wait_for(1)[0]["body"]["message"]
    assert "mallory-not-me" not in message
    assert f"sent by {default_operator()}@" in message
