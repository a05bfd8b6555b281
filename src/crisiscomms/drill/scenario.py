"""Drill scenarios: YAML files under ``playbooks/drills/`` scripting a crisis end to end.

A scenario says what each simulated source publishes when, what the on-call officer does
when (activate, approve, post, stand down), which platform faults happen, and the
expectations checked at the end. Validated like playbooks: errors name file and key.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crisiscomms.adapters.playbooks import load_yaml, parse_model
from crisiscomms.domain.clock import utc
from crisiscomms.domain.config import Playbook, PlaybookSource, SourceConfig
from crisiscomms.domain.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Publish(_Model):
    """An official source publishes (or edits) an item. Fields depend on the source kind:
    rss: guid, title, description, link; cap: identifier, msgType, references, event,
    severity, urgency, certainty, areaDesc, headline, description, status, scope;
    x: id, text; mastodon: id, content; bluesky: rkey, text; ea-floods: the EA item fields."""

    source: str
    item: dict[str, Any]
    edit: bool = False


class Activate(_Model):
    playbook: str
    reason: str
    lead: str | None = None
    hashtags: list[str] = []
    operator: str = "on-call"


class Deactivate(_Model):
    reason: str
    operator: str = "on-call"
    incident: int | None = None


class Approve(_Model):
    operator: str = "duty-officer"
    source: str | None = None
    channel: str | None = None
    reason: str = "approved in drill"


class Reject(_Model):
    """Reject pending normal-mode items (e.g. a warning made stale by the incident)."""

    operator: str = "duty-officer"
    source: str | None = None
    channel: str | None = None
    reason: str


class Post(_Model):
    """A normal-mode post the team scheduled (approved), e.g. a routine health message."""

    channel: str
    text: str
    operator: str = "comms-officer"


class Burst429(_Model):
    platform: Literal["x", "facebook", "mastodon", "bluesky"]
    minutes: Annotated[float, Field(gt=0)]
    # Which requests the burst refuses: "write" (posting quotas, the usual case) or "all".
    applies_to: Literal["write", "all"] = "write"


class FaultSpec(_Model):
    error_rate_5xx: Annotated[float, Field(ge=0, le=1)] = 0.0
    drop_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    burst_429: Burst429 | None = None
    clear: bool = False


class Event(_Model):
    at: datetime
    publish: Publish | None = None
    activate: Activate | None = None
    deactivate: Deactivate | None = None
    approve: Approve | None = None
    reject: Reject | None = None
    post: Post | None = None
    faults: FaultSpec | None = None
    note: str = ""

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a UTC offset (e.g. 2027-05-28T18:00:00+01:00)")
        return utc(v)

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        acts = [k for k in ("publish", "activate", "deactivate", "approve", "reject", "post",
                                   "faults")
                if getattr(self, k) is not None]
        if len(acts) != 1:
            raise ValueError("each event needs exactly one of publish, activate, deactivate, "
                             "approve, reject, post, faults")
        return self

    @property
    def kind(self) -> str:
        for k in ("publish", "activate", "deactivate", "approve", "reject", "post",
                                   "faults"):
            if getattr(self, k) is not None:
                return k
        return "note"  # pragma: no cover - the validator forbids it


class Polling(_Model):
    interval_seconds: Annotated[float, Field(ge=1)] = 300
    incident_interval_seconds: Annotated[float, Field(ge=1)] = 60


EXPECTATION_KINDS = (
    "lead_amplified", "no_normal_post_outside_staffed_hours", "no_duplicates",
    "nothing_left_queued", "audit_chain_verifies", "published_matches_simulator",
    "normal_item_paused_then_resumed", "over_cap_posts", "no_request_during_rate_limit",
    "held_outside_staffed_hours", "published_count", "rate_limited", "lead_posts_relayed",
    "nothing_below_severity",
)


class Expectation(_Model):
    """One check at the end; ``kind`` names it, the other keys are its parameters."""

    kind: str
    channel: str | None = None
    source: str | None = None
    within_seconds: Annotated[float, Field(gt=0)] | None = None
    min: Annotated[int, Field(ge=0)] | None = None
    max: Annotated[int, Field(ge=0)] | None = None
    severity: str | None = None  # nothing_below_severity: the lowest CAP severity relayed

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in EXPECTATION_KINDS:
            raise ValueError(f"unknown expectation {v!r}; one of {', '.join(EXPECTATION_KINDS)}")
        return v


class Scenario(_Model):
    name: str
    description: str = ""
    start: datetime
    end: datetime
    step_seconds: Annotated[float, Field(ge=1, le=600)] = 60
    playbooks_dir: str = ".."
    pin_x_ids: dict[str, Annotated[str, Field(pattern=r"^[0-9]+$")]] = {}
    extra_sources: list[SourceConfig] = []
    extra_playbooks: list[Playbook] = []
    # Extra sources a bundled playbook watches in this drill only: {playbook: [sources]}.
    playbook_sources: dict[str, list[PlaybookSource]] = {}
    polling: Polling = Polling()
    seed: int = 7
    events: list[Event]
    expectations: list[Expectation]

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return utc(v)

    @model_validator(mode="after")
    def _order(self) -> Scenario:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        for i, e in enumerate(self.events):
            if not self.start <= e.at <= self.end:
                raise ValueError(f"events[{i}].at {e.at.isoformat()} is outside start..end")
        return self


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file (errors name the file and key)."""
    data = load_yaml(path)
    return parse_model(Scenario, path, data, ConfigError)
