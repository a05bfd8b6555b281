"""Logging: structlog JSON lines off a TTY, readable console output on one.

Secrets never reach the output: every value that is a ``SecretStr`` or looks like a
credential-bearing key is redacted, registered secret values are masked wherever they appear,
and the stdlib loggers that log request headers (``tweepy.client``, ``httpx``, ``httpcore``,
``urllib3``, ``requests_oauthlib``, ``oauthlib``) are capped at INFO and filtered too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

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


class _LazyLogger:
    """structlog's logger for ``name``, imported on the first event: ``import structlog``
    brings asyncio and rich (about 0.08 CPU-s), which a command that never logs (``status``,
    ``--help``) should not pay for."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import structlog

            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str | None = None) -> Any:
    """A module's logger (``log = get_logger(__name__)``): ``structlog.get_logger``, imported
    when the first event is logged rather than with the module."""
    return _LazyLogger(name)


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
    """Configure structlog and the stdlib loggers once, at the composition root.

    The stdlib side (levels, the redacting filter, the handler) is set at once. structlog is
    configured at once if it is loaded; otherwise the moment anything first imports it (our
    loggers on their first event, an adapter that imports it, the handler's first record), so
    a command that never logs never loads it, and no event is ever written unconfigured."""
    global _pending
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    lvl = getattr(logging, level.upper(), logging.INFO)
    _pending = (lvl, as_json, stream)
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(_StructlogFormatter(as_json))
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
    if "structlog" in sys.modules:
        _configure_structlog()
    elif not any(isinstance(f, _ConfigureOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ConfigureOnImport())


_pending: tuple[int, bool, Any] | None = None  # (level, as_json, stream) of the last configure


def _shared_processors() -> list[Any]:
    import structlog

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]


def _renderer(as_json: bool) -> Any:
    import structlog

    # Plain tracebacks on a console too, whether or not rich was loaded when structlog was
    # (``_ThenConfigure``): the same text on every path, and what journald keeps readably.
    return (structlog.processors.JSONRenderer() if as_json
            else structlog.dev.ConsoleRenderer(colors=False,
                                               exception_formatter=structlog.dev.plain_traceback))


def _configure_structlog() -> None:
    """Apply the last ``configure`` to structlog (which must be loaded)."""
    import structlog

    if _pending is None:
        return
    lvl, as_json, stream = _pending
    structlog.configure(
        processors=[*_shared_processors(), structlog.processors.format_exc_info,
                    _renderer(as_json)],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


class _StructlogFormatter(logging.Formatter):
    """Renders stdlib records (tweepy, httpx, ...) as structlog does ours: structlog's
    ``ProcessorFormatter``, built on the first record."""

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self._as_json = as_json
        self._formatter: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._formatter is None:
            import structlog

            self._formatter = structlog.stdlib.ProcessorFormatter(
                processor=_renderer(self._as_json), foreign_pre_chain=_shared_processors())
        return self._formatter.format(record)


class _ConfigureOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: the first ``import structlog``, by whatever module, is completed
    by applying the pending ``configure`` before the importer gets the module."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "structlog":
            return None
        sys.meta_path.remove(self)  # once; and the finders after us find the real one
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenConfigure(spec.loader)
        return spec


class _ThenConfigure(importlib.abc.Loader):
    """structlog's own loader, then ``_configure_structlog``. structlog imports rich, if it
    can, only to offer rich tracebacks (``dev.rich_traceback``), which our renderers never use:
    unless something loaded rich already, structlog is loaded without it (rich's console,
    traceback and pretty modules cost about 0.07 CPU-s, a tenth of ``watch --once``). rich
    stays importable afterwards (``--help`` prints with it)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        without_rich = "rich" not in sys.modules
        if without_rich:
            sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
        try:
            self._loader.exec_module(module)
        finally:
            if without_rich and sys.modules.get("rich", module) is None:
                del sys.modules["rich"]
        module.__loader__ = self._loader  # tracebacks and resources see the real loader
        _configure_structlog()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
