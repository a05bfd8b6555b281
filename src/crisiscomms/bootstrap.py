"""The composition root: the one place that builds settings, clock, store, adapters and the
run loop. Nothing else in the package constructs an adapter or does I/O at import time; the
drill comes through here too, passing its own clock, credentials, catalog, rng and sleep."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from crisiscomms.domain.clock import AtClock, SystemClock, is_naive, parse_local_instant
from crisiscomms.domain.errors import ConfigError, StoreError
from crisiscomms.domain.models import SourceKind, WatcherInfo
from crisiscomms.logs import get_logger
from crisiscomms.ports import Clock, Credentials, Publisher, PushListener, Source, Store
from crisiscomms.services.reload import RELOAD_SECONDS

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

    from crisiscomms.domain.config import Catalog
    from crisiscomms.services.dispatch import Dispatcher, DispatchStats
    from crisiscomms.services.runloop import Chore, RunLoop
    from crisiscomms.services.watch import CycleStats, Watcher
    from crisiscomms.settings import Settings

# What the watcher needs (httpx, asyncio, the adapters, the watch and dispatch services) is
# imported where it is built, never here: every command goes through this module, and
# `status` or `queue list` must not pay for the watcher's imports (see tests/core/
# test_cli_imports.py).
log = get_logger(__name__)


def default_operator(trust_sudo_user: bool = False) -> str:
    """The operator is the real OS user (``getuid``'s passwd entry), never ``$USER`` or
    ``$LOGNAME``, which anyone can set. ``SUDO_USER`` is honoured only when the real user is
    root (only root can run sudo's child with it) and the policy says ``trust_sudo_user``."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        name = f"uid:{uid}"
    sudo_user = os.environ.get("SUDO_USER", "").strip()
    if uid == 0 and trust_sudo_user and sudo_user:
        return sudo_user
    return name


def make_clock(at: str | None, tz: tzinfo | Callable[[], tzinfo] | None = None, *,
               live_ok: bool = False) -> Clock:
    """``--at`` / ``CRISISCOMMS_AT`` freeze the clock at an instant (``AtClock``: the operator
    check refuses changes with it on a live database unless ``live_ok``); otherwise the system
    clock. A naive instant means wall time in ``tz`` (the policy's zone; a callable is asked
    only then), UTC if none is given; an offset or ``Z`` is honoured."""
    if not at:
        return SystemClock()
    try:
        zone: tzinfo = UTC
        if is_naive(at) and tz is not None:
            zone = tz() if callable(tz) else tz
        return AtClock(parse_local_instant(at, zone), text=at.strip(), live_ok=live_ok)
    except ValueError:
        raise ConfigError(f"--at: {at!r} is not an ISO-8601 instant "
                          "(e.g. 2026-11-27T18:00:00Z)") from None


def ensure_home(home: Path) -> Path:
    """Create the data dir 0700 (and tighten it if it exists). A team's data dir, setgid and
    group-rwx (the service unit's ``StateDirectoryMode=2770``), is kept so, less any "other"
    bits: the service and the on-call officers in its group share one database."""
    import grp
    import pwd
    import stat

    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = home.stat()
    except OSError as exc:
        raise StoreError(f"{home}: cannot create data dir: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.getuid():
        wanted = mode & 0o2770 if shared_dir_mode(mode) else 0o700
        if wanted != mode:
            try:
                os.chmod(home, wanted)
            except OSError as exc:
                raise StoreError(f"{home}: cannot set the data dir's mode: {exc.strerror}") \
                    from None
    elif not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        def name(lookup: Callable[[int], Any], ident: int) -> str:
            try:
                return str(lookup(ident)[0])
            except KeyError:
                return str(ident)

        owner, group = name(pwd.getpwuid, st.st_uid), name(grp.getgrgid, st.st_gid)
        raise StoreError(f"{home}: permission denied (owned by {owner}, group {group}, mode "
                         f"{mode:04o}): on-call officers must be members of group {group} "
                         f"(and log in again), or use the database through PostgreSQL")
    return home


def shared_dir_mode(mode: int) -> bool:
    """A team's data dir: setgid (new files take its group) and group read-write-search."""
    return mode & 0o2070 == 0o2070


def open_store(database_url: str, **options: Any) -> Store:
    """``adapters.store.open_store``, its adapters imported when a command opens the store."""
    from crisiscomms.adapters import store

    return store.open_store(database_url, **options)


class EnvCredentials:
    """Channel secrets from the environment, ``.env`` or secret files (never playbooks)."""

    def get(self, env_name: str) -> SecretStr | None:
        from crisiscomms.settings import channel_secret

        return channel_secret(env_name)


class MappingCredentials:
    """Channel secrets from a mapping (a drill's own, for the simulator)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, env_name: str) -> SecretStr | None:
        value = self._values.get(env_name)
        return SecretStr(value) if value else None


@dataclass
class App:
    """Everything a command needs, built lazily so `--help` and `playbooks validate` stay cheap.

    ``catalog``, ``credentials``, ``rng`` and ``sleep`` may be given (the drill does); by default
    they come from the settings, the environment and the system."""

    settings: Settings
    clock: Clock
    given_catalog: Catalog | None = None
    # Open push connections: by default only a watcher of the playbooks folder on the real
    # clock (not a drill, not --at); a benchmark on the real clock may ask for them.
    push: bool | None = None
    credential_source: Credentials = field(default_factory=EnvCredentials)
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] | None = None
    _closers: list[Any] = field(default_factory=list)
    _catalog: Catalog | None = None

    @cached_property
    def store(self) -> Store:
        if not self.settings.database_url:
            ensure_home(self.settings.home)
        url = self.settings.resolved_database_url
        password = urlsplit(url).password if "://" in url else None
        if password:
            from crisiscomms.logs import register_secrets

            register_secrets([SecretStr(password)])
        key = self.settings.audit_key
        if key is not None:
            from crisiscomms.logs import register_secrets

            register_secrets([key])
        store = open_store(url, pool_size=self.settings.database_pool_size, audit_key=key)
        self._closers.append(store.close)
        return store

    @property
    def catalog(self) -> Catalog:
        """The playbooks. A command reads them partially (a broken file other than the
        policy fails only the commands that read it, naming its line); the watcher loads
        them strictly (``strict_catalog``) and follows their changes (``use_catalog``)."""
        if self._catalog is None:
            from crisiscomms.adapters.playbooks import load_catalog

            self._catalog = self.given_catalog or load_catalog(self.settings.playbooks_dir,
                                                               partial=True)
        return self._catalog

    def strict_catalog(self) -> Catalog:
        """The whole catalogue, every file valid (what a watcher runs on)."""
        if self.given_catalog is not None:
            return self.given_catalog
        from crisiscomms.adapters.playbooks import broken_files, load_catalog

        if self._catalog is None or broken_files(self._catalog):
            self._catalog = load_catalog(self.settings.playbooks_dir)
        return self._catalog

    def use_catalog(self, catalog: Catalog) -> None:
        """A reloaded catalogue: what every later read of ``catalog`` sees."""
        self._catalog = catalog

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"

    @cached_property
    def tls_context(self) -> ssl.SSLContext:
        """The certificate store the HTTP clients verify against, loaded once (each load of
        the CA bundle costs 20-40 ms of CPU, and a watcher has several clients): httpx's
        own default, ignoring ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as the source client does."""
        import httpx

        return httpx.create_ssl_context(trust_env=False)

    def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()

    # -- adapters -------------------------------------------------------------------
    def credentials(self, channel_id: str, catalog: Catalog | None = None) -> dict[str, Any]:
        channel = (catalog or self.catalog).channels[channel_id]
        out = {}
        for role, env_name in channel.credentials.items():
            value = self.credential_source.get(env_name)
            if value is not None:
                out[role] = value
        return out

    def missing_credentials(self, channel_id: str, creds: dict[str, Any] | None = None,
                            catalog: Catalog | None = None) -> list[str]:
        """The environment variables a channel needs that are unset (names, never values);
        ``creds``: the channel's credentials when already read."""
        from crisiscomms.adapters.publishers import missing_credentials

        channel = (catalog or self.catalog).channels[channel_id]
        found = self.credentials(channel_id, catalog) if creds is None else creds
        missing = missing_credentials(channel.platform, found)
        return [channel.credentials.get(role, role) for role in missing]

    def build_publishers(self, *, dry_run: bool, catalog: Catalog | None = None,
                         only: set[str] | None = None) -> dict[str, Publisher]:
        """The publishers of the catalogue's channels (``only``: of those channels)."""
        import httpx

        from crisiscomms.adapters.publishers import build_publisher
        from crisiscomms.adapters.publishers.unavailable import UnavailablePublisher
        from crisiscomms.logs import register_secrets

        # The publishers' client honours SSL_CERT_FILE/SSL_CERT_DIR (httpx's trust_env); only
        # when neither is set is its certificate store the shared one (then it is the same).
        env_store = os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")
        client = httpx.Client(timeout=self.settings.dispatch.timeout_seconds,
                              follow_redirects=False,
                              verify=True if env_store else self.tls_context)
        self._closers.append(client.close)
        publishers: dict[str, Publisher] = {}
        catalog = catalog or self.catalog
        for channel in catalog.channels.values():
            if only is not None and channel.id not in only:
                continue
            creds = self.credentials(channel.id, catalog)
            register_secrets(creds.values())
            base = self.settings.channel_base_urls.get(channel.id) or channel.base_url
            channel = channel.model_copy(update={"base_url": base})
            missing = self.missing_credentials(channel.id, creds, catalog)
            if missing and not (dry_run or self.settings.dry_run):
                # Loudly broken, never a silent dry run (its posts would count as published).
                log.error("publisher.credentials_missing", channel=channel.id, unset=missing)
                publishers[channel.id] = UnavailablePublisher(
                    channel.id, f"credentials missing for channel {channel.id} "
                                f"({', '.join(missing)} unset)")
                continue
            pub = build_publisher(channel, creds, clock=self.clock, http_client=client,
                                  dry_run=dry_run or self.settings.dry_run,
                                  timeout=self.settings.dispatch.timeout_seconds,
                                  facebook_graph_version=self.settings.facebook_graph_version)
            self._closers.append(pub.close)
            publishers[channel.id] = pub
        return publishers

    def build_sources(self, *, catalog: Catalog | None = None,
                      base_urls: dict[str, str] | None = None,
                      start_parsers: bool = True) -> tuple[list[Source], Any]:
        """The source adapters and a closer for the resources they share. ``start_parsers``
        boots the feed parser workers now (a long-running watcher: its first update is parsed
        without waiting for one); otherwise a worker starts at the first body to parse."""
        from crisiscomms.adapters.sources import build_sources
        from crisiscomms.adapters.sources.http import FetchLimits, make_async_client
        from crisiscomms.adapters.sources.parsing import FeedParserPool

        catalog = catalog or self.catalog
        polling = self.settings.polling
        client = make_async_client(timeout=polling.timeout_seconds, verify=self.tls_context)
        parser = FeedParserPool()
        configs = list(catalog.sources.values())
        if self.settings.allow_private_sources:
            configs = [c.model_copy(update={"allow_private_network": True}) for c in configs]
        x_token = self.settings.x_bearer_token
        if x_token is not None:
            from crisiscomms.logs import register_secrets

            register_secrets([x_token])

        def x_factory() -> Any:
            import requests
            import tweepy

            if x_token is None:
                raise ConfigError("CRISISCOMMS_X_BEARER_TOKEN is not set: X sources cannot "
                                  "be polled")
            return tweepy.Client(bearer_token=x_token.get_secret_value(),
                                 return_type=requests.Response, wait_on_rate_limit=False)

        has_x = any(str(c.kind) == "x" for c in configs)
        try:
            sources = build_sources(
                [c for c in configs if str(c.kind) != "x" or x_token is not None],
                client=client, parser=parser, x_client_factory=x_factory,
                limits=FetchLimits(per_host=polling.per_host, total=polling.concurrency),
                base_urls=base_urls or self.settings.source_base_urls,
                credentials=self.credential_source, x_backfill=x_backfill(catalog),
                x_cap_reset_day=self.settings.x_cap_reset_day, start_parsers=start_parsers)
        except BaseException:
            parser.close()
            raise
        if has_x and x_token is None:
            sources.append(MissingCredentialSource(
                "x", tuple(c.id for c in configs if str(c.kind) == "x"),
                "CRISISCOMMS_X_BEARER_TOKEN is not set: X sources cannot be polled"))

        async def close() -> None:
            await client.aclose()
            parser.close()

        return sources, close

    def watcher(self, sources: list[Source], *, push: bool = False) -> Watcher:
        """The watcher; with ``push`` it opens the push connections the catalogue and the
        settings allow (a watcher on the real clock only: a drill's clock is not the world's)."""
        from crisiscomms.services.watch import Watcher

        return Watcher(store=self.store, catalog=self.catalog, sources=sources,
                       settings=self.settings.polling, rng=self.rng, owner=self.worker_id,
                       push=self.settings.push,
                       listeners=self.push_listeners if push else None, clock=self.clock)

    def push_listeners(self, catalog: Catalog) -> list[PushListener]:
        """The push connections for ``catalog`` (``adapters.sources.push``)."""
        from crisiscomms.adapters.sources.push import PushContext, build_push_listeners

        token = self.settings.mastodon_stream_token
        if token is not None:
            from crisiscomms.logs import register_secrets

            register_secrets([token])
        ctx = PushContext(self.settings.push, base_urls=self.settings.source_base_urls,
                          mastodon_token=token,
                          allow_private=self.settings.allow_private_sources)
        return list(build_push_listeners(list(catalog.sources.values()), ctx))

    def dispatcher(self, publishers: dict[str, Publisher]) -> Dispatcher:
        from crisiscomms.services.dispatch import Dispatcher

        return Dispatcher(store=self.store, catalog=self.catalog, publishers=publishers,
                          settings=self.settings.dispatch, worker_id=self.worker_id,
                          rng=self.rng, sleep=self.sleep, clock=self.clock)

    @contextlib.asynccontextmanager
    async def run_loop(self, *, dry_run: bool, reload_seconds: float = RELOAD_SECONDS,
                       once: bool = False) -> AsyncIterator[RunLoop]:
        """The watcher's run loop with every adapter it needs; closes them afterwards. Unless
        the catalogue was given (a drill), the loop follows its playbooks folder (its files
        looked at every ``reload_seconds``).

        A long-running loop gets ready for its first update at start (the parser workers
        booted, twitter-text imported: issue 14's latency includes the first update). A
        ``once`` loop (``watch --once``, a cron-style single cycle) pays only for what its one
        cycle uses: a parser worker starts when a feed body must be parsed (none when every
        feed answers 304), twitter-text is imported when a post is composed."""
        from crisiscomms.services.runloop import RunLoop

        folder = None
        running: dict[str, str] | None = None
        if self.given_catalog is None:
            from crisiscomms.adapters.playbooks import PlaybookFiles

            folder = PlaybookFiles(self.settings.playbooks_dir)
            running = folder.digests()  # read before the load: a change meanwhile is seen
        self.strict_catalog()  # a watcher runs on a wholly valid catalogue
        sources, closer = self.build_sources(start_parsers=not once)
        closers = [closer]
        loop: RunLoop | None = None
        try:
            publishers = self.build_publishers(dry_run=dry_run)
            from crisiscomms.services.notices import build_notice_chores

            pager = build_notice_chores(self)  # none without notify URLs or the real clock
            identity = WatcherInfo(self.worker_id, socket.gethostname(), os.getpid(),
                                   self.clock.now(), self.clock.now(), pages=bool(pager))
            push = self.push if self.push is not None else (
                self.given_catalog is None and self.settings.at is None)
            loop = RunLoop(store=self.store, clock=self.clock,
                           watcher=self.watcher(sources, push=push),
                           dispatcher=self.dispatcher(publishers), identity=identity,
                           rng=self.rng, chores=[*pager])
            if self.settings.audit_key is not None:
                from crisiscomms.services.audit_seal import AuditSealer

                loop.chores.append(AuditSealer(self.store, owner=self.worker_id))
            if not once:
                from crisiscomms.domain.posttext import warm_up

                warm_up()  # a long-running watcher imports now what its first relay needs
            if folder is not None:
                loop.chores.insert(0, self._reloader(folder, running, dry_run, closers,
                                                     reload_seconds))
            yield loop
        finally:
            current = [*loop.watcher.sources, *loop.watcher.pending_sources()] \
                if loop is not None else sources
            for src in current:
                with contextlib.suppress(Exception):
                    await src.aclose()
            for close in closers:
                with contextlib.suppress(Exception):
                    await close()

    def _reloader(self, folder: Any, running: dict[str, str] | None, dry_run: bool,
                  closers: list[Any], reload_seconds: float) -> Chore:
        """The chore that follows the playbooks folder (``services.reload``)."""
        from crisiscomms.services.reload import PlaybooksReloader

        def make_sources(catalog: Catalog) -> list[Source]:
            built, close = self.build_sources(catalog=catalog)
            closers.append(close)  # their shared client lives until the loop ends
            return built

        def make_publishers(catalog: Catalog, only: set[str]) -> dict[str, Publisher]:
            return self.build_publishers(dry_run=dry_run, catalog=catalog, only=only)

        return PlaybooksReloader(store=self.store, folder=folder, catalog=self.catalog,
                                 actor=self.worker_id, make_sources=make_sources,
                                 make_publishers=make_publishers, on_reload=self.use_catalog,
                                 interval_seconds=reload_seconds, running=running)


def x_backfill(catalog: Catalog) -> timedelta:
    """The longest backfill window of the playbooks that amplify X sources: how far back an X
    poll reads when its cursor is too old for recent search (a quiet week between incidents)."""
    minutes = [pb.backfill_minutes for pb in catalog.playbooks.values()
               if any(s.source in catalog.sources and
                      catalog.sources[s.source].kind is SourceKind.X for s in pb.sources)]
    return timedelta(minutes=max(minutes, default=120))


class MissingCredentialSource:
    """Stands in for a source that cannot run (no credentials): every poll fails clearly,
    so ``status`` shows it and the other sources keep flowing."""

    def __init__(self, key: str, source_ids: tuple[str, ...], message: str) -> None:
        self.key = key
        self.source_ids = source_ids
        self.message = message

    async def poll(self, state: Any, now: datetime) -> Any:
        from crisiscomms.domain.errors import PermanentSourceError

        raise PermanentSourceError(self.message, source_id=self.key,
                                   error_class="no_credentials")

    async def aclose(self) -> None:
        return None


def skip_httpx_cli() -> None:
    """``import httpx`` also loads httpx's own command-line client (``httpx._main``: click,
    rich and pygments, about 0.08 CPU-s, more than the rest of httpx) whenever they are
    installed, as they are here for our own CLI. No process of ours runs httpx's client, so
    httpx is told the extra is absent before anything imports it: its own fallback, an
    ``httpx.main`` that asks for ``httpx[cli]``. Nothing else of httpx changes."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def build_app(settings: Settings | None = None, clock: Clock | None = None) -> App:
    """Build the application from settings (environment, .env, YAML file)."""
    skip_httpx_cli()
    if settings is None:
        from crisiscomms.settings import Settings

        settings = Settings()
    return App(settings=settings, clock=clock or make_clock(settings.at))


async def run_watch(app: App, *, once: bool, dry_run: bool, tick_seconds: float = 2.0,
                    max_ticks: int | None = None) -> tuple[CycleStats, DispatchStats]:
    """The long-running job: poll due sources, then dispatch, until stopped."""
    from crisiscomms.services.runloop import stop_on_signals

    async with app.run_loop(dry_run=dry_run, once=once,
                            reload_seconds=min(tick_seconds, RELOAD_SECONDS)) as loop:
        with stop_on_signals() as stop:
            chain = app.store.verify_audit()
            # The head in the logs (journald, a log shipper) is a copy outside the database
            # that witnesses truncation: `audit verify --expect-head COUNT:HASH`.
            log.info("watch.started", sources=len(loop.watcher.sources),
                     channels=len(loop.dispatcher.publishers), dry_run=dry_run,
                     worker=app.worker_id, database=app.store.describe(),
                     audit_head=chain.head, audit_fully_checked=chain.fully_checked)
            if not chain.ok:
                log.error("audit.chain_broken", problem=chain.problem, bad_seq=chain.bad_seq)
            if app.settings.dispatch.test_only_short_leases:
                log.warning("settings.test_only_short_leases",
                            lease_seconds=app.settings.dispatch.lease_seconds,
                            note="for test suites and drills on the simulator only, never in "
                                 "production: a lease shorter than a send lets a second "
                                 "watcher take over a live send")
            try:
                result: tuple[CycleStats, DispatchStats] = await loop.run(
                    stop, once=once, tick_seconds=tick_seconds, max_ticks=max_ticks)
            finally:
                log.info("watch.stopped", worker=app.worker_id)
            if stop.signal == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C: an interruption (exit 130), not a clean stop
            return result
