"""Push from WebSub hubs (W3C WebSub Recommendation, 2018) for feeds that advertise one.

Optional: built only when ``PushSettings.websub_callback_url`` is set (an https URL the hubs
can reach, reverse-proxied to ``websub_listen`` here; http to loopback only when private
hosts are allowed, as for the simulator). One connection covers every RSS/CAP source:

* ``session`` starts the callback server (starlette on ``uvicorn.Server.serve`` as a task of
  this event loop, on a socket bound to ``websub_listen``; no signal handlers, no access log);
* each feed is fetched once through the polling path's ``HttpFetcher`` to find its hub and self
  URL (``websub_discovery``); a feed without a hub is simply polled: its id leaves the
  connection's ``source_ids`` and ``status()`` says so;
* each feed with a hub is subscribed: ``hub.callback`` = the callback URL + an unguessable
  token per subscription, ``hub.secret`` random per subscription (never logged, never in
  ``status``), ``hub.lease_seconds`` = ``websub_lease_seconds``; the hub's verification GET is
  answered with its challenge only for a pending or active subscription of that topic and
  mode (404 otherwise), and the subscription is renewed at 80% of the lease the hub granted;
* ``connected()`` (the catch-up ring) once the server listens and the first verifications
  came (or ``verify_wait_seconds`` passed); a subscription that becomes active later rings
  its source the same way (``reason="connected"``), so nothing published before push worked
  is missed;
* a delivery (``POST <callback>/<token>``) rings its source only when ``X-Hub-Signature``
  (sha1, sha256, sha384 or sha512) is the HMAC of the raw body with that subscription's
  secret, compared in constant time; a missing or wrong one is answered 2xx all the same
  (as the spec says) and rings nothing. The body (at most 1 MiB, ``websub_server.MAX_BODY``)
  is never relayed: the poll reads the feed;
* a hub that refuses, never verifies, denies or lets a lease run out is tried again with
  backoff; meanwhile the feed is polled as always. On cancel: unsubscribe (best effort,
  ``unsubscribe_timeout_seconds``) and stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from crisiscomms import aio
from crisiscomms.adapters.sources.http import (
    FetchLimits,
    HttpFetcher,
    Resolver,
    make_async_client,
    system_resolver,
)
from crisiscomms.adapters.sources.pinning import Pin, pinned
from crisiscomms.adapters.sources.push.base import PushConnection, PushContext, describe
from crisiscomms.adapters.sources.push.websub_discovery import (
    DiscoveryError,
    discover,
    usable_url,
)
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import SourceError
from crisiscomms.domain.models import Doorbell, PushStatus, SourceKind
from crisiscomms.logs import get_logger
from crisiscomms.retry import backoff_delay
from crisiscomms.settings import PushSettings

log = get_logger(__name__)

KINDS: tuple[SourceKind, ...] = (SourceKind.RSS, SourceKind.CAP)
SIGNATURE_METHODS: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1, "sha256": hashlib.sha256,
    "sha384": hashlib.sha384, "sha512": hashlib.sha512,
}
_LISTENING = ("pending", "active")  # states whose deliveries and verifications we accept


def build(sources: Sequence[SourceConfig], ctx: PushContext) -> list[PushConnection]:
    """One connection for every RSS/CAP source, when a callback URL is set (else none)."""
    url = ctx.settings.websub_callback_url
    if not url:
        return []  # WebSub is optional: nothing to say
    if not usable_url(url, ctx.allow_private):
        log.warning("push.websub_off", reason="websub_callback_url must be an https URL "
                    "(http only to loopback, with private sources allowed)")
        return []
    feeds = [s for s in sources if s.kind in KINDS and s.url]
    if not feeds:
        return []
    return [WebSubConnection(feeds, settings=ctx.settings, callback_url=url,
                             allow_private=ctx.allow_private)]


def signature_ok(secret: str, header: str | None, body: bytes) -> bool:
    """Whether ``X-Hub-Signature: method=hex`` is the HMAC of ``body`` with ``secret``."""
    if not header or not secret:
        return False
    method, _, digest = header.strip().partition("=")
    algorithm = SIGNATURE_METHODS.get(method.strip().lower())
    if algorithm is None:
        return False
    expected = hmac.new(secret.encode(), body, algorithm).hexdigest().encode()
    return hmac.compare_digest(expected, digest.strip().lower().encode("utf-8", "replace"))


@dataclass(eq=False)
class _Subscription:
    source_id: str
    feed_url: str
    allow_private: bool
    token: str = field(repr=False)
    secret: str = field(repr=False)
    hub: str | None = None
    topic: str | None = None
    # new -> nohub | pending -> active (-> renewing keeps active) | failed | denied;
    # unsubscribing -> gone on the way out
    state: str = "new"
    due: float = 0.0  # time.monotonic() of the next thing to do
    pending_since: float = 0.0
    renew_at: float = 0.0
    expires_at: float = 0.0
    failures: int = 0
    problem: str = ""


class WebSubConnection(PushConnection):
    """The callback server and the subscriptions of every feed that advertises a hub."""

    kind = "websub"

    def __init__(
        self,
        feeds: Sequence[SourceConfig],
        *,
        settings: PushSettings,
        callback_url: str,
        allow_private: bool = False,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        resolver: Resolver | None = None,
        verify_wait_seconds: float = 10.0,
        verify_timeout_seconds: float = 120.0,
        min_renew_seconds: float = 60.0,
        retry_base_seconds: float = 30.0,
        retry_cap_seconds: float = 3600.0,
        rediscover_seconds: float = 3600.0,
        unsubscribe_timeout_seconds: float = 2.0,
    ) -> None:
        super().__init__("websub", tuple(f.id for f in feeds), settings=settings)
        self._feeds = list(feeds)
        self._callback = callback_url.rstrip("/")
        self._allow_private = allow_private
        self._client_factory = client_factory or (lambda: make_async_client(timeout=10.0))
        self._resolver = resolver
        self.verify_wait_seconds = verify_wait_seconds
        self.verify_timeout_seconds = verify_timeout_seconds
        self.min_renew_seconds = min_renew_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_cap_seconds = retry_cap_seconds
        self.rediscover_seconds = rediscover_seconds
        self.unsubscribe_timeout_seconds = unsubscribe_timeout_seconds
        self._subs: dict[str, _Subscription] = {}
        self._by_token: dict[str, _Subscription] = {}
        self._wake = asyncio.Event()
        self._announced = False
        self._hub_slots = FetchLimits(per_host=2, total=10)
        self.listening: tuple[str, int] | None = None  # the bound address, once serving

    # -- status ----------------------------------------------------------------------------
    def status(self) -> PushStatus:
        st = super().status()
        notes = [st.note] if st.note else []
        nohub = sorted(s.source_id for s in self._subs.values() if s.state == "nohub")
        if nohub:
            more = f" and {len(nohub) - 10} more" if len(nohub) > 10 else ""
            notes.append(f"polled only (no hub advertised): {', '.join(nohub[:10])}{more}")
        for s in sorted(self._subs.values(), key=lambda s: s.source_id):
            if s.problem and s.state != "active":
                notes.append(f"{s.source_id}: {s.problem} (polled meanwhile)")
        return replace(st, source_ids=self.source_ids, note="; ".join(notes)[:1000])

    # -- the session -----------------------------------------------------------------------
    async def session(self) -> None:
        from crisiscomms.adapters.sources.push.websub_server import start_server

        self._wake = asyncio.Event()
        self._announced = False
        client = self._client_factory()
        try:
            server = await start_server(self.settings.websub_listen, self._verification,
                                        self._delivery)
            try:
                self.listening = server.address
                server.task.add_done_callback(lambda _: self._wake.set())
                await self._serve(client, server.task)
            finally:
                await self._unsubscribe_all(client)
                self.listening = None
                await server.stop()
        finally:
            await client.aclose()

    async def _serve(self, client: httpx.AsyncClient, serving: asyncio.Task[None]) -> None:
        fetcher = HttpFetcher(client, FetchLimits(), resolver=self._resolver)
        self._hub_slots = FetchLimits(per_host=2, total=10)
        self._subs, self._by_token = {}, {}
        for feed in self._feeds:
            sub = _Subscription(feed.id, str(feed.url),
                                self._allow_private or feed.allow_private_network,
                                token=secrets.token_urlsafe(24), secret=secrets.token_hex(32))
            self._subs[feed.id], self._by_token[sub.token] = sub, sub
        # Discovery and the first subscriptions, then connected(): its catch-up ring comes
        # once push works, so nothing falls between that poll and the first delivery. Slow
        # feeds or hubs delay it by verify_wait_seconds at most (a later activation rings
        # its own source).
        deadline = time.monotonic() + self.verify_wait_seconds
        first = asyncio.ensure_future(self._run_due(client, fetcher))
        try:
            await asyncio.wait({first}, timeout=self.verify_wait_seconds)
            await self._await_verifications(deadline)
            self.connected()
            self._announced = True
            await first
        finally:
            first.cancel()
        with_hub = [s for s in self._subs.values() if s.hub]
        log.info("push.websub_discovered", connection=self.key, with_hub=len(with_hub),
                 without_hub=len(self._subs) - len(with_hub))
        while True:
            if serving.done():
                raise RuntimeError("the callback server stopped")
            now = time.monotonic()
            wait = min((s.due for s in self._subs.values()), default=now + 3600.0) - now
            self._wake.clear()
            if wait > 0:
                await aio.wait_event(self._wake, min(wait, 3600.0))
            await self._run_due(client, fetcher)

    async def _await_verifications(self, deadline: float) -> None:
        while any(s.state in ("new", "pending") for s in self._subs.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            await aio.wait_event(self._wake, left)

    async def _run_due(self, client: httpx.AsyncClient, fetcher: HttpFetcher) -> None:
        now = time.monotonic()
        due = [s for s in self._subs.values() if s.due <= now]
        if due:
            await asyncio.gather(*(self._step(s, client, fetcher, now) for s in due))
        for s in due:  # a step that set no next time must not make the loop spin
            if s.due <= now:
                s.due = now + 1.0

    async def _step(self, sub: _Subscription, client: httpx.AsyncClient,
                    fetcher: HttpFetcher, now: float) -> None:
        try:
            if sub.state == "active" and now >= sub.expires_at:
                sub.state = "failed"
                sub.problem = "the lease ran out before a renewal was verified"
            if sub.state == "pending" and now >= sub.pending_since + self.verify_timeout_seconds:
                self._failed(sub, "the hub never verified the subscription")
            elif sub.state == "active":
                await self._request(sub, client, "subscribe")  # the renewal
            elif sub.state in ("new", "nohub", "failed", "denied"):
                await self._establish(sub, client, fetcher)
        except Exception as exc:  # one feed's trouble never ends the others' subscriptions
            self._failed(sub, describe(exc))
        finally:
            self._wake.set()  # whoever waits on the states looks again

    async def _establish(self, sub: _Subscription, client: httpx.AsyncClient,
                         fetcher: HttpFetcher) -> None:
        try:
            found = await discover(fetcher, sub.feed_url, source_id=sub.source_id,
                                   allow_private=sub.allow_private)
        except DiscoveryError as exc:
            self._failed(sub, f"discovery failed: {exc}")
            return
        if found.hub is None:
            sub.hub, sub.topic, sub.state, sub.problem = None, None, "nohub", ""
            sub.due = time.monotonic() + self.rediscover_seconds
            self._set_pushed(sub.source_id, False)
            return
        sub.hub, sub.topic = found.hub, found.topic
        self._set_pushed(sub.source_id, True)
        await self._request(sub, client, "subscribe")

    async def _request(self, sub: _Subscription, client: httpx.AsyncClient, mode: str) -> bool:
        """POST the hub; a renewal keeps an active subscription active meanwhile."""
        assert sub.hub is not None and sub.topic is not None
        renewing = sub.state == "active"
        if not renewing and mode == "subscribe":
            sub.state, sub.pending_since = "pending", time.monotonic()
        form = {"hub.mode": mode, "hub.topic": sub.topic,
                "hub.callback": f"{self._callback}/{sub.token}"}
        if mode == "subscribe":
            form["hub.secret"] = sub.secret
            form["hub.lease_seconds"] = str(self.settings.websub_lease_seconds)
        hub = httpx.URL(sub.hub)
        # The client's pinned transport refuses a non-global hub address at connect time (no
        # second resolution: rebinding cannot slip in); a pin lets the simulator's through.
        pin = (Pin(hub.host, hub.port or (443 if hub.scheme == "https" else 80), None,
                   self._resolver or system_resolver, sub.source_id)
               if sub.allow_private else None)
        try:
            async with self._hub_slots.slot(hub.host):  # a thousand feeds, one hub: politely
                with pinned(pin) if pin is not None else contextlib.nullcontext():
                    resp = await client.post(sub.hub, data=form, timeout=10.0)
        except (httpx.HTTPError, SourceError) as exc:
            if mode == "subscribe":
                self._failed(sub, f"the hub {httpx.URL(sub.hub).host} is unreachable: "
                             f"{type(exc).__name__}", keep_active=renewing)
            return False
        if not 200 <= resp.status_code < 300:
            if mode == "subscribe":
                self._failed(sub, f"the hub {httpx.URL(sub.hub).host} answered HTTP "
                             f"{resp.status_code}", keep_active=renewing)
            return False
        if mode == "subscribe":
            # Wait for the verification; a renewal that never comes is noticed at expiry.
            started = time.monotonic()
            sub.due = (min(sub.expires_at, started + self.verify_timeout_seconds)
                       if renewing else started + self.verify_timeout_seconds)
            if not renewing:
                sub.pending_since = started
        return True

    def _failed(self, sub: _Subscription, problem: str, *, keep_active: bool = False) -> None:
        sub.failures += 1
        wait = backoff_delay(sub.failures, base=self.retry_base_seconds,
                             cap=self.retry_cap_seconds, rng=self.rng)
        sub.problem = problem
        if keep_active and time.monotonic() < sub.expires_at:
            sub.due = min(time.monotonic() + wait, sub.expires_at)
        else:
            sub.state = "failed" if sub.state != "denied" else "denied"
            sub.due = time.monotonic() + wait
        log.warning("push.websub_subscription_failed", connection=self.key,
                    source=sub.source_id, error=problem, failures=sub.failures,
                    retry_in_s=round(wait, 1), note="the feed is polled meanwhile")

    def _set_pushed(self, source_id: str, on: bool) -> None:
        ids = set(self.source_ids) - {source_id}
        if on:
            ids.add(source_id)
        self.source_ids = tuple(f.id for f in self._feeds if f.id in ids)

    # -- the callback server's two answers -------------------------------------------------
    def _verification(self, token: str, query: dict[str, str]) -> tuple[int, str]:
        """A hub's verification GET: ``(status, body)``."""
        sub = self._by_token.get(token)
        mode, topic = query.get("hub.mode", ""), query.get("hub.topic", "")
        challenge = query.get("hub.challenge", "")
        if sub is None or not topic or topic != sub.topic:
            return 404, ""
        now = time.monotonic()
        if mode == "denied" and sub.state in _LISTENING:
            sub.state = "denied"
            self._failed(sub, "the hub denied the subscription")
            self._wake.set()
            return 200, ""
        if not challenge:
            return 404, ""
        if mode == "subscribe" and sub.state in _LISTENING:
            lease_text = query.get("hub.lease_seconds", "")
            lease = (float(lease_text) if lease_text.isdigit() and int(lease_text) > 0
                     else float(self.settings.websub_lease_seconds))
            became_active = sub.state != "active"
            sub.state, sub.failures, sub.problem = "active", 0, ""
            sub.expires_at = now + lease
            sub.renew_at = now + max(0.8 * lease, self.min_renew_seconds)
            sub.due = sub.renew_at
            if became_active:
                log.info("push.websub_subscribed", connection=self.key, source=sub.source_id,
                         hub=httpx.URL(sub.hub or "").host, lease_s=int(lease))
                if self._announced:  # the catch-up for what came before push worked
                    self._send(Doorbell((sub.source_id,), reason="connected", via=self.key))
            self._wake.set()
            return 200, challenge
        if mode == "unsubscribe" and sub.state == "unsubscribing":
            sub.state = "gone"
            self._wake.set()
            return 200, challenge
        return 404, ""

    def _delivery(self, token: str, signature: str | None, body: bytes) -> int:
        """A hub's content distribution: ring the source if it is signed with its secret."""
        sub = self._by_token.get(token)
        if sub is None:
            return 404
        if sub.state in _LISTENING and signature_ok(sub.secret, signature, body):
            self.pushed((sub.source_id,))
        else:
            log.debug("push.websub_delivery_ignored", connection=self.key,
                      source=sub.source_id, reason="missing or wrong signature")
        return 202

    # -- on the way out --------------------------------------------------------------------
    async def _unsubscribe_all(self, client: httpx.AsyncClient) -> None:
        held = [s for s in self._subs.values() if s.state in _LISTENING and s.hub]
        if not held:
            return
        for s in held:
            s.state = "unsubscribing"
        deadline = time.monotonic() + self.unsubscribe_timeout_seconds
        with contextlib.suppress(Exception):
            await aio.wait_for(
                asyncio.gather(*(self._request(s, client, "unsubscribe") for s in held),
                               return_exceptions=True),
                self.unsubscribe_timeout_seconds)
        # The hubs verify an unsubscription with a GET to this (still running) server.
        while any(s.state == "unsubscribing" for s in held):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            await aio.wait_event(self._wake, left)
