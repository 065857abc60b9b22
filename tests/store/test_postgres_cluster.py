"""Several real processes on one PostgreSQL store: the scale-out guarantees, end to end.

* A killed process's leases are given back by the survivors at once — with a lease of
  ten minutes, so no timer can be what gave them back.
* Three ``syncward run`` processes on one manifest, one SIGKILLed and restarted, one
  SIGSTOPped past its lease and continued: every entry done once, every effect's
  committed result once, the stopped process's late writes rejected, nothing missing.

These run real processes against the machine's PostgreSQL (each test has a schema of its
own) and take a few seconds of real time each, so they are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from store_helpers import POSTGRES_URL, drop_schemas, require_postgres

import syncward
from syncward.jobs import JobState
from syncward.store import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from syncward.store.base import StoreReader

pytestmark = pytest.mark.slow

HANDLERS = '''
import anyio

async def slow(job, ctx):
    await anyio.sleep(0.05)
    value = await ctx.effect("write", lambda: job.identity["id"])
    return {"id": value}

async def forever(job, ctx):
    await anyio.Event().wait()
'''


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}_cluster"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schemas(schema)


def spawn(tmp: Path, url: str, handler: str, *extra: str) -> subprocess.Popen[bytes]:
    """``syncward run`` in a process of its own; its stdout and stderr go to files named
    by its pid (``out-<pid>``, ``err-<pid>``), read with `outputs`."""
    (tmp / "handlers.py").write_text(HANDLERS)
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    run_id = uuid.uuid4().hex[:8]
    with open(tmp / f"out-{run_id}", "wb") as out, open(tmp / f"err-{run_id}", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncward.cli", "run", str(tmp / "m.txt"),
             "--handler", f"{tmp / 'handlers.py'}:{handler}", "--db", url, "--json", *extra],
            stdout=out, stderr=err, env=env)
    proc.args = run_id  # type: ignore[assignment]  # where its output went
    return proc


def outputs(tmp: Path, proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """Wait for ``proc``; its exit code, stdout and stderr."""
    code = proc.wait(timeout=120)
    run_id = proc.args
    return (code, (tmp / f"out-{run_id}").read_text(), (tmp / f"err-{run_id}").read_text())


async def until(predicate: Callable[[], Any], *, timeout: float = 60.0,
                every: float = 0.02) -> Any:
    """Poll ``predicate`` (an async callable) until it returns something truthy."""
    with anyio.fail_after(timeout):
        while not (value := await predicate()):
            await anyio.sleep(every)
        return value


async def boot_of(store: StoreReader, pid: int) -> str | None:
    for worker in await store.workers():
        if worker.pid == pid and worker.status == "running":
            return worker.boot_id
    return None


async def leases_of(store: StoreReader, boot: str) -> int:
    return sum(1 for lease in await store.active_leases(limit=100_000) if lease.boot_id == boot)


async def test_a_killed_process_leases_go_back_at_once(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(300)))
    victim = spawn(tmp_path, pg_url, "forever", "--concurrency", "50",
                   "--lease-seconds", "600")

    async def finish(job: syncward.Job, ctx: syncward.Context) -> None:
        return None

    try:
        reader = await until(lambda: _open_when_ready(pg_url), timeout=30)
        boot = await until(lambda: boot_of(reader, victim.pid), timeout=30)
        held = await until(lambda: _at_least(leases_of(reader, boot), 50), timeout=30)
        # A live runtime on the same store: it takes no job of the victim's while the
        # victim lives (its lock is held) ...
        async with syncward.Runtime(finish, store=pg_url, concurrency=8,
                                    lease_seconds=600) as survivor:
            assert await leases_of(reader, boot) == held
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            killed_at = time.monotonic()
            # ... and gives every one back as soon as the victim's process is gone.
            await until(lambda: _is(leases_of(reader, boot), 0), timeout=30, every=0.01)
            recovered = time.monotonic() - killed_at
            await survivor.join()
        report = survivor.reconcile_report
        assert report is not None  # its own start-up reconciliation found nothing dead
        assert report.leases_requeued == 0
        # Well inside a second here, measured; the bound leaves room for a loaded machine
        # and is two orders of magnitude below the 600 s a timer would have waited.
        assert recovered < 3.0, recovered
        # Each lost lease counted as an attempt (a crash), then the job was done.
        done_jobs = await reader.jobs_in_state(JobState.SUCCEEDED)
        assert len(done_jobs) == 300
        assert sum(1 for j in done_jobs if j.attempts == 2) == held
        assert all(j.attempts in (1, 2) for j in done_jobs)
        last = json.loads(await reader.get_meta("last_reconcile") or "{}")
        assert (last["leases_requeued"], last["leases_failed"]) == (held, 0)
        assert all("(its process is gone)" in line for line in last["lost"])
        victims = [w for w in await reader.workers() if w.boot_id == boot]
        assert [w.status for w in victims] == ["dead"]
        print(f"\nleases of a killed process given back in {recovered:.3f} s ({held} leases)")
        await reader.aclose()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


async def _open_when_ready(url: str) -> StoreReader | None:
    try:
        return await open_store(url, readonly=True)
    except syncward.SyncwardError:
        return None  # the first process has not created the schema yet


async def _at_least(count: Any, n: int) -> int:
    value = int(await count)
    return value if value >= n else 0


async def _is(count: Any, n: int) -> bool:
    return int(await count) == n


async def test_three_processes_one_manifest_kill_and_stop(pg_url: str, tmp_path: Path) -> None:
    n = 900
    (tmp_path / "m.txt").write_text("".join(f"{i}\n" for i in range(n)))
    args = ("--concurrency", "5", "--lease-seconds", "2")
    killed = spawn(tmp_path, pg_url, "slow", *args)
    stopped = spawn(tmp_path, pg_url, "slow", *args)
    steady = spawn(tmp_path, pg_url, "slow", *args)
    procs = [killed, stopped, steady]
    try:
        reader = await until(lambda: _open_when_ready(pg_url), timeout=30)
        stopped_boot = await until(lambda: boot_of(reader, stopped.pid), timeout=30)

        async def progress(at_least: int) -> bool:
            return (await reader.counts())[JobState.SUCCEEDED] >= at_least

        # SIGSTOP one while it holds leases; it stays stopped past its lease (2 s) while
        # another is SIGKILLed mid-run and started again, twice; then it goes on, with
        # fences that went stale meanwhile.
        await until(lambda: _at_least(leases_of(reader, stopped_boot), 1))
        stopped.send_signal(signal.SIGSTOP)
        try:
            for target in (n // 4, n // 2):
                await until(lambda t=target: progress(t))  # type: ignore[misc]
                killed.send_signal(signal.SIGKILL)
                killed.wait(timeout=10)
                killed = spawn(tmp_path, pg_url, "slow", *args)
                procs.append(killed)
            # The others take the stopped one's expired leases back (it is alive: its
            # lock is held, so only expiry can free its jobs).
            await until(lambda: _is(leases_of(reader, stopped_boot), 0), timeout=60)
        finally:
            stopped.send_signal(signal.SIGCONT)
        for proc in (stopped, steady, killed):
            code, out, err = outputs(tmp_path, proc)
            assert code == 0, (code, err[-2000:], out[-3000:])
            report = json.loads(out)
            assert report["manifest"]["missing"] == []
            assert report["counts"]["succeeded"] == n
            assert report["stats_drift"] == 0
        counts = await reader.counts()
        assert counts[JobState.SUCCEEDED] == n and sum(counts.values()) == n
        assert await reader.ops_count() == (n, n)  # every effect's result committed once
        for job in await reader.jobs_in_state(JobState.SUCCEEDED):
            assert job.result == {"id": job.identity["id"]}
        # The stopped process's writes after it was continued were refused, not applied.
        assert await reader.rejection_count() > 0
        await reader.aclose()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
