"""Logging: structlog JSON lines off a TTY, readable console output on one.

Secrets never reach the output: every value that is a ``SecretStr`` or looks like a
credential-bearing key is redacted, registered secret values are masked wherever they appear,
and the stdlib loggers that log request headers (``tweepy.client``, ``httpx``, ``httpcore``,
``urllib3``, ``requests_oauthlib``, ``oauthlib``) are capped at INFO and filtered too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from pydantic import SecretStr

REDACTED = "**redacted**"
_SECRET_KEY_RE = re.compile(r"(token|secret|password|authorization|api_key|apikey|jwt|cookie)",
                            re.IGNORECASE)
_BEARER_RE = re.compile(r"(Bearer|OAuth)\s+[^\s'\",]+", re.IGNORECASE)
# key=value pairs in URLs and bodies whose key names a credential (access_token=..., api_key=...)
_QUERY_SECRET_RE = re.compile(
    r"((?:access_|page_|bearer_|refresh_|oauth_)?(?:token|secret|password|api_?key|key|"
    r"signature|jwt)=)[^&\s'\"]+", re.IGNORECASE)
_secret_values: set[str] = set()
_NOISY = ("tweepy", "tweepy.client", "httpx", "httpcore", "urllib3", "requests_oauthlib",
          "oauthlib", "uvicorn", "uvicorn.access", "uvicorn.error", "hpack", "multipart")


def register_secrets(values: Iterable[SecretStr | str | None]) -> None:
    """Remember secret values so that any log line containing one is masked."""
    for v in values:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if raw and len(raw) >= 4:
            _secret_values.add(raw)


def redact_text(text: str) -> str:
    """Mask registered secrets and bearer tokens inside free text."""
    for s in _secret_values:
        if s in text:
            text = text.replace(s, REDACTED)
    text = _QUERY_SECRET_RE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if _SECRET_KEY_RE.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact_processor(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact every field of every event."""
    for k in list(event_dict):
        event_dict[k] = _redact_value(k, event_dict[k])
    return event_dict


class RedactingFilter(logging.Filter):
    """Applied to stdlib records (tweepy, httpx, ...): render, then mask."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        return True


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and the stdlib loggers once, at the composition root."""
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if as_json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=[*shared]))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_crisiscomms", False):
            root.removeHandler(h)
    handler._crisiscomms = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(lvl)
    for name in _NOISY:
        # These libraries log full request headers (bearer tokens, OAuth signatures) at
        # DEBUG and every request line at INFO; they are never allowed below WARNING,
        # whatever --log-level says (our own events say what was fetched).
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))
        if not any(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(RedactingFilter())


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
