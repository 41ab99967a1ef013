"""The gateways' own view of a run, from their Prometheus ``/metrics`` before and after it.

Per exchange, the mean wall time of each phase the pipeline times itself
(``gateway_exchange_phase_seconds``: crypto, audit, backend, upstream), the
mean exchange time, and how the audit log committed: records per group
commit (``gateway_audit_batch_size``) and the wait until durable. With
``--workers N`` a scrape reaches one worker only, so nothing is read then.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final

_SAMPLE: Final = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_WANTED: Final = (
    "gateway_exchange_phase_seconds_sum",
    "gateway_exchange_phase_seconds_count",
    "gateway_exchange_duration_seconds_sum",
    "gateway_exchange_duration_seconds_count",
    "gateway_audit_batch_size_sum",
    "gateway_audit_batch_size_count",
    "gateway_audit_append_duration_seconds_sum",
    "gateway_audit_append_duration_seconds_count",
    "gateway_token_cache_total",
    # Read during the soak, beside each RSS sample: how full the replay window is, and how
    # many exchanges ended (their rate over each interval).
    "gateway_replay_cache_entries",
    "gateway_exchanges_total",
)

Samples = dict[tuple[str, str], float]


def scrape(url: str) -> Samples:
    """The samples of interest at ``url``, keyed by (name, labels); empty if unreachable."""
    found: Samples = {}
    with (
        contextlib.suppress(OSError, urllib.error.URLError, TimeoutError, ValueError),
        urllib.request.urlopen(url, timeout=10) as answer,  # noqa: S310 - loopback URL
    ):
        for line in answer.read().decode("utf-8", "replace").splitlines():
            match = _SAMPLE.match(line)
            if match and match.group(1) in _WANTED:
                value = float(match.group(3))
                key = (match.group(1), match.group(2) or "")
                found[key] = found.get(key, 0.0) + value
    return found


def _label(labels: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', labels)
    return match.group(1) if match else ""


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    total = 0.0
    for (metric, text), value in after.items():
        if metric != name or any(_label(text, k) != v for k, v in labels.items()):
            continue
        total += value - before.get((metric, text), 0.0)
    return total


def summarise(before: Mapping[str, Samples], after: Mapping[str, Samples]) -> dict[str, Any]:
    """Per gateway: mean phase times per exchange (ms), audit batch and durability wait."""
    out: dict[str, Any] = {}
    for name, then in before.items():
        now = after.get(name, {})
        if not now:
            continue
        exchanges = sum(
            _delta(then, now, "gateway_exchange_duration_seconds_count", direction=direction)
            for direction in ("inbound", "outbound")
        )
        if exchanges <= 0:
            continue
        spent = sum(
            _delta(then, now, "gateway_exchange_duration_seconds_sum", direction=direction)
            for direction in ("inbound", "outbound")
        )
        phases = {}
        for phase in ("crypto", "audit", "backend", "upstream"):
            seconds = _delta(then, now, "gateway_exchange_phase_seconds_sum", phase=phase)
            if seconds > 0:
                phases[phase] = round(seconds / exchanges * 1e3, 3)
        commits = _delta(then, now, "gateway_audit_batch_size_count")
        records = _delta(then, now, "gateway_audit_batch_size_sum")
        waits = _delta(then, now, "gateway_audit_append_duration_seconds_count")
        waited = _delta(then, now, "gateway_audit_append_duration_seconds_sum")
        out[name] = {
            "exchanges": int(exchanges),
            "exchange_ms_mean": round(spent / exchanges * 1e3, 3),
            "phase_ms_mean": phases,
            "audit_commits": int(commits),
            "audit_batch_mean": round(records / commits, 2) if commits else None,
            "audit_durable_wait_ms_mean": round(waited / waits * 1e3, 3) if waits else None,
            "token_cache_misses": int(
                _delta(then, now, "gateway_token_cache_total", result="miss")
            ),
        }
    return out
