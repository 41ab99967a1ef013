"""gateway.bodies: a large body handed down a chain of calls and taken once."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from gateway.bodies import (
    HandedBody,
    pieces_to_write,
    read_bounded,
    request_body,
    strip_in_place,
)


def test_taken_once() -> None:
    """The first take gets the bytes; the box holds nothing after."""
    box = HandedBody(b"sealed message")
    assert box.take() == b"sealed message"
    assert box.data == b""
    assert box.take() == b""


def test_text_taken_once() -> None:
    """A compact JWE's text is handed the same way: empty text after."""
    box = HandedBody("eyJ.a.b.c.d")
    assert box.take() == "eyJ.a.b.c.d"
    assert box.data == ""


def test_the_box_does_not_keep_the_bytes_alive() -> None:
    """Once taken, the caller's reference is the only one left (memory)."""
    box = HandedBody(bytes(1 << 20))
    data = box.take()
    # getrefcount counts its own argument: 2 means no one else holds the bytes.
    assert sys.getrefcount(data) == 2


async def _read_by_server(chunks: list[bytes], limit: int) -> tuple[bytes | None, str]:
    """What ``read_bounded`` makes of a body sent in ``chunks`` (separate writes), and its type."""
    seen: list[tuple[bytes | None, str]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await read_bounded(request.content, limit)
        seen.append((None if body is None else bytes(body), type(body).__name__))
        return web.Response(text="ok")

    async def sent() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0.01)  # separate writes: several reads on the server

    app = web.Application()
    app.router.add_post("/", handler)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}/", data=sent()) as response,
    ):
        assert response.status == 200
    return seen[0]


async def test_read_bounded_joins_every_write() -> None:
    """A body that arrives in several writes is read whole, into one buffer."""
    chunks = [b"a" * 70_000, b"b" * 5, b"c" * 200_000]
    assert await _read_by_server(chunks, 1_000_000) == (b"".join(chunks), "bytearray")


async def test_read_bounded_stops_past_the_limit() -> None:
    """One byte over the limit, across writes, is None; exactly the limit is read."""
    assert await _read_by_server([b"x" * 600, b"y" * 401], 1_000) == (None, "NoneType")
    assert await _read_by_server([b"x" * 600, b"y" * 400], 1_000) == (
        b"x" * 600 + b"y" * 400,
        "bytearray",
    )


async def test_read_bounded_fills_the_announced_length() -> None:
    """With the sender's Content-Length announced, the body arrives whole, in one buffer."""
    body = bytes(range(256)) * 1_000
    seen: list[bytes | None] = []

    async def handler(request: web.Request) -> web.Response:
        read = await read_bounded(request.content, 1_000_000, announced=request.content_length)
        seen.append(None if read is None else bytes(read))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}/", data=body) as response,
    ):
        assert response.status == 200
    assert seen == [body]


def _fed(chunks: list[bytes]) -> aiohttp.StreamReader:
    """A stream (aiohttp's own reader) that has received ``chunks`` and its end."""
    loop = asyncio.get_running_loop()
    stream = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    return stream


async def _read_arriving(chunks: list[bytes], limit: int, announced: int | None) -> bytes | None:
    """What ``read_bounded`` makes of ``chunks`` arriving one by one while it reads.

    The stream's protocol has a connection (a socket pair), so that the
    reader waits for each chunk instead of finding the stream closed.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, protocol = await loop.create_connection(lambda: BaseProtocol(loop), sock=ours)
    stream = aiohttp.StreamReader(protocol, 2**16, loop=loop)

    async def feed() -> None:
        for chunk in chunks:
            stream.feed_data(chunk)
            await asyncio.sleep(0)  # the reader takes each chunk before the next comes
        stream.feed_eof()

    try:
        feeding = asyncio.create_task(feed())
        read = await read_bounded(stream, limit, announced=announced)
        await feeding
    finally:
        transport.close()
        theirs.close()
    return None if read is None else bytes(read)


async def test_read_bounded_refuses_an_announced_length_over_the_limit() -> None:
    """None at once, before any of the body is read."""
    stream = _fed([b"x" * 10])
    assert await read_bounded(stream, 1_000, announced=1_001) is None
    assert await stream.read() == b"x" * 10


async def test_read_bounded_keeps_what_arrived_whatever_was_announced() -> None:
    """Less than announced is cut to what came; more is appended, still within the limit."""
    chunks = [b"ab", b"cde", b"f"]
    assert await read_bounded(_fed(chunks), 100, announced=50) == b"abcdef"
    assert await read_bounded(_fed(chunks), 100, announced=2) == b"abcdef"
    assert await read_bounded(_fed(chunks), 100, announced=0) == b"abcdef"
    assert await read_bounded(_fed(chunks), 5, announced=5) is None


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    limit=st.integers(min_value=0, max_value=200),
    announced=st.none() | st.integers(min_value=0, max_value=250),
)
def test_read_bounded_is_the_body_or_none(
    chunks: list[bytes], limit: int, announced: int | None
) -> None:
    """Whatever the split and the announced length: the exact body, or None when over the limit."""
    body = b"".join(chunks)
    over = len(body) > limit or (announced is not None and announced > limit)
    assert asyncio.run(_read_arriving(chunks, limit, announced)) == (None if over else body)


def test_strip_in_place() -> None:
    """ASCII whitespace goes from both ends, in the same buffer; the inside is kept."""
    for raw, stripped in [
        (b"  eyJ.a.b \r\n", b"eyJ.a.b"),
        (b"eyJ.a.b", b"eyJ.a.b"),
        (b"\t\x0b\x0c", b""),
        (b"", b""),
        (b" a b ", b"a b"),
        ("\u00a0x".encode(), "\u00a0x".encode()),  # not ASCII whitespace: kept, then refused
    ]:
        data = bytearray(raw)
        assert strip_in_place(data) is data
        assert data == stripped


def test_pieces_to_write() -> None:
    """A small body is one view of itself; a large one a 64 KiB first piece and the rest."""
    small = bytearray(b"s" * 65_536)
    (only,) = pieces_to_write(small)
    assert only.obj is small
    assert bytes(only) == small
    large = bytes(range(256)) * 1_000
    first, rest = pieces_to_write(large)
    assert (len(first), first.obj, rest.obj) == (65_536, large, large)
    assert bytes(first) + bytes(rest) == large


async def test_request_body_on_the_wire() -> None:
    """A large request is written in pieces with its Content-Length: it arrives whole, unchunked.

    A small one is given to aiohttp as it is.
    """
    seen: list[tuple[bytes, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        headers = request.headers
        seen.append(
            (await request.read(), headers.get("Content-Length"), headers.get("Transfer-Encoding"))
        )
        return web.Response(text="ok")

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/", handler)
    small, large = b"jwe", bytearray(bytes(range(256)) * 1_000)
    assert request_body(small) == (small, {})
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        for data in (small, large):
            body, headers = request_body(data)
            url = f"http://127.0.0.1:{server.port}/"
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200
    assert seen == [(b"jwe", "3", None), (bytes(large), "256000", None)]
