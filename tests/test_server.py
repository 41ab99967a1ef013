"""Running a gateway: the event loop ``listen.event_loop`` chooses."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from gateway.errors import SetupError
from gateway.web.server import event_loop_factory, run_on_event_loop


async def loop_module() -> str:
    """The top-level module of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_the_chosen_loop_runs(choice: str, expected: str) -> None:
    """auto and uvloop run on uvloop (installed with the gateway); asyncio on asyncio's own."""
    assert run_on_event_loop(loop_module(), choice) == expected  # type: ignore[arg-type]


def test_factories() -> None:
    """The factory is uvloop's, or None for asyncio's default loop."""
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None


def test_uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvloop, auto falls back to asyncio and an explicit uvloop is a setup error."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes ``import uvloop`` raise ImportError
    assert event_loop_factory("auto") is None
    assert run_on_event_loop(loop_module(), "auto") == "asyncio"
    with pytest.raises(SetupError, match="uvloop is not installed") as info:
        event_loop_factory("uvloop")
    assert info.value.source == "listen.event_loop"
