"""Logs and metrics.

Logs are structlog events rendered as JSON lines (or a console view for the
demo). They carry ids of agencies, contracts, services and messages, never a
subject id, a body, a key or a token. Metrics live in one registry per
gateway instance, so several gateways in one process (tests, the demo) never
share counters; every label has a bounded set of values.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway import __version__

# Buckets from 1 ms to 10 s: exchanges take milliseconds, backends can take seconds.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines or console text."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context (agency id, component)."""
    return structlog.get_logger().bind(**bound)


class GatewayMetrics:
    """The Prometheus metrics of one gateway instance, in its own registry."""

    def __init__(self, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.agency = agency
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by endpoint and outcome (ok or the problem name).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled now.",
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "gateway_reload_failures_total",
            "Registry or contract reloads refused; the last good version stays in force.",
            ["source"],
            registry=self.registry,
        )
        build = Gauge(
            "gateway_build_info",
            "Build information; the value is always 1.",
            ["version", "agency"],
            registry=self.registry,
        )
        build.labels(version=__version__, agency=agency).set(1)

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint=endpoint, outcome=outcome).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of this instance's metrics."""
        return generate_latest(self.registry)
