"""gateway.bodies: a large body handed down a chain of calls and taken once."""

from __future__ import annotations

import sys

from gateway.bodies import HandedBody


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
