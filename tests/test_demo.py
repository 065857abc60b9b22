"""``syncward demo`` end to end: a local archive with faults on, downloaded and verified."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from syncward.cli import cli
from syncward.cli.demo import demo


def run_demo(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(cli, ["demo", "--no-progress", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def test_demo_is_a_command_of_the_cli() -> None:
    assert cli.commands["demo"] is demo


@pytest.mark.slow
def test_demo_downloads_everything_but_the_404s_and_the_duplicates(tmp_path: Path) -> None:
    code, report = run_demo("--files", "24", "--out", str(tmp_path), "--seed", "1",
                            "--fault-rate", "0.3")
    d: dict[str, object] = report["demo"]  # type: ignore[assignment]
    expected = d["expected"]  # type: ignore[index]
    assert (code, d["ok"], d["problems"]) == (0, True, [])
    assert report["counts"] == {
        "planned": 0, "leased": 0, "failed": len(expected["missing"]),
        "skipped": len(expected["duplicates"]),
        "succeeded": 24 - len(expected["missing"]) - len(expected["duplicates"])}
    assert len(expected["missing"]) == 1 and len(expected["duplicates"]) == 1
    assert all("404" in f["error"] for f in report["failures"])  # type: ignore[attr-defined]
    assert sum(d["server"]["faults"].values()) > 0  # type: ignore[index]
    files = sorted(p.name for p in (tmp_path / "lightcurves").iterdir())
    assert len(files) == report["counts"]["succeeded"]  # type: ignore[index]
    assert report["stats_drift"] == 0

    # Again on the same store: nothing is redone, the verdict is the same.
    code, again = run_demo("--files", "24", "--out", str(tmp_path), "--seed", "1")
    assert (code, again["counts"]) == (0, report["counts"])
    assert again["demo"]["fetcher"]["gets"] == 0  # type: ignore[index]


def test_demo_exits_1_when_the_outcome_is_not_the_expected_one(tmp_path: Path) -> None:
    # A store holding a different outcome for the same files: the verdict says so.
    code, report = run_demo("--files", "3", "--out", str(tmp_path), "--fault-rate", "0")
    assert code == 0 and report["counts"]["succeeded"] == 3  # type: ignore[index]
    for path in (tmp_path / "lightcurves").iterdir():
        path.write_bytes(b"corrupted")
    code, report = run_demo("--files", "3", "--out", str(tmp_path), "--fault-rate", "0")
    d = report["demo"]
    assert code == 1 and d["ok"] is False  # type: ignore[index]
    assert len(d["problems"]) == 3  # type: ignore[index]
    assert all("SHA-256 on disk differs" in p for p in d["problems"])  # type: ignore[index]


async def test_kepler_example_accounts_for_every_kic_id(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "examples" / "kepler"
    spec = importlib.util.spec_from_file_location("kepler_download", root / "download.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ids = example.read_kic_ids(root / "kic_ids.txt")
    with anyio.fail_after(20):
        report = await example.download(ids, tmp_path / "lightcurves",
                                        f"sqlite:///{tmp_path}/kepler.db", fault_rate=0.0)
    assert report["total"] == len(ids) == 20
    assert report["counts"] == {"planned": 0, "leased": 0, "succeeded": 17, "failed": 2,
                                "skipped": 1}
    assert {f["identity"]["kic"] for f in report["failures"]} == set(ids[-2:])
    assert all("HTTP 404" in f["error"] for f in report["failures"])
    assert "duplicate of job" in report["skipped"][0]["reason"]
    assert len(list((tmp_path / "lightcurves").iterdir())) == 17
    assert "succeeded 17, failed 2, skipped 1" in example.summary(report, tmp_path)
