"""When the SQLite store's environment fails: a full disk, a read-only filesystem, its file
removed mid-run. Each is named in one line within seconds, the run ends resumable (exit 3),
nothing committed is lost, and the same command finishes once the cause is mended.

The filesystem tests mount a small tmpfs of their own, which needs root (CI runs as root
here); elsewhere they skip with the reason, and under CI=true a failed mount fails. A
read-only filesystem is covered by the classification of SQLite's errors only: Linux
refuses to remount a filesystem read-only while the store's files are open on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

import syncward
from syncward.errors import StoreFailing, StoreFailure
from syncward.store.sqlite.store import failure_kind

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HANDLER = '''
async def handler(job, ctx):
    return {"pad": "x" * 200, "id": job.identity["id"]}
'''


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs mounted at ``tmp_path/disk`` (unmounted at teardown)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a small filesystem needs root"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs: {done.stderr.strip()}"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"required under CI=true: {reason}")
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def syncward_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWARD_")}
    return subprocess.run([sys.executable, "-m", "syncward.cli", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_3_and_the_same_command_finishes(
        tmp_path: Path, small_disk: Path) -> None:
    (tmp_path / "h.py").write_text(HANDLER)
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(60_000)))
    db = f"sqlite:///{small_disk}/jobs.db"
    run = ("run", "m.txt", "--handler", "h.py:handler", "--db", db, "--no-progress")

    full = syncward_cli(tmp_path, *run)
    assert full.returncode == 3, full.stderr
    assert "Traceback" not in full.stderr
    lines = full.stderr.splitlines()
    assert len(lines) == 1, full.stderr  # one line, not one per retry
    assert re.fullmatch(
        rf"syncward: error: the store's disk is full: {re.escape(db)}: .*full; nothing "
        r"committed is lost; free space and run the same command again", lines[0])
    # status and report still work on the full disk, and show where the run stopped.
    status = syncward_cli(tmp_path, "status", "--json", "--db", db)
    assert status.returncode in (0, 1), status.stderr
    report = json.loads(syncward_cli(tmp_path, "report", "--json", "--db", db).stdout)
    done_before = report["counts"]["succeeded"]
    assert 0 < done_before < 60_000
    assert report["manifest"]["missing"] == []

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = syncward_cli(tmp_path, *run, "--json")
    assert again.returncode == 0, again.stderr
    final = json.loads(again.stdout)
    assert final["counts"]["succeeded"] == 60_000
    assert final["manifest"]["missing"] == [] and final["manifest"]["not_terminal"] == 0
    assert final["stats_drift"] == 0


async def test_the_store_file_removed_mid_run_stops_at_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    started = anyio.Event()
    release = anyio.Event()

    async def waits(job: syncward.Job, ctx: syncward.Context) -> None:
        started.set()
        await release.wait()

    async def run() -> None:
        async with syncward.Runtime(waits, store=f"sqlite:///{path}", concurrency=2) as rt:
            await rt.submit({"n": i} for i in range(10))
            await started.wait()
            path.unlink()  # someone removes the store under the running runtime
            release.set()  # the outcomes are the next commit: it must not go unseen
            await rt.join()

    with anyio.fail_after(20), pytest.raises(StoreFailing) as info:
        await run()
    assert info.value.kind is StoreFailure.GONE
    assert str(path) in str(info.value) and "removed or replaced" in str(info.value)


@pytest.mark.parametrize(("code", "kind"), [
    (13, StoreFailure.DISK_FULL), (8, StoreFailure.READ_ONLY), (8 | (1 << 8),
                                                                StoreFailure.READ_ONLY),
    (3, StoreFailure.PERMISSION), (10 | (4 << 8), StoreFailure.IO), (14, StoreFailure.IO),
    (5, StoreFailure.TRANSIENT), (6, StoreFailure.TRANSIENT), (None, StoreFailure.TRANSIENT)])
def test_sqlite_errors_are_classified(code: int | None, kind: StoreFailure) -> None:
    import sqlite3

    exc = sqlite3.OperationalError(f"code {code} {uuid.uuid4().hex[:4]}")
    if code is not None:
        exc.sqlite_errorcode = code
    assert failure_kind(exc) is kind
