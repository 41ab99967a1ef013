"""Logs: one ``exchange`` event per exchange on each gateway, one ``token`` event per token
request, correlated across gateways, and free of personal data and credentials.

The demo scenario (the nine cases ``gateway demo`` plays) runs on a network of
its own while every log line is captured as JSON. Each side of each exchange
logs exactly one event naming the exchange (message ``jti``), the trace, the
audit record, the parties, contract and purpose, and the outcome; every audit
record of the run has its log event. No line holds a subject id, an end-user
id, a body value, an API key or a token, and neither does ``/metrics``.
Failures the audit log cannot record still log their one event.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from gateway import cli
from gateway.demo import scenario
from gateway.demo.backends import PEOPLE
from gateway.demo.network import AGENCY_NAMES, BENEFITS, POPULATION, TAX, build_network
from gateway.observability import configure_logging, get_logger
from tests.conftest import LiveNetwork, live_network
from tests.stores import break_writes
from tests.test_readyz import gateway_in_process
from tests.wire import END_USER, Peer, audit_path, audit_records, get

# Any compact JWS, JWT or JWE: three or more base64url segments, the first a JSON header.
COMPACT_JOSE: Final = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
EXCHANGE_FIELDS: Final = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "agency",
        "trace_id",
        "span_id",
        "direction",
        "peer",
        "service",
        "contract",
        "purpose",
        "client",
        "exchange_id",
        "outcome",
        "status",
        "latency_ms",
        "audit_index",
    }
)
TOKEN_FIELDS: Final = EXCHANGE_FIELDS - {"client", "exchange_id"}


@dataclass
class Run:
    """What the scenario did and what the gateways logged meanwhile."""

    net: LiveNetwork
    rows: list[scenario.CaseResult] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: str = ""
    metrics: dict[str, str] = field(default_factory=dict)

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """The log events named ``event`` with every member of ``match``."""
        return [
            line
            for line in self.lines
            if line["event"] == event and all(line.get(k) == v for k, v in match.items())
        ]

    def secrets(self) -> dict[str, str]:
        """Every value that must appear in no log line, by a label for the failure message."""
        found = {f"subject {subject}": subject for subject in self.net.demo["subjects"]}
        found["end user"] = END_USER
        for agency, entry in self.net.demo["agencies"].items():
            for client, key in entry["client_keys"].items():
                found[f"api key of {agency}/{client}"] = key
            found[f"officer key of {agency}"] = entry["officer_key"]
        for subject in self.net.demo["subjects"]:
            person = PEOPLE[subject]
            found[f"name of {subject}"] = person["name"]
            found[f"birth date of {subject}"] = person["birth_date"]
            found[f"street of {subject}"] = person["address"]["street"]
            found[f"bank account of {subject}"] = person["_iban"]
        return found


async def _play(run: Run) -> None:
    run.rows = await scenario.run_scenario(run.net.directory, run.net.demo, run.net.registry)
    async with aiohttp.ClientSession() as session:
        for agency in AGENCY_NAMES:
            answer = await get(session, f"{run.net.url(agency)}/metrics")
            run.metrics[agency] = answer.raw.decode()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Play the demo scenario once on a network of its own, logging at info level as JSON."""
    with live_network(tmp_path_factory.mktemp("logs") / "network") as net:
        played = Run(net=net)
        stream = io.StringIO()
        configure_logging("info", "json", stream)
        try:
            asyncio.run(_play(played))
        finally:
            configure_logging("warning", "json")
        played.raw = stream.getvalue()
        played.lines = [json.loads(line) for line in played.raw.splitlines()]
        yield played


class TestOneEventPerExchange:
    """Each side of each exchange logs exactly one event, with every field."""

    def test_scenario_passed(self, run: Run) -> None:
        """Sanity: the nine cases behaved as the demo documents."""
        assert len(run.rows) == 9
        assert all(row.ok for row in run.rows), [row for row in run.rows if not row.ok]

    def test_counts(self, run: Run) -> None:
        """Seven client calls, five exchanges reaching a provider, five token requests."""
        exchanges = Counter(
            (line["agency"], line["direction"], line["outcome"]) for line in run.events("exchange")
        )
        assert exchanges == {
            # The client calls: three allowed, four refused by the consumer gateway itself.
            (BENEFITS, "outbound", "ok"): 2,
            (TAX, "outbound", "ok"): 1,
            (BENEFITS, "outbound", "contract-denied"): 2,
            (BENEFITS, "outbound", "forbidden"): 1,
            (BENEFITS, "outbound", "unauthorized"): 1,
            # What reached the providers: the three allowed calls, and the replayed message.
            (TAX, "inbound", "ok"): 2,
            (TAX, "inbound", "replay"): 1,
            (POPULATION, "inbound", "ok"): 2,
        }
        tokens = Counter((line["agency"], line["outcome"]) for line in run.events("token"))
        assert tokens == {(TAX, "ok"): 2, (TAX, "invalid_client"): 1, (POPULATION, "ok"): 2}

    def test_fields(self, run: Run) -> None:
        """Every event has the same fields (and no others); refusals name their problem."""
        for line in run.events("exchange"):
            assert set(line) == EXCHANGE_FIELDS, line
            assert line["level"] == "info"
            assert isinstance(line["latency_ms"], float | int)
            assert line["latency_ms"] >= 0
            assert re.fullmatch("[0-9a-f]{32}", line["trace_id"])
            assert re.fullmatch("[0-9a-f]{16}", line["span_id"])
            assert line["service"] in {"income-records", "person-basic"}
        for line in run.events("token"):
            assert set(line) == TOKEN_FIELDS, line
        for line in run.events("exchange", outcome="ok"):
            assert line["status"] == 200
            assert line["contract"]
            assert line["purpose"]
            assert line["exchange_id"]
            assert line["peer"] in AGENCY_NAMES
        refusals = {
            (line["outcome"], line["status"])
            for line in run.events("exchange")
            if line["outcome"] != "ok"
        }
        assert refusals == {
            ("contract-denied", 403),
            ("forbidden", 403),
            ("unauthorized", 401),
            ("replay", 409),
        }
        # What was known when the consumer refused: the purpose asked for, no contract chosen.
        (wrong_purpose,) = run.events("exchange", outcome="contract-denied", purpose="marketing")
        assert wrong_purpose["contract"] is None
        assert wrong_purpose["audit_index"] is not None
        (unknown_key,) = run.events("exchange", outcome="unauthorized")
        assert unknown_key["client"] is None

    def test_both_sides_share_the_exchange_and_the_trace(self, run: Run) -> None:
        """A consumer's allowed exchange and its provider's event: same ``jti``, same trace."""
        allowed = run.events("exchange", direction="outbound", outcome="ok")
        assert len(allowed) == 3
        for consumer in allowed:
            (provider,) = run.events(
                "exchange", direction="inbound", exchange_id=consumer["exchange_id"]
            )
            assert provider["agency"] == consumer["peer"]
            assert provider["peer"] == consumer["agency"]
            assert provider["trace_id"] == consumer["trace_id"]
            assert provider["span_id"] != consumer["span_id"]
            for name in ("service", "contract", "purpose", "client"):
                assert provider[name] == consumer[name], name
            # Each was the first call for its grant: the token fetched for it is in its trace.
            (token,) = run.events("token", agency=provider["agency"], trace_id=consumer["trace_id"])
            assert (token["peer"], token["contract"]) == (consumer["agency"], consumer["contract"])
        traces = {line["trace_id"] for line in allowed}
        assert len(traces) == 3

    def test_every_audit_record_has_its_event(self, run: Run) -> None:
        """The events' audit indexes are exactly the records of each gateway's log."""
        for agency in AGENCY_NAMES:
            records = {
                index: json.loads(leaf)
                for index, leaf in audit_records(audit_path(run.net, agency))
            }
            events = [
                line
                for line in run.lines
                if line["event"] in {"exchange", "token"} and line["agency"] == agency
            ]
            indexes = [line["audit_index"] for line in events]
            assert sorted(indexes) == sorted(records), agency
            for line in events:
                record = records[line["audit_index"]]
                assert record["direction"] == line["direction"]
                assert record.get("jti") == line.get("exchange_id", record.get("jti"))
                assert record.get("contract") == line["contract"]
                assert record["status"] == line["status"]
                if line["outcome"] == "ok":
                    assert record["kind"] == line["event"]
                else:
                    assert (record["kind"], record["problem"]) == ("refusal", line["outcome"])

    def test_nothing_else_went_wrong(self, run: Run) -> None:
        """No line at warning level or above in the whole run."""
        assert [line for line in run.lines if line["level"] != "info"] == []


class TestNoPersonalData:
    """Nothing the scenario made the gateways log or export holds personal data."""

    def test_log_lines(self, run: Run) -> None:
        """No subject id, end-user id, body value, API key, officer key or token."""
        assert len(run.lines) >= 17
        leaks = [
            f"{label} in log line {number}"
            for number, line in enumerate(run.raw.splitlines())
            for label, secret in run.secrets().items()
            if secret in line
        ]
        assert leaks == []
        assert COMPACT_JOSE.search(run.raw) is None
        assert "Bearer" not in run.raw
        for line in run.lines:
            assert not {"subject", "end_user", "body", "token", "api_key"} & set(line), line

    def test_metrics(self, run: Run) -> None:
        """``/metrics`` of every gateway neither: no id, key, body value, trace id or jti."""
        exchange_ids = {
            line["exchange_id"] for line in run.events("exchange") if line.get("exchange_id")
        }
        trace_ids = {line["trace_id"] for line in run.lines}
        for agency, text in run.metrics.items():
            assert "gateway_" in text
            for label, secret in run.secrets().items():
                assert secret not in text, f"{label} in /metrics of {agency}"
            for value in exchange_ids | trace_ids:
                assert value not in text, agency


# -- failures no audit record can describe -------------------------------------------


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [
        line
        for line in map(json.loads, stream.getvalue().splitlines())
        if line["event"] in {"exchange", "token"}
    ]


async def test_audit_unavailable_is_logged_once(
    tmp_path: Path, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit log cannot be written, each request still logs its one event."""
    async with gateway_in_process(tmp_path / "network", TAX) as served:
        peer = Peer(served.net)
        token = await peer.token(served.session)
        sealed = peer.seal(peer.claims(token, served.net.demo["subjects"][0]))

        await break_writes(served.runtime.audit, served.runtime.settings.audit.store)
        refused_token = await peer.token_request(served.session)
        refused_exchange = await peer.send(served.session, sealed.jwe, token)
    assert refused_token.status == refused_exchange.status == 503
    token_ok, token_refused, exchange = _events(captured)
    assert (token_ok["event"], token_ok["outcome"]) == ("token", "ok")
    assert (token_refused["event"], token_refused["outcome"]) == ("token", "audit-unavailable")
    assert (exchange["event"], exchange["outcome"]) == ("exchange", "audit-unavailable")
    for line in (token_refused, exchange):
        assert line["level"] == "warning"
        assert line["status"] == 503
        assert line["audit_index"] is None
        assert line["peer"] == BENEFITS
    assert exchange["exchange_id"] == sealed.jti


async def test_internal_error_is_logged_once(
    tmp_path: Path, captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug on the exchange path: one ``exchange`` event (internal-error) besides its trace."""
    async with gateway_in_process(tmp_path / "network", TAX) as served:
        peer = Peer(served.net)
        token = await peer.token(served.session)
        sealed = peer.seal(peer.claims(token, served.net.demo["subjects"][0]))

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr("gateway.inbound.check_fresh", broken)
        answer = await peer.send(served.session, sealed.jwe, token)
    assert answer.status == 500
    exchanges = [line for line in _events(captured) if line["event"] == "exchange"]
    assert len(exchanges) == 1
    assert (exchanges[0]["outcome"], exchanges[0]["status"]) == ("internal-error", 500)
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    (bug,) = [line for line in lines if line["event"] == "unhandled_error"]
    assert bug["trace_id"] == exchanges[0]["trace_id"]
    assert "a bug" in bug["exception"]


# -- configuration ----------------------------------------------------------------


class TestConfiguration:
    """Level and format come from the configuration; the demo uses the console view."""

    def test_json_by_default(self) -> None:
        """JSON lines at info level unless told otherwise."""
        stream = io.StringIO()
        try:
            configure_logging(stream=stream)
            log = get_logger(agency=TAX)
            log.debug("hidden")
            log.info("shown", answer=42)
        finally:
            configure_logging("warning", "json")
        (line,) = stream.getvalue().splitlines()
        event = json.loads(line)
        assert (event["event"], event["agency"], event["answer"]) == ("shown", TAX, 42)
        assert event["level"] == "info"
        assert event["timestamp"].endswith("Z")

    @pytest.mark.parametrize(
        ("level", "shown"),
        [
            ("debug", ["d", "i", "w", "e"]),
            ("info", ["i", "w", "e"]),
            ("warning", ["w", "e"]),
            ("error", ["e"]),
        ],
    )
    def test_level(self, level: str, shown: list[str]) -> None:
        """Lines below the configured level are dropped."""
        stream = io.StringIO()
        try:
            configure_logging(level, "json", stream)
            log = get_logger()
            log.debug("d")
            log.info("i")
            log.warning("w")
            log.error("e")
        finally:
            configure_logging("warning", "json")
        assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == shown

    def test_console(self) -> None:
        """The console view is one readable line per event, not JSON."""
        stream = io.StringIO()
        try:
            configure_logging("info", "console", stream)
            get_logger(agency=TAX).info("exchange", direction="inbound", outcome="ok")
        finally:
            configure_logging("warning", "json")
        text = stream.getvalue()
        assert "exchange" in text
        assert "direction=inbound" in text
        with pytest.raises(ValueError, match=r"Extra data|Expecting value"):
            json.loads(text)

    def test_serve_applies_the_configuration(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``gateway serve`` configures logging from ``log.level`` and ``log.format``."""
        build_network(tmp_path, 30000, datetime.now(UTC))
        config = tmp_path / TAX / "gateway.yaml"
        config.write_text(
            config.read_text()
            .replace("format: console", "format: json")
            .replace("level: info", "level: debug")
        )
        calls: list[tuple[Any, ...]] = []

        async def serve(settings: Any, **options: Any) -> None:
            calls.append(("serve", settings.agency, options))

        monkeypatch.setattr(cli, "configure_logging", lambda *args: calls.append(args))
        monkeypatch.setattr("gateway.web.server.serve", serve)
        assert cli.main(["serve", "--config", str(config)]) == 0
        # A process that serves until it exits tunes the garbage collector for it.
        assert calls == [("debug", "json"), ("serve", TAX, {"tune_gc": True})]

    def test_demo_uses_the_console_view(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``gateway demo`` logs through the console renderer."""
        import gateway.demo

        calls: list[tuple[Any, ...]] = []

        class Stop(Exception):
            """Raised where the demo would write its files."""

        def stop(*args: Any) -> Any:
            raise Stop

        monkeypatch.setattr(gateway.demo, "configure_logging", lambda *args: calls.append(args))
        monkeypatch.setattr(gateway.demo, "build_network", stop)
        monkeypatch.setattr(gateway.demo, "load_demo", stop)
        for once, level in ((True, "warning"), (False, "info")):
            with pytest.raises(Stop):
                asyncio.run(
                    gateway.demo.run_demo(
                        directory=tmp_path, port_base=30100, scenario=True, once=once
                    )
                )
            assert calls.pop() == (level, "console")
