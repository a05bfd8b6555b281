"""Playbooks: the YAML files in ``playbooks/``, validated with pydantic.

Four kinds of file:

* ``policy.yaml``   the normal operating policy (staffed hours, caps, operators)
* ``sources.yaml``  the catalogue of official sources we may amplify
* ``channels.yaml`` our own accounts (credentials are *names of env vars*, never values)
* any other ``*.yaml`` directly in the folder: an incident playbook

Every error names the file, the key path and what is wrong, on one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crisiscomms.errors import ConfigError, NotFoundError, PlaybookError, RefusedError
from crisiscomms.models import (
    CERTAINTY_RANK,
    SEVERITY_RANK,
    URGENCY_RANK,
    ActionKind,
    Platform,
    SourceKind,
)

M = TypeVar("M", bound=BaseModel)

HASHTAG_RE = re.compile(r"^#[A-Za-z][A-Za-z0-9_]{0,98}$")
ID_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
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
    # What to do with updates of ``watch: always`` sources outside a crisis.
    normal_channels: list[ChannelAction] = []

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
    description: str = ""

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


class _SourcesFile(_Model):
    sources: list[SourceConfig]


class _ChannelsFile(_Model):
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


def _no_duplicate_keys_loader() -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


_LOADER = _no_duplicate_keys_loader()


def load_yaml(path: Path) -> Any:
    """Read one YAML file strictly (no duplicate keys); errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _identity(node: Any) -> Any:
    if not isinstance(node, dict):
        return None
    return node.get("id") or node.get("source") or node.get("channel")


def format_validation_error(path: Path, exc: ValidationError, data: Any = None) -> str:
    """One line per problem: ``file: key.path: message`` (ids used where lists have them)."""
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        node = data
        for loc in err["loc"]:
            if isinstance(loc, int) and isinstance(node, list) and loc < len(node):
                siblings = node
                node = node[loc]
                ident = _identity(node)
                # Name a list item by its id only when that id is unique in the list.
                unique = ident is not None and \
                    [_identity(x) for x in siblings].count(ident) == 1
                parts.append(str(ident) if unique else f"[{loc}]")
                continue
            text = str(loc)
            # A key is user input: keep the message on one line whatever it contains.
            parts.append(repr(text) if not text.isprintable() else text)
            node = node.get(loc) if isinstance(node, dict) else None
        key = ".".join(parts).replace(".[", "[") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {key}: {' '.join(msg.split())}")
    return "; ".join(lines)


def parse_model(model: type[M], path: Path, data: Any, error: type[ConfigError]) -> M:
    """Validate ``data`` read from ``path`` as ``model``; raise ``error`` in one line."""
    if data is None:
        raise error(f"{path}: file is empty")
    if not isinstance(data, dict):
        raise error(f"{path}: (top level): expected a mapping of keys")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(path, exc, data)) from None


def load_catalog(directory: Path) -> Catalog:
    """Load and cross-check every playbook file in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: playbooks folder not found "
                          "(set CRISISCOMMS_PLAYBOOKS_DIR)")
    files = {
        "policy": directory / "policy.yaml",
        "sources": directory / "sources.yaml",
        "channels": directory / "channels.yaml",
    }
    policy = parse_model(PolicyConfig, files["policy"], load_yaml(files["policy"]), ConfigError)
    src_file = parse_model(_SourcesFile, files["sources"], load_yaml(files["sources"]), ConfigError)
    ch_file = parse_model(_ChannelsFile, files["channels"], load_yaml(files["channels"]),
                          ConfigError)
    sources = _unique(files["sources"], "sources", (s.id for s in src_file.sources))
    channels = _unique(files["channels"], "channels", (c.id for c in ch_file.channels))
    source_map = {s.id: s for s in src_file.sources}
    channel_map = {c.id: c for c in ch_file.channels}
    del sources, channels
    for key in policy.weekly_caps:
        if key not in channel_map:
            raise ConfigError(f"{files['policy']}: weekly_caps.{key}: unknown channel id")
    _check_actions(files["policy"], "normal_channels", policy.normal_channels, channel_map,
                   ConfigError)

    playbooks: dict[str, Playbook] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name in RESERVED_FILES:
            continue
        pb = parse_model(Playbook, path, load_yaml(path), PlaybookError)
        if pb.name != path.stem:
            raise PlaybookError(f"{path}: name: {pb.name!r} must match the file name {path.stem!r}")
        if pb.name in playbooks:
            raise PlaybookError(f"{path}: name: duplicate playbook {pb.name!r}")
        cross_check(path, pb, source_map, channel_map)
        playbooks[pb.name] = pb
        files[f"playbook:{pb.name}"] = path
    return Catalog(directory, policy, source_map, channel_map, playbooks, files)


def _unique(path: Path, key: str, ids: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ConfigError(f"{path}: {key}.{i}: duplicate id")
        seen.add(i)
    return seen


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
    _check_actions(path, "channels", pb.channels, channels, PlaybookError)


def _check_actions(path: Path, key: str, actions: list[ChannelAction],
                   channels: dict[str, ChannelConfig], error: type[ConfigError]) -> None:
    for c in actions:
        ch = channels.get(c.channel)
        if ch is None:
            raise error(f"{path}: {key}.{c.channel}: unknown channel id (not in channels.yaml)")
        if c.action not in ACTIONS_BY_PLATFORM[ch.platform]:
            ok = ", ".join(sorted(ACTIONS_BY_PLATFORM[ch.platform]))
            raise error(f"{path}: {key}.{c.channel}.action: {c.action} is not possible on "
                        f"{ch.platform} (use {ok})")
