"""Helpers shared by the source adapter tests (imported by name; no package needed)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import SourceKind, SourceState

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
CORPUS = HERE / "corpus"
NOW = datetime(2026, 2, 10, 15, 0, tzinfo=UTC)
PUBLIC_IP = "93.184.216.34"
FEED_URL = "https://feeds.example.gov.uk/feed.xml"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeResolver:
    """DNS for tests: every name is public unless listed in ``answers``."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Exception] = {}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host, [PUBLIC_IP])
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


def make_config(kind: SourceKind = SourceKind.RSS, **kw: Any) -> SourceConfig:
    defaults: dict[str, Any] = {"id": f"test-{kind.value}", "agency": "Test Agency", "kind": kind}
    if kind in (SourceKind.RSS, SourceKind.CAP):
        defaults["url"] = FEED_URL
    elif kind is SourceKind.EA_FLOODS:
        defaults["url"] = "https://environment.data.gov.uk/flood-monitoring/id/floods"
        defaults["county"] = "Essex"
    elif kind is SourceKind.MASTODON:
        defaults["account"] = "https://mastodon.example/@EssexFire"
    elif kind is SourceKind.BLUESKY:
        defaults["account"] = "https://bsky.app/profile/essexpolice.bsky.social"
    elif kind is SourceKind.X:
        defaults["handle"] = "EssexPoliceUK"
        defaults["x_user_id"] = "1000"
    defaults.update(kw)
    return SourceConfig(**defaults)


def state_for(source_id: str, **kw: Any) -> SourceState:
    return SourceState(source_id=source_id, **kw)


def gaierror() -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, "Name or service not known")
