"""The one way tweepy's traffic is redirected: tweepy hard-codes ``https://api.twitter.com``
(no host parameter), so a ``requests`` adapter mounted on ``client.session`` rewrites it to a
configured base URL (a staging proxy or the loopback simulator) and adds the timeout tweepy
never sets. Shared by the X source and the X publisher."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

X_API_HOST = "https://api.twitter.com"
DEFAULT_TIMEOUT = (5.0, 20.0)  # (connect, read) seconds


class BaseUrlAdapter(HTTPAdapter):
    """Sends ``https://api.twitter.com/...`` requests to ``base_url`` instead, with a timeout."""

    def __init__(self, base_url: str | None = None, *,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        base = base_url.rstrip("/") if base_url else None
        self.base_url = None if base == X_API_HOST else base
        self.default_timeout = timeout

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        """Rewrite the host part of the URL, then send as usual."""
        url = request.url or ""
        if self.base_url and url.startswith(X_API_HOST):
            # The OAuth 1.0a signature was computed over the api.twitter.com URL; a staging
            # proxy forwards it there unchanged, and the simulator does not check it.
            request = request.copy()
            request.url = self.base_url + url[len(X_API_HOST):]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, *args, **kwargs)


def mount_base_url(session: requests.Session, base_url: str | None = None, *,
                   timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
    """Route ``session``'s ``https://api.twitter.com`` traffic to ``base_url`` (``None``: keep
    the host and only add request timeouts)."""
    session.mount(X_API_HOST, BaseUrlAdapter(base_url, timeout=timeout))
