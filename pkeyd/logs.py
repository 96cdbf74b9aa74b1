"""structlog setup: JSON lines off a TTY (journald), readable console on one.

pkeyd's own events and the standard library's records (aiohttp, asyncio,
alembic) go through one chain: the request id the API middleware binds, the
level, a UTC timestamp, and the redaction of credentials. Redaction is by key
(anything named like authorization, token, password, secret, cookie, at any
depth) and by shape (`Bearer ...` inside any string, tracebacks included), so
a header or a request body logged by mistake never puts a token in the journal.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
_SENSITIVE_KEYS = (
    "authorization",
    "token",
    "password",
    "passwd",
    "secret",
    "cookie",
    "api_key",
    "apikey",
    "credential",
)
_CREDENTIAL_IN_TEXT = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def _sensitive(key: object) -> bool:
    name = str(key).lower().replace("-", "_")
    return any(word in name for word in _SENSITIVE_KEYS)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return _CREDENTIAL_IN_TEXT.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _sensitive(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace credential fields and `Bearer <token>` text; runs after exceptions are formatted."""
    return {
        key: value if key.startswith("_") else REDACTED if _sensitive(key) else _scrub(value)
        for key, value in event_dict.items()
    }


class _StdlibHandler(logging.StreamHandler[TextIO]):
    """The root handler configure() installs (a marker: a second call replaces it).

    Without a stream it writes to whatever sys.stderr is at the time, as the
    structlog side does: a test that swaps stderr and closes it leaves no dangling file.
    """

    def __init__(self, stream: TextIO | None) -> None:
        logging.Handler.__init__(self)
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._fixed is None else self._fixed

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._fixed = value


# The level configure() set (everything passes before it is called): a
# caller about to build a line below it can skip the work.
_threshold = logging.NOTSET


def lowest_level() -> int:
    """The lowest level that is logged."""
    return _threshold


def _printer(stream: TextIO | None) -> structlog.typing.WrappedLogger:
    return structlog.PrintLogger(sys.stderr if stream is None else stream)


def configure(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and the root logger; `stream` defaults to stderr."""
    use_json = not (sys.stderr if stream is None else stream).isatty() if json is None else json
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    global _threshold
    threshold = _threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_: _printer(stream),
        cache_logger_on_first_use=False,
    )
    handler = _StdlibHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Other libraries' chatter (alembic's INFO lines) is not pkeyd's events:
    # their warnings and errors are, in the same format.
    root.setLevel(max(threshold, logging.WARNING))


def reset() -> None:
    """Undo configure() (tests): structlog defaults, no handler of ours on the root logger."""
    global _threshold
    structlog.reset_defaults()
    _threshold = logging.NOTSET
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.setLevel(logging.WARNING)
