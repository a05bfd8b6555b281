"""Bluesky publisher over plain httpx XRPC (no atproto SDK).

Exactly once by construction: every record is written with a record key derived from the
outbox item (``record_key``), so sending the same item again addresses the same record and
cannot create a second post or repost. The real PDS answers a repeated record key with a bare
500 (no named error; a conflict status or a named error is handled the same way): the record
is then looked up with ``getRecord``. Found, it is the result; absent, the 500 was a real
failure and a retry (same key) is safe; if the lookup cannot answer, the outcome is unknown
(the dispatcher asks again before any resend), never a blind resend.

A repost of a subject we already reposted replaces the old repost (the PDS answers 200), so
the repo holds at most one repost per subject: ``find_existing`` of a repost whose own record
is gone looks for our repost of the same subject with ``listRecords``.

One session (``createSession``, which has a low daily limit) is made lazily and reused;
``ExpiredToken`` triggers one ``refreshSession`` and a retry of the call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import regex
import structlog
from pydantic import SecretStr

from crisiscomms.adapters.publishers._common import (
    cannot_tell,
    default_client,
    error_for_status,
    httpx_boundary,
    secret_values,
    short_reason,
)
from crisiscomms.domain.clock import isoformat, utc
from crisiscomms.domain.errors import (
    ConfigError,
    OutcomeUnknownError,
    PublishError,
)
from crisiscomms.domain.models import (
    ActionKind,
    NativeRef,
    OutboxItem,
    Platform,
    PublishResult,
    Update,
)
from crisiscomms.domain.posttext import url_spans
from crisiscomms.ports import Clock

log = structlog.get_logger(__name__)

PLATFORM = "bluesky"
DEFAULT_BASE_URL = "https://bsky.social"
POST = "app.bsky.feed.post"
REPOST = "app.bsky.feed.repost"
LINK_FEATURE = "app.bsky.richtext.facet#link"
TAG_FEATURE = "app.bsky.richtext.facet#tag"
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_NATIVE_ACTIONS = frozenset({ActionKind.REPOST, ActionKind.RETWEET, ActionKind.BOOST})
# A hashtag starts after whitespace (or at the start) and runs to the next whitespace.
_TAG_RE = regex.compile(r"(?:^|(?<=\s))[#＃]([^\s#＃]+)")
_MAX_TAG = 64
_EXISTS_ERRORS = frozenset({"RecordAlreadyExists", "AlreadyExists", "RecordExists"})
# How many of our newest reposts find_existing looks through for the same subject.
_RECENT_REPOSTS = 100


def record_key(item: OutboxItem) -> str:
    """The deterministic record key of ``item``: a valid 13-character TID.

    The TID's time is the item's creation time (whole seconds) plus sub-second microseconds
    and a clock id taken from a hash of the dedupe key, so it is plausible for the AppView,
    the same every time for one item, and distinct for items queued in the same second.
    """
    digest = int.from_bytes(hashlib.sha256(item.dedupe_key.encode("utf-8")).digest()[:8], "big")
    micros = int(utc(item.created_at).timestamp()) * 1_000_000 + digest % 1_000_000
    clock_id = (digest >> 20) % 1024
    value = (micros << 10) | clock_id  # below 2**63: the first character stays in 2-j
    chars = []
    for _ in range(13):
        chars.append(_TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def facets(text: str) -> list[dict[str, Any]]:
    """Rich-text facets for the links and hashtags in ``text``, with UTF-8 byte offsets."""

    def byte_at(index: int) -> int:
        return len(text[:index].encode("utf-8"))

    found: list[dict[str, Any]] = []
    for start, end in url_spans(text):
        found.append(
            {
                "index": {"byteStart": byte_at(start), "byteEnd": byte_at(end)},
                "features": [{"$type": LINK_FEATURE, "uri": text[start:end]}],
            }
        )
    for match in _TAG_RE.finditer(text):
        tag = regex.sub(r"\p{P}+$", "", match.group(1))
        # Bluesky ignores all-digit tags and caps their length.
        if not tag or tag.isdigit() or len(tag) > _MAX_TAG:
            continue
        start = match.start()
        found.append(
            {
                "index": {"byteStart": byte_at(start), "byteEnd": byte_at(start + 1 + len(tag))},
                "features": [{"$type": TAG_FEATURE, "tag": tag}],
            }
        )
    found.sort(key=lambda f: int(f["index"]["byteStart"]))
    return found


def web_url(at_uri: str) -> str:
    """``https://bsky.app/...`` for an ``at://did/app.bsky.feed.post/rkey`` URI ("" otherwise)."""
    parts = at_uri.removeprefix("at://").split("/")
    if len(parts) == 3 and parts[1] == POST:
        return f"https://bsky.app/profile/{parts[0]}/post/{parts[2]}"
    return ""


@dataclass(slots=True)
class _Session:
    did: str
    access: SecretStr
    refresh: SecretStr


class BlueskyPublisher:
    """``Publisher`` for a Bluesky account, authenticated with an app password."""

    def __init__(
        self,
        channel_id: str,
        *,
        identifier: str,
        credentials: Mapping[str, SecretStr],
        clock: Clock,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.Client | None = None,
        langs: tuple[str, ...] = ("en",),
    ) -> None:
        password = credentials.get("app_password")
        if password is None or not password.get_secret_value():
            raise ConfigError(f"channel {channel_id}: bluesky needs credential 'app_password'")
        if not identifier:
            raise ConfigError(f"channel {channel_id}: bluesky needs an identifier (handle)")
        self.channel_id = channel_id
        self._xrpc_base = base_url.rstrip("/").removesuffix("/xrpc") + "/xrpc/"
        self._identifier = identifier
        self._password = password
        self._secrets = secret_values(credentials)
        self._clock = clock
        self._langs = list(langs)
        self._owns_client = client is None
        self._client = client or default_client()
        self._session: _Session | None = None

    # -- the boundary -------------------------------------------------------------------------

    def _boundary(self) -> AbstractContextManager[None]:
        """Translate httpx failures and odd answers into the ``PublishError`` tree."""
        return httpx_boundary(PLATFORM, self.channel_id)

    def _all_secrets(self) -> tuple[str, ...]:
        extra: tuple[str, ...] = ()
        if self._session is not None:
            extra = (
                self._session.access.get_secret_value(),
                self._session.refresh.get_secret_value(),
            )
        return self._secrets + extra

    def _error(self, response: httpx.Response) -> PublishError:
        name, text = _xrpc_error(response)
        reason = ": ".join(p for p in (name, text) if p) or response.reason_phrase
        return error_for_status(
            response.status_code,
            short_reason(reason, self._all_secrets()),
            platform=PLATFORM,
            channel_id=self.channel_id,
            headers=response.headers,
            now=self._clock.now(),
        )

    def _ok(self, response: httpx.Response) -> Any:
        if not response.is_success:
            raise self._error(response)
        return response.json()

    # -- session ------------------------------------------------------------------------------

    def _login(self) -> _Session:
        response = self._client.post(
            self._xrpc_base + "com.atproto.server.createSession",
            json={"identifier": self._identifier, "password": self._password.get_secret_value()},
        )
        body = self._ok(response)
        self._session = _Session(
            did=str(body["did"]),
            access=SecretStr(str(body["accessJwt"])),
            refresh=SecretStr(str(body["refreshJwt"])),
        )
        log.info("publisher.session_created", channel=self.channel_id)
        return self._session

    def _refresh(self) -> _Session:
        if self._session is None:
            return self._login()
        response = self._client.post(
            self._xrpc_base + "com.atproto.server.refreshSession",
            headers={"Authorization": f"Bearer {self._session.refresh.get_secret_value()}"},
        )
        if response.status_code in (400, 401):
            # The refresh token is spent or revoked: a new session is the only way on.
            self._session = None
            return self._login()
        body = self._ok(response)
        self._session = _Session(
            did=str(body.get("did") or self._session.did),
            access=SecretStr(str(body["accessJwt"])),
            refresh=SecretStr(str(body["refreshJwt"])),
        )
        return self._session

    def _call(
        self,
        method: str,
        nsid: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One authenticated XRPC call, refreshing the session once on ``ExpiredToken``."""

        def send(session: _Session) -> httpx.Response:
            return self._client.request(
                method,
                self._xrpc_base + nsid,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {session.access.get_secret_value()}"},
            )

        response = send(self._session or self._login())
        if response.status_code in (400, 401) and _xrpc_error(response)[0] in {
            "ExpiredToken",
            "InvalidToken",
        }:
            response = send(self._refresh())
        return response

    def _did(self) -> str:
        return (self._session or self._login()).did

    # -- records ------------------------------------------------------------------------------

    def _get_record(self, collection: str, rkey: str, repo: str | None = None) -> Any | None:
        """The record as ``{"uri", "cid", "value"}``, or ``None`` if it does not exist."""
        response = self._call(
            "GET",
            "com.atproto.repo.getRecord",
            params={"repo": repo or self._did(), "collection": collection, "rkey": rkey},
        )
        if response.status_code == 404 or _xrpc_error(response)[0] == "RecordNotFound":
            return None
        return self._ok(response)

    def _create(self, collection: str, rkey: str, record: dict[str, Any]) -> Any:
        response = self._call(
            "POST",
            "com.atproto.repo.createRecord",
            json={"repo": self._did(), "collection": collection, "rkey": rkey, "record": record},
        )
        if response.is_success:
            return response.json()
        error = self._error(response)
        name, text = _xrpc_error(response)
        conflict = (
            response.status_code == 409 or name in _EXISTS_ERRORS or "already exist" in text.lower()
        )
        # The PDS answers a repeated record key with a bare 500: the record may be there.
        if conflict or response.status_code >= 500:
            try:
                existing = self._get_record(collection, rkey)
            except (PublishError, httpx.HTTPError) as exc:
                raise OutcomeUnknownError(
                    f"{PLATFORM}: createRecord answered {response.status_code} for record "
                    f"{rkey} and getRecord could not tell whether it exists: "
                    f"{short_reason(str(exc) or type(exc).__name__, self._all_secrets())}",
                    channel_id=self.channel_id,
                    status=response.status_code,
                ) from exc
            if existing is not None:
                log.info("publisher.already_published", channel=self.channel_id, rkey=rkey)
                return existing
            if conflict:
                raise OutcomeUnknownError(
                    f"{PLATFORM}: record {rkey} reported as existing but not readable",
                    channel_id=self.channel_id,
                    status=response.status_code,
                ) from error
        # Not there: the failure was real and a retry under the same key cannot duplicate it.
        raise error

    def _strong_ref(self, native: NativeRef) -> dict[str, str] | None:
        """``{uri, cid}`` of the official post, looking the cid up when only the URI is known."""
        if native.uri and native.cid:
            return {"uri": native.uri, "cid": native.cid}
        parts = native.uri.removeprefix("at://").split("/")
        if not native.uri.startswith("at://") or len(parts) != 3:
            return None
        found = self._get_record(parts[1], parts[2], repo=parts[0])
        # getRecord's cid is optional in its lexicon; a strong reference needs one.
        if found is None or not found.get("cid"):
            return None
        return {"uri": str(found.get("uri") or native.uri), "cid": str(found["cid"])}

    def _reply_refs(self, reply_to: str | None) -> dict[str, Any] | None:
        """``{root, parent}`` for a reply to our own post ``reply_to`` (an at:// URI); the root
        is that post's own root when it was itself a reply."""
        if not reply_to:
            return None
        parts = reply_to.removeprefix("at://").split("/")
        if not reply_to.startswith("at://") or len(parts) != 3:
            return None
        found = self._get_record(parts[1], parts[2], repo=parts[0])
        if found is None or not found.get("cid"):
            log.warning("publisher.reply_parent_missing", channel=self.channel_id)
            return None
        parent = {"uri": str(found.get("uri") or reply_to), "cid": str(found["cid"])}
        value = found.get("value") if isinstance(found.get("value"), dict) else {}
        earlier = value.get("reply") if isinstance(value, dict) else None
        root = earlier.get("root") if isinstance(earlier, dict) else None
        if not (isinstance(root, dict) and root.get("uri") and root.get("cid")):
            root = parent
        return {"root": {"uri": str(root["uri"]), "cid": str(root["cid"])}, "parent": parent}

    def _post_record(self, text: str, embed: dict[str, Any] | None,
                     reply: dict[str, Any] | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "$type": POST,
            "text": text,
            "createdAt": isoformat(self._clock.now()),
            "langs": self._langs,
        }
        if reply is not None:
            record["reply"] = reply  # a CAP Update/Cancel in the thread of our alert
        found = facets(text)
        if found:
            record["facets"] = found
        if embed is not None:
            record["embed"] = embed
        return record

    # -- Publisher ----------------------------------------------------------------------------

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        """Repost or quote the official post when it is on Bluesky, else post ``item.body``."""
        rkey = record_key(item)
        with self._boundary():
            native = _bluesky_ref(item)
            subject = self._strong_ref(native) if native is not None else None
            if subject is not None and item.action in _NATIVE_ACTIONS:
                record = {
                    "$type": REPOST,
                    "subject": subject,
                    "createdAt": isoformat(self._clock.now()),
                }
                created = self._create(REPOST, rkey, record)
                return PublishResult(post_id=str(created["uri"]), url=web_url(subject["uri"]))
            embed = None
            if subject is not None and item.action is ActionKind.QUOTE:
                embed = {"$type": "app.bsky.embed.record", "record": subject}
            if native is not None and subject is None:
                log.warning(
                    "publisher.fallback",
                    channel=self.channel_id,
                    item=item.id,
                    reason="official post not found",
                )
            reply = self._reply_refs(item.reply_to)
            created = self._create(POST, rkey, self._post_record(item.body, embed, reply))
            uri = str(created["uri"])
            return PublishResult(post_id=uri, url=web_url(uri))

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        """The record written under this item's key (repost or post), else our repost of the
        same subject (a later repost of it replaced ours), or ``None``."""
        rkey = record_key(item)
        native = _bluesky_ref(item)
        reposting = native is not None and item.action in _NATIVE_ACTIONS
        collections = [REPOST, POST] if reposting else [POST]  # a repost may have fallen back
        try:
            with self._boundary():
                for collection in collections:
                    found = self._get_record(collection, rkey)
                    if found is None:
                        continue
                    uri = str(found["uri"])
                    if collection == REPOST:
                        subject = (found.get("value") or {}).get("subject") or {}
                        return PublishResult(post_id=uri, url=web_url(str(subject.get("uri", ""))))
                    return PublishResult(post_id=uri, url=web_url(uri))
                if reposting and native is not None:
                    return self._repost_of(native.uri)
        except PublishError as exc:
            raise cannot_tell(exc, platform=PLATFORM, channel_id=self.channel_id) from exc
        return None

    def _repost_of(self, subject_uri: str) -> PublishResult | None:
        """Our newest repost of ``subject_uri`` (``listRecords``, newest first), if any."""
        response = self._call(
            "GET",
            "com.atproto.repo.listRecords",
            params={"repo": self._did(), "collection": REPOST, "limit": str(_RECENT_REPOSTS)},
        )
        for record in self._ok(response).get("records") or []:
            value = record.get("value") if isinstance(record, dict) else None
            subject = value.get("subject") if isinstance(value, dict) else None
            if isinstance(subject, dict) and subject.get("uri") == subject_uri:
                return PublishResult(post_id=str(record["uri"]), url=web_url(subject_uri))
        return None

    def close(self) -> None:
        """Forget the session and close the HTTP client if this publisher created it."""
        self._session = None
        if self._owns_client:
            self._client.close()


def _bluesky_ref(item: OutboxItem) -> NativeRef | None:
    native = item.native
    if item.action is ActionKind.POST or native is None:
        return None
    if native.platform is not Platform.BLUESKY or not native.uri:
        return None
    return native


def _xrpc_error(response: httpx.Response) -> tuple[str, str]:
    """``(error, message)`` of an XRPC error body ("" when absent or not JSON)."""
    if response.is_success:
        return "", ""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("error") or ""), str(body.get("message") or "")
