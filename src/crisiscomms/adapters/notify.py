"""Paging through Apprise (one library for e-mail, Teams, Slack, SMS gateways, ntfy, ...).

Each target is its own ``Apprise`` object so that one target's failure is told apart from
another's. A target is named for people by its number and kind only (``2 (mailto)``): an
Apprise URL carries tokens and passwords, so it never reaches a log line, an error, the
audit trail or ``status``. Every part of each URL that could be a credential is registered
with ``crisiscomms.logs.register_secrets``, and Apprise's own logger (and urllib3's, which
Apprise's HTTP plugins use) mask those values before any handler sees a record.

``send`` blocks (network I/O with short timeouts): the watcher calls it from a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

from crisiscomms.logs import RedactingFilter, redact_text, register_secrets

# Apprise's own logger, and the HTTP library loggers its plugins log request lines through.
_LOGGERS = ("apprise", "urllib3", "urllib3.connectionpool", "requests")
_URGENCY_TYPES = {"urgent": "failure", "high": "warning", "info": "info"}
_SEND_LOCK = threading.Lock()  # Apprise's log capture is process-wide: one send at a time


class _MaskSecrets(RedactingFilter):
    """Render the record and mask registered secrets before any handler (caplog included);
    drop any traceback (it could quote a URL): the message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        if record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True


def guard_loggers() -> None:
    """Install the masking filter on Apprise's logger and the HTTP loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MaskSecrets) for f in logger.filters):
            logger.addFilter(_MaskSecrets())
    apprise_logger = logging.getLogger("apprise")
    if apprise_logger.level == logging.NOTSET and \
            logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # "Notifying 1 service(s)." on every page: our own notify.sent says it (and more).
        apprise_logger.setLevel(logging.WARNING)


def url_secrets(url: str) -> list[str]:
    """Every part of an Apprise URL that may be a credential: the whole URL, the password,
    and each user name, path segment and query value of 8 characters or more (any length from
    4 for a parameter whose name says secret: ``pass``, ``token``, ``key``, ``auth`` ...), as
    written, percent-decoded and query-decoded. Left readable (they are not secrets, and
    masking them would mask them in every log line): host names, ports, IP addresses, e-mail
    addresses, numbers, and the values of Apprise's ordinary options (``smtp``, ``mode``,
    ``from``, ``to``, ``format`` ...)."""
    out = [url]
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return out
    if password:
        out.append(password)
    pieces = [user or ""] + [p for p in parts.path.split("/") if p]
    secret_values: list[str] = []
    for pair in parts.query.split("&"):
        raw_key, _, raw_value = pair.partition("=")
        key = unquote_plus(raw_key).lower()
        if key in _PLAIN_OPTIONS or not raw_value:
            continue
        values = [raw_value, unquote_plus(raw_value)]
        (secret_values if _SECRET_PARAM.search(key) else pieces).extend(values)
    if parts.netloc and parts.scheme.lower() not in _HOST_SCHEMES:
        # e.g. slack://T000/B000/XXXX or pover://USER@TOKEN: the "host" is a token (its
        # case kept: urlsplit's hostname is lowercased)
        pieces.append(parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0])
    out += [p for p in pieces if len(p) >= 8 and not _plain(p)]
    out += [v for v in secret_values if len(v) >= 4]
    out += [unquote(v) for v in out if unquote(v) != v]
    return list(dict.fromkeys(out))


# Apprise options whose values are never credentials.
_PLAIN_OPTIONS = frozenset({
    "smtp", "mode", "from", "to", "cc", "bcc", "name", "format", "overflow", "cto", "rto",
    "verify", "method", "priority", "image", "footer", "timestamp", "blocks", "retry", "wait",
    "optional", "reply", "tags", "lang", "emojis", "tz", "port", "host", "avatar", "mention",
    "color", "discovery", "pgp", "storage", "store"})
# Schemes whose netloc is a host name (everything else may carry a token there).
_HOST_SCHEMES = frozenset({"json", "jsons", "xml", "xmls", "form", "forms", "mailto",
                           "mailtos", "ntfy", "ntfys", "gotify", "gotifys", "matrix",
                           "matrixs", "mmost", "mmosts", "rocket", "rockets"})
_NUMBERLIKE = frozenset("0123456789.:")
# Query parameters whose value is a credential however short (Apprise's pass=, token=, key=,
# apikey=, secret=, auth=, webhook= ...): masked from 4 characters (the shortest the log
# redaction masks at all).
_SECRET_PARAM = re.compile(r"pass|pw|token|secret|key|auth|sig|jwt|cred|webhook|hook",
                           re.IGNORECASE)


def _plain(value: str) -> bool:
    """An IP address, a number, an e-mail address or a host name with a port: not a secret."""
    text = unquote(value)
    if set(text) <= _NUMBERLIKE:
        return True
    if "@" in text and "." in text.rsplit("@", 1)[-1]:
        return True
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def with_timeouts(url: str, timeout: float) -> str:
    """The URL with Apprise's connect/read timeouts (``cto``/``rto``) unless it sets them."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {k for k, _ in query}
    query += [(k, f"{timeout:g}") for k in ("cto", "rto") if k not in names]
    return urlunsplit(parts._replace(query=urlencode(query, safe="@:/,")))


def secrets_of(url: str, timeout: float) -> list[str]:
    """What to mask for one target: the parts of its URL as configured and as Apprise is given
    it (``with_timeouts`` re-encodes the query: ``=`` in a padded base64 token becomes
    ``%3D``)."""
    return list(dict.fromkeys([*url_secrets(url), *url_secrets(with_timeouts(url, timeout))]))


@dataclass(frozen=True)
class _Target:
    label: str
    apprise: Any  # apprise.Apprise, or None when the URL is not one Apprise understands
    problem: str = ""


class AppriseNotifier:
    """The on-call team's targets, from ``CRISISCOMMS_NOTIFY_URLS``."""

    def __init__(self, urls: Sequence[SecretStr], *, timeout: float = 10.0) -> None:
        with warnings.catch_warnings():
            # Apprise's e-mail plugin imports the stdlib's deprecated imghdr (for PGPy) when
            # its plugins load: a vendor's deprecation, not ours.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._build(urls, timeout)

    def _build(self, urls: Sequence[SecretStr], timeout: float) -> None:
        import apprise
        from apprise import AppriseAsset
        from apprise.common import PersistentStoreMode

        guard_loggers()
        raw = [u.get_secret_value() for u in urls]
        for url in raw:
            register_secrets(secrets_of(url, timeout))
        # No persistent cache on disk (the service's file system is read-only but for its
        # data dir).
        asset = AppriseAsset(storage_mode=PersistentStoreMode.MEMORY)
        self.targets: list[_Target] = []
        for n, url in enumerate(raw, start=1):
            kind = url.split("://", 1)[0].lower() if "://" in url else "?"
            label = f"{n} ({kind})"
            obj = apprise.Apprise(asset=asset)
            if not obj.add(with_timeouts(url, timeout)):
                self.targets.append(_Target(label, None, "not a URL Apprise understands "
                                                         "(see its list of services)"))
            else:
                self.targets.append(_Target(label, obj))

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.targets]

    def send(self, title: str, body: str, urgency: str) -> list[tuple[str, bool, str]]:
        """Send to every target: ``(label, delivered, why not)`` each. Never raises for a
        target's failure; the reason is Apprise's warning, with any secret masked."""
        from apprise import LogCapture, NotifyFormat, NotifyType

        notify_type = NotifyType(_URGENCY_TYPES.get(urgency, "info"))
        out: list[tuple[str, bool, str]] = []
        with _SEND_LOCK:
            for t in self.targets:
                if t.apprise is None:
                    out.append((t.label, False, t.problem))
                    continue
                try:
                    with LogCapture(  # type: ignore[no-untyped-call]
                            level=logging.WARNING, fmt="%(message)s") as captured:
                        ok = bool(t.apprise.notify(body=body, title=title,
                                                   notify_type=notify_type,
                                                   body_format=NotifyFormat.TEXT))
                        text = captured.getvalue()
                except Exception as exc:  # a plugin's bug must not end the watcher's chore
                    ok, text = False, f"{type(exc).__name__}: {exc}"
                why = "" if ok else _reason(text)
                out.append((t.label, ok, why))
        return out


def _reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return redact_text(lines[-1] if lines else "not delivered")[:200]
