"""Secrets appear in no log line (any level, noisy HTTP loggers enabled), no report, no error
message, no ``status``/``audit``/``queue`` output, no file written and no database column.

Every credential env var named in playbooks/channels.yaml, and CRISISCOMMS_X_BEARER_TOKEN,
is set to a value containing MARK; a short drill runs in-process with those values (the
drill's own stand-in credentials are switched off), then the CLI reads the results, then
publishers are made to fail with 401s whose bodies echo the token.
"""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import requests
import responses
import respx
import yaml
from pydantic import SecretStr

from crisiscomms import logs
from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import PublishError
from crisiscomms.domain.models import ActionKind, ItemState, OutboxItem
from crisiscomms.simulator import World

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
MARK = "Zq9MARKsecretZq9"
NOISY = ("tweepy", "tweepy.client", "httpx", "httpcore", "httpcore.http11",
         "httpcore.connection", "urllib3", "urllib3.connectionpool", "requests_oauthlib",
         "oauthlib")


def credential_env_names() -> list[str]:
    catalog = load_catalog(PLAYBOOKS)
    names = {env for ch in catalog.channels.values() for env in ch.credentials.values()}
    return sorted(names | {"CRISISCOMMS_X_BEARER_TOKEN"})


def secret_values(x_me_id: str) -> dict[str, str]:
    out = {}
    for env in credential_env_names():
        value = f"{MARK}-{env.lower()}"
        if env == "CRISISCOMMS_X_ACCESS_TOKEN":
            value = f"{x_me_id}-{value}"  # tweepy reads our user id from the token's prefix
        out[env] = value
    return out


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logs at DEBUG into a buffer, with the HTTP libraries' loggers switched on too."""
    stream = io.StringIO()
    saved = {name: logging.getLogger(name).level for name in NOISY}
    monkeypatch.setattr(logs, "_secret_values", set())
    logs.configure("debug", "json", stream)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_crisiscomms", False):
                root.removeHandler(h)


def grep_tree(root: Path) -> list[str]:
    """Files under ``root`` whose bytes contain MARK (SQLite files checked by content)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and MARK.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def grep_database(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [line for line in conn.iterdump() if MARK in line]
    finally:
        conn.close()


SCENARIO = {
    "name": "secrets",
    "start": "2027-05-28T17:50:00+01:00",
    "end": "2027-05-28T19:10:00+01:00",
    "step_seconds": 60,
    "pin_x_ids": {"essex-police-x": "1000001", "eeast-x": "1000002", "ecfrs-x": "1000003"},
    "polling": {"interval_seconds": 300, "incident_interval_seconds": 60},
    "events": [
        {"at": "2027-05-28T17:55:00+01:00", "publish": {"source": "met-office-ee", "item": {
            "guid": "mo-1", "title": "Amber warning of rain affecting East of England",
            "description": "Heavy rain and flooding.", "link": "https://www.metoffice.gov.uk/w"}}},
        {"at": "2027-05-28T18:00:00+01:00", "activate": {
            "playbook": "flooding", "lead": "essex-police-x", "hashtags": ["#EssexFloods"],
            "operator": "s.okafor", "reason": "flooding in Chelmsford"}},
        {"at": "2027-05-28T18:05:00+01:00", "publish": {"source": "essex-police-x", "item": {
            "text": "Flooding on Springfield Road, Chelmsford. Avoid the area."}}},
        {"at": "2027-05-28T18:20:00+01:00", "publish": {"source": "ea-floods-essex", "item": {
            "floodAreaID": "054WAF0CHE", "description": "River Chelmer at Chelmsford",
            "message": "Flooding of property is expected.", "severity": "Flood warning",
            "severityLevel": 2, "timeRaised": "2027-05-28T18:15:00",
            "timeMessageChanged": "2027-05-28T18:15:00",
            "timeSeverityChanged": "2027-05-28T18:15:00"}}},
        {"at": "2027-05-28T18:30:00+01:00", "faults": {"burst_429": {"platform": "x",
                                                                      "minutes": 5}}},
        {"at": "2027-05-28T18:40:00+01:00", "publish": {"source": "eeast-x", "item": {
            "text": "Only call 999 for life-threatening emergencies."}}},
        {"at": "2027-05-28T19:00:00+01:00", "deactivate": {"operator": "s.okafor",
                                                           "reason": "stood down"}},
    ],
    "expectations": [{"kind": "no_duplicates"}, {"kind": "audit_chain_verifies"}],
}


def test_drill_and_cli_outputs_never_contain_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from crisiscomms.cli import main
    from crisiscomms.drill import runner

    x_me = World(FixedClock(datetime(2027, 5, 28, tzinfo=UTC))).accounts.x_me.id
    secrets = secret_values(x_me)
    for env, value in secrets.items():
        monkeypatch.setenv(env, value)
    # Use OUR credentials, not the drill's stand-ins.
    from crisiscomms.bootstrap import EnvCredentials

    monkeypatch.setattr(runner, "drill_credentials", lambda *_a, **_k: EnvCredentials())
    real_secret = runner.SecretStr
    monkeypatch.setattr(runner, "SecretStr", lambda v: real_secret(
        secrets["CRISISCOMMS_X_BEARER_TOKEN"] if v == "drill-bearer-token" else v))

    data = dict(SCENARIO, playbooks_dir=str(PLAYBOOKS))
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    home = tmp_path / "home"
    result = runner.run_drill(path, home=home)
    assert result.ok, [o for o in result.outcomes if not o.ok]
    assert result.published, "the drill published nothing: the test would prove nothing"
    # Real publishers ran with the marked credentials (no dry-run stand-ins).
    assert "credentials_missing" not in log_stream.getvalue()

    # The CLI over the drill's database, at debug level.
    monkeypatch.setenv("CRISISCOMMS_DATABASE_URL", f"sqlite:///{home / 'drill.db'}")
    monkeypatch.setenv("CRISISCOMMS_PLAYBOOKS_DIR", str(PLAYBOOKS))
    monkeypatch.setenv("CRISISCOMMS_HOME", str(home))
    outputs = []
    for argv in (["status", "--json"], ["status"], ["report", "--last"],
                 ["report", "--last", "--format", "json"], ["audit", "verify"],
                 ["audit", "log", "--json"], ["queue", "list"],
                 ["report", "--last", "--format", "html", "-o", str(tmp_path / "r.html")],
                 ["incident", "deactivate", "--reason", "x"],  # an error path (none active)
                 ["playbooks", "validate"]):
        with pytest.raises(SystemExit):
            main(["--log-level", "debug", "--log-format", "json", *argv])
        out, err = capsys.readouterr()
        outputs.append((argv, out + err))
    assert any('"crisis_flag"' in o for a, o in outputs if a == ["status", "--json"])

    leaks = [a for a, o in outputs if MARK in o]
    assert not leaks, f"secret in CLI output of {leaks}"
    assert MARK not in log_stream.getvalue()
    assert log_stream.getvalue().count("\n") > 50, "logging was not captured"
    assert not grep_tree(home), grep_tree(home)
    assert not grep_tree(tmp_path / "r.html") if (tmp_path / "r.html").is_file() else True
    assert not grep_database(home / "drill.db")


# ----------------------------------------------------------------- 401s that echo the token


def _item() -> OutboxItem:
    return OutboxItem(id=1, dedupe_key="k1", channel_id="c", action=ActionKind.POST,
                      text="Flood warning https://example.gov.uk/w #EssexFloods",
                      state=ItemState.SENDING, created_at=datetime(2027, 5, 28, tzinfo=UTC),
                      url="https://example.gov.uk/w")


def _echo(request: httpx.Request) -> httpx.Response:
    echoed = f"{request.headers.get('authorization', '')} {request.url} {request.content!r}"
    return httpx.Response(401, json={"error": f"invalid token {echoed}",
                                     "error_description": f"token {MARK} rejected"})


@pytest.mark.parametrize("channel_id", ["facebook", "mastodon", "bluesky"])
def test_httpx_publisher_401_echoing_the_token(
    channel_id: str, monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO
) -> None:
    from crisiscomms.adapters.publishers import build_publisher

    catalog = load_catalog(PLAYBOOKS)
    channel = catalog.channels[channel_id].model_copy(
        update={"base_url": f"https://{channel_id}.example.gov.uk"})
    creds = {role: SecretStr(f"{MARK}-{role}") for role in channel.credentials}
    logs.register_secrets(creds.values())
    with respx.mock(assert_all_mocked=True) as router, httpx.Client() as client:
        router.route().mock(side_effect=_echo)
        pub = build_publisher(channel, creds, clock=FixedClock(datetime(2027, 5, 28, tzinfo=UTC)),
                              http_client=client)
        try:
            with pytest.raises(PublishError) as info:
                pub.publish(_item(), None)
        finally:
            pub.close()
    assert MARK not in str(info.value) and MARK not in repr(info.value.args)
    assert MARK not in log_stream.getvalue()


def test_x_publisher_401_echoing_the_token(log_stream: io.StringIO) -> None:
    from crisiscomms.adapters.publishers import build_publisher

    catalog = load_catalog(PLAYBOOKS)
    channel = catalog.channels["x"].model_copy(update={"base_url": "https://x.example.gov.uk"})
    creds = {role: SecretStr(f"{MARK}-{role}") for role in channel.credentials}
    creds["access_token"] = SecretStr(f"42-{MARK}-access")
    logs.register_secrets(creds.values())

    def echo(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = (f'{{"title":"Unauthorized","detail":"{request.headers.get("Authorization")}'
                f' {MARK}","status":401}}')
        return 401, {"content-type": "application/json"}, body

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        import re

        rsps.add_callback(responses.POST, re.compile(r".*"), callback=echo)
        rsps.add_callback(responses.GET, re.compile(r".*"), callback=echo)
        pub = build_publisher(channel, creds, clock=FixedClock(datetime(2027, 5, 28, tzinfo=UTC)))
        try:
            with pytest.raises(PublishError) as info:
                pub.publish(_item(), None)
        finally:
            pub.close()
    assert MARK not in str(info.value)
    assert MARK not in log_stream.getvalue()


def test_source_error_messages_never_carry_a_query_string_key(
    log_stream: io.StringIO,
) -> None:
    """A feed URL with an API key in its query: errors name host and path only, and the
    project's logs do not carry it either *as configured* (httpx capped at WARNING).

    Known gap (reported): if an operator lowers the ``httpx`` logger to INFO, httpx's own
    "HTTP Request: GET <full URL>" line carries the query string; ``_RedactingFilter`` only
    masks registered secrets and bearer tokens, not URL query values.
    """
    import asyncio

    logging.getLogger("httpx").setLevel(logging.WARNING)  # as logs.configure leaves it

    from crisiscomms.adapters.sources.http import HttpFetcher, make_async_client
    from crisiscomms.domain.errors import SourceError
    from tests.sources.sources_helpers import FakeResolver

    async def run() -> str:
        async with make_async_client(timeout=5, wire=False) as client:
            with respx.mock() as router:
                router.route().mock(return_value=httpx.Response(401, text=f"bad key {MARK}"))
                fetcher = HttpFetcher(client, resolver=FakeResolver())
                try:
                    await fetcher.fetch(f"https://api.example.gov.uk/feed?api_key={MARK}",
                                        source_id="keyed")
                except SourceError as exc:
                    return str(exc)
        return ""

    message = asyncio.run(run())
    assert message and "keyed" in message and MARK not in message
    assert MARK not in log_stream.getvalue()
