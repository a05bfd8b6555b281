"""Shared test data for the publisher tests (kept out of conftest.py so tests can import it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from urllib3.exceptions import MaxRetryError, NewConnectionError

from crisiscomms.domain.models import ActionKind, ItemState, NativeRef, OutboxItem
from crisiscomms.ports import Publisher

from .publisher_fakes import Faults

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CHANNEL = "nhs-main"
BODY = "Flood warning for the River Ouse at York & Selby https://check-for-flooding.test/w/1 #Flood"
LINK = "https://check-for-flooding.test/w/1"


def make_item(
    item_id: int = 1,
    *,
    action: ActionKind = ActionKind.POST,
    body: str = BODY,
    native: NativeRef | None = None,
    dedupe_key: str | None = None,
    url: str = LINK,
    created_at: datetime = NOW,
) -> OutboxItem:
    return OutboxItem(
        id=item_id,
        dedupe_key=dedupe_key or f"update:{item_id}:{CHANNEL}:{action}",
        channel_id=CHANNEL,
        action=action,
        text=body,
        state=ItemState.SENDING,
        created_at=created_at,
        native=native,
        url=url,
    )


def epoch(dt: datetime) -> str:
    return str(int(dt.timestamp()))


@dataclass
class Harness:
    name: str
    publisher: Publisher
    fake: Any
    faults: Faults | None
    secret: str
    rate_limit_headers: dict[str, str]
    expected_reset: datetime
    read_timeout: BaseException | None
    connect_error: BaseException | None

    def error_body(self, status: int, reason: str) -> Any:
        if self.name == "x":
            return {"detail": reason, "title": "Error", "status": status, "type": "about:blank"}
        if self.name == "facebook":
            return {"error": {"message": reason, "type": "OAuthException", "code": 190}}
        if self.name == "mastodon":
            return {"error": reason}
        return {"error": "InvalidRequest", "message": reason}

    def need_faults(self) -> Faults:
        if self.faults is None:
            pytest.skip("the dry run cannot fail")
        return self.faults


X_CREDENTIALS = {
    "consumer_key": SecretStr("ck-SECRET-consumer"),
    "consumer_secret": SecretStr("cs-SECRET-consumer"),
    "access_token": SecretStr("42-SECRET-access"),
    "access_token_secret": SecretStr("ats-SECRET-access"),
}
FB_CREDENTIALS = {"page_token": SecretStr("EAAB-SECRET-page-token")}
MASTODON_CREDENTIALS = {"access_token": SecretStr("mastodon-SECRET-token")}
BLUESKY_CREDENTIALS = {"app_password": SecretStr("abcd-SECRET-efgh-ijkl")}


def requests_connect_error() -> requests.exceptions.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111]")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/2/tweets", reason=reason))  # type: ignore[arg-type]
