"""Settings sources, help on every command, and secrets never reaching any output."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from pydantic import SecretStr

from crisiscomms.cli import app as cli_app
from crisiscomms.logs import REDACTED, configure, register_secrets
from crisiscomms.settings import Settings, channel_secret

MARKER = "S3CRET-MARKER-7f3a9"


def test_env_prefix_nested_delimiter_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("polling:\n  interval_seconds: 90\nlog_level: debug\n")
    monkeypatch.setenv("CRISISCOMMS_CONFIG", str(cfg))
    monkeypatch.setenv("CRISISCOMMS_POLLING__TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("CRISISCOMMS_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("CRISISCOMMS_LOG_LEVEL", "warning")
    s = Settings()
    assert s.polling.interval_seconds == 90  # from YAML
    assert s.polling.timeout_seconds == 7  # from env, nested
    assert s.log_level == "warning"  # env beats YAML
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'h' / 'crisiscomms.db'}"


def test_dotenv_and_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CRISISCOMMS_X_ACCESS_TOKEN=from-dotenv\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "CRISISCOMMS_MASTODON_TOKEN").write_text("from-file\n")
    monkeypatch.setenv("CRISISCOMMS_SECRETS_DIR", str(secrets))
    monkeypatch.delenv("CRISISCOMMS_X_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("CRISISCOMMS_MASTODON_TOKEN", raising=False)
    x = channel_secret("CRISISCOMMS_X_ACCESS_TOKEN")
    m = channel_secret("CRISISCOMMS_MASTODON_TOKEN")
    assert isinstance(x, SecretStr) and x.get_secret_value() == "from-dotenv"
    assert m is not None and m.get_secret_value() == "from-file"
    assert "from-file" not in repr(m)
    assert channel_secret("CRISISCOMMS_NOPE") is None


def _commands(group, prefix: tuple[str, ...] = ()):
    yield prefix, group
    if hasattr(group, "commands"):  # typer vendors click: duck-type the group
        for name, cmd in group.commands.items():
            yield from _commands(cmd, (*prefix, name))


def test_every_command_has_help():
    root = typer.main.get_command(cli_app)
    seen = 0
    for path, cmd in _commands(root):
        assert (cmd.help or "").strip(), f"no help for {' '.join(path) or 'crisiscomms'}"
        for param in cmd.params:
            if getattr(param, "param_type_name", "") == "option" and param.name != "help":
                assert (param.help or "").strip(), f"no help for {' '.join(path)} {param.name}"
        seen += 1
    assert seen > 15


def test_help_exits_zero(cli):
    r = cli("--help")
    assert r.code == 0 and "activate" in r.out
    r = cli("queue", "approve", "--help")
    assert r.code == 0 and "--operator" in r.out
    r = cli("no-such-command")
    assert r.code == 2


def test_secrets_never_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path):
    """Every secret set to a marker; commands at DEBUG with the HTTP loggers enabled."""
    for name in ("CRISISCOMMS_X_CONSUMER_KEY", "CRISISCOMMS_X_CONSUMER_SECRET",
                 "CRISISCOMMS_X_ACCESS_TOKEN", "CRISISCOMMS_X_ACCESS_TOKEN_SECRET",
                 "CRISISCOMMS_FACEBOOK_PAGE_TOKEN", "CRISISCOMMS_MASTODON_TOKEN",
                 "CRISISCOMMS_BLUESKY_APP_PASSWORD"):
        monkeypatch.setenv(name, MARKER)
    env = {**dict(__import__("os").environ), "CRISISCOMMS_LOG_LEVEL": "debug",
           "CRISISCOMMS_LOG_FORMAT": "json"}
    outputs = []
    for args in (["status", "--json"], ["activate", "flooding", "--reason", "t"],
                 ["status"], ["audit", "log", "--json"]):
        p = subprocess.run([sys.executable, "-m", "crisiscomms", *args], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        outputs.append(p.stdout + p.stderr)
    # The stdlib loggers of tweepy, httpx and httpcore at DEBUG, fed a secret directly.
    stream = __import__("io").StringIO()
    configure("debug", "json", stream)
    register_secrets([SecretStr(MARKER)])
    for name in ("tweepy.client", "httpx", "httpcore", "urllib3"):
        logging.getLogger(name).debug("headers: Authorization: Bearer %s", MARKER)
        logging.getLogger(name).warning("sending oauth_token=%s", MARKER)
    import structlog

    structlog.get_logger("t").info("publish.debug", token=MARKER, note=f"x {MARKER} y",
                                   creds={"page_token": SecretStr(MARKER)})
    outputs.append(stream.getvalue())
    text = "\n".join(outputs)
    assert MARKER not in text
    assert REDACTED in stream.getvalue()
    json.loads(stream.getvalue().splitlines()[-1])


def test_query_string_credentials_are_masked():
    from crisiscomms.logs import redact_text

    text = redact_text("GET https://graph.example/feed?access_token=abc123&limit=5 api_key=zzz9")
    assert "abc123" not in text and "zzz9" not in text and "limit=5" in text
