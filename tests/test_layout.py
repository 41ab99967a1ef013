"""The package's shape: pure modules stay free of I/O frameworks, the public surface resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gateway

# Modules that hold decisions and must stay testable without a network stack.
PURE_MODULES = (
    "gateway.errors",
    "gateway.keys",
    "gateway.jose",
    "gateway.tokens",
    "gateway.envelope",
    "gateway.fields",
    "gateway.contracts",
    "gateway.registry",
    "gateway.replay",
    "gateway.ratelimit",
    "gateway.audit.records",
    "gateway.audit.merkle",
    "gateway.audit.note",
    "gateway.audit.checkpoint",
    "gateway.audit.query",
    "gateway.audit.bundle",
    "gateway.audit.verify",
    "gateway.audit.store",
    "gateway.audit.log",
    "gateway.processing",
    "gateway.tracing",
    "gateway.state",
    "gateway.workers",
)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_does_not_import_aiohttp(module: str) -> None:
    """Importing a pure module pulls in neither aiohttp nor the web layer."""
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('aiohttp', 'gateway.web')))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_public_names_resolve() -> None:
    """Every name in ``gateway.__all__`` exists."""
    for name in gateway.__all__:
        assert hasattr(gateway, name), name
