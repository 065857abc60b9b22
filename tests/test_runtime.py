"""The runtime end to end: each failure of DESIGN.md as a test in its own name."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncward import (
    Context,
    InvalidJob,
    Job,
    JobSpec,
    JobState,
    Permanent,
    RestartIntensity,
    RetryPolicy,
    Runtime,
    Skip,
    StoreLocked,
    SupervisorGaveUp,
    SyncerConfig,
)
from syncward.jobs import canonical_identity, job_key
from syncward.messages import NewJob, Reply, Submit, SubmitResult
from syncward.store import JobRow, StoreReader, open_store
from syncward.testing import FakeClock, Faults

QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)
NO_BACKOFF = RetryPolicy(base=0.0, jitter=False)


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@asynccontextmanager
async def reading(tmp_path: Path) -> AsyncIterator[StoreReader]:
    """The store as another reader sees it: opened read-only, read through `StoreReader`."""
    store = await open_store(url(tmp_path), readonly=True)
    try:
        yield store
    finally:
        await store.aclose()


async def all_jobs(store: StoreReader) -> list[JobRow]:
    """Every job, by id. (One read per state: call it when nothing is writing.)"""
    jobs = [job for state in JobState for job in await store.jobs_in_state(state)]
    return sorted(jobs, key=lambda job: job.id)


def max_attempts(jobs: list[JobRow]) -> int | None:
    """SQL's ``max(attempts)``: None over no jobs."""
    return max((job.attempts for job in jobs), default=None)


def page_count_sqlite(tmp_path: Path) -> int:
    """The SQLite file's page count (no store read says it: the disk-full drills are SQLite's)."""
    conn = sqlite3.connect(tmp_path / "jobs.db")
    try:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        return int(pages)
    finally:
        conn.close()


async def noop(job: Job, ctx: Context) -> dict[str, Any]:
    return {"id": job.identity["id"]}


async def test_runs_every_job_to_a_terminal_state(tmp_path: Path) -> None:
    async def handler(job: Job, ctx: Context) -> Any:
        n = int(job.identity["id"])
        if n % 10 == 1:
            raise Permanent("never works")
        if n % 10 == 2:
            raise Skip("duplicate content")
        return n

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), concurrency=8, syncer=QUICK) as rt:
            result = await rt.submit({"id": i} for i in range(100))
            assert (result.new, result.duplicates) == (100, 0)
            await rt.join()
            snap = rt.stats()
    assert snap.counts[JobState.SUCCEEDED] == 80
    assert snap.counts[JobState.FAILED] == 10
    assert snap.counts[JobState.SKIPPED] == 10
    assert snap.total == 100


async def test_failure_2_duplicate_submits_are_no_ops(tmp_path: Path) -> None:
    runs: Counter[int] = Counter()

    async def handler(job: Job, ctx: Context) -> None:
        runs[int(job.identity["id"])] += 1

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK) as rt:
            await rt.submit({"id": i} for i in range(20))
            await rt.join()
            again = await rt.submit([{"id": i} for i in range(20)] + [{"id": 20}])
            await rt.join()
    assert (again.new, again.duplicates) == (1, 20)
    assert set(runs.values()) == {1} and len(runs) == 21


async def test_failure_2_crash_mid_job_resumes_at_last_stage_without_rerunning_effect(
        tmp_path: Path) -> None:
    effect_runs = 0
    effect_done = anyio.Event()
    seen: list[tuple[int, str | None]] = []

    def write_file() -> str:
        nonlocal effect_runs
        effect_runs += 1
        return "written"

    async def handler(job: Job, ctx: Context) -> Any:
        seen.append((job.attempt, job.stage))
        if job.stage is None:
            await ctx.stage("HEAD_DONE")
        out = await ctx.effect("write", write_file, part=1)
        if job.attempt == 1:
            effect_done.set()
            await anyio.sleep_forever()  # the process dies here
        await ctx.stage("FINALIZED")
        return out

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK) as rt:
            await rt.submit([{"id": 1}])
            await effect_done.wait()
            rt.kill()
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK) as rt2:
            assert rt2.reconcile_report is not None
            assert rt2.reconcile_report.leases_requeued == 1
            await rt2.join()
            report = await rt2.report()
    assert seen == [(1, None), (2, "HEAD_DONE")]
    assert effect_runs == 1
    assert report.counts[JobState.SUCCEEDED] == 1
    async with reading(tmp_path) as store:
        ops, _ = await store.ops_count()
    assert ops == 1


async def test_failure_3_no_ghost_worker_after_a_restart(tmp_path: Path) -> None:
    started = anyio.Event()

    async def hang(job: Job, ctx: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with Runtime(hang, store=url(tmp_path), syncer=QUICK) as rt:
            first = rt.worker
            await rt.submit([{"id": 1}])
            await started.wait()
            rt.kill()
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK) as rt2:
            second = rt2.worker
            assert rt2.reconcile_report is not None
            assert rt2.reconcile_report.workers_marked_dead == (first,)
            workers = {w.name: w.status for w in await rt2.store.workers()}
    assert first != second
    assert workers == {first: "dead", second: "running"}
    async with reading(tmp_path) as store:
        after = {w.name: w.status for w in await store.workers()}
    assert after == {first: "dead", second: "stopped"}


async def test_failure_4_failing_job_backs_off_then_lands_in_failed_with_its_error(
        tmp_path: Path) -> None:
    clock = FakeClock()
    attempts_at: list[float] = []

    async def handler(job: Job, ctx: Context) -> None:
        attempts_at.append(clock.now())
        raise ValueError(f"boom on attempt {job.attempt}")

    retry = RetryPolicy(base=10.0, jitter=False)
    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK, clock=clock,
                           retry=retry, max_attempts=3) as rt:
            await rt.submit([{"id": 1}])
            for n, expected_delay in ((1, 10.0), (2, 20.0)):
                # Attempt n failed and is committed: planned again, waiting for its back-off.
                await rt.wait(lambda s, n=n: len(attempts_at) == n  # type: ignore[misc]
                              and s.counts[JobState.PLANNED] == 1)
                job = await rt.store.get_job(job_key({"id": 1}))
                assert job is not None
                assert job.next_attempt_at == pytest.approx(attempts_at[-1] + expected_delay)
                clock.advance(expected_delay)
            await rt.join()
    async with reading(tmp_path) as store:
        job = await store.get_job(job_key({"id": 1}))
    assert job is not None
    assert (job.state, job.attempts) == (JobState.FAILED, 3)
    error = job.last_error
    assert error is not None
    assert "attempts exhausted (3/3)" in error and "ValueError: boom on attempt 3" in error
    assert attempts_at == [attempts_at[0], attempts_at[0] + 10, attempts_at[0] + 30]


async def test_failure_5_stats_after_a_restart_equal_the_database_before_new_work(
        tmp_path: Path) -> None:
    async def handler(job: Job, ctx: Context) -> Any:
        if int(job.identity["id"]) % 3 == 0:
            raise Permanent("no")
        return None

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK) as rt:
            await rt.submit({"id": i} for i in range(30))
            await rt.join()
        async with reading(tmp_path) as store:
            before = {s.value: n for s, n in (await store.counts()).items() if n}
        assert before == {"succeeded": 20, "failed": 10}
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK) as rt2:
            snap = rt2.stats()  # the first answer, before any new work
    assert {s.value: n for s, n in snap.counts.items() if n} == before


@pytest.mark.parametrize("point", [
    "syncer.before_commit", "syncer.after_commit", "downloader.before_handler",
    "downloader.before_outcome", "stats.apply", "reaper.before_reap",
])
async def test_crash_each_actor_kind_mid_work_loses_nothing(tmp_path: Path, point: str) -> None:
    faults = Faults()
    faults.arm(point, times=2)
    with anyio.fail_after(15):
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK, concurrency=4,
                           faults=faults, reap_every=0.01, recount_every=0.05,
                           intensity=RestartIntensity(max_restarts=10, within=5.0)) as rt:
            await rt.submit({"id": i} for i in range(200))
            await rt.join()
            while faults.fired[point] < 2:  # the reaper's point fires on its own period
                await rt.wait(lambda s: True)
                await anyio.wait_all_tasks_blocked()
            report = await rt.report()
            restarts = [r for r in rt.restarts if r["kind"] == "restarted"]
    assert faults.fired[point] == 2
    assert len(restarts) >= 2 and all("InjectedCrash" in str(r["error"]) for r in restarts)
    assert report.counts[JobState.SUCCEEDED] == 200 and report.total == 200
    assert report.stats_drift == 0
    async with reading(tmp_path) as store:
        assert len(await store.events(kind="restart", limit=2)) >= 2


async def test_exceeding_restart_intensity_stops_the_runtime_with_the_cause(
        tmp_path: Path) -> None:
    faults = Faults()
    faults.arm("syncer.before_commit", times=100)
    async def run() -> None:
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK, faults=faults,
                           intensity=RestartIntensity(max_restarts=2, within=60.0)) as rt:
            await rt.submit([{"id": 1}])
            await anyio.sleep_forever()

    with anyio.fail_after(10), pytest.raises(SupervisorGaveUp) as info:
        await run()
    assert info.value.child_id == "syncer"
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(type(exc).__name__)
        exc = exc.__cause__
    assert "InjectedCrash" in chain


async def test_leaving_drains_in_flight_jobs_and_releases_the_rest(tmp_path: Path) -> None:
    running = 0
    two_running = anyio.Event()
    release = anyio.Event()

    async def handler(job: Job, ctx: Context) -> str:
        nonlocal running
        running += 1
        if running == 2:
            two_running.set()
        await release.wait()
        return "ok"

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), concurrency=2, prefetch=3,
                           syncer=QUICK) as rt:
            await rt.submit({"id": i} for i in range(6))
            await two_running.wait()
            release.set()  # in-flight jobs finish within the grace period
    async with reading(tmp_path) as store:
        states = await store.counts()
        planned = await store.jobs_in_state(JobState.PLANNED)
    assert states[JobState.LEASED] == 0
    assert states[JobState.SUCCEEDED] >= 2 and sum(states.values()) == 6
    # Released leases are planned again, the attempt not counted.
    assert max_attempts(planned) in (0, None)


async def test_grace_period_over_releases_a_hung_job(tmp_path: Path) -> None:
    started = anyio.Event()

    async def hang(job: Job, ctx: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with Runtime(hang, store=url(tmp_path), grace=0.05, syncer=QUICK) as rt:
            await rt.submit([{"id": 1}])
            await started.wait()
    async with reading(tmp_path) as store:
        jobs = await all_jobs(store)
    assert [(job.state, job.attempts) for job in jobs] == [(JobState.PLANNED, 0)]


async def test_second_runtime_after_abrupt_stop_recovers_all_leases(tmp_path: Path) -> None:
    started = 0
    all_started = anyio.Event()

    async def hang(job: Job, ctx: Context) -> None:
        nonlocal started
        started += 1
        if started == 5:
            all_started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with Runtime(hang, store=url(tmp_path), concurrency=5, syncer=QUICK) as rt:
            await rt.submit({"id": i} for i in range(5))
            await all_started.wait()
            rt.kill()
        async with reading(tmp_path) as store:
            assert (await store.counts())[JobState.LEASED] == 5
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK) as rt2:
            assert rt2.reconcile_report is not None
            assert rt2.reconcile_report.leases_requeued == 5
            await rt2.join()
            assert rt2.stats().counts[JobState.SUCCEEDED] == 5


async def test_a_second_runtime_on_the_same_store_refuses_at_once(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK):
            with pytest.raises(StoreLocked) as info:
                async with Runtime(noop, store=url(tmp_path), syncer=QUICK):
                    pass
    import os

    assert f"pid {os.getpid()}" in str(info.value)


async def test_a_job_that_kills_its_process_every_time_ends_in_failed(tmp_path: Path) -> None:
    started = anyio.Event()

    async def crashes(job: Job, ctx: Context) -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        for _ in range(3):
            started = anyio.Event()
            async with Runtime(crashes, store=url(tmp_path), syncer=QUICK, max_attempts=3) as rt:
                if rt.stats().counts[JobState.FAILED]:
                    break
                await rt.submit([{"id": 1}])
                await started.wait()
                rt.kill()
        async with Runtime(crashes, store=url(tmp_path), syncer=QUICK) as rt:
            assert rt.stats().counts[JobState.FAILED] == 1
    async with reading(tmp_path) as store:
        (job,) = await all_jobs(store)
    assert job.state is JobState.FAILED and job.last_error is not None
    assert "lease lost at stage start, attempt 3" in job.last_error


async def test_timeout_is_retried_and_result_must_be_json(tmp_path: Path) -> None:
    async def handler(job: Job, ctx: Context) -> Any:
        if job.identity["id"] == "slow" and job.attempt == 1:
            await anyio.sleep_forever()
        if job.identity["id"] == "bad":
            return object()
        return "fine"

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK, job_timeout=0.05,
                           retry=NO_BACKOFF) as rt:
            await rt.submit([{"id": "slow"}, {"id": "bad"}])
            await rt.join()
    async with reading(tmp_path) as store:
        got = {job.identity["id"]: job.state for job in await all_jobs(store)}
    assert got == {"slow": JobState.SUCCEEDED, "bad": JobState.FAILED}


async def test_a_commit_failure_that_persists_escalates_with_its_cause_sqlite(
        tmp_path: Path) -> None:
    config = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.005,
                          escalate_after=0.05)

    async def run() -> None:
        async with Runtime(noop, store=url(tmp_path), syncer=config,
                           intensity=RestartIntensity(max_restarts=1, within=60.0)) as rt:
            pages = page_count_sqlite(tmp_path)
            rt.store.set_max_page_count(pages)  # the disk is full from now on
            await rt.submit({"id": i, "blob": "x" * 2000} for i in range(200))
            await anyio.sleep_forever()

    with anyio.fail_after(20), pytest.raises(SupervisorGaveUp) as info:
        await run()
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(type(exc).__name__)
        exc = exc.__cause__
    assert chain[:2] == ["SupervisorGaveUp", "CommitFailing"]
    assert "StoreUnavailable" in chain
    assert "full" in str(info.value.__cause__)
    async with reading(tmp_path) as store:
        assert sum((await store.counts()).values()) == 0  # nothing half-written


# --- regressions found in review ----------------------------------------------------------


@pytest.mark.slow
async def test_a_job_with_a_lease_shorter_than_the_default_is_renewed(tmp_path: Path) -> None:
    runs = 0

    async def slow(job: Job, ctx: Context) -> str:
        nonlocal runs
        runs += 1
        await anyio.sleep(1.0)  # three times its own lease
        return "done"

    with anyio.fail_after(10):
        async with Runtime(slow, store=url(tmp_path), syncer=QUICK, lease_seconds=60.0,
                           reap_every=0.05) as rt:
            await rt.submit([JobSpec({"id": 1}, lease_seconds=0.3)])
            await rt.join()
    assert runs == 1
    async with reading(tmp_path) as store:
        jobs = await all_jobs(store)
        rejections = await store.rejection_count()
    assert [(job.state, job.attempts) for job in jobs] == [(JobState.SUCCEEDED, 1)]
    assert rejections == 0


@pytest.mark.slow
async def test_jobs_finishing_in_the_grace_period_keep_their_leases(tmp_path: Path) -> None:
    started = anyio.Event()

    async def slow(job: Job, ctx: Context) -> str:
        started.set()
        await anyio.sleep(0.8)  # outlives its 0.3 s lease, inside the 5 s grace period
        return "done"

    with anyio.fail_after(10):
        async with Runtime(slow, store=url(tmp_path), syncer=QUICK, lease_seconds=0.3,
                           reap_every=0.05, grace=5.0) as rt:
            await rt.submit([{"id": 1}])
            await started.wait()
    async with reading(tmp_path) as store:
        jobs = await all_jobs(store)
    assert [(job.state, job.attempts) for job in jobs] == [(JobState.SUCCEEDED, 1)]


async def test_leaving_asks_every_downloader_to_stop_at_once(tmp_path: Path) -> None:
    running = 0
    all_running = anyio.Event()
    leaving = False
    started_after_leaving = 0

    async def handler(job: Job, ctx: Context) -> None:
        nonlocal running, started_after_leaving
        started_after_leaving += leaving
        running += 1
        if running == 3:
            all_running.set()
        await anyio.sleep(0.05)

    with anyio.fail_after(10):
        async with Runtime(handler, store=url(tmp_path), syncer=QUICK, concurrency=3,
                           prefetch=20) as rt:
            await rt.submit({"id": i} for i in range(30))
            await all_running.wait()
            leaving = True
    assert started_after_leaving == 0
    async with reading(tmp_path) as store:
        assert (await store.counts())[JobState.LEASED] == 0


async def test_out_of_range_job_limits_are_refused_clearly(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK) as rt:
            with pytest.raises(InvalidJob, match="max_attempts"):
                await rt.submit([JobSpec({"id": 1}, max_attempts=2**70)])
            with pytest.raises(InvalidJob, match="timeout"):
                await rt.submit([JobSpec({"id": 2}, timeout=-1)])


async def test_a_message_the_store_cannot_apply_is_refused_alone(tmp_path: Path) -> None:
    poison = NewJob(key=job_key({"id": "poison"}), identity='{"id":"poison"}', payload="{}",
                    max_attempts=2**70)  # past SQLite's integers: the insert raises
    with anyio.fail_after(10):
        async with Runtime(noop, store=url(tmp_path), syncer=QUICK) as rt:
            bad: Reply[SubmitResult] = Reply()
            good: Reply[SubmitResult] = Reply()
            rt.pause()
            await rt.send(Submit((poison,), reply=bad))
            await rt.send(Submit((_new({"id": "good"}),), reply=good))
            rt.resume()
            assert (await good.wait()).new == 1
            with pytest.raises(OverflowError):
                await bad.wait()
            await rt.join()
            assert rt.restarts == []
    async with reading(tmp_path) as store:
        jobs = await all_jobs(store)
    assert [(job.identity["id"], job.state) for job in jobs] == [("good", JobState.SUCCEEDED)]


def _new(identity: dict[str, Any]) -> NewJob:
    return NewJob(key=job_key(identity), identity=canonical_identity(identity), payload="{}",
                  max_attempts=3)
