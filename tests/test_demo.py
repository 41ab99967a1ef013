"""The demo network end to end: the scenario's every case behaves as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port_base


def test_demo_once_runs_the_scenario_and_writes_demo_json(tmp_path: Path) -> None:
    """``gateway demo --once`` exits 0, prints the table and describes the network."""
    folder = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--once",
            "--dir",
            str(folder),
            "--port-base",
            str(free_port_base()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed request" in result.stdout
    assert "FAIL" not in result.stdout
    demo = json.loads((folder / "demo.json").read_text())
    assert set(demo["agencies"]) == {"population-registry", "tax-authority", "social-benefits"}
    assert set(demo["contracts"]) >= {"income", "person", "tax"}
    for agency in demo["agencies"].values():
        assert (folder / agency["config"]).is_file()
        assert (folder / agency["keys"] / "jwks.json").is_file()
    # No subject id may reach the gateways' logs.
    for subject in demo["subjects"]:
        assert subject not in result.stderr
