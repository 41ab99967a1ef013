"""deploy/: the Prometheus configuration, alert rules and Grafana dashboard.

Every metric an alert or a dashboard panel names must be one the gateway
exports: the names are taken from the PromQL of ``alerts.yml`` and
``gateway.json`` and checked against the ``/metrics`` of every gateway of a
live demo network. Every alert has a ``promtool test rules`` case that fires
and one that does not; the dashboard is importable (unique panel ids, the
data source and agency come from template variables); the scrape
configuration matches the demo network. ``make test`` runs promtool itself
on these files too (``promcheck``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import build_parser
from gateway.demo.network import AGENCY_NAMES, PORT_OFFSETS
from tests.conftest import LiveNetwork
from tests.wire import get

ROOT: Final = Path(__file__).resolve().parent.parent
PROMETHEUS: Final = ROOT / "deploy" / "prometheus"
CONFIG: Final = PROMETHEUS / "prometheus.yml"
ALERTS: Final = PROMETHEUS / "alerts.yml"
ALERT_TESTS: Final = PROMETHEUS / "alerts_test.yml"
DASHBOARD: Final = ROOT / "deploy" / "grafana" / "gateway.json"
OPERATIONS: Final = ROOT / "docs" / "operations.md"

# A gateway metric name in PromQL: not part of a longer identifier. Label
# values (job="gateway") and template variables never contain "gateway_".
METRIC: Final = re.compile(r"(?<![A-Za-z0-9_:])gateway_[a-z0-9_]*[a-z0-9]")

# The sample names each exposition type yields for a family (the text parser
# strips a counter's _total from the family name).
SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}

DATASOURCE: Final = "${datasource}"


def metric_names(promql: str) -> set[str]:
    """The ``gateway_`` metric names ``promql`` selects, as written (with any suffix)."""
    return set(METRIC.findall(promql))


def exported_names(exposition: str) -> set[str]:
    """Every sample name the families of a text exposition can have, samples or not yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def family_of(name: str) -> str:
    """``name`` without the suffix a counter or histogram sample adds."""
    return re.sub(r"_(bucket|sum|count|total|created)$", "", name)


def load_yaml(path: Path) -> Any:
    """A YAML document."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of ``alerts.yml``."""
    document = load_yaml(ALERTS)
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and query variable."""
    queries = []
    for panel in panels(document):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['id']} {panel['title']!r}", target["expr"]))
    for annotation in document["annotations"]["list"]:
        if "expr" in annotation:
            queries.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries.append((f"variable {variable['name']!r}", text))
    return queries


def referenced() -> dict[str, list[str]]:
    """Each gateway metric name the alerts and the dashboard use -> where."""
    places: dict[str, list[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            places.setdefault(name, []).append(f"alert {rule['alert']}")
    for where, expr in dashboard_queries(dashboard()):
        for name in metric_names(expr):
            places.setdefault(name, []).append(where)
    return places


# -- the metric names ----------------------------------------------------------


def test_metric_names_are_found_in_promql() -> None:
    """The extraction sees names with their suffixes, and nothing in labels or variables."""
    promql = (
        "histogram_quantile(0.99, sum by (le) (rate("
        'gateway_exchange_phase_seconds_bucket{job="gateway", agency=~"$agency"}'
        "[$__rate_interval]))) / on() gateway_audit_tree_size"
        " and gateway_reload_failures_total offset 5m"
    )
    assert metric_names(promql) == {
        "gateway_exchange_phase_seconds_bucket",
        "gateway_audit_tree_size",
        "gateway_reload_failures_total",
    }
    assert family_of("gateway_exchange_phase_seconds_bucket") == "gateway_exchange_phase_seconds"


def test_exported_names_cover_families_without_samples() -> None:
    """A labelled counter or histogram nobody has touched yet still counts as exported."""
    exposition = (
        "# HELP gateway_x_total x\n# TYPE gateway_x_total counter\n"
        "# HELP gateway_h_seconds h\n# TYPE gateway_h_seconds histogram\n"
        "# HELP gateway_g g\n# TYPE gateway_g gauge\ngateway_g 1.0\n"
    )
    names = exported_names(exposition)
    assert {"gateway_x_total", "gateway_h_seconds_bucket", "gateway_h_seconds_count"} <= names
    assert {"gateway_g", "gateway_h_seconds_sum"} <= names
    assert "gateway_x" not in names
    assert "gateway_g_bucket" not in names


def test_alerts_and_dashboard_name_metrics() -> None:
    """The extraction is not vacuous: both files use the central metrics."""
    names = referenced()
    assert "gateway_exchanges_total" in names
    assert "gateway_exchange_duration_seconds_bucket" in names
    assert "gateway_exchange_phase_seconds_bucket" in names
    assert "gateway_audit_store_up" in names
    assert "gateway_contract_expiry_seconds" in names


async def test_every_metric_named_is_exported(network: LiveNetwork) -> None:
    """Every metric an alert or a dashboard panel names is on some gateway's ``/metrics``."""
    exported: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for agency in network.demo["agencies"]:
            answer = await get(session, f"{network.url(agency)}/metrics")
            assert answer.status == 200, agency
            exported |= exported_names(answer.raw.decode("utf-8"))
    missing = {
        name: sorted(set(places)) for name, places in referenced().items() if name not in exported
    }
    families = {family_of(name) for name in exported}
    report = "\n".join(
        f"  {name} ({'wrong suffix' if family_of(name) in families else 'not exported'}):"
        f" {', '.join(places)}"
        for name, places in sorted(missing.items())
    )
    assert not missing, f"metrics named in deploy/ that no gateway exports:\n{report}"


# -- alerts ----------------------------------------------------------------------


def test_alerts_are_labelled_and_annotated() -> None:
    """Severity, summary, description, and a runbook link to the alert's own section."""
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}", name


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors of a Markdown document, and explicit ``id``/``name`` anchors."""
    anchors = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_runbook_anchors_exist() -> None:
    """Each runbook link lands on a section of docs/operations.md."""
    if not OPERATIONS.exists():
        pytest.skip("docs/operations.md is not written yet")
    anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
    missing = [
        rule["alert"]
        for rule in alert_rules()
        if rule["annotations"]["runbook_url"].partition("#")[2] not in anchors
    ]
    assert not missing, f"docs/operations.md has no section for {missing}"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    """alerts_test.yml checks each alert once firing and once not firing."""
    document = load_yaml(ALERT_TESTS)
    assert document["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


# -- Prometheus configuration ---------------------------------------------------


def test_scrape_config_matches_the_demo_network() -> None:
    """One target per demo gateway at the default port base, labelled with its agency."""
    config = load_yaml(CONFIG)
    assert [PROMETHEUS / path for path in config["rule_files"]] == [ALERTS]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "gateway"  # GatewayDown and the dashboard select up{job="gateway"}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port_base = build_parser().parse_args(["demo"]).port_base
    targets = {
        target: group["labels"]["agency"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {
        f"127.0.0.1:{port_base + PORT_OFFSETS[agency]}": agency for agency in AGENCY_NAMES
    }


# -- Grafana dashboard ----------------------------------------------------------


def test_dashboard_panel_ids_are_unique() -> None:
    """Grafana keys panels by id; duplicates break links, edits and imports."""
    ids = [panel["id"] for panel in panels(dashboard())]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_dashboard_layout_does_not_overlap() -> None:
    """Panels stay inside the 24 columns and no two share a grid cell."""
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[x, y]!r}"
                taken[x, y] = panel["title"]


def test_dashboard_data_source_and_agency_are_variables() -> None:
    """No data source uid is baked in; every query follows the agency selector."""
    document = dashboard()
    assert isinstance(document["schemaVersion"], int)
    assert document["schemaVersion"] >= 36
    assert document["id"] is None
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["agency"]["type"] == "query"
    assert variables["agency"]["datasource"]["uid"] == DATASOURCE
    for panel in panels(document):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
            assert 'agency=~"$agency"' in target["expr"], panel["title"]


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by what Prometheus would see."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
        ("$agency", ".*"),
    ):
        expr = expr.replace(variable, value)
    return expr


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (.ci/install-promtool.sh installs it)")
    queries = [
        expr for _, expr in dashboard_queries(dashboard()) if not expr.startswith("label_values(")
    ]
    rules = [
        {"record": f"dashboard:query_{index}", "expr": _grafana_to_promql(expr)}
        for index, expr in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
