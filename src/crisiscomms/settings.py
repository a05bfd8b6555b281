"""Settings from the environment, ``.env``, secret files and a YAML configuration file.

Precedence (highest first): init arguments, environment (``CRISISCOMMS_*``, nested with
``__``), ``.env``, secret files (``CRISISCOMMS_SECRETS_DIR``), then one YAML configuration
file: the one named by ``CRISISCOMMS_CONFIG``, or else the system-wide
``/etc/crisiscomms/config.yaml`` when it exists (``CRISISCOMMS_SYSTEM_CONFIG`` names another
path for it, as tests do), so the service and every operator's CLI open the same database and
playbooks. The YAML file is world-readable: it may not hold secrets (credentials come from the
environment, ``.env`` or secret files), and a key it does not know is an error naming the
file and line. Channel credentials are never read from playbooks: a channel names the
environment variables that hold them, and ``channel_secret`` reads them here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from crisiscomms.domain.errors import ConfigError

# The system-wide configuration file shared by the service and every operator's CLI.
# CRISISCOMMS_SYSTEM_CONFIG names another path (tests point it into a temporary folder);
# CRISISCOMMS_CONFIG names a file that is read instead of it.
SYSTEM_CONFIG = Path("/etc/crisiscomms/config.yaml")

# The newest Graph API version in Meta's changelog in Dec 2026 (v27.0, introduced 2026-11-04;
# developers.facebook.com/docs/graph-api/changelog). Same value as the Facebook adapter's
# DEFAULT_GRAPH_VERSION (a test keeps them equal).
FACEBOOK_GRAPH_VERSION = "v27.0"
_GRAPH_VERSION_RE = re.compile(r"v\d{1,3}\.\d{1,2}")


def default_home() -> Path:
    """The XDG data dir for crisiscomms."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "crisiscomms"


class PollingSettings(BaseModel):
    """How the watcher polls sources."""

    interval_seconds: Annotated[float, Field(ge=1)] = 60.0
    incident_interval_seconds: Annotated[float, Field(ge=1)] = 30.0
    jitter_seconds: Annotated[float, Field(ge=0)] = 5.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 20.0
    # A whole poll (every request of it: index, documents, pages) ends by this, however slowly
    # a server trickles its answer.
    deadline_seconds: Annotated[float, Field(gt=0)] = 60.0
    # A poll's lease is the deadline plus this: another watcher takes a source over only from a
    # watcher that died or stalled (a SIGKILLed watcher holds its sources this long).
    lease_margin_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_bytes: Annotated[int, Field(ge=1024)] = 5_000_000
    concurrency: Annotated[int, Field(ge=1)] = 20
    per_host: Annotated[int, Field(ge=1)] = 2
    failure_alert_after: Annotated[int, Field(ge=1)] = 5
    max_backoff_seconds: Annotated[float, Field(ge=1)] = 1800.0
    # Adaptive polling of an active incident's sources (crisiscomms.domain.pacing): this often,
    # unless a floor (the publisher's, the answer's max-age, a read budget) says later.
    crisis_interval_seconds: Annotated[float, Field(ge=1)] = 5.0
    # Publishers' documented floors by source kind, in a crisis: the Environment Agency's
    # flood data changes at most every 15 minutes and its warnings service asks for no more
    # than one request a minute; sources.yaml's min_interval_seconds adds to these.
    crisis_floor_seconds: dict[str, float] = {"ea-floods": 60.0}
    # The part of a platform's stated read budget that polling may spend (the rest is
    # headroom for retries and anything else on the same app or address).
    read_budget_share: Annotated[float, Field(gt=0, le=1)] = 0.8


# The shortest dispatch lease a deployment may set. A lease shorter than a send under load lets
# a second watcher take a live send over (fencing refuses the slower watcher's writes, but its
# request may already be out), so 5 s is the floor whatever the environment or the YAML file
# says. Only ``dispatch.test_only_short_leases`` (test suites and drills on the loopback
# simulator, where a send takes milliseconds) lowers it, to TEST_MIN_LEASE_SECONDS.
MIN_LEASE_SECONDS = 5.0
TEST_MIN_LEASE_SECONDS = 0.5


class DispatchSettings(BaseModel):
    """How the dispatcher sends items."""

    lease_seconds: Annotated[float, Field(gt=0)] = 120.0
    # Test suites and drills only (CRISISCOMMS_DISPATCH__TEST_ONLY_SHORT_LEASES=true): a lease
    # down to 0.5 s, so a killed watcher's items are taken over in seconds. Never in production.
    test_only_short_leases: bool = False
    batch: Annotated[int, Field(ge=1)] = 100
    max_attempts: Annotated[int, Field(ge=1)] = 8
    timeout_seconds: Annotated[float, Field(gt=0)] = 20.0
    retry_base_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_lookups: Annotated[int, Field(ge=1)] = 5
    # How long one send may go on retrying (its transient failures): with the request timeout
    # and a margin, when a send cut off by a crash can no longer land on the platform.
    send_deadline_seconds: Annotated[float, Field(gt=0)] = 30.0
    # ... and the margin after both: a request cut off by a crash that long ago is taken as
    # unable to land (at least 5 s; test suites and drills: test_only_short_leases).
    settle_margin_seconds: Annotated[float, Field(gt=0)] = 5.0

    @model_validator(mode="after")
    def _lease_floor(self) -> Self:
        risks = {"lease_seconds": "a shorter lease lets a second watcher take a live send over",
                 "settle_margin_seconds": "a shorter margin may take a send cut off by a crash "
                                          "as lost while it can still land, and send it again"}
        test = self.test_only_short_leases
        floor = TEST_MIN_LEASE_SECONDS if test else MIN_LEASE_SECONDS
        for name, risk in risks.items():
            value = getattr(self, name)
            if value >= floor:
                continue
            why = "with test_only_short_leases" if test else (
                f"in a deployment: {risk}; dispatch.test_only_short_leases (test suites and "
                f"drills only) allows down to {TEST_MIN_LEASE_SECONDS:g} s")
            raise ValueError(f"{name} must be at least {floor:g} s {why} (got {value:g})")
        return self


class NotifySettings(BaseModel):
    """How the watcher pages the on-call team (targets: ``CRISISCOMMS_NOTIFY_URLS``)."""

    # How often the watcher looks for something to page about.
    check_seconds: Annotated[float, Field(ge=1)] = 10.0
    # A condition still open (an item still waiting, a source still failing) is paged again
    # at most this often; a condition that clears and comes back within it is not paged anew.
    remind_minutes: Annotated[float, Field(ge=1)] = 30.0
    # At most this many pages per window; past that, one digest of the rest.
    max_per_window: Annotated[int, Field(ge=2)] = 6
    window_minutes: Annotated[float, Field(ge=1)] = 15.0
    # Connect/read timeout of each target (Apprise's cto/rto), so a dead target costs seconds.
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0
    # After a page no target took, try again this much later.
    retry_seconds: Annotated[float, Field(ge=1)] = 120.0
    # A source failing this many polls in a row pages (default: polling.failure_alert_after).
    source_failures: Annotated[int, Field(ge=1)] | None = None


class PushSettings(BaseModel):
    """Push connections beside polling (``crisiscomms.adapters.sources.push``). Push only
    rings the watcher's doorbell: the source is then polled at once; polling stays the
    fallback and the catch-up after any gap."""

    enabled: bool = True
    # Mastodon streaming: the instance of the reader account whose home timeline follows the
    # Mastodon source accounts (its token: CRISISCOMMS_MASTODON_STREAM_TOKEN, a secret).
    # Unset: Mastodon sources are polled only.
    mastodon_stream_base: str | None = None
    # Bluesky Jetstream (no account needed): the public instance by default; "" turns it off.
    jetstream_url: str | None = "wss://jetstream2.us-east.bsky.network/subscribe"
    # WebSub (optional): a public https URL the feeds' hubs can reach, routed to
    # ``websub_listen`` on this machine. Unset: feeds are polled only.
    websub_callback_url: str | None = None
    websub_listen: str = "127.0.0.1:8780"
    websub_lease_seconds: Annotated[int, Field(ge=300)] = 86_400
    # Reconnecting: backoff from base to cap; a connection up this long resets it.
    reconnect_base_seconds: Annotated[float, Field(gt=0)] = 1.0
    reconnect_cap_seconds: Annotated[float, Field(gt=0)] = 60.0
    stable_seconds: Annotated[float, Field(gt=0)] = 60.0
    # A stream silent this long (no event, no heartbeat) is taken as dead and reconnected.
    idle_timeout_seconds: Annotated[float, Field(gt=0)] = 90.0
    # A pushed post the poll does not see yet (an index lagging its stream) is polled again
    # this many times, waiting expect_retry_seconds, then twice that, ...
    expect_retries: Annotated[int, Field(ge=0)] = 3
    expect_retry_seconds: Annotated[float, Field(gt=0)] = 1.0


class Settings(BaseSettings):
    """All runtime settings of crisiscomms."""

    model_config = SettingsConfigDict(
        env_prefix="CRISISCOMMS_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    home: Path = Field(default_factory=default_home)
    database_url: str | None = None
    # Connections per watcher process when the database is PostgreSQL.
    database_pool_size: Annotated[int, Field(ge=1, le=100)] = 4
    playbooks_dir: Path = Path("playbooks")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        """``DEBUG`` and ``debug`` are the same level."""
        return value.strip().lower() if isinstance(value, str) else value
    log_format: Literal["auto", "json", "console"] = "auto"
    at: str | None = None
    worker_id: str | None = None
    dry_run: bool = False
    polling: PollingSettings = PollingSettings()
    dispatch: DispatchSettings = DispatchSettings()
    # Where a channel's base_url should be overridden (e.g. a simulator): {channel_id: url}.
    channel_base_urls: dict[str, str] = {}
    # Private/loopback feed hosts allowed for every source (the simulator sets this).
    allow_private_sources: bool = False
    # API roots for source adapters ("x", "mastodon", "bluesky"), e.g. a simulator.
    source_base_urls: dict[str, str] = {}
    # Key of the audit trail's HMAC-SHA256 chain (CRISISCOMMS_AUDIT_KEY). Without it the chain
    # is a plain SHA-256 chain: see the README for what that does and does not detect.
    audit_key: SecretStr | None = None
    # App-only bearer token for reading X sources.
    x_bearer_token: SecretStr | None = None
    # Read token of the Mastodon reader account whose home timeline is streamed (push).
    mastodon_stream_token: SecretStr | None = None
    push: PushSettings = PushSettings()
    # Apprise URLs of the on-call team's pages (comma, space or newline separated). A secret:
    # these URLs carry tokens and passwords.
    notify_urls: SecretStr | None = None
    notify: NotifySettings = NotifySettings()
    # Day of the month X's usage cap resets (the project's cap_reset_day in X's Usage API).
    x_cap_reset_day: Annotated[int, Field(ge=1, le=31)] = 1
    # Graph API version of every Facebook call. Versions expire about two years after the next
    # one is released, and then Graph silently serves the next oldest: move this on in time.
    facebook_graph_version: str = FACEBOOK_GRAPH_VERSION

    @field_validator("audit_key", "x_bearer_token", "notify_urls", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty secret (an empty credential file) is no secret: unset."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @field_validator("facebook_graph_version")
    @classmethod
    def _graph_version(cls, value: str) -> str:
        if not _GRAPH_VERSION_RE.fullmatch(value):
            raise ValueError(
                f"must look like {FACEBOOK_GRAPH_VERSION} (a Graph API version), got {value!r}"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings,
                                                     dotenv_settings]
        secrets_dir = os.environ.get("CRISISCOMMS_SECRETS_DIR")
        if secrets_dir:  # read when settings are built (systemd sets it to %d)
            if not Path(secrets_dir).is_dir():
                raise ConfigError(f"CRISISCOMMS_SECRETS_DIR: {secrets_dir} is not a directory")
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        config = config_file()
        if config is not None:
            sources.append(ConfigFileSource(settings_cls, config))
        return tuple(sources)

    def notify_url_list(self) -> list[SecretStr]:
        """The Apprise URLs, one ``SecretStr`` each (never logged)."""
        if self.notify_urls is None:
            return []
        return [SecretStr(u) for u in re.split(r"[\s,]+", self.notify_urls.get_secret_value())
                if u]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'crisiscomms.db'}"


def config_file() -> Path | None:
    """The YAML configuration file in force: ``CRISISCOMMS_CONFIG`` (which must exist), else
    the system-wide file when it exists."""
    named = os.environ.get("CRISISCOMMS_CONFIG")
    if named:
        path = Path(named)
        if not path.exists():
            raise ConfigError(f"CRISISCOMMS_CONFIG: {path} does not exist")
        return path
    system = Path(os.environ.get("CRISISCOMMS_SYSTEM_CONFIG") or SYSTEM_CONFIG)
    return system if system.exists() else None


_PATH_KEYS = ("home", "playbooks_dir")


class ConfigFileSource(PydanticBaseSettingsSource):
    """The YAML configuration file: known keys only, no secrets, each value checked here so
    that an error names the file, key and line. Relative paths are relative to the file."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.data = load_config_file(path, settings_cls.model_fields)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def load_config_file(path: Path, fields: dict[str, FieldInfo]) -> dict[str, Any]:
    """Read and check the configuration file, or a one-line ``ConfigError``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the configuration file: {why}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}: line 1: the configuration file must be a mapping of "
                          "settings (key: value)")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in root.value
             if isinstance(k, yaml.ScalarNode)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        where = f"{path}: line {lines.get(name, 1)}: key {name}"
        if name not in fields:
            known = ", ".join(sorted(f for f in fields if not _is_secret(fields[f])))
            raise ConfigError(f"{where}: unknown setting (known: {known})")
        if _is_secret(fields[name]):
            raise ConfigError(f"{where}: secrets are not accepted from the configuration file "
                              f"(it is world-readable); set CRISISCOMMS_{name.upper()} in the "
                              "environment, .env or a secret file (CRISISCOMMS_SECRETS_DIR)")
        if name == "database_url" and isinstance(value, str) and _has_password(value):
            raise ConfigError(f"{where}: a password is not accepted in the configuration file; "
                              "set it in CRISISCOMMS_DATABASE_URL (environment, .env or a secret "
                              "file) or use PGPASSWORD / ~/.pgpass")
        if name in _PATH_KEYS and isinstance(value, str) and value:
            value = str(path.parent / Path(value).expanduser())
        if name in ("log_level", "log_format") and isinstance(value, str):
            value = value.strip().lower()
        field = fields[name]
        try:
            kind: Any = (Annotated[(field.annotation, *field.metadata)]  # type: ignore[misc]
                         if field.metadata else field.annotation)
            TypeAdapter(kind).validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            sub = ".".join(str(p) for p in first["loc"])
            line = _line_of(root, [name, *(str(p) for p in first["loc"])])
            raise ConfigError(f"{path}: line {line}: key {name}{'.' + sub if sub else ''}: "
                              f"{first['msg']}") from None
        out[name] = value
    return out


def _line_of(node: Any, keys: list[str]) -> int:
    """The line of the deepest key of ``keys`` found in a composed YAML mapping."""
    import yaml

    line = int(node.start_mark.line) + 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value
                      if isinstance(k, yaml.ScalarNode) and str(k.value) == key), None)
        if match is None:
            break
        line, node = int(match[0].start_mark.line) + 1, match[1]
    return line


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation)


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def channel_secret(env_name: str) -> SecretStr | None:
    """Read one credential named by a channel from the environment, ``.env`` or a secret file."""
    value = os.environ.get(env_name)
    if value is None:
        secrets_dir = os.environ.get("CRISISCOMMS_SECRETS_DIR")
        if secrets_dir:
            path = Path(secrets_dir) / env_name
            if path.is_file():
                value = path.read_text(encoding="utf-8").strip()
    if value is None:
        value = _dotenv().get(env_name)
    return SecretStr(value) if value else None


def _dotenv() -> dict[str, str]:
    path = Path(".env")
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # python-dotenv comes with pydantic-settings

    return {k: v for k, v in dotenv_values(path).items() if v is not None}
