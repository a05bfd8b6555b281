"""Publisher adapters: one per platform, each implementing ``ports.Publisher``.

Credential roles (``channels.yaml`` maps each role to the name of an environment variable):

==========  ==========================================================  ==================
platform    required roles                                              optional roles
==========  ==========================================================  ==================
x           consumer_key, consumer_secret, access_token,                 -
            access_token_secret (OAuth 1.0a user context)
facebook    page_token (a Page access token)                            page_id (else the
                                                                        channel ``account``;
                                                                        the numeric Page id)
mastodon    access_token (scopes write:statuses, read)                  -
bluesky     app_password                                                identifier (else the
                                                                        channel ``account``)
==========  ==========================================================  ==================

Base URLs default to the public APIs (``https://api.twitter.com``,
``https://graph.facebook.com``, ``https://bsky.social``); Mastodon uses the channel's
``base_url`` or the host of an ``@name@host`` account. Set ``base_url`` on a channel to point it
at a staging proxy or the loopback simulator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from crisiscomms.adapters.publishers.dryrun import DryRunPublisher, DryRunRecord
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import Platform

if TYPE_CHECKING:
    import httpx

    from crisiscomms.adapters.publishers.bluesky import BlueskyPublisher
    from crisiscomms.adapters.publishers.facebook import FacebookPublisher
    from crisiscomms.adapters.publishers.mastodon import MastodonPublisher
    from crisiscomms.adapters.publishers.x import XPublisher
    from crisiscomms.adapters.xhttp import mount_base_url
    from crisiscomms.domain.config import ChannelConfig
    from crisiscomms.ports import Clock, Publisher

# Each platform's adapter (and its SDK: tweepy and requests for X) is imported when a publisher
# of that platform is built or one of these names is first used, not with the package: a dry
# run, a command that only checks credentials, or a channel whose credentials are missing
# loads none of them.
_LAZY = {
    "BlueskyPublisher": "crisiscomms.adapters.publishers.bluesky",
    "FacebookPublisher": "crisiscomms.adapters.publishers.facebook",
    "MastodonPublisher": "crisiscomms.adapters.publishers.mastodon",
    "XPublisher": "crisiscomms.adapters.publishers.x",
    "mount_base_url": "crisiscomms.adapters.xhttp",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "OPTIONAL_CREDENTIALS",
    "REQUIRED_CREDENTIALS",
    "BlueskyPublisher",
    "DryRunPublisher",
    "DryRunRecord",
    "FacebookPublisher",
    "MastodonPublisher",
    "XPublisher",
    "build_publisher",
    "missing_credentials",
    "mount_base_url",
]

log = structlog.get_logger(__name__)

REQUIRED_CREDENTIALS: dict[Platform, tuple[str, ...]] = {
    Platform.X: ("consumer_key", "consumer_secret", "access_token", "access_token_secret"),
    Platform.FACEBOOK: ("page_token",),
    Platform.MASTODON: ("access_token",),
    Platform.BLUESKY: ("app_password",),
}
OPTIONAL_CREDENTIALS: dict[Platform, tuple[str, ...]] = {
    Platform.X: (),
    Platform.FACEBOOK: ("page_id",),
    Platform.MASTODON: (),
    Platform.BLUESKY: ("identifier",),
}


def missing_credentials(platform: Platform, credentials: dict[str, SecretStr]) -> list[str]:
    """The required roles of ``platform`` that are absent or empty in ``credentials``."""
    return [
        role
        for role in REQUIRED_CREDENTIALS[platform]
        if role not in credentials or not credentials[role].get_secret_value()
    ]


def build_publisher(
    channel: ChannelConfig,
    credentials: dict[str, SecretStr],
    *,
    clock: Clock,
    http_client: httpx.Client | None = None,
    dry_run: bool = False,
    timeout: float | None = None,
    facebook_graph_version: str | None = None,
) -> Publisher:
    """The publisher for ``channel``: a ``DryRunPublisher`` when ``dry_run`` or when a required
    credential is missing (logged as ``publisher.credentials_missing`` with role names only).

    ``credentials`` maps roles to resolved secrets. ``http_client`` is shared by the httpx
    adapters (Facebook, Mastodon, Bluesky) and then not closed by them; X always builds its
    own tweepy client, with ``timeout`` (seconds; the httpx adapters take theirs from
    ``http_client``). Raises ``ConfigError`` when a channel cannot be addressed at all
    (a Mastodon channel with neither ``base_url`` nor an ``@name@host`` account) or when
    ``facebook_graph_version`` (the ``facebook_graph_version`` setting; the adapter's current
    default when ``None``) is not like ``v27.0``.
    """
    if dry_run:
        return DryRunPublisher(channel.id, clock)
    missing = missing_credentials(channel.platform, credentials)
    if missing:
        log.warning(
            "publisher.credentials_missing",
            channel=channel.id,
            platform=str(channel.platform),
            roles=missing,
        )
        return DryRunPublisher(channel.id, clock)
    base = channel.base_url
    if channel.platform is Platform.X:
        from crisiscomms.adapters.publishers import x

        if timeout:
            return x.XPublisher(channel.id, credentials=credentials, clock=clock,
                                account=channel.account, base_url=base or x.DEFAULT_BASE_URL,
                                timeout=(min(5.0, timeout), timeout))
        return x.XPublisher(channel.id, credentials=credentials, clock=clock,
                            account=channel.account, base_url=base or x.DEFAULT_BASE_URL)
    if channel.platform is Platform.FACEBOOK:
        from crisiscomms.adapters.publishers import facebook

        page = credentials.get("page_id")
        page_id = page.get_secret_value() if page is not None else channel.account
        return facebook.FacebookPublisher(
            channel.id,
            page_id=page_id,
            credentials=credentials,
            clock=clock,
            client=http_client,
            base_url=base or facebook.DEFAULT_BASE_URL,
            graph_version=facebook_graph_version or facebook.DEFAULT_GRAPH_VERSION,
        )
    if channel.platform is Platform.MASTODON:
        from crisiscomms.adapters.publishers import mastodon

        instance = base or mastodon.instance_url(channel.account)
        if not instance:
            raise ConfigError(
                f"channel {channel.id}: mastodon needs base_url or an account like @name@host"
            )
        return mastodon.MastodonPublisher(
            channel.id, base_url=instance, credentials=credentials, clock=clock, client=http_client
        )
    from crisiscomms.adapters.publishers import bluesky

    ident = credentials.get("identifier")
    identifier = ident.get_secret_value() if ident is not None else channel.account.lstrip("@")
    return bluesky.BlueskyPublisher(
        channel.id,
        identifier=identifier,
        credentials=credentials,
        clock=clock,
        client=http_client,
        base_url=base or bluesky.DEFAULT_BASE_URL,
    )
