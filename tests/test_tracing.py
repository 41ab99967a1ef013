"""W3C ``traceparent``: strict parsing, new and child spans, propagation across gateways.

The parser is checked against the specification's examples and its test
suite's cases (w3c/trace-context ``test/test.py``), against an independent
regular-expression reading of the grammar on generated near-valid headers,
and on arbitrary input, which must never make it raise. On a live network,
one client request's trace id reaches the log lines of both gateways, the
answer's ``traceparent`` and the provider's backend.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.backend import BackendRequest, HttpBackend
from gateway.bodies import HandedBody
from gateway.demo.network import BENEFITS, POPULATION, TAX
from gateway.outbound import HttpPeerTransport
from gateway.tracing import (
    CURRENT,
    TraceContext,
    active,
    continue_or_start,
    new_span_id,
    new_trace,
    new_trace_id,
    outgoing_headers,
    parse_traceparent,
)
from tests.conftest import LiveNetwork
from tests.wire import END_USER, PURPOSE, SERVICE

TRACE: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT: Final = "00f067aa0ba902b7"
VALID: Final = f"00-{TRACE}-{PARENT}-01"
# The ids of the specification's conformance suite.
SUITE_TRACE: Final = "12345678901234567890123456789012"
SUITE_PARENT: Final = "1234567890123456"
HEX: Final = "0123456789abcdef"


def _reference(value: str) -> tuple[str, str, int] | None:
    """An independent reading of the grammar: one regular expression per rule."""
    text = value.strip(" \t")
    match = re.fullmatch(
        r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", text, re.DOTALL
    )
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return None
    return trace_id, parent_id, int(flags, 16)


def _mostly(
    valid: st.SearchStrategy[str], invalid: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    """``valid`` four times in five, else ``invalid``: one bad field at a time, mostly."""
    return st.integers(0, 4).flatmap(lambda draw: invalid if draw == 0 else valid)


def _parsed(value: str) -> tuple[str, str, int] | None:
    context = parse_traceparent(value)
    return None if context is None else (context.trace_id, context.span_id, context.flags)


class TestParse:
    """Parsing follows the specification exactly; anything else is ignored."""

    def test_specification_examples(self) -> None:
        """The two examples of the specification, sampled and not."""
        sampled = parse_traceparent(VALID)
        assert sampled == TraceContext(TRACE, PARENT, 1)
        assert sampled.sampled
        unsampled = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
        assert unsampled is not None
        assert not unsampled.sampled

    @pytest.mark.parametrize(
        "value",
        [
            f" 00-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"\t00-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-01 ",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-01\t",
            f"\t 00-{SUITE_TRACE}-{SUITE_PARENT}-01 \t",
            f"cc-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"cc-{SUITE_TRACE}-{SUITE_PARENT}-01-what-the-future-will-be-like",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-ff",
        ],
    )
    def test_accepted(self, value: str) -> None:
        """Surrounding whitespace is allowed; a higher version is read by its known fields."""
        context = parse_traceparent(value)
        assert context is not None
        assert (context.trace_id, context.span_id) == (SUITE_TRACE, SUITE_PARENT)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-01.",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-01-what-the-future-will-be-like",
            f"cc-{SUITE_TRACE}-{SUITE_PARENT}-01.what-the-future-will-be-like",
            f"ff-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f".0-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"0.-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"000-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"0000-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"0-{SUITE_TRACE}-{SUITE_PARENT}-01",
            f"00-{'0' * 32}-{SUITE_PARENT}-01",
            f"00-.{SUITE_TRACE[1:]}-{SUITE_PARENT}-01",
            f"00-{SUITE_TRACE[:-1]}.-{SUITE_PARENT}-01",
            f"00-{SUITE_TRACE}3-{SUITE_PARENT}-01",
            f"00-{SUITE_TRACE[:-1]}-{SUITE_PARENT}-01",
            f"00-{SUITE_TRACE}-{'0' * 16}-01",
            f"00-{SUITE_TRACE}-.{SUITE_PARENT[1:]}-01",
            f"00-{SUITE_TRACE}-{SUITE_PARENT[:-1]}.-01",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}7-01",
            f"00-{SUITE_TRACE}-{SUITE_PARENT[:-1]}-01",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-.0",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-0.",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-001",
            f"00-{SUITE_TRACE}-{SUITE_PARENT}-1",
            f"00-{TRACE.upper()}-{PARENT}-01",
            f"00-{TRACE}-{PARENT.upper()}-01",
            f"00-{TRACE}-{PARENT}-0A",
            f"0A-{TRACE}-{PARENT}-01",
            f"00_{TRACE}_{PARENT}_01",
            f"00-{TRACE}-{PARENT}-01\n",
            f"cc-{TRACE}-{PARENT}",
        ],
    )
    def test_ignored(self, value: str) -> None:
        """The conformance suite's invalid headers (and a few more) are ignored."""
        assert parse_traceparent(value) is None
        assert _reference(value) is None

    @pytest.mark.parametrize("value", [None, b"00-" + TRACE.encode(), 55, ["x"], object()])
    def test_not_text(self, value: object) -> None:
        """Anything but a string is ignored too."""
        assert parse_traceparent(value) is None

    @given(st.text())
    @example("\x00" * 55)
    @example("00-" + "\u0660" * 32 + "-" + PARENT + "-01")  # non-ASCII digits
    def test_never_raises(self, value: str) -> None:
        """Any string at all parses to a context or to None, and agrees with the reference."""
        assert _parsed(value) == _reference(value)

    @given(
        st.tuples(
            st.sampled_from(["", " ", "\t", " \t "]),
            _mostly(
                st.sampled_from(["00", "00", "01", "cc", "fe"]),
                st.one_of(st.sampled_from(["ff", "0", "000", "0A", "-0"]), st.text(max_size=3)),
            ),
            _mostly(
                st.text(alphabet=HEX, min_size=32, max_size=32),
                st.one_of(
                    st.just("0" * 32), st.text(alphabet=HEX + "AF.-", min_size=30, max_size=34)
                ),
            ),
            _mostly(
                st.text(alphabet=HEX, min_size=16, max_size=16),
                st.one_of(
                    st.just("0" * 16), st.text(alphabet=HEX + "AF.-", min_size=14, max_size=18)
                ),
            ),
            _mostly(
                st.text(alphabet=HEX, min_size=2, max_size=2),
                st.text(alphabet=HEX + "X", max_size=3),
            ),
            _mostly(st.just(""), st.text(max_size=12)),
            st.sampled_from(["", " ", "\t", "\t "]),
        ).map(lambda part: f"{part[0]}{part[1]}-{part[2]}-{part[3]}-{part[4]}{part[5]}{part[6]}")
    )
    def test_near_valid_headers(self, value: str) -> None:
        """Headers built field by field, most of them almost right, agree with the reference."""
        assert _parsed(value) == _reference(value)


ids = st.builds(
    TraceContext,
    st.text(alphabet=HEX, min_size=32, max_size=32).filter(lambda text: text != "0" * 32),
    st.text(alphabet=HEX, min_size=16, max_size=16).filter(lambda text: text != "0" * 16),
    st.integers(min_value=0, max_value=255),
)


class TestFormat:
    """What we write is version 00, and what we parse is what we wrote."""

    @given(ids)
    def test_round_trip(self, context: TraceContext) -> None:
        """Format then parse gives the same context, and parse then format the same text."""
        text = context.traceparent()
        assert len(text) == 55
        assert text.startswith("00-")
        assert parse_traceparent(text) == context
        assert parse_traceparent(f" {text}\t") == context
        parsed = parse_traceparent(text)
        assert parsed is not None
        assert parsed.traceparent() == text

    @given(ids)
    def test_future_version_is_rewritten_as_00(self, context: TraceContext) -> None:
        """A higher version's known fields are kept; we answer in the version we know."""
        future = "cc" + context.traceparent()[2:] + "-more-fields"
        parsed = parse_traceparent(future)
        assert parsed == context
        assert parsed.traceparent() == context.traceparent()

    @given(ids)
    def test_child(self, context: TraceContext) -> None:
        """A child keeps the trace id, gets a new span id, and only the sampled flag."""
        child = context.child()
        assert child.trace_id == context.trace_id
        assert child.span_id != context.span_id
        assert child.flags == context.flags & 0x01
        assert parse_traceparent(child.traceparent()) == child

    def test_new(self) -> None:
        """New traces and spans are random, valid and unsampled."""
        traces = {new_trace().trace_id for _ in range(100)}
        assert len(traces) == 100
        assert len({new_span_id() for _ in range(100)}) == 100
        fresh = new_trace()
        assert fresh.flags == 0
        assert parse_traceparent(fresh.traceparent()) == fresh
        assert re.fullmatch("[0-9a-f]{32}", new_trace_id())

    @pytest.mark.parametrize(
        ("trace_id", "span_id", "flags"),
        [
            ("0" * 32, PARENT, 0),
            (TRACE, "0" * 16, 0),
            (TRACE.upper(), PARENT, 0),
            (TRACE[:-1], PARENT, 0),
            (TRACE, PARENT + "0", 0),
            (TRACE, PARENT, 256),
            (TRACE, PARENT, -1),
        ],
    )
    def test_invalid_context(self, trace_id: str, span_id: str, flags: int) -> None:
        """A context can only hold what a valid header holds."""
        with pytest.raises(ValueError, match="must"):
            TraceContext(trace_id, span_id, flags)


class TestContinue:
    """A request continues exactly one valid incoming trace, or starts one."""

    def test_one_valid_header(self) -> None:
        """Our span is a child of the caller's."""
        span = continue_or_start([VALID])
        assert span.trace_id == TRACE
        assert span.span_id != PARENT
        assert span.sampled

    @pytest.mark.parametrize(
        "values",
        [
            [],
            ["garbage"],
            [f"00-{'0' * 32}-{PARENT}-01"],
            [VALID, f"00-{SUITE_TRACE}-{SUITE_PARENT}-01"],
            [VALID, VALID],
        ],
    )
    def test_otherwise_a_new_trace(self, values: list[str]) -> None:
        """None, an invalid one, or several headers: a fresh trace, not sampled."""
        span = continue_or_start(values)
        assert span.trace_id not in {TRACE, SUITE_TRACE, "0" * 32}
        assert span.flags == 0

    async def test_outgoing_headers(self) -> None:
        """Outgoing calls carry a child of the current span, and only inside a request."""
        assert outgoing_headers() == {}
        span = new_trace()
        with active(span):
            assert CURRENT.get() == span
            first = parse_traceparent(outgoing_headers()["traceparent"])
            second = parse_traceparent(outgoing_headers()["traceparent"])
        assert first is not None
        assert second is not None
        assert first.trace_id == second.trace_id == span.trace_id
        assert len({first.span_id, second.span_id, span.span_id}) == 3
        assert outgoing_headers() == {}
        assert CURRENT.get() is None

    async def test_concurrent_requests_keep_their_own_span(self) -> None:
        """The current span is per task: concurrent requests never see each other's."""

        async def handle(span: TraceContext) -> str:
            with active(span):
                await asyncio.sleep(0.01)
                header = outgoing_headers()["traceparent"]
                return header.split("-")[1]

        spans = [new_trace() for _ in range(20)]
        seen = await asyncio.gather(*(handle(span) for span in spans))
        assert seen == [span.trace_id for span in spans]


# -- outgoing HTTP calls ------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[CIMultiDict[str]]]]:
    """A loopback server that records the headers of every request it gets."""
    seen: list[CIMultiDict[str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())  # names compare case-insensitively
        return web.json_response({"national_id": "x"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/")).rstrip("/"), seen
    finally:
        await server.close()


class TestOutgoingCalls:
    """The peer transport and the backend client send a child ``traceparent``."""

    async def test_peer_transport(self, echo: tuple[str, list[CIMultiDict[str]]]) -> None:
        """Token requests and exchange POSTs to the provider continue the trace."""
        url, seen = echo
        span = new_trace()
        async with aiohttp.ClientSession() as session:
            transport = HttpPeerTransport(session, 5)
            with active(span):
                await transport.post(f"{url}/v1/token", data={"a": "b"}, headers={})
                await transport.post(
                    f"{url}/v1/services/x",
                    data=b"jwe",
                    headers={"Content-Type": "application/jose"},
                )
            await transport.post(f"{url}/v1/token", data={"a": "b"}, headers={})
        first, second, outside = seen
        for headers in (first, second):
            sent = parse_traceparent(headers["traceparent"])
            assert sent is not None
            assert sent.trace_id == span.trace_id
            assert sent.span_id != span.span_id
        assert first["traceparent"] != second["traceparent"]
        assert "traceparent" not in outside

    async def test_backend(self, echo: tuple[str, list[CIMultiDict[str]]]) -> None:
        """The agency's backend can join the trace; its other headers are unchanged."""
        url, seen = echo
        span = new_trace()
        request = BackendRequest(
            url=f"{url}/income-records",
            timeout=5,
            body=HandedBody(b'{"national_id":"x"}'),
            consumer=BENEFITS,
            contract="c",
            purpose=PURPOSE,
            exchange_id="jti-1",
        )
        async with aiohttp.ClientSession() as session:
            with active(span):
                await HttpBackend(session).call(request)
            await HttpBackend(session).call(request)
        inside, outside = seen
        sent = parse_traceparent(inside["traceparent"])
        assert sent is not None
        assert sent.trace_id == span.trace_id
        assert inside["X-Exchange-Id"] == "jti-1"
        assert "traceparent" not in outside


# -- across a live network ----------------------------------------------------------


def _lines_of(stream: io.StringIO, trace_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("trace_id") == trace_id]


async def _exchange(
    network: LiveNetwork, consumer: str, provider: str, service: str, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    agency = network.agency(consumer)
    key = next(iter(agency["client_keys"].values()))
    purpose = PURPOSE if consumer == BENEFITS else "tax-assessment"
    sent = {
        "Authorization": f"Bearer {key}",
        "X-Purpose": purpose,
        "X-End-User": END_USER,
        **headers,
    }
    body = {"national_id": network.demo["subjects"][1], "year": 2025}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{network.url(consumer)}/v1/exchange/{provider}/{service}", json=body, headers=sent
        ) as response,
    ):
        await response.read()
        return response.status, dict(response.headers)


class TestAcrossGateways:
    """One client request: one trace id on both gateways and in the answer."""

    async def test_given_traceparent(self, network: LiveNetwork, captured: io.StringIO) -> None:
        """The client's trace id is on the consumer's and the provider's log lines."""
        trace_id = new_trace_id()
        caller = TraceContext(trace_id, new_span_id(), 1)
        status, headers = await _exchange(
            network, BENEFITS, TAX, SERVICE, {"traceparent": caller.traceparent()}
        )
        assert status == 200
        answered = parse_traceparent(headers["traceparent"])
        assert answered is not None
        assert answered.trace_id == trace_id
        assert answered.span_id != caller.span_id
        assert answered.sampled
        lines = _lines_of(captured, trace_id)
        exchanges = {
            (line["agency"], line["direction"]): line
            for line in lines
            if line["event"] == "exchange"
        }
        consumer, provider = exchanges[(BENEFITS, "outbound")], exchanges[(TAX, "inbound")]
        assert consumer["span_id"] == answered.span_id
        assert provider["span_id"] != consumer["span_id"]
        assert consumer["exchange_id"] == provider["exchange_id"]
        assert {line["agency"] for line in lines} == {BENEFITS, TAX}

    async def test_no_traceparent(self, network: LiveNetwork, captured: io.StringIO) -> None:
        """Without one the consumer starts a trace, and the provider continues it."""
        status, headers = await _exchange(network, TAX, POPULATION, "person-basic", {})
        assert status == 200
        answered = parse_traceparent(headers["traceparent"])
        assert answered is not None
        assert not answered.sampled
        lines = _lines_of(captured, answered.trace_id)
        assert {(line["agency"], line["event"]) for line in lines} >= {
            (TAX, "exchange"),
            (POPULATION, "exchange"),
        }

    @pytest.mark.parametrize(
        "value", [f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-extra", "nonsense"]
    )
    async def test_invalid_traceparent(
        self, network: LiveNetwork, captured: io.StringIO, value: str
    ) -> None:
        """An invalid header is ignored: a fresh trace, and the request is served as usual."""
        status, headers = await _exchange(network, BENEFITS, TAX, SERVICE, {"traceparent": value})
        assert status == 200
        answered = parse_traceparent(headers["traceparent"])
        assert answered is not None
        assert answered.trace_id not in {TRACE, "0" * 32}
        assert _lines_of(captured, answered.trace_id)

    async def test_every_answer_carries_one(self, network: LiveNetwork) -> None:
        """Probes, refusals and unknown paths are answered with a ``traceparent`` too."""
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz", "/metrics", "/no/such/path", "/v1/token"):
                async with session.get(f"{network.url(TAX)}{path}") as response:
                    assert parse_traceparent(response.headers.get("traceparent")), path
            async with session.post(
                f"{network.url(TAX)}/v1/token", headers={"traceparent": VALID}
            ) as response:
                assert response.status == 400
                answered = parse_traceparent(response.headers.get("traceparent"))
                assert answered is not None
                assert answered.trace_id == TRACE
