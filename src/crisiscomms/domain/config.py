"""The configuration schema: what the YAML files in ``playbooks/`` may say (pydantic).

Four kinds of file:

* ``policy.yaml``   the normal operating policy (staffed hours, caps, operators)
* ``sources.yaml``  the catalogue of official sources we may amplify
* ``channels.yaml`` our own accounts (credentials are *names of env vars*, never values)
* any other ``*.yaml`` directly in the folder: an incident playbook

Every error names the file, the key path and what is wrong, on one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crisiscomms.domain.errors import ConfigError, NotFoundError, PlaybookError, RefusedError
from crisiscomms.domain.models import (
    CERTAINTY_RANK,
    SEVERITY_RANK,
    URGENCY_RANK,
    ActionKind,
    Platform,
    SourceKind,
)

HASHTAG_RE = re.compile(r"^#[A-Za-z][A-Za-z0-9_]{0,98}$")
ID_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
RESERVED_FILES = {"policy.yaml", "sources.yaml", "channels.yaml"}

# Which actions make sense on which platform.
ACTIONS_BY_PLATFORM: dict[Platform, frozenset[ActionKind]] = {
    Platform.X: frozenset({ActionKind.RETWEET, ActionKind.QUOTE, ActionKind.POST}),
    Platform.FACEBOOK: frozenset({ActionKind.POST}),
    Platform.MASTODON: frozenset({ActionKind.BOOST, ActionKind.POST}),
    Platform.BLUESKY: frozenset({ActionKind.REPOST, ActionKind.QUOTE, ActionKind.POST}),
}


def normalise_hashtag(tag: str) -> str:
    """Return ``#Tag`` or raise ValueError naming what is wrong."""
    value = tag.strip()
    if not value.startswith("#"):
        value = "#" + value
    if not HASHTAG_RE.match(value):
        raise ValueError(
            f"invalid hashtag {tag!r}: a letter then letters, digits or _ (at most 99)"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaffedHours(_Model):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = [
        "mon", "tue", "wed", "thu", "fri"]
    start: time = time(8, 0)
    end: time = time(17, 0)

    @model_validator(mode="after")
    def _start_before_end(self) -> StaffedHours:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        return frozenset(names.index(d) for d in self.days)


class BankHolidays(_Model):
    country: str = "GB"
    subdiv: str | None = "ENG"


class PolicyConfig(_Model):
    """The team's normal operating policy (social media policy sections 7-8)."""

    timezone: str = "Europe/London"
    staffed_hours: StaffedHours = StaffedHours()
    bank_holidays: BankHolidays = BankHolidays()
    closure_days: list[date] = []
    week: Literal["calendar", "rolling"] = "calendar"
    weekly_caps: dict[str, Annotated[int, Field(ge=0)]] = {}
    pacing: bool = True
    normal_approval: Literal["auto", "manual"] = "manual"
    operators: list[str] = []
    # Who may act for whom with ``--operator``: ``{bob: [alice]}`` lets the OS user bob act for
    # alice (audited as "bob acting for alice"); nobody else may name another operator.
    delegates: dict[str, list[str]] = {}
    # Under sudo from root, take SUDO_USER as the operator (only root can set it honestly).
    trust_sudo_user: bool = False
    # Named on-call roles and their members, e.g. ``{oncall-lead: [carol]}``.
    roles: dict[str, list[str]] = {}
    # Roles whose members may approve text they wrote themselves (audited as self-approval).
    self_approval: list[str] = []
    # What to do with updates of ``watch: always`` sources outside a crisis.
    normal_channels: list[ChannelAction] = []

    @model_validator(mode="after")
    def _known_roles(self) -> PolicyConfig:
        unknown = [r for r in self.self_approval if r not in self.roles]
        if unknown:
            raise ValueError(f"self_approval: unknown role {unknown[0]!r} (define it under "
                             f"roles; defined: {', '.join(sorted(self.roles)) or 'none'})")
        return self

    def members(self, role: str) -> frozenset[str]:
        return frozenset(self.roles.get(role, ()))

    def may_self_approve(self, person: str) -> str | None:
        """The self-approval role ``person`` holds, if any."""
        return next((r for r in self.self_approval if person in self.members(r)), None)

    def may_act_for(self, delegate: str, person: str) -> bool:
        return person in self.delegates.get(delegate, ())

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class SourceConfig(_Model):
    """One official source in the catalogue."""

    id: Annotated[str, Field(pattern=ID_RE)]
    agency: str
    kind: SourceKind
    watch: Literal["crisis", "always"] = "crisis"
    handle: str | None = None
    x_user_id: str | None = None
    url: str | None = None
    account: str | None = None
    county: str | None = None
    interval_seconds: Annotated[int, Field(ge=5)] | None = None
    min_interval_seconds: Annotated[int, Field(ge=0)] = 0
    allow_private_network: bool = False
    trust_bozo: bool = True
    # Mastodon only: the NAME of the env var holding a read token, for instances that refuse
    # unauthenticated reads (401). Read like channels.yaml credentials, never written here.
    token_env: str | None = None
    description: str = ""

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not ENV_NAME_RE.match(str(v)):
            raise ValueError("token_env must be the name of an environment variable "
                             "(A-Z, 0-9, _), never the token itself")
        return str(v)

    @field_validator("x_user_id")
    @classmethod
    def _numeric(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not str(v).isdigit():
            raise ValueError("x_user_id must be the numeric X user id, not a handle")
        return str(v)

    @model_validator(mode="after")
    def _locator(self) -> SourceConfig:
        if self.token_env and self.kind is not SourceKind.MASTODON:
            raise ValueError("token_env is only for mastodon sources")
        if self.kind is SourceKind.X:
            if not self.handle:
                raise ValueError("an x source needs 'handle' (and a pinned 'x_user_id')")
        elif self.kind in (SourceKind.MASTODON, SourceKind.BLUESKY):
            if not (self.account or self.url):
                raise ValueError(f"a {self.kind} source needs 'account' (the account URL)")
        elif not self.url:
            raise ValueError(f"a {self.kind} source needs 'url'")
        return self

    @property
    def pinned(self) -> bool:
        return self.kind is not SourceKind.X or bool(self.x_user_id)


class ChannelConfig(_Model):
    """One of our own accounts. ``credentials`` maps a role to an env var *name*."""

    id: Annotated[str, Field(pattern=ID_RE)]
    platform: Platform
    account: str
    credentials: dict[str, Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]*$")]] = {}
    base_url: str | None = None
    description: str = ""


class Filters(_Model):
    min_severity: str | None = None
    min_urgency: str | None = None
    min_certainty: str | None = None
    areas_include: list[str] = []
    areas_exclude: list[str] = []
    keywords_include: list[str] = []
    keywords_exclude: list[str] = []

    @field_validator("min_severity")
    @classmethod
    def _sev(cls, v: str | None) -> str | None:
        return _rank_value(v, SEVERITY_RANK, "severity")

    @field_validator("min_urgency")
    @classmethod
    def _urg(cls, v: str | None) -> str | None:
        return _rank_value(v, URGENCY_RANK, "urgency")

    @field_validator("min_certainty")
    @classmethod
    def _cer(cls, v: str | None) -> str | None:
        return _rank_value(v, CERTAINTY_RANK, "certainty")


def _rank_value(v: str | None, ranks: dict[str, int], what: str) -> str | None:
    if v is None:
        return None
    if v.lower() not in ranks:
        raise ValueError(f"unknown CAP {what} {v!r}; one of {', '.join(ranks)}")
    return v.capitalize()


class PlaybookSource(_Model):
    source: str
    filters: Filters = Filters()
    approval: Literal["auto", "manual"] | None = None
    requeue_edits: bool | None = None


class ChannelAction(_Model):
    channel: str
    action: ActionKind
    template: str = "{title} {url} {hashtags}"
    hourly_ceiling: Annotated[int, Field(ge=1)] | None = None
    native_fallback: ActionKind = ActionKind.POST

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        allowed = {"title", "text", "url", "hashtags", "agency", "source", "handle", "severity",
                   "area", "event"}
        for name in re.findall(r"{([^{}]*)}", v):
            if name not in allowed:
                raise ValueError(
                    f"unknown template field {{{name}}}; allowed: {', '.join(sorted(allowed))}"
                )
        return v


class Approval(_Model):
    lead: Literal["auto", "manual"] = "auto"
    others: Literal["auto", "manual"] = "auto"


class Playbook(_Model):
    """An incident playbook."""

    name: Annotated[str, Field(pattern=ID_RE)]
    description: str = ""
    hashtags: list[str] = []
    default_lead: str
    allowed_leads: list[str] = []
    sources: list[PlaybookSource]
    channels: list[ChannelAction]
    approval: Approval = Approval()
    hourly_ceiling: Annotated[int, Field(ge=1)] = 20
    backfill_minutes: Annotated[int, Field(ge=0)] = 120
    # Relayed text keeps the sources' own hashtags ("#Covid19") only if this says so; ours
    # (the incident's) are always added.
    keep_source_hashtags: bool = False
    activation_message: str | None = None
    stand_down_message: str | None = None

    @field_validator("hashtags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return [normalise_hashtag(t) for t in v]

    @model_validator(mode="after")
    def _consistent(self) -> Playbook:
        ids = [s.source for s in self.sources]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"source listed twice: {', '.join(dupes)}")
        if self.default_lead not in ids:
            raise ValueError(f"default_lead {self.default_lead!r} is not one of its sources")
        for lead in self.allowed_leads:
            if lead not in ids:
                raise ValueError(f"allowed_leads names {lead!r}, which is not one of its sources")
        pairs = [(c.channel, c.action) for c in self.channels]
        if len(set(pairs)) != len(pairs):
            raise ValueError("the same channel action is listed twice")
        return self

    @property
    def leads(self) -> list[str]:
        return sorted({self.default_lead, *self.allowed_leads})

    def source(self, source_id: str) -> PlaybookSource | None:
        for s in self.sources:
            if s.source == source_id:
                return s
        return None


PolicyConfig.model_rebuild()


class SourcesFile(_Model):
    sources: list[SourceConfig]


class ChannelsFile(_Model):
    channels: list[ChannelConfig]


@dataclass(frozen=True)
class Catalog:
    """Everything in a playbooks folder, validated together."""

    directory: Path
    policy: PolicyConfig
    sources: dict[str, SourceConfig]
    channels: dict[str, ChannelConfig]
    playbooks: dict[str, Playbook]
    files: dict[str, Path] = field(default_factory=dict)

    def playbook(self, name: str) -> Playbook:
        name = name.removesuffix(".yaml")
        try:
            return self.playbooks[name]
        except KeyError:
            known = ", ".join(sorted(self.playbooks)) or "none"
            raise NotFoundError(f"unknown playbook {name!r} (known: {known})") from None

    def warnings(self) -> list[str]:
        """Problems that do not make the catalogue invalid but block some actions."""
        out = []
        for s in self.sources.values():
            if not s.pinned:
                out.append(
                    f"{self.files.get('sources', 'sources.yaml')}: sources.{s.id}.x_user_id: "
                    f"missing: X source @{s.handle} has no pinned numeric user id; "
                    "playbooks that amplify it cannot be activated"
                )
        return out

    def check_activatable(self, playbook: Playbook) -> None:
        """Refuse a playbook that would amplify an X source without a pinned numeric id."""
        missing = [
            f"{s.source} (@{self.sources[s.source].handle})"
            for s in playbook.sources
            if not self.sources[s.source].pinned
        ]
        if missing:
            raise RefusedError(
                f"playbook {playbook.name!r} amplifies X sources without a pinned numeric "
                f"x_user_id in sources.yaml: {', '.join(missing)}; handles can be re-registered, "
                "so pin the ids (or remove those sources) before activating"
            )


def cross_check(
    path: Path,
    pb: Playbook,
    sources: dict[str, SourceConfig],
    channels: dict[str, ChannelConfig],
) -> None:
    for s in pb.sources:
        if s.source not in sources:
            raise PlaybookError(
                f"{path}: sources.{s.source}: unknown source id (not in sources.yaml)")
    check_actions(path, "channels", pb.channels, channels, PlaybookError)


def check_actions(path: Path, key: str, actions: list[ChannelAction],
                   channels: dict[str, ChannelConfig], error: type[ConfigError]) -> None:
    for c in actions:
        ch = channels.get(c.channel)
        if ch is None:
            raise error(f"{path}: {key}.{c.channel}: unknown channel id (not in channels.yaml)")
        if c.action not in ACTIONS_BY_PLATFORM[ch.platform]:
            ok = ", ".join(sorted(ACTIONS_BY_PLATFORM[ch.platform]))
            raise error(f"{path}: {key}.{c.channel}.action: {c.action} is not possible on "
                        f"{ch.platform} (use {ok})")
