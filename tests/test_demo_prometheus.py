"""A real Prometheus scraping a demo network (issue 4, acceptance).

* ``promtool check metrics`` accepts every gateway's ``/metrics`` after
  traffic, lint warnings included.
* What Prometheus stored of ``gateway_exchanges_total`` equals what each
  gateway's audit log says about the same period, series by series.
* ``gateway demo --with-prometheus`` runs Prometheus, whose targets come up,
  and stops it cleanly on SIGINT and on SIGTERM.

Which audit records ``gateway_exchanges_total`` counts (gateway/inbound.py,
gateway/outbound.py, gateway/web/app.py): one per exchange that ended, on
each side. An exchange that succeeded is one ``kind: exchange`` record
(outcome ok). A refused one is one ``kind: refusal`` record whose
``problem`` is its outcome. Token requests are not exchanges: a granted one
is ``kind: token``, and a refused one is a ``kind: refusal`` record too,
``direction: inbound``, told apart only by its ``problem``, an OAuth error
code (``invalid_client``...) rather than a problem name (``token-invalid``).
An exchange refused with ``audit-unavailable`` is counted but has no record;
none happens here. Label values follow gateway/metrics.py: an agency not in
the registry, a service neither configured nor in a loaded contract, a
contract not loaded, a purpose the contract does not allow, and everything
not yet known when the exchange was refused, are ``unknown``; a peer's own
problem name is ``upstream-other``.

The test needs the ``prometheus`` and ``promtool`` binaries (Debian's
``prometheus`` package; ``make test`` installs it before the unit tests) and
is skipped, saying so, where they are missing.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml

from gateway.audit.records import record_time
from gateway.demo.network import BENEFITS, INCOME_CONTRACT, POPULATION, TAX
from gateway.demo.prometheus import (
    PORT_OFFSET,
    Prometheus,
    PrometheusError,
    find_prometheus,
    prometheus_config,
    report_scraped,
    running_prometheus,
    write_prometheus_files,
)
from gateway.demo.scenario import run_scenario
from gateway.errors import SetupError, TokenRequestError
from gateway.metrics import problem_label
from tests.conftest import LiveNetwork, free_port_base, live_network
from tests.wire import Peer, free_port, get, post

PROMETHEUS: Final = shutil.which("prometheus")
PROMTOOL: Final = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus binary on PATH (Debian's prometheus package: .ci/install-promtool.sh)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="no promtool on PATH (Debian's prometheus package: .ci/install-promtool.sh)",
)

ROOT: Final = Path(__file__).resolve().parent.parent
ALERTS: Final = ROOT / "deploy" / "prometheus" / "alerts.yml"
OAUTH_ERRORS: Final = frozenset(TokenRequestError.STATUSES)
UNKNOWN: Final = "unknown"
LABELS: Final = ("direction", "peer", "service", "contract", "purpose", "outcome")

SeriesKey = tuple[str, ...]


# -- the generated configuration ------------------------------------------------


def _demo(port_base: int) -> dict[str, Any]:
    agencies = {
        agency: {"url": f"http://127.0.0.1:{port_base + offset}"}
        for agency, offset in ((POPULATION, 1), (TAX, 2), (BENEFITS, 3))
    }
    return {"port_base": port_base, "agencies": agencies}


def test_config_scrapes_every_gateway_with_its_agency() -> None:
    """One job ``gateway``, one target per gateway of demo.json, labelled with its agency."""
    config = prometheus_config(_demo(8100), rule_files=["alerts.yml"])
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "gateway"
    targets = {
        target: group["labels"]["agency"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {
        "127.0.0.1:8101": POPULATION,
        "127.0.0.1:8102": TAX,
        "127.0.0.1:8103": BENEFITS,
    }
    assert config["global"]["scrape_interval"] == "1s"
    assert config["rule_files"] == ["alerts.yml"]


@needs_promtool
def test_written_config_passes_promtool(tmp_path: Path) -> None:
    """The files written into the demo folder: promtool checks the config and its rules."""
    config = write_prometheus_files(tmp_path, _demo(8100))
    assert (tmp_path / "prometheus" / "alerts.yml").read_bytes() == ALERTS.read_bytes()
    checked = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_config_without_alert_rules(tmp_path: Path) -> None:
    """Without deploy/ (an installed package), Prometheus runs without rules."""
    config = write_prometheus_files(tmp_path, _demo(8100), alerts=tmp_path / "absent.yml")
    assert yaml.safe_load(config.read_text())["rule_files"] == []
    assert not (tmp_path / "prometheus" / "alerts.yml").exists()


def test_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    """No prometheus on PATH: one line naming the installer, exit 1, nothing written."""
    folder = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--with-prometheus", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("gateway: --with-prometheus: ")
    assert ".ci/install-promtool.sh" in result.stderr
    assert "apt-get install" in result.stderr
    assert "Traceback" not in result.stderr
    assert not folder.exists()


def test_find_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The binary is looked up on PATH, never installed."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SetupError, match="install-promtool"):
        find_prometheus()
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert find_prometheus() == "/opt/bin/prometheus"


# -- a live network, traffic, and Prometheus scraping it ----------------------


@dataclass
class Scraped:
    """A demo network after traffic, scraped by Prometheus at least twice since."""

    net: LiveNetwork
    prometheus: Prometheus
    at: float  # every sample before this instant, every audit record of the traffic too


async def _exchange(
    session: aiohttp.ClientSession,
    net: LiveNetwork,
    consumer: str,
    path: str,
    *,
    client: str = "caseworker-app",
    purpose: str | None = "benefit-eligibility",
    body: bytes | None = None,
    subject: str | None = None,
) -> int:
    headers = {
        "Authorization": f"Bearer {net.agency(consumer)['client_keys'][client]}",
        "X-End-User": "caseworker-17",
        "Content-Type": "application/json",
    }
    if purpose is not None:
        headers["X-Purpose"] = purpose
    if body is None:
        body = json.dumps(
            {"national_id": subject or net.demo["subjects"][0], "year": 2025}
        ).encode()
    answer = await post(
        session, f"{net.url(consumer)}/v1/exchange/{path}", data=io.BytesIO(body), headers=headers
    )
    return answer.status


async def _traffic(net: LiveNetwork) -> None:
    """The demo scenario, then more: concurrent exchanges and every kind of refusal."""
    rows = await run_scenario(net.directory, net.demo, net.registry)
    assert all(row.ok for row in rows), [row for row in rows if not row.ok]
    subjects = net.demo["subjects"]
    async with aiohttp.ClientSession() as session:
        income = f"{TAX}/income-records"
        person = f"{POPULATION}/person-basic"
        calls = [_exchange(session, net, BENEFITS, income, subject=s) for s in subjects * 2]
        calls += [_exchange(session, net, BENEFITS, person, subject=s) for s in subjects[:3]]
        # A person the backend does not know: a 404 answer is an exchange that succeeded.
        calls.append(_exchange(session, net, BENEFITS, person, subject="00000000000"))
        statuses = await asyncio.gather(*calls)
        assert statuses.count(200) == len(statuses) - 1
        assert statuses[-1] == 404
        # Outbound refusals: no X-Purpose, an agency the registry does not know, too large.
        assert await _exchange(session, net, BENEFITS, income, purpose=None) == 400
        assert await _exchange(session, net, BENEFITS, "nobody/income-records") == 403
        large = b"{" + b" " * (1024 * 1024) + b"}"
        assert await _exchange(session, net, BENEFITS, income, body=large) == 413
        # Inbound refusals, as a peer gateway would cause them.
        peer = Peer(net)
        assert (await peer.send(session, "x.y.z.w.v", "not-a-token")).status == 401
        token = await peer.token(session)
        assert (await peer.send(session, "x", token, service="no-such-service")).status == 404
        sent = await peer.send(session, "x.y.z.w.v", token, content_type="text/plain")
        assert sent.status == 400
        # A refused token request is a refusal record, but not an exchange.
        assert (await post(session, f"{net.url(TAX)}/v1/token", data={})).status == 400


def _free_prometheus_port(port_base: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port_base + PORT_OFFSET))
        except OSError:
            return free_port()
    return port_base + PORT_OFFSET


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A fresh demo network after traffic, and a Prometheus that scraped it twice since."""
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary on PATH (.ci/install-promtool.sh)")
    folder = tmp_path_factory.mktemp("prometheus-network")
    with live_network(folder) as net:
        port = _free_prometheus_port(net.demo["port_base"])
        prometheus = Prometheus(PROMETHEUS, net.directory, net.demo, port=port)
        prometheus.start()
        try:
            asyncio.run(prometheus.wait_ready())
            asyncio.run(_traffic(net))
            ended = time.time()
            asyncio.run(prometheus.wait_scraped(ended, scrapes=2))
            yield Scraped(net=net, prometheus=prometheus, at=time.time())
        finally:
            assert prometheus.stop() == 0, prometheus.last_log_line()


async def _expositions(net: LiveNetwork) -> dict[str, bytes]:
    """Each gateway's ``/metrics``."""
    texts = {}
    async with aiohttp.ClientSession() as session:
        for agency in net.demo["agencies"]:
            answer = await get(session, f"{net.url(agency)}/metrics")
            assert answer.status == 200, agency
            texts[agency] = answer.raw
    return texts


@needs_promtool
def test_promtool_accepts_every_gateways_metrics(scraped: Scraped) -> None:
    """``promtool check metrics``: exit 0 and no lint message for each gateway after traffic."""
    for agency, exposition in asyncio.run(_expositions(scraped.net)).items():
        assert b"gateway_exchanges_total{" in exposition, agency
        checked = subprocess.run(
            [str(PROMTOOL), "check", "metrics"],
            input=exposition,
            capture_output=True,
            check=False,
        )
        output = (checked.stdout + checked.stderr).decode()
        assert checked.returncode == 0, f"{agency}: {output}"
        assert output == "", f"{agency}: {output}"


@dataclass(frozen=True)
class KnownLabels:
    """What one gateway's metrics accept as label values (gateway/metrics.py)."""

    agencies: frozenset[str]
    services: frozenset[str]
    purposes: dict[str, frozenset[str]]  # loaded contract -> its purposes

    @classmethod
    def of(cls, net: LiveNetwork, agency: str) -> KnownLabels:
        """From the gateway's configuration and contract files, and the registry."""
        config_path = net.directory / net.agency(agency)["config"]
        config = yaml.safe_load(config_path.read_text())
        contracts = [
            yaml.safe_load(path.read_text())
            for path in sorted((config_path.parent / "contracts").glob("*.yaml"))
        ]
        return cls(
            agencies=frozenset(net.registry.agencies),
            services=frozenset(config["services"]) | {c["service"] for c in contracts},
            purposes={c["id"]: frozenset(p["id"] for p in c["purposes"]) for c in contracts},
        )

    def series(self, record: dict[str, Any]) -> SeriesKey | None:
        """The ``gateway_exchanges_total`` series an audit record counts in, if any."""
        if record["kind"] == "exchange":
            outcome = "ok"
        elif record["kind"] == "refusal" and record["problem"] not in OAUTH_ERRORS:
            outcome = problem_label(record["problem"])
        else:  # a granted or refused token request, an officer's query
            return None
        direction = record["direction"]
        peer = record.get("consumer" if direction == "inbound" else "provider")
        service = record.get("service")
        contract = record.get("contract")
        purpose = record.get("purpose")
        known_contract = contract in self.purposes
        return (
            direction,
            peer if peer in self.agencies else UNKNOWN,
            service if service in self.services else UNKNOWN,
            contract if known_contract else UNKNOWN,
            purpose if known_contract and purpose in self.purposes[contract] else UNKNOWN,
            outcome,
        )


async def _audit_records(
    session: aiohttp.ClientSession, net: LiveNetwork, agency: str, kind: str, until: str
) -> list[dict[str, Any]]:
    """Every record of ``kind`` before ``until``, page by page, through the officer API."""
    headers = {"Authorization": f"Bearer {net.agency(agency)['officer_key']}"}
    params = {"kind": kind, "until": until, "limit": "1000"}
    records: list[dict[str, Any]] = []
    while True:
        answer = await get(
            session, f"{net.url(agency)}/v1/audit/records", params=params, headers=headers
        )
        assert answer.status == 200, answer.raw
        page = answer.json
        records += [entry["record"] for entry in page["records"]]
        if page["next_cursor"] is None:
            return records
        params["cursor"] = page["next_cursor"]


async def _stored_counts(
    scraped: Scraped,
    agency: str,
    metric: str = "gateway_exchanges_total",
    labels: tuple[str, ...] = LABELS,
) -> dict[SeriesKey, int]:
    """A counter of one gateway as Prometheus stored it at ``scraped.at``, by ``labels``."""
    prometheus = scraped.prometheus
    async with aiohttp.ClientSession() as session:
        data = await prometheus.api(
            session,
            "/api/v1/query",
            query=f'{metric}{{job="gateway", agency="{agency}"}}',
            time=f"{scraped.at:.3f}",
        )
    counts: dict[SeriesKey, int] = {}
    for sample in data["result"]:
        key = tuple(sample["metric"][label] for label in labels)
        counts[key] = int(float(sample["value"][1]))
    return counts


async def test_prometheus_counts_equal_the_audit_log(scraped: Scraped) -> None:
    """Per gateway and series (direction, peer, service, contract, purpose, outcome).

    And ``gateway_refusals_total`` per (direction, problem) equals the
    gateway's refusal records, token requests' included.
    """
    net = scraped.net
    until = record_time(scraped.at)
    seen_outcomes: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for agency in net.demo["agencies"]:
            known = KnownLabels.of(net, agency)
            audited: collections.Counter[SeriesKey] = collections.Counter()
            refused: collections.Counter[SeriesKey] = collections.Counter()
            for kind in ("exchange", "refusal"):
                for record in await _audit_records(session, net, agency, kind, until):
                    key = known.series(record)
                    if key is not None:
                        audited[key] += 1
                    if kind == "refusal":  # exchanges and token requests alike
                        problem = record["problem"]
                        label = problem if problem in OAUTH_ERRORS else problem_label(problem)
                        refused[record["direction"], label] += 1
            stored = await _stored_counts(scraped, agency)
            assert stored, agency
            assert stored == dict(audited), (
                f"{agency}: Prometheus {sorted(stored.items())} "
                f"!= audit log {sorted(audited.items())}"
            )
            seen_outcomes |= {key[-1] for key in stored}
            # gateway_refusals_total counts every refusal record: exchanges and tokens.
            refusals = await _stored_counts(
                scraped, agency, "gateway_refusals_total", ("direction", "problem")
            )
            assert refusals == dict(refused), agency
    # The comparison is not vacuous: successes and refusals on both sides.
    assert {
        "ok",
        "contract-denied",
        "forbidden",
        "unauthorized",
        "bad-request",
        "payload-too-large",
        "replay",
        "token-invalid",
        "unknown-service",
        "envelope-invalid",
    } <= seen_outcomes


async def test_series_of_the_traffic(scraped: Scraped) -> None:
    """Spot checks with labels spelled out: bounded values, unknown where not yet known."""
    benefits = await _stored_counts(scraped, BENEFITS)
    subjects = len(scraped.net.demo["subjects"])
    # The scenario's one allowed income exchange, and two per subject afterwards.
    income = ("outbound", TAX, "income-records", INCOME_CONTRACT, "benefit-eligibility", "ok")
    assert benefits[income] == 1 + 2 * subjects
    # An agency the registry does not list is no label value.
    nobody = ("outbound", UNKNOWN, "income-records", UNKNOWN, UNKNOWN, "contract-denied")
    assert benefits[nobody] == 1
    tax = await _stored_counts(scraped, TAX)
    # Refused before the token was verified: nothing about the peer is known.
    forged = ("inbound", UNKNOWN, "income-records", UNKNOWN, UNKNOWN, "token-invalid")
    assert tax[forged] == 1
    # After the token: its contract and purpose are.
    envelope = (
        "inbound",
        BENEFITS,
        "income-records",
        INCOME_CONTRACT,
        "benefit-eligibility",
        "envelope-invalid",
    )
    assert tax[envelope] == 1
    assert tax["inbound", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "unknown-service"] == 1


async def test_alert_rules_are_loaded(scraped: Scraped) -> None:
    """Prometheus evaluates every rule of deploy/prometheus/alerts.yml, and none fires."""
    document = yaml.safe_load(ALERTS.read_text())
    expected = {rule["alert"] for group in document["groups"] for rule in group["rules"]}
    async with aiohttp.ClientSession() as session:
        data = await scraped.prometheus.api(session, "/api/v1/rules", type="alert")
        alerts = await scraped.prometheus.api(session, "/api/v1/alerts")
    loaded = {rule["name"] for group in data["groups"] for rule in group["rules"]}
    assert loaded == expected
    assert [alert for alert in alerts["alerts"] if alert["state"] == "firing"] == []


# -- gateway demo --with-prometheus, end to end ---------------------------------


def _demo_port_base() -> int:
    """A port base whose gateways, backends and Prometheus port are all free."""
    while True:
        base = free_port_base()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", base + PORT_OFFSET))
            except OSError:
                continue
        return base


def _wait_for(predicate: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@needs_prometheus
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_with_prometheus(tmp_path: Path, signum: signal.Signals) -> None:
    """Prometheus is ready, scrapes all three gateways, and stops with the demo."""
    folder = tmp_path / "demo"
    port_base = _demo_port_base()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    command = [sys.executable, "-m", "gateway.cli", "demo", "--with-prometheus"]
    command += ["--dir", str(folder), "--port-base", str(port_base)]
    with out.open("w") as stdout, err.open("w") as stderr:
        demo = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    try:
        _wait_for(
            lambda: "Press Ctrl-C to stop." in out.read_text() or demo.poll() is not None,
            "the welcome text",
            60,
        )
        assert demo.poll() is None, out.read_text() + err.read_text()
        welcome = out.read_text()
        url = f"http://127.0.0.1:{port_base + PORT_OFFSET}"
        assert f"{url}/graph?g0.expr=" in welcome
        assert "9 passed, 0 failed" in welcome
        children = _children(demo.pid)
        asyncio.run(_check_prometheus(url, port_base))
    finally:
        if demo.poll() is None:
            demo.send_signal(signum)
        try:
            status = demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
            raise
    assert status == 0, err.read_text()[-2000:]
    for child in children:
        assert _gone(child), f"process {child} outlived the demo"
    log = (folder / "prometheus" / "prometheus.log").read_text()
    # Prometheus' own last words on a clean shutdown (SIGTERM, not SIGKILL).
    assert "See you next time!" in log
    assert "Traceback" not in err.read_text()


async def _check_prometheus(url: str, port_base: int) -> None:
    async with aiohttp.ClientSession() as session:
        answer = await get(session, f"{url}/-/ready")
        assert answer.status == 200, answer.raw
        expected = {f"127.0.0.1:{port_base + offset}" for offset in (1, 2, 3)}
        deadline = time.monotonic() + 30
        while True:
            targets = await get(session, f"{url}/api/v1/targets")
            up = {
                target["labels"]["instance"]
                for target in targets.json["data"]["activeTargets"]
                if target["health"] == "up" and target["labels"]["job"] == "gateway"
            }
            if up == expected:
                break
            assert time.monotonic() < deadline, targets.json
            await asyncio.sleep(0.2)
        checked = await get(session, f"{url}/api/v1/query", params={"query": "up"})
        assert {sample["value"][1] for sample in checked.json["data"]["result"]} == {"1"}


async def test_once_report_and_welcome(
    scraped: Scraped, capsys: pytest.CaptureFixture[str]
) -> None:
    """What ``--once`` prints: Prometheus' counts by agency, direction and outcome."""
    await report_scraped(scraped.prometheus, scraped.at - 10)
    printed = capsys.readouterr().out
    assert f"Prometheus ({scraped.prometheus.url}) scraped every gateway twice" in printed
    rows = {tuple(line.split()) for line in printed.splitlines()[2:]}
    assert (TAX, "inbound", "replay", "1") in rows
    assert (BENEFITS, "outbound", "forbidden", "1") in rows
    welcome = scraped.prometheus.welcome()
    assert f"{scraped.prometheus.url}/graph?g0.expr=sum%20by%20" in welcome
    assert "alert rules of deploy/prometheus/alerts.yml" in welcome


@needs_prometheus
async def test_prometheus_that_cannot_start_is_reported(tmp_path: Path) -> None:
    """Its port taken: the demo stops with Prometheus' own reason, and nothing is left."""
    before = signal.getsignal(signal.SIGTERM)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = _demo(taken.getsockname()[1] - PORT_OFFSET)
        with pytest.raises(PrometheusError, match="address already in use") as caught:
            async with running_prometheus(str(PROMETHEUS), tmp_path, demo):
                pytest.fail("Prometheus cannot have started")
    assert "prometheus.log" in str(caught.value)
    assert signal.getsignal(signal.SIGTERM) == before


async def test_without_the_option_nothing_runs(tmp_path: Path) -> None:
    """``running_prometheus(None, ...)`` is a no-op: the demo without --with-prometheus."""
    async with running_prometheus(None, tmp_path, _demo(8100)) as prometheus:
        assert prometheus is None
    assert not (tmp_path / "prometheus").exists()


@needs_prometheus
def test_demo_once_with_prometheus(tmp_path: Path) -> None:
    """``--once``: the scenario, two scrapes of every gateway after it, the counts, a clean stop."""
    folder = tmp_path / "demo"
    port_base = _demo_port_base()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--once",
            "--with-prometheus",
            "--dir",
            str(folder),
            "--port-base",
            str(port_base),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    url = f"http://127.0.0.1:{port_base + PORT_OFFSET}"
    assert f"Prometheus ({url}) scraped every gateway twice after the scenario" in result.stdout
    rows = {tuple(line.split()) for line in result.stdout.splitlines()}
    assert (POPULATION, "inbound", "ok", "2") in rows
    assert (TAX, "inbound", "replay", "1") in rows
    assert (BENEFITS, "outbound", "contract-denied", "2") in rows
    assert "See you next time!" in (folder / "prometheus" / "prometheus.log").read_text()
    assert (folder / "prometheus" / "data").is_dir()
