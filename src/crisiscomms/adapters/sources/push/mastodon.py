"""Push from Mastodon: the streaming API's home timeline of a reader account.

Follows Mastodon's documentation of the streaming API (docs.joinmastodon.org/methods/
streaming: ``GET /api/v1/streaming/user``, server-sent events ``update``/``status.update``/
``delete``, ``:thump`` heartbeats) and of ``/api/v2/instance`` (``configuration.urls.
streaming``). No recording of a stream is in ``shared/recorded``; the Status entity it parses
is the one ``shared/recorded/mastodon`` holds (tests/conformance).

One connection per deployment. The officer follows every Mastodon source account from one
*reader* account (any account on any instance: it only reads); its home timeline then
carries each new status of those accounts within a second, and this connection rings the
source's doorbell (the watcher polls it at once through ``sources.mastodon``).

* Where: ``PushSettings.mastodon_stream_base`` (the reader account's instance, e.g.
  ``https://mastodon.social``). Its streaming server is discovered the way Mastodon's own
  web client does: ``GET {base}/api/v2/instance`` -> ``configuration.urls.streaming``
  (``wss://streaming.mastodon.social`` -> ``https://streaming.mastodon.social``), falling back
  to the base (Mastodon's standard proxy set-up serves ``/api/v1/streaming`` there too).
* What: ``GET /api/v1/streaming/user`` as server-sent events (``httpx-sse``), on a client of
  its own (never the polling pool), with ``Authorization: Bearer <token>``: never the
  ``access_token`` query parameter, which would reach access logs. The token (scope
  ``read:statuses``, or ``read``) goes only to the base's host or to a streaming host under
  the same registrable domain, over https when the base is https; a streaming URL
  elsewhere is refused (``redirect_refused``) and shown in the status. Redirects are not
  followed. Hosts resolving to private addresses are refused unless the context allows them
  (the simulator).
* Liveness: Mastodon writes a ``:thump`` comment about every 15 s, so the read timeout is
  ``idle()``: a stream silent that long is dead and reconnected (``base.PushConnection``).
* Events: ``update`` (a Status as JSON) and ``status.update`` (an edit) ring the source whose
  account wrote the status, matched by the account's URL (``https://host/@name``, the
  catalogue's ``account``/``url``) or by ``acct`` (``name`` for the instance's own accounts,
  ``name@host`` for remote ones). A boost's ``account`` is the booster: it rings only if the
  booster is itself a source (its poll drops the boost), never the boosted account.
  ``delete`` and everything else is ignored. The ring expects the status id (the watcher
  polls again shortly if the poll does not see it yet) only for a status the poll keeps:
  not for an edit, a boost or a reply to another account. A hostile event (not JSON, wrong
  types, over ``MAX_EVENT_CHARS``) is ignored with a debug line; it never ends the stream.

A matched status only rings: an account claiming another's URL costs at most one extra
poll of that source, which reads the real account.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from pydantic import SecretStr

from crisiscomms.adapters.sources.base import as_dict, as_str
from crisiscomms.adapters.sources.http import (
    USER_AGENT,
    Resolver,
    registrable_domain,
    same_site,
    system_resolver,
    translate_httpx_errors,
)
from crisiscomms.adapters.sources.mastodon import parse_account_url
from crisiscomms.adapters.sources.push.base import PushConnection, PushContext
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import (
    ConfigError,
    PermanentSourceError,
    TransientSourceError,
)
from crisiscomms.domain.models import SourceKind
from crisiscomms.logs import get_logger, redact_text, register_secrets
from crisiscomms.settings import PushSettings

__all__ = ["KINDS", "MAX_EVENT_CHARS", "BoundedEvents", "MastodonStream", "build", "streaming_url"]

KINDS: tuple[SourceKind, ...] = (SourceKind.MASTODON,)
KEY = "mastodon-stream"
STREAM_PATH = "/api/v1/streaming/user"
INSTANCE_PATH = "/api/v2/instance"
MAX_EVENT_CHARS = 1_000_000  # a Status is a few kB; a remote one with long text stays far below
MAX_INSTANCE_BYTES = 1_000_000
CONNECT_TIMEOUT = 10.0
_RINGING = frozenset({"update", "status.update"})
_SCOPE_HINT = ("check CRISISCOMMS_MASTODON_STREAM_TOKEN: the reader account's token, with "
               "scope read:statuses (or read)")

log = get_logger(__name__)


def streaming_url(base: str, instance: Mapping[str, Any] | None) -> str:
    """The home-timeline stream's URL for ``base`` given its ``/api/v2/instance`` answer
    (``None``: not known). Raises ``PermanentSourceError`` when the advertised streaming host
    would take the token to another domain or over plain http."""
    base_parts = urlsplit(base.rstrip("/"))
    urls = as_dict(as_dict(as_dict(instance).get("configuration")).get("urls"))
    advertised = as_str(urls.get("streaming"), 2000).strip()
    if not advertised:
        return base.rstrip("/") + STREAM_PATH
    parts = urlsplit(advertised)
    scheme = {"wss": "https", "ws": "http", "https": "https", "http": "http"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise PermanentSourceError(
            f"{KEY}: the instance advertises a streaming URL with scheme {parts.scheme!r}: "
            "refused", source_id=KEY, error_class="bad_url")
    if base_parts.scheme == "https" and scheme != "https":
        raise PermanentSourceError(
            f"{KEY}: the instance advertises a plain-text streaming URL ({parts.hostname}); "
            "the token only travels over https", source_id=KEY, error_class="redirect_refused")
    base_host = base_parts.hostname or ""
    if not same_site(base_host, parts.hostname):
        raise PermanentSourceError(
            f"{KEY}: the instance advertises a streaming host on another domain "
            f"({parts.hostname}, not {registrable_domain(base_host) or base_host}): the "
            "token is not sent there", source_id=KEY, error_class="redirect_refused")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{STREAM_PATH}"


class BoundedEvents:
    """Server-sent events out of text chunks, with every line and event capped at
    ``limit`` characters: what is over the cap is dropped (up to the event's end) instead of
    growing in memory (httpx-sse's own reader buffers a line without end forever)."""

    def __init__(self, limit: int = MAX_EVENT_CHARS) -> None:
        self.limit = limit
        self._lines = SSELineDecoder()
        self._events = SSEDecoder()
        self._size = 0  # characters of the event being read
        self._skipping = False  # the current event went over the cap: drop it
        self._cut_line = False  # the current line went over the cap: drop its rest
        self.dropped = 0

    def feed(self, text: str) -> list[ServerSentEvent]:
        out: list[ServerSentEvent] = []
        for line in self._lines.decode(text):
            if self._cut_line:  # the end of a line cut short: nothing of it is kept
                self._cut_line = False
                continue
            self._take(line, out)
        if sum(len(part) for part in self._lines.buffer) > self.limit:
            self._lines.buffer = []
            self._cut_line = True
            self._overflow()
        return out

    def _overflow(self) -> None:
        if not self._skipping:
            self.dropped += 1
            log.debug("push.mastodon.event_dropped", connection=KEY, why="over the size cap",
                      limit=self.limit)
        self._skipping = True
        self._events = SSEDecoder()

    def _take(self, line: str, out: list[ServerSentEvent]) -> None:
        if line == "":
            if not self._skipping and (event := self._events.decode(line)) is not None:
                out.append(event)
            self._skipping, self._size = False, 0
            return
        if self._skipping:
            return
        self._size += len(line) + 1
        if self._size > self.limit:
            self._overflow()
            return
        self._events.decode(line)


class MastodonStream(PushConnection):
    """The reader account's home timeline, ringing the catalogue's Mastodon sources."""

    kind = "mastodon"

    def __init__(self, base: str, token: SecretStr, sources: Sequence[SourceConfig], *,
                 settings: PushSettings, allow_private: bool = False,
                 resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = base.rstrip("/")
        self._token = token
        self._accounts: dict[tuple[str, str], list[str]] = {}
        for config in sources:
            host_base, name = parse_account_url(config.account or config.url or "")
            host = (urlsplit(host_base).hostname or "").lower()
            self._accounts.setdefault((name.lower(), host), []).append(config.id)
        super().__init__(KEY, tuple(c.id for c in sources), settings=settings)
        self._allow_private = allow_private
        self._resolve: Resolver = resolver or system_resolver
        self._transport = transport
        self._local_domain = (urlsplit(self.base).hostname or "").lower()

    # -- matching --------------------------------------------------------------------------
    def sources_for(self, status: Mapping[str, Any]) -> tuple[str, ...]:
        """The catalogue sources a Status was written by (its ``account``: for a boost, the
        booster)."""
        account = as_dict(status.get("account"))
        found: list[str] = []
        acct = as_str(account.get("acct"), 400).strip().lstrip("@").lower()
        if acct:
            name, _, host = acct.partition("@")
            found += self._accounts.get((name, host or self._local_domain), [])
        url = as_str(account.get("url"), 2000).strip()
        if url:
            try:
                host_base, name = parse_account_url(url)
            except ConfigError:
                pass  # not a https://host/@name URL: only acct can match
            else:
                host = (urlsplit(host_base).hostname or "").lower()
                found += self._accounts.get((name.lower(), host), [])
        return tuple(dict.fromkeys(found))

    def on_event(self, event: ServerSentEvent) -> None:
        """Ring for one event (anything malformed is ignored with a debug line)."""
        if event.event not in _RINGING:
            return
        try:
            status = json.loads(event.data)
        except (ValueError, RecursionError):
            log.debug("push.mastodon.event_ignored", connection=KEY, sse_event=event.event,
                      why="not JSON")
            return
        if not isinstance(status, dict):
            log.debug("push.mastodon.event_ignored", connection=KEY, sse_event=event.event,
                      why="not a JSON object")
            return
        status_id = status.get("id")
        if not isinstance(status_id, str) or not 0 < len(status_id) <= 64:
            log.debug("push.mastodon.event_ignored", connection=KEY, sse_event=event.event,
                      why="no usable status id")
            return
        ids = self.sources_for(status)
        if ids:
            # Expect the id only where the poll will return it: an edit's id was read
            # before, and the poll drops boosts and replies to others (waiting for those
            # would only poll again in vain).
            expect = event.event == "update" and _kept_by_poll(status)
            self.pushed(ids, expect_id=status_id if expect else None)

    # -- the session -----------------------------------------------------------------------
    async def session(self) -> None:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(15.0, connect=CONNECT_TIMEOUT),
            headers={"User-Agent": USER_AGENT}, follow_redirects=False, trust_env=False,
            transport=self._transport,
        ) as client:
            await self._check_address(self.base)
            url = streaming_url(self.base, await self._instance(client))
            if urlsplit(url).hostname != urlsplit(self.base).hostname:
                await self._check_address(url)
            await self._stream(client, url)

    async def _instance(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        """``/api/v2/instance`` (no token: it is public), or ``None`` when it cannot be read
        (an older Mastodon, a proxy): the stream is then tried at the base."""
        url = self.base + INSTANCE_PATH
        try:
            with translate_httpx_errors(KEY, url):
                async with client.stream("GET", url,
                                         headers={"Accept": "application/json"}) as resp:
                    if resp.status_code != 200:
                        log.info("push.mastodon.no_instance", connection=KEY,
                                 status=resp.status_code, note="streaming at the base")
                        return None
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_INSTANCE_BYTES:
                            return None
            instance = json.loads(bytes(body))
        except (TransientSourceError, ValueError, RecursionError) as exc:
            log.info("push.mastodon.no_instance", connection=KEY, error=type(exc).__name__,
                     note="streaming at the base")
            return None
        if not isinstance(instance, dict):
            return None
        domain = as_str(instance.get("domain"), 300).strip().lower()
        if domain:
            self._local_domain = domain  # whose accounts have an acct without @host
        return instance

    async def _stream(self, client: httpx.AsyncClient, url: str) -> None:
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        timeout = httpx.Timeout(15.0, connect=CONNECT_TIMEOUT, read=self.idle())
        where = url.split("?", 1)[0]
        with translate_httpx_errors(KEY, where):
            async with aconnect_sse(client, "GET", url, headers=headers,
                                    timeout=timeout) as source:
                response = source.response
                if response.status_code != 200:
                    raise await self._refused(response)
                media = response.headers.get("content-type", "").split(";")[0].strip()
                if media.lower() != "text/event-stream":
                    raise TransientSourceError(
                        f"{KEY}: the stream answered {media or 'no content type'}, not "
                        "text/event-stream", source_id=KEY, error_class="parse")
                self.connected()
                reader = BoundedEvents()
                async for event in self._events(response, reader):
                    self.on_event(event)

    @staticmethod
    async def _events(response: httpx.Response,
                      reader: BoundedEvents) -> AsyncIterator[ServerSentEvent]:
        async for text in response.aiter_text():
            for event in reader.feed(text):
                yield event

    async def _refused(self, response: httpx.Response) -> Exception:
        """The error for a stream answered with something other than 200."""
        status = response.status_code
        said = ""
        try:
            raw = await response.aread()
            said = as_str(as_dict(json.loads(raw[:10_000])).get("error"), 200)
        except (ValueError, RecursionError, httpx.HTTPError):
            pass
        said = redact_text(said.replace(self._token.get_secret_value(), "**redacted**"))
        detail = f" ({said})" if said else ""
        if status in (401, 403):
            return PermanentSourceError(
                f"{KEY}: the streaming server refused the token (HTTP {status}{detail}): "
                f"{_SCOPE_HINT}", source_id=KEY, error_class=f"http_{status}")
        if 300 <= status < 400:
            return PermanentSourceError(
                f"{KEY}: the stream answered a redirect (HTTP {status}); not followed, the "
                "token would go along", source_id=KEY, error_class="redirect_refused")
        return TransientSourceError(f"{KEY}: the stream answered HTTP {status}{detail}",
                                    source_id=KEY, error_class=f"http_{status}")

    async def _check_address(self, url: str) -> None:
        """Refuse a host that resolves to a private/loopback address (unless allowed)."""
        if self._allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = [host] if _is_ip(host) else list(await self._resolve(host, port))
        except OSError as exc:
            raise TransientSourceError(f"{KEY}: cannot resolve {host}", source_id=KEY,
                                       error_class="dns") from exc
        if not addresses or not all(_is_public(a) for a in addresses):
            raise PermanentSourceError(
                f"{KEY}: {host} resolves to a private/loopback/link-local address (or none)",
                source_id=KEY, error_class="private_address")


def _kept_by_poll(status: Mapping[str, Any]) -> bool:
    """Whether ``sources.mastodon``'s poll keeps this status (not a boost, not a reply to
    another account, public or unlisted)."""
    if status.get("reblog"):
        return False
    author = as_str(as_dict(status.get("account")).get("id"), 100)
    if status.get("in_reply_to_id") and as_str(status.get("in_reply_to_account_id"),
                                               100) != author:
        return False
    return as_str(status.get("visibility"), 20) in ("public", "unlisted", "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_public(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _account_ok(config: SourceConfig) -> bool:
    try:
        parse_account_url(config.account or config.url or "")
    except ConfigError:
        # Its poll reports the bad account URL; push simply leaves it out.
        log.info("push.mastodon.source_skipped", source=config.id,
                 note="not an https://host/@name account URL: polled only")
        return False
    return True


def build(sources: Sequence[SourceConfig], ctx: PushContext) -> list[PushConnection]:
    """One connection for every Mastodon source of the catalogue, when a reader account is
    configured (``PushSettings.mastodon_stream_base`` and its token); else none."""
    mastodon = [s for s in sources if s.kind is SourceKind.MASTODON and _account_ok(s)]
    if not mastodon:
        return []
    base = ctx.settings.mastodon_stream_base
    if base:  # a simulator: its stream lives beside its REST API (the polling override)
        base = ctx.base_urls.get("mastodon_stream") or ctx.base_urls.get("mastodon") or base
    else:
        base = ctx.base_urls.get("mastodon_stream")
    token = ctx.mastodon_token
    if isinstance(token, str):
        token = SecretStr(token)
    why = ""
    if not base:
        why = "CRISISCOMMS_PUSH__MASTODON_STREAM_BASE is not set (the reader account's instance)"
    elif not isinstance(token, SecretStr) or not token.get_secret_value():
        why = "CRISISCOMMS_MASTODON_STREAM_TOKEN is not set (the reader account's token)"
    if why or not isinstance(token, SecretStr) or not base:
        log.info("push.mastodon.off", sources=len(mastodon),
                 note=f"Mastodon sources are polled only: {why}")
        return []
    register_secrets([token])
    return [MastodonStream(base, token, mastodon, settings=ctx.settings,
                           allow_private=ctx.allow_private)]
