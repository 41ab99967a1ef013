"""Reading whole HTTP bodies, however they arrive, within a size bound.

``StreamReader.read(n)`` returns what has arrived so far, not ``n`` bytes: a
body sent in several writes would be cut short. Every body the gateway reads
(from a client, a peer gateway or a backend) goes through here instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

import aiohttp


async def read_bounded(
    stream: aiohttp.StreamReader, limit: int, *, announced: int | None = None
) -> bytearray | None:
    """The whole body, or None as soon as it exceeds ``limit`` bytes.

    Each chunk is copied into one buffer as it arrives: a large body is not
    held twice, as chunks and then as their join (memory).

    ``announced`` is the ``Content-Length`` of a sender trusted to send it
    (the agency's own backend): the buffer is then allocated once at that
    size instead of grown as chunks arrive. A buffer grown in C's heap can
    leave the heap's top held by something allocated meanwhile, so the
    memory stays resident after the exchange: about one provider start in
    six kept 8 MiB after an 8 MiB answer (docs/performance.md). A peer's or
    client's ``Content-Length`` is not used so: it would make the gateway
    commit memory for bytes that may never be sent.
    """
    if announced is not None and announced > limit:
        return None
    body = bytearray(announced or 0)
    filled = 0
    async for chunk in stream.iter_any():
        end = filled + len(chunk)
        if end > limit:
            return None
        # Within the allocated length a copy in place; past it, an append.
        body[filled:end] = chunk
        filled = end
    del body[filled:]
    return body


# aiohttp sends a message's headers joined with the first piece of its body
# written, and before Python 3.12.9 it joins them by copying both into one
# buffer (it avoids transport.writelines there: CVE-2024-12254). A large body
# is therefore written as a small first piece, copied with the headers, and a
# view of the rest, which the transport sends from the body itself (memory).
_FIRST_PIECE_BYTES: Final = 64 * 1024


def pieces_to_write(data: bytes | bytearray) -> tuple[memoryview, ...]:
    """``data`` as the views to write it in: itself, or a small first piece and the rest."""
    view = memoryview(data)
    if len(view) <= _FIRST_PIECE_BYTES:
        return (view,)
    return view[:_FIRST_PIECE_BYTES], view[_FIRST_PIECE_BYTES:]


async def _written_in_pieces(pieces: tuple[memoryview, ...]) -> AsyncIterator[memoryview]:
    for piece in pieces:
        yield piece


def request_body(data: bytes | bytearray) -> tuple[object, dict[str, str]]:
    """What to give aiohttp to send ``data``, and the headers that go with it.

    A small body is itself. A large one is its pieces (:func:`pieces_to_write`)
    with its ``Content-Length``: the same message on the wire, and once
    written nothing of aiohttp's holds the body any longer (memory).
    """
    pieces = pieces_to_write(data)
    if len(pieces) == 1:
        return data, {}
    return _written_in_pieces(pieces), {"Content-Length": str(len(data))}


_ASCII_WHITESPACE: Final = frozenset(b" \t\n\r\x0b\x0c")


def strip_in_place(data: bytearray) -> bytearray:
    """``data`` without leading and trailing ASCII whitespace, trimmed where it is (no copy)."""
    end = len(data)
    while end and data[end - 1] in _ASCII_WHITESPACE:
        end -= 1
    del data[end:]
    start = 0
    while start < end and data[start] in _ASCII_WHITESPACE:
        start += 1
    del data[:start]
    return data


# What a body is handed as: bytes read, a compact JWE's text, or a sealed
# message's buffer.
_Data = TypeVar("_Data", str, bytes, bytearray)


@dataclass
class HandedBody(Generic[_Data]):
    """A large body (bytes read, a sealed message) passed down a chain of calls,
    to be taken once where it is used.

    The frames it passes through hold only this box, so once taken and used
    the body is freed, not kept alive until every caller returns (memory:
    a sealed message is larger than the body it carries).
    """

    data: _Data

    def take(self) -> _Data:
        """The body, given up: the box is empty after."""
        data = self.data
        self.data = data[:0]
        return data
