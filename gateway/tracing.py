"""W3C Trace Context: the ``traceparent`` header that ties one exchange's log lines together.

https://www.w3.org/TR/trace-context/ (level 1). A client may send
``traceparent``; its gateway continues that trace (or starts a new one), logs
the trace id on every line of the request, answers with the ``traceparent``
of its own span, and sends a child ``traceparent`` to the provider gateway and
to the agency backend, so that every log line of one exchange, on both sides,
carries the same trace id.

Parsing follows the specification to the letter and never raises: a value
that does not parse is ignored and a new trace starts. Version ``00`` must be
exactly ``00-{32 hex}-{16 hex}-{2 hex}`` (lowercase, ids not all zero); a
higher version (not ``ff``) is read by its first four fields when they have
the version-00 shape, and what follows them is ignored. What we send is
always version ``00`` with only the ``sampled`` flag carried over (the other
flags are reserved and must be zero). ``tracestate`` is neither read nor
forwarded: it is opaque vendor data and has no business crossing an agency
boundary.

A trace id is random and says nothing about a person, but it is not a
bounded value: it goes into logs and headers, never into metric labels.

The functions are pure; the one piece of state is :data:`CURRENT`, the trace
context of the request being handled, which the outgoing HTTP calls read.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

HEADER: Final = "traceparent"

# The version this implementation writes, and the one that is invalid.
VERSION: Final = "00"
_FORBIDDEN_VERSION: Final = "ff"
# "00-" + 32 + "-" + 16 + "-" + 2
_LENGTH: Final = 55
FLAG_SAMPLED: Final = 0x01

_HEX_LOWER: Final = re.compile(r"[0-9a-f]*")
# Optional whitespace around an HTTP field value (RFC 9110 section 5.6.3).
_OWS: Final = " \t"


def _is_hex(text: str) -> bool:
    return _HEX_LOWER.fullmatch(text) is not None


def _is_id(text: str, length: int) -> bool:
    return len(text) == length and _is_hex(text) and text != "0" * length


@dataclass(frozen=True)
class TraceContext:
    """One span of a trace: the trace id, this span's id and the trace flags.

    Parsed from a ``traceparent``, ``span_id`` is the caller's span (the
    header's ``parent-id``); :meth:`child` makes the span that continues it.
    """

    trace_id: str
    span_id: str
    flags: int = 0

    def __post_init__(self) -> None:
        if not _is_id(self.trace_id, 32):
            raise ValueError("trace_id must be 32 lowercase hex digits, not all zero")
        if not _is_id(self.span_id, 16):
            raise ValueError("span_id must be 16 lowercase hex digits, not all zero")
        if not 0 <= self.flags <= 0xFF:
            raise ValueError("flags must fit in one byte")

    @property
    def sampled(self) -> bool:
        """The caller's ``sampled`` flag."""
        return bool(self.flags & FLAG_SAMPLED)

    def traceparent(self) -> str:
        """This span as a version-00 ``traceparent`` value."""
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def child(self) -> TraceContext:
        """A new span of the same trace; only the ``sampled`` flag is carried over."""
        return TraceContext(self.trace_id, new_span_id(), self.flags & FLAG_SAMPLED)


def new_trace_id() -> str:
    """A random 16-byte trace id (32 hex digits), never all zero."""
    while True:
        value = secrets.token_hex(16)
        if value != "0" * 32:
            return value


def new_span_id() -> str:
    """A random 8-byte span id (16 hex digits), never all zero."""
    while True:
        value = secrets.token_hex(8)
        if value != "0" * 16:
            return value


def new_trace() -> TraceContext:
    """The first span of a new trace (not sampled: we record nothing out of band)."""
    return TraceContext(new_trace_id(), new_span_id(), 0)


def parse_traceparent(value: object) -> TraceContext | None:
    """The ``traceparent`` ``value`` as a context, or None when it must be ignored.

    Never raises, whatever ``value`` is.
    """
    if not isinstance(value, str):
        return None
    text = value.strip(_OWS)
    if len(text) < _LENGTH:
        return None
    version = text[:2]
    if not _is_hex(version) or text[2] != "-" or version == _FORBIDDEN_VERSION:
        return None
    if version == VERSION and len(text) != _LENGTH:
        return None
    # A higher version is additive: its first fields have the version-00 shape,
    # and whatever follows the flags is separated from them by a dash.
    if len(text) > _LENGTH and text[_LENGTH] != "-":
        return None
    trace_id, parent_id, flags = text[3:35], text[36:52], text[53:55]
    if text[35] != "-" or text[52] != "-":
        return None
    if not (_is_id(trace_id, 32) and _is_id(parent_id, 16) and _is_hex(flags)):
        return None
    return TraceContext(trace_id, parent_id, int(flags, 16))


def continue_or_start(values: list[str]) -> TraceContext:
    """Our span for a request that carried ``values`` as its ``traceparent`` headers.

    Exactly one valid header continues that trace; none, several, or an
    invalid one start a new trace.
    """
    parent = parse_traceparent(values[0]) if len(values) == 1 else None
    return parent.child() if parent is not None else new_trace()


# -- the span of the request being handled ------------------------------------

CURRENT: ContextVar[TraceContext | None] = ContextVar("gateway_trace", default=None)


@contextlib.contextmanager
def active(context: TraceContext) -> Iterator[TraceContext]:
    """Make ``context`` the current span for the code inside the ``with``."""
    token = CURRENT.set(context)
    try:
        yield context
    finally:
        CURRENT.reset(token)


def outgoing_headers() -> dict[str, str]:
    """``traceparent`` of a new child span for an outgoing call; empty outside a request."""
    context = CURRENT.get()
    return {} if context is None else {HEADER: context.child().traceparent()}
