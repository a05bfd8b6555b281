"""Settings from the environment, ``.env``, secret files and an optional YAML file.

Precedence (highest first): init arguments, environment (``CRISISCOMMS_*``, nested with
``__``), ``.env``, secret files (``CRISISCOMMS_SECRETS_DIR``), the YAML file named by
``CRISISCOMMS_CONFIG``. Channel credentials are never read from playbooks: a channel names the
environment variables that hold them, and ``channel_secret`` reads them here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

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
    max_bytes: Annotated[int, Field(ge=1024)] = 5_000_000
    concurrency: Annotated[int, Field(ge=1)] = 20
    per_host: Annotated[int, Field(ge=1)] = 2
    failure_alert_after: Annotated[int, Field(ge=1)] = 5
    max_backoff_seconds: Annotated[float, Field(ge=1)] = 1800.0


class DispatchSettings(BaseModel):
    """How the dispatcher sends items."""

    lease_seconds: Annotated[float, Field(ge=5)] = 120.0
    batch: Annotated[int, Field(ge=1)] = 100
    max_attempts: Annotated[int, Field(ge=1)] = 8
    timeout_seconds: Annotated[float, Field(gt=0)] = 20.0
    retry_base_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_lookups: Annotated[int, Field(ge=1)] = 5


class Settings(BaseSettings):
    """All runtime settings of crisiscomms."""

    model_config = SettingsConfigDict(
        env_prefix="CRISISCOMMS_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        secrets_dir=os.environ.get("CRISISCOMMS_SECRETS_DIR") or None,
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
    # Day of the month X's usage cap resets (the project's cap_reset_day in X's Usage API).
    x_cap_reset_day: Annotated[int, Field(ge=1, le=31)] = 1
    # Graph API version of every Facebook call. Versions expire about two years after the next
    # one is released, and then Graph silently serves the next oldest: move this on in time.
    facebook_graph_version: str = FACEBOOK_GRAPH_VERSION

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
        sources: list[PydanticBaseSettingsSource] = [
            init_settings, env_settings, dotenv_settings, file_secret_settings]
        config_file = os.environ.get("CRISISCOMMS_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'crisiscomms.db'}"


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
