"""Structured logs: one JSON object per line, with the request's context bound in.

Keys that could carry credentials are dropped by a processor, so a careless `log.info(...,
token=...)` cannot leak a secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = ("authorization", "token", "secret", "password", "cookie", "api_key")


def drop_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    for key in list(event):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_KEYS) and lowered != "token_id":
            event[key] = "[redacted]"
    return event


def configure_logging(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library to write one structured line per event
    (to `stream`, default standard output)."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
