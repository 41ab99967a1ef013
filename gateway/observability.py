"""Logs.

Logs are structlog events rendered as JSON lines (the default) or a console
view for people (``log.format: console``, which ``gateway demo`` uses), at the
configured ``log.level``. They carry ids of agencies, contracts, services and
messages, never a subject id, an end-user id, a body, a key or a token. Every
line written while a request is handled carries its ``trace_id`` and
``span_id``, read from the request's span (:data:`gateway.tracing.CURRENT`); each
side of each exchange writes exactly one ``exchange`` event (see
``gateway/web/app.py``). Metrics are in :mod:`gateway.metrics`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from gateway import tracing


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines or console text.

    ``fixed`` members go on every line (a worker process's ``worker`` index).
    """
    constant = dict(fixed or {})

    def add_fixed(_logger: Any, _method: str, event: Any) -> Any:
        for name, value in constant.items():
            event.setdefault(name, value)
        return event

    extra: list[structlog.types.Processor] = [add_fixed] if constant else []

    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            add_trace_ids,
            *extra,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Without this a logged exception is only "exc_info": true: undiagnosable.
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def add_trace_ids(_logger: Any, _method: str, event: Any) -> Any:
    """Put the ``trace_id`` and ``span_id`` of the request being handled on its lines.

    The span is the one :func:`gateway.tracing.active` made current; a context
    variable, so each request task sees only its own. Reading it here, rather
    than binding copies of the ids per request, keeps one source of truth and
    costs one lookup per line written.
    """
    span = tracing.CURRENT.get()
    if span is not None:
        event.setdefault("trace_id", span.trace_id)
        event.setdefault("span_id", span.span_id)
    return event


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context (agency id, component)."""
    return structlog.get_logger().bind(**bound)
