"""What an officer may ask of the log: filters, ordering and an opaque cursor.

Pure: a :class:`RecordQuery` is validated once from the officer's query string
(API or CLI), then turned into one parameterised SQL ``WHERE`` clause that both
stores share. Subjects are matched by pseudonym only: the clear id an officer
types is turned into its pseudonyms under every live audit key epoch before
the query reaches a store.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.audit.records import record_time

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000

# The filters that compare one stored column with one value.
EQUALITY_FILTERS: Final = ("consumer", "provider", "contract", "purpose", "outcome", "kind")
QUERY_PARAMETERS: Final = frozenset(
    (*EQUALITY_FILTERS, "subject", "since", "until", "limit", "cursor", "order")
)


class QueryError(ValueError):
    """A query parameter is unusable; the message names it."""


class RecordQuery(BaseModel):
    """A validated search of the log, newest or oldest first, one page at a time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subjects: tuple[str, ...] = ()
    consumer: str | None = None
    provider: str | None = None
    contract: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    kind: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    after: int | None = None
    order: Literal["asc", "desc"] = "asc"

    def where(self, placeholder: Callable[[int], str]) -> tuple[str, list[object]]:
        """The ``WHERE`` clause (with ``placeholder(n)`` for the n-th value) and its values."""
        clauses: list[str] = []
        values: list[object] = []

        def bind(value: object) -> str:
            values.append(value)
            return placeholder(len(values))

        for name in EQUALITY_FILTERS:
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name} = {bind(value)}")
        if self.subjects:
            marks = ", ".join(bind(subject) for subject in self.subjects)
            clauses.append(f"subject IN ({marks})")
        if self.since is not None:
            clauses.append(f"time >= {bind(self.since)}")
        if self.until is not None:
            clauses.append(f"time < {bind(self.until)}")
        if self.after is not None:
            clauses.append(f"idx {'>' if self.order == 'asc' else '<'} {bind(self.after)}")
        return (" AND ".join(clauses) or "TRUE"), values

    def next_cursor(self, last_index: int) -> str:
        """The opaque cursor that continues after ``last_index`` in this order."""
        return encode_cursor(last_index, self.order)


def encode_cursor(last_index: int, order: str) -> str:
    """An opaque cursor: the order and the last index served."""
    return base64.urlsafe_b64encode(f"{order}:{last_index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> int:
    """The last index a cursor names; ``QueryError`` if it is not one of ours for ``order``."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise QueryError("cursor: not a cursor this gateway issued") from exc
    cursor_order, _, index = text.partition(":")
    if cursor_order != order:
        raise QueryError("cursor: it was issued for the other order")
    if not is_whole_number(index):
        raise QueryError("cursor: not a cursor this gateway issued")
    return int(index)


def is_whole_number(text: str) -> bool:
    """ASCII digits naming a number below 2**63, the index type of every store."""
    # str.isdigit alone also accepts other scripts' digits and superscripts ("²").
    # The length bound comes first: int() refuses over 4300 digits with a ValueError.
    return len(text) <= 19 and text.isascii() and text.isdigit() and int(text) < 1 << 63


def parse_time(name: str, value: str) -> str:
    """An RFC 3339 time as the log stores it (UTC, milliseconds, ``Z``)."""
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(f"{name}: not an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise QueryError(f"{name}: the time needs a UTC offset or Z")
    try:
        return record_time(moment.astimezone(UTC).timestamp())
    except (OverflowError, ValueError, OSError) as exc:  # in UTC before year 1 or after 9999
        raise QueryError(f"{name}: the time is out of range") from exc


def parse_query(params: Mapping[str, str], pseudonyms: Callable[[str], list[str]]) -> RecordQuery:
    """Validate an officer's parameters; ``pseudonyms`` maps a clear id to its pseudonyms."""
    unknown = sorted(set(params) - QUERY_PARAMETERS)
    if unknown:
        raise QueryError(f"{unknown[0]}: not a filter of the audit log")
    members: dict[str, object] = {
        name: params[name] for name in EQUALITY_FILTERS if params.get(name)
    }
    order = params.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise QueryError("order: must be asc or desc")
    members["order"] = order
    if params.get("subject"):
        members["subjects"] = tuple(pseudonyms(params["subject"]))
    for name in ("since", "until"):
        if params.get(name):
            members[name] = parse_time(name, params[name])
    if params.get("limit"):
        limit = params["limit"]
        if not is_whole_number(limit) or not 1 <= int(limit) <= MAX_LIMIT:
            raise QueryError(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
        members["limit"] = int(limit)
    if params.get("cursor"):
        members["after"] = decode_cursor(params["cursor"], order)
    return RecordQuery.model_validate(members)
