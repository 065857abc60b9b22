"""The stress harnesses hold their invariants (small sizes; the full runs are manual)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_stress_harness_invariants_hold_under_injected_crashes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stress.py"), "--jobs", "3000",
         "--db", str(tmp_path / "stress.db")],
        capture_output=True, text=True, timeout=120, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, result
    assert all(result["invariants"].values()), result
    assert result["counts"]["succeeded"] + result["counts"]["failed"] == 3000


@pytest.mark.slow
def test_crash_loop_loses_nothing_and_commits_each_effect_once(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "crash_loop" / "run.py"), "--jobs", "300",
         "--kills", "3", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, result
    assert all(result["invariants"].values()), result
    assert result["effect_runs"] >= 300
