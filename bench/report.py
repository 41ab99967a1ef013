"""Headline figures, tables and the JSON file of the exchange benchmark.

The headline figures are medians of per-round values (A, B and C alternate
within each round, so a drifting machine weighs on all three):

- ``c_over_b_throughput``: C's requests per second over B's.
- ``c_cpu_over_limit``: the two gateways' CPU per exchange over the limit
  "B's two proxies' CPU per request + the crypto floor (F, bare primitives)
  + two audit appends (one per gateway)". The backend is left out of both
  sides (it does the same work in B and C); the JSON also holds the ratio
  with it (``c_cpu_over_limit_with_backend``).
- ``crypto_share``: F through the project's code over the two gateways' CPU
  per exchange.
- ``p99_over_p50``: C's p99 latency over its p50 at the main concurrency.
- ``workers2_over_workers1``: the median throughput of C with both gateways
  at ``--workers 2`` over the median of the main C rounds (``null``, with
  the reason beside it, where ``gateway serve`` has no ``--workers``).
- ``provider_workers2_over_workers1``: the provider gateway alone (P), its
  throughput at ``--workers 2`` over ``--workers 1`` in the same round, the
  median over rounds (``provider_workersN_over_workers1`` for another N).

The flatness figures (``contracts_10000_over_10_throughput``,
``audit_1e6_over_0_throughput`` and their ``_cpu``) are medians of per-slice
ratios of lanes loaded at once (``bench.exchange._side_by_side``).

Beside them: each gateway's peak RSS at 1,000 connections
(``connections_1000_gateway_peak_rss_mb``, the larger of the two) and its RSS
growth over the soak (``soak_gateway_rss_growth_percent``).
"""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

TARGETS: Final = {
    "c_cpu_over_limit": ("<=", 1.15),
    "c_over_b_throughput": (">=", 0.22),
    "crypto_share": (">=", 0.6),
    "p99_over_p50": ("<=", 2.5),
    "workers2_over_workers1": (">=", 1.8),
    "provider_workers2_over_workers1": (">=", 1.8),
    "contracts_10000_over_10_throughput": (">=", 0.95),
    "audit_1e6_over_0_throughput": (">=", 0.90),
    "largest_payload_peak_over_payload": ("<=", 6.0),
    "connections_1000_gateway_peak_rss_mb": ("<", 150.0),
    "soak_gateway_rss_growth_percent": ("<", 5.0),
}
_COMPARE: Final = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}
HEADLINE: Final = (
    "c_over_b_throughput",
    "c_cpu_over_limit",
    "crypto_share",
    "p99_over_p50",
    "workers2_over_workers1",
    "provider_workers2_over_workers1",
)
HOP_NAMES: Final = ("proxy-1", "proxy-2", "consumer-gw", "provider-gw")
SECONDARY: Final = (
    "contracts_10000_over_10_throughput",
    "contracts_10000_over_10_cpu",
    "audit_1e6_over_0_throughput",
    "audit_1e6_over_0_cpu",
    "largest_payload_peak_over_payload",
    "gateway_peak_rss_mb",
    "connections_1000_gateway_peak_rss_mb",
    "connections_1000_overloaded_share",
    "soak_gateway_rss_growth_percent",
)
GATEWAY_NAMES: Final = ("consumer-gw", "provider-gw")


def _r(value: float, digits: int = 4) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def _median(values: Sequence[float]) -> float | None:
    return _r(statistics.median(values)) if values else None


def _say(text: str = "") -> None:
    print(text, flush=True)


def _by_round(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for scenario, results in runs.items():
        for result in results:
            rounds.setdefault(result["round"], {})[scenario] = result
    return [rounds[number] for number in sorted(rounds)]


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of one scenario (peaks: the largest)."""

    def med(get: Callable[[dict[str, Any]], float]) -> float | None:
        return _median([get(result) for result in results])

    processes: dict[str, Any] = {}
    for name in results[0]["processes"]:
        each = [result["processes"][name] for result in results]
        processes[name] = {
            "cpu_us_per_request": _median([entry["cpu_us_per_request"] for entry in each]),
            "cores_busy": _median([entry["cores_busy"] for entry in each]),
            "peak_rss_mb": max(entry["peak_rss_sum_mb"] for entry in each),
        }
    return {
        "runs": len(results),
        "throughput_rps": med(lambda r: r["throughput_rps"]),
        "latency_ms": {
            p: _median([result["latency_ms"][p] for result in results])
            for p in ("p50", "p90", "p99", "p99.9")
        },
        "hops_cpu_us_per_request": med(lambda r: r["hops_cpu_us_per_request"]),
        "chain_cpu_us_per_request": med(lambda r: r["chain_cpu_us_per_request"]),
        "processes": processes,
        "wrk_share_of_machine": med(lambda r: r["wrk"]["share_of_machine"]),
        "wrk_share_of_cpu_used": med(lambda r: r["wrk"]["share_of_cpu_used"]),
        "machine_busy_share": med(lambda r: r["machine_busy_share"]),
        "other_cores_busy": med(lambda r: r["other_cores_busy"]),
        "failed_requests": sum(r["failed"] for r in results),
        **_gateway_view(results),
    }


def _gateway_view(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of what the gateways' own metrics said about these runs (C only)."""
    views = [r["gateway_metrics"] for r in results if r.get("gateway_metrics")]
    if not views:
        return {}
    out: dict[str, Any] = {}
    for name in views[0]:
        each = [view[name] for view in views if name in view]
        phases = {
            phase: _median([entry["phase_ms_mean"].get(phase, 0.0) for entry in each])
            for phase in each[0]["phase_ms_mean"]
        }
        out[name] = {
            "exchange_ms_mean": _median([entry["exchange_ms_mean"] for entry in each]),
            "phase_ms_mean": phases,
            "audit_batch_mean": _median(
                [entry["audit_batch_mean"] for entry in each if entry["audit_batch_mean"]]
            ),
            "audit_durable_wait_ms_mean": _median(
                [
                    entry["audit_durable_wait_ms_mean"]
                    for entry in each
                    if entry["audit_durable_wait_ms_mean"]
                ]
            ),
        }
    return {"gateway_metrics": out}


def _per_round(results: dict[str, Any]) -> list[dict[str, Any]]:
    crypto, audit = results.get("crypto"), results.get("audit_append")
    rows = []
    for number, entry in enumerate(_by_round(results["scenarios"]), 1):
        row: dict[str, Any] = {"round": number}
        b, c = entry.get("B"), entry.get("C")
        if b and c:
            row["c_over_b_throughput"] = _r(c["throughput_rps"] / b["throughput_rps"])
        if c:
            row["p99_over_p50"] = _r(c["latency_ms"]["p99"] / c["latency_ms"]["p50"])
        if b and c and crypto and audit:
            floor = crypto["floor"]["cpu_us_per_exchange"]
            appends = audit["cpu_us_per_append"] * audit["appends_per_exchange"]
            limit = b["hops_cpu_us_per_request"] + floor + appends
            row["limit_us"] = _r(limit)
            row["c_cpu_over_limit"] = _r(c["hops_cpu_us_per_request"] / limit)
            backend_b = b["chain_cpu_us_per_request"] - b["hops_cpu_us_per_request"]
            row["c_cpu_over_limit_with_backend"] = _r(
                c["chain_cpu_us_per_request"] / (limit + backend_b)
            )
        if c and crypto:
            row["crypto_share"] = _r(
                crypto["project"]["cpu_us_per_exchange"] / c["hops_cpu_us_per_request"]
            )
        rows.append(row)
    return rows


def _ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    if not numerator or not denominator:
        return None
    return _r(statistics.median(numerator) / statistics.median(denominator))


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """Compute the headline and secondary figures; put them first in the document."""
    figures: dict[str, Any] = dict.fromkeys(HEADLINE)
    reasons: dict[str, str] = {}
    scenarios = results.get("scenarios")
    curves = results.get("curves", {})
    if scenarios:
        results["summary"] = {name: _summary(runs) for name, runs in scenarios.items()}
        rows = _per_round(results)
        results["per_round"] = rows
        for name in (*HEADLINE, "c_cpu_over_limit_with_backend"):
            values = [row[name] for row in rows if name in row]
            if values:
                figures[name] = _median(values)
    else:
        reasons["scenarios"] = "the main part (A, B, C) was not run"
    workers = curves.get("workers")
    if isinstance(workers, dict) and "skipped" in workers:
        reasons["workers2_over_workers1"] = workers["skipped"]
    elif isinstance(workers, list) and scenarios:
        figures["workers2_over_workers1"] = _ratio_of_medians(
            [r["throughput_rps"] for r in workers], [r["throughput_rps"] for r in scenarios["C"]]
        )
    elif "workers2_over_workers1" not in reasons:
        reasons["workers2_over_workers1"] = "the workers part was not run"
    _provider_workers(curves.get("provider_workers"), figures, reasons)
    _memory_figures(results, figures)
    for key, member, prefix in (
        ("contracts", "contracts", "contracts"),
        ("audit_log", "audit_records", "audit"),
    ):
        runs = curves.get(key) or []
        points = {run[member] for run in runs}
        if len(points) < 2:
            continue
        smallest, largest = min(points), max(points)
        name = f"{prefix}_{_exp(largest)}_over_{_exp(smallest)}"
        for figure, measured in (
            ("throughput", "throughput_rps"),
            ("cpu", "hops_cpu_us_per_request"),
        ):
            paired = _paired_ratios(runs, member, (smallest, largest), measured)
            if paired:
                figures[f"{name}_{figure}"] = _median(paired)
                figures[f"{name}_{figure}_by_slice"] = paired
    memory = [r for r in curves.get("payload") or [] if r.get("memory_run")]
    if memory:
        largest = memory[0]
        growth = max(largest["processes"][name]["peak_over_before_mb"] for name in GATEWAY_NAMES)
        figures["largest_payload_peak_over_payload"] = _r(
            growth * 2**20 / largest["payload_bytes"], 3
        )
        figures["largest_payload_bytes"] = largest["payload_bytes"]
    peaks = [
        result["processes"][name]["peak_rss_sum_mb"]
        for result in _all_runs(results)
        if result.get("scenario") == "C"
        for name in GATEWAY_NAMES
        if name in result["processes"]
    ]
    if peaks:
        figures["gateway_peak_rss_mb"] = max(peaks)
    machine = results.get("machine", {})
    ordered: dict[str, Any] = {
        key: results[key]
        for key in ("benchmark", "started_at", "quick", "partial", "runtime_s")
        if key in results
    }
    ordered.update(figures)
    if reasons:
        ordered["reasons"] = reasons
    ordered["targets"] = {
        name: {
            "target": f"{op} {bound}",
            "value": figures.get(name),
            "met": None if figures.get(name) is None else _COMPARE[op](figures[name], bound),
        }
        for name, (op, bound) in TARGETS.items()
        if name in figures or name in HEADLINE
    }
    ordered["cpu_count"] = machine.get("cpu_count")
    ordered["python"] = machine.get("python")
    ordered.update({key: value for key, value in results.items() if key not in ordered})
    return ordered


def provider_rounds(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round of P: each --workers count's throughput and N over 1."""
    rounds: dict[int, dict[int, float]] = {}
    for run in runs:
        rounds.setdefault(run["round"], {})[run["workers"]] = run["throughput_rps"]
    rows = []
    for number, by_workers in sorted(rounds.items()):
        most = max(by_workers)
        if 1 in by_workers and most > 1:
            rows.append(
                {
                    "round": number,
                    "workers": most,
                    "rps": {str(count): rps for count, rps in sorted(by_workers.items())},
                    "ratio": _r(by_workers[most] / by_workers[1]),
                }
            )
    return rows


def _provider_workers(
    runs: list[dict[str, Any]] | dict[str, Any] | None,
    figures: dict[str, Any],
    reasons: dict[str, str],
) -> None:
    """``provider_workersN_over_workers1``: the median of the per-round ratios of P."""
    name = "provider_workers2_over_workers1"
    if isinstance(runs, dict) and "skipped" in runs:
        reasons[name] = runs["skipped"]
        return
    rows = provider_rounds(runs if isinstance(runs, list) else [])
    if not rows:
        reasons[name] = "the provider-workers part was not run"
        return
    measured = f"provider_workers{rows[0]['workers']}_over_workers1"
    figures[measured] = _median([row["ratio"] for row in rows])
    figures[f"{measured}_rounds"] = [row["ratio"] for row in rows]
    if measured != name:
        reasons[name] = f"measured at --workers {rows[0]['workers']}: see {measured}"


def _memory_figures(results: dict[str, Any], figures: dict[str, Any]) -> None:
    """The gateways' peak RSS at 1,000 connections and RSS growth over the soak."""
    connections = results.get("connections")
    if connections:
        peaks = connections["peak_rss_mb"]
        figures["connections_1000_gateway_peak_rss_mb"] = max(peaks[name] for name in GATEWAY_NAMES)
        figures["connections_1000_overloaded_share"] = connections["answer_split"][
            "overloaded_share"
        ]
    soak = results.get("soak")
    if soak:
        growth = [soak["rss"][name] for name in GATEWAY_NAMES]
        figures["soak_gateway_rss_growth_percent"] = max(g["growth_percent"] for g in growth)


def _exp(count: int) -> str:
    if count in (0, 10, 1_000, 10_000):
        return str(count)
    exponent = len(str(count)) - 1
    return f"1e{exponent}" if count == 10**exponent else str(count)


def _paired_ratios(
    runs: list[dict[str, Any]], member: str, pair: tuple[int, int], measured: str
) -> list[float]:
    """``measured`` of the larger point over the smaller, in each slice where both ran at once."""
    slices: dict[tuple[int, int], dict[int, float]] = {}
    for run in runs:
        if "slice" in run:
            slices.setdefault((run["launch"], run["slice"]), {})[run[member]] = run[measured]
    smallest, largest = pair
    return [
        _r(each[largest] / each[smallest])
        for _, each in sorted(slices.items())
        if smallest in each and largest in each
    ]


def _all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for scenario_runs in (results.get("scenarios") or {}).values():
        runs.extend(scenario_runs)
    for curve in (results.get("curves") or {}).values():
        if isinstance(curve, list):
            runs.extend(r for r in curve if "processes" in r)
    return runs


# -- printing --------------------------------------------------------------------


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    cell: Callable[[object], str] | None = None,
) -> str:
    """A plain text table: the first column left-aligned, the others right-aligned.

    ``cell`` formats one value (default: this report's number format).
    """
    show = cell or _cell
    cells = [[str(h) for h in headers], *[[show(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for number, row in enumerate(cells):
        lines.append(
            "  ".join(
                value.ljust(width) if i == 0 else value.rjust(width)
                for i, (value, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _size(size: int) -> str:
    if size % 2**20 == 0:
        return f"{size // 2**20} MiB"
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def _process_cells(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {entry['cpu_us_per_request']:,.0f} us ({entry['cores_busy']:.2f} cores,"
        f" {entry['peak_rss_sum_mb']:.0f} MB)"
        for name, entry in result["processes"].items()
    )


def _run_rows(runs: Sequence[dict[str, Any]], first: str) -> list[tuple[object, ...]]:
    return [
        (
            result.get(first, result["scenario"]) if first != "scenario" else result["scenario"],
            result["scenario"],
            result["connections"],
            _size(result["payload_bytes"]),
            result["throughput_rps"],
            result["latency_ms"]["p50"],
            result["latency_ms"]["p90"],
            result["latency_ms"]["p99"],
            result["hops_cpu_us_per_request"],
            result["chain_cpu_us_per_request"],
            max(
                entry["peak_rss_sum_mb"]
                for name, entry in result["processes"].items()
                if name in HOP_NAMES or len(result["processes"]) == 1
            ),
            result["wrk"]["share_of_machine"],
            result["machine_busy_share"],
            result["other_cores_busy"],
        )
        for result in runs
        if "processes" in result
    ]


RUN_HEADERS: Final = (
    "point",
    "scen",
    "conn",
    "payload",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "hops us/req",
    "chain us/req",
    "hop MB",
    "wrk/mach",
    "busy",
    "other",
)


def print_report(results: dict[str, Any]) -> None:
    """Print the machine, F, the scenarios, the curves and the headline."""
    machine = results["machine"]
    _say()
    _say(
        f"Machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['memory_mb']:,}"
        f" MB, Python {machine['python']}, SQLite {machine['sqlite_version']};"
        f" fsync of 4 KiB {machine['fsync_4k']['median_ms']} ms; load average"
        f" {machine['load_average_1m']} at start"
    )
    crypto = results.get("crypto")
    if crypto:
        _say("\nF: crypto of one exchange (2 signs, 2 verifies, 2 JWE seals, 2 JWE opens)")
        project, floor = crypto["project"], crypto["floor"]
        with_token = crypto.get("floor_with_token_verify")
        _say(
            table(
                ("path", "CPU us/exchange", "min", "max"),
                [
                    (
                        "project (envelope/tokens/jose)",
                        project["cpu_us_per_exchange"],
                        project["cpu_us_min"],
                        project["cpu_us_max"],
                    ),
                    (
                        "floor (cryptography primitives)",
                        floor["cpu_us_per_exchange"],
                        floor["cpu_us_min"],
                        floor["cpu_us_max"],
                    ),
                    *(
                        [
                            (
                                "floor + token signature check",
                                with_token["cpu_us_per_exchange"],
                                with_token["cpu_us_min"],
                                with_token["cpu_us_max"],
                            )
                        ]
                        if with_token
                        else []
                    ),
                ],
            )
        )
        calls = ", ".join(f"{name} {us:.0f}" for name, us in project["calls_us_median"].items())
        _say(f"project calls (median us): {calls}")
        primitives = ", ".join(f"{k} {v}" for k, v in crypto.get("primitives_us", {}).items())
        _say(f"primitives (median us): {primitives}")
    audit = results.get("audit_append")
    if audit:
        group = audit["modes"]["group"]
        _say(
            f"Audit append: {audit['cpu_us_per_append']:.0f} us of CPU per record with group"
            f" commit (64 tasks, mean batch {group['mean_batch']}; rounds {group['rounds_us']}),"
            f" {audit['cpu_us_per_append_one_by_one']:.0f} us one by one; 2 per exchange"
        )
    summary = results.get("summary")
    if summary:
        _say("\nScenarios (medians over rounds; CPU per request of each process)")
        rows = [
            (
                name,
                entry["runs"],
                entry["throughput_rps"],
                entry["latency_ms"]["p50"],
                entry["latency_ms"]["p90"],
                entry["latency_ms"]["p99"],
                entry["hops_cpu_us_per_request"],
                entry["chain_cpu_us_per_request"],
                entry["wrk_share_of_machine"],
                entry["machine_busy_share"],
                entry["other_cores_busy"],
                entry["failed_requests"],
            )
            for name, entry in summary.items()
        ]
        _say(
            table(
                (
                    "scenario",
                    "runs",
                    "req/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "hops us/req",
                    "chain us/req",
                    "wrk/machine",
                    "busy",
                    "other",
                    "failed",
                ),
                rows,
            )
        )
        for name, entry in summary.items():
            cells = ", ".join(
                f"{process} {figures['cpu_us_per_request']:,.0f} us/req"
                f" ({figures['cores_busy']:.2f} cores, peak {figures['peak_rss_mb']:.0f} MB)"
                for process, figures in entry["processes"].items()
            )
            _say(f"  {name}: {cells}; wrk {entry['wrk_share_of_cpu_used'] * 100:.1f}% of CPU used")
            for gateway, view in entry.get("gateway_metrics", {}).items():
                phases = ", ".join(f"{k} {v:.2f}" for k, v in view["phase_ms_mean"].items())
                _say(
                    f"    {gateway} (its own metrics): exchange {view['exchange_ms_mean']:.1f} ms"
                    f" mean, phases (ms) {phases}; audit batch {view['audit_batch_mean']},"
                    f" durable after {view['audit_durable_wait_ms_mean']} ms"
                )
    curves = results.get("curves", {})
    titles = {
        "concurrency": ("Concurrency curve", "connections"),
        "workers": ("Workers", "workers"),
        "payload": ("Payload curve", "payload_bytes"),
        "contracts": ("Contracts loaded", "contracts"),
        "audit_log": ("Audit log size", "audit_records"),
    }
    for key, (title, first) in titles.items():
        curve = curves.get(key)
        if curve is None:
            continue
        _say(f"\n{title}")
        if isinstance(curve, dict):
            _say(f"  skipped: {curve.get('skipped')}")
            continue
        for result in curve:
            if "skipped" in result:
                _say(f"  {_size(result['payload_bytes'])}: skipped: {result['skipped']}")
        _say(table(RUN_HEADERS, _run_rows(curve, first)))
    _print_provider_workers(curves.get("provider_workers"))
    _print_connections(results.get("connections"))
    _print_soak(results.get("soak"))
    _say("\nHeadline (targets of issue 5)")
    targets = results.get("targets", {})
    curve_ratios = [
        name
        for name in results
        if (name.startswith(("contracts_", "audit_")) and name.endswith(("_throughput", "_cpu")))
        or name.startswith("provider_workers")
    ]
    for name in dict.fromkeys((*HEADLINE, *curve_ratios, *SECONDARY)):
        if name not in results:
            continue
        value = results[name]
        target = targets.get(name)
        verdict = ""
        if target:
            met = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
            verdict = f"  (target {target['target']}: {met})"
        reason = results.get("reasons", {}).get(name)
        _say(f"  {name}: {value}{verdict}{f' - {reason}' if reason else ''}")
    _say(f"  runtime_s: {results['runtime_s']}")


def _print_provider_workers(runs: list[dict[str, Any]] | dict[str, Any] | None) -> None:
    """P's runs: the provider gateway alone at --workers 1 and N."""
    if not isinstance(runs, list):
        return
    _say("\nProvider gateway alone (P: wrk -> provider -> backend, sealed requests)")
    rows = []
    for run in runs:
        provider, backend = run["processes"]["provider-gw"], run["processes"]["backend"]
        rows.append(
            (
                run["round"],
                run["workers"],
                run["throughput_rps"],
                run["latency_ms"]["p50"],
                run["latency_ms"]["p99"],
                provider["cpu_us_per_request"],
                provider["cores_busy"],
                backend["cpu_us_per_request"],
                run["wrk"]["share_of_machine"],
                run["machine_busy_share"],
                run["other_cores_busy"],
                run["failed"],
            )
        )
    headers = (
        *("round", "workers", "req/s", "p50 ms", "p99 ms", "provider us/req", "provider cores"),
        *("backend us/req", "wrk/mach", "busy", "other", "failed"),
    )
    _say(table(headers, rows))
    for row in provider_rounds(runs):
        _say(f"  round {row['round']}: --workers {row['workers']} / 1 = {row['ratio']}")


def _print_connections(result: dict[str, Any] | None) -> None:
    """C at 1,000 connections: answers by kind, latency, peak RSS of each process."""
    if not result:
        return
    split = result["answer_split"]
    _say(f"\nC at {result['connections']:,} connections ({result['seconds']:.0f} s)")
    _say(
        table(
            ("answers", "count", "per s", "share"),
            [
                ("200", split["ok"], split["ok_rps"], split["ok_share"]),
                (
                    "503 overloaded",
                    split["overloaded"],
                    split["overloaded_rps"],
                    split["overloaded_share"],
                ),
                ("other", split["other"], None, None),
            ],
        )
    )
    if split["other"]:
        _say(f"  other: {split['other_answers']}, socket errors {split['socket_errors']}")
    latency = result["latency_ms"]
    peaks = ", ".join(f"{name} {mb:.0f} MB" for name, mb in result["peak_rss_mb"].items())
    _say(
        f"  all answers: p50 {latency['p50']} ms, p99 {latency['p99']} ms; peak RSS {peaks};"
        f" busy {result['machine_busy_share']}, other {result['other_cores_busy']} cores"
    )


def _print_soak(result: dict[str, Any] | None) -> None:
    """The soak: RSS samples and each process's growth."""
    if not result:
        return
    names = list(result["rss"])
    _say(
        f"\nSoak: C at c={result['connections']} for {result['seconds']:.0f} s,"
        f" {result['throughput_rps']} req/s; RSS (MB) every {result['rss_sample_every_s']:.0f} s"
    )
    samples = result["rss_samples"]
    _say(
        table(
            ("at s", *names, "provider replay ids", "provider exchanges/s"),
            [
                [f"{s['at_s']:.0f}", *(s[n] for n in names), *_provider_columns(s, before)]
                for s, before in zip(samples, [None, *samples], strict=False)
            ],
        )
    )
    fresh = result.get("rss_fresh_mb", {})
    for name, growth in result["rss"].items():
        warmup = (
            f"; {fresh[name]} MB fresh, before the {result['warmup_seconds']:.0f} s warm-up"
            if name in fresh
            else ""
        )
        _say(
            f"  {name}: {growth['start_mb']} -> {growth['end_mb']} MB"
            f" ({growth['growth_percent']} %), trend {growth['trend_mb_per_10_min']} MB"
            f" per 10 min, max {growth['max_mb']} MB{warmup}"
        )
    _say(f"  busy {result['machine_busy_share']}, other {result['other_cores_busy']} cores")


def _provider_columns(sample: dict[str, float], before: dict[str, float] | None) -> tuple[str, str]:
    """The provider's replay window and the exchange rate since the sample ``before``."""
    ids = sample.get("provider_replay_ids")
    rate = ""
    if before is not None and "provider_exchanges" in sample and "provider_exchanges" in before:
        seconds = sample["at_s"] - before["at_s"]
        if seconds >= 1:  # not between the last sample and the one at the run's end
            done = sample["provider_exchanges"] - before["provider_exchanges"]
            rate = f"{done / seconds:.0f}"
    return ("" if ids is None else f"{ids:,.0f}", rate)


def write_results(results: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """``latest.json`` and a dated copy; ``quick-`` for ``--quick`` runs and ``only-`` for
    runs of other parts than the default set, so neither replaces a full run's figures."""
    output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    stamp = datetime.strptime(results["started_at"], "%Y-%m-%dT%H:%M:%SZ")
    prefix = ("quick-" if results["quick"] else "") + ("only-" if results.get("partial") else "")
    dated = output / f"exchange-{prefix}{stamp:%Y%m%d-%H%M%S}.json"
    latest = output / f"{prefix}latest.json"
    dated.write_text(text)
    latest.write_text(text)
    return latest, dated
