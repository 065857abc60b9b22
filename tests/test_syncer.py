"""The syncer: sole writer, group commit, acknowledge after commit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from syncward.actors.mailbox import Mailbox
from syncward.actors.syncer import LeaseControl, StatsUpdate, Syncer, SyncerConfig, SyncerHealth
from syncward.jobs import Job, JobState, canonical_identity, job_key
from syncward.messages import (
    Accepted,
    NewJob,
    Outcome,
    OutcomeKind,
    ReapExpired,
    Recount,
    Rejected,
    Reply,
    Submit,
    SubmitResult,
    SyncerMsg,
)
from syncward.store import Store, open_store
from syncward.store.sqlite import SQLiteStore
from syncward.testing import FakeClock

FAST = SyncerConfig(max_batch=100, max_delay=0.001, retry_initial=0.001, retry_max=0.01,
                    idle_poll=0.05)


def new_job(i: int, payload: str = "{}", max_attempts: int = 3) -> NewJob:
    ident = {"id": i}
    return NewJob(key=job_key(ident), identity=canonical_identity(ident), payload=payload,
                  max_attempts=max_attempts)


@dataclass
class Rig:
    store: Store
    mailbox: Mailbox[SyncerMsg]
    work: Mailbox[Job]
    stats: Mailbox[StatsUpdate]
    health: SyncerHealth
    control: LeaseControl
    clock: FakeClock

    async def submit(self, jobs: list[NewJob]) -> SubmitResult:
        reply: Reply[SubmitResult] = Reply()
        await self.mailbox.send(Submit(tuple(jobs), reply=reply))
        return await reply.wait()

    async def take_leased(self, n: int) -> list[Job]:
        return [await self.work.receive("test") for _ in range(n)]


@asynccontextmanager
async def syncer_rig(path: Path, *, work_capacity: int = 10, leasing: bool = True,
                     config: SyncerConfig = FAST, store: Store | None = None,
                     ) -> AsyncIterator[Rig]:
    own = store is None
    store = store or await open_store(f"sqlite:///{path}")
    clock = FakeClock()
    rig = Rig(store=store, mailbox=Mailbox("syncer", 1000), work=Mailbox("work", work_capacity),
              stats=Mailbox("stats", 100_000), health=SyncerHealth(),
              control=LeaseControl(owner="w", boot_id="b", default_lease_seconds=30.0,
                                   enabled=leasing),
              clock=clock)
    syncer = Syncer(store=store, mailbox=rig.mailbox, work=rig.work, stats=rig.stats,
                    health=rig.health, control=rig.control, clock=clock, config=config)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(syncer.run)
            yield rig
            syncer.request_stop()
    finally:
        if own:
            await store.aclose()


async def db_rows(path: Path) -> dict[str | int, tuple[JobState, int, int]]:
    """Every job by its ``id``, as another reader of the store sees it (read-only)."""
    store = await open_store(f"sqlite:///{path}", readonly=True)
    try:
        jobs = [job for state in JobState for job in await store.jobs_in_state(state)]
    finally:
        await store.aclose()
    return {job.identity["id"]: (job.state, job.attempts, job.fence)
            for job in sorted(jobs, key=lambda job: job.id)}


async def test_submit_returns_after_commit(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with anyio.fail_after(5):
        async with syncer_rig(db, leasing=False) as rig:
            result = await rig.submit([new_job(i) for i in range(10)])
            assert result == SubmitResult(new=10, duplicates=0)
            # Visible to another reader the moment the reply arrives: committed.
            assert len(await db_rows(db)) == 10
            again = await rig.submit([new_job(i) for i in range(5, 15)])
            assert again == SubmitResult(new=5, duplicates=5)


async def test_leases_as_many_as_there_is_room_and_fences_each(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        async with syncer_rig(tmp_path / "jobs.db", work_capacity=3) as rig:
            await rig.submit([new_job(i) for i in range(5)])
            leased = await rig.take_leased(3)
            assert [j.identity["id"] for j in leased] == [0, 1, 2]  # oldest first
            assert all(j.fence == 1 and j.attempt == 1 for j in leased)
            await anyio.wait_all_tasks_blocked()
            assert len(rig.work) == 0  # 3 in flight fill the room: nothing more leased
            rig.work.ack("test")
            more = await rig.take_leased(2)
            assert [j.identity["id"] for j in more] == [3, 4]


async def test_stale_outcome_from_a_reaped_lease_is_rejected(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with anyio.fail_after(5):
        async with syncer_rig(db, work_capacity=1) as rig:
            await rig.submit([new_job(1)])
            (old,) = await rig.take_leased(1)
            rig.work.ack("test")
            rig.control.enabled = False
            rig.clock.advance(31)  # past the 30 s lease
            await rig.mailbox.send(ReapExpired(((old.id, old.fence),)))
            rig.control.enabled = True
            (new,) = await rig.take_leased(1)
            assert new.fence == old.fence + 1 and new.attempt == 2
            stale: Reply[Accepted | Rejected] = Reply()
            fresh: Reply[Accepted | Rejected] = Reply()
            await rig.mailbox.send(Outcome(new.id, new.fence, OutcomeKind.SUCCEEDED,
                                           result='"new"', reply=fresh))
            await rig.mailbox.send(Outcome(old.id, old.fence, OutcomeKind.FAILED,
                                           error="late", reply=stale))
            assert isinstance(await fresh.wait(), Accepted)
            rejected = await stale.wait()
            assert isinstance(rejected, Rejected) and "stale fence" in rejected.reason
            row = await rig.store.get_job(new.key)
            assert row is not None
            assert row.state is JobState.SUCCEEDED and row.result == "new"
            assert rig.health.rejected == 1


async def test_a_rejected_message_does_not_poison_its_batch(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        async with syncer_rig(tmp_path / "jobs.db", work_capacity=2) as rig:
            await rig.submit([new_job(1), new_job(2)])
            a, b = await rig.take_leased(2)
            rig.control.enabled = False
            replies: list[Reply[Accepted | Rejected]] = [Reply() for _ in range(3)]
            batch = [
                Outcome(a.id, a.fence, OutcomeKind.SUCCEEDED, result="1", reply=replies[0]),
                Outcome(a.id, a.fence, OutcomeKind.SUCCEEDED, result="2", reply=replies[1]),
                Outcome(b.id, b.fence, OutcomeKind.SKIPPED, error="dup", reply=replies[2]),
            ]
            for msg in batch:  # queued together, so they commit as one batch
                rig.mailbox.send_nowait(msg)
            results = [await r.wait() for r in replies]
            assert isinstance(results[0], Accepted)
            assert isinstance(results[1], Rejected)
            assert isinstance(results[2], Accepted)
            counts = await rig.store.counts()
            assert counts[JobState.SUCCEEDED] == 1 and counts[JobState.SKIPPED] == 1


async def test_disk_full_keeps_every_message_and_completes_when_space_returns_sqlite(
        tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = await open_store(f"sqlite:///{db}")
    assert isinstance(store, SQLiteStore)  # the disk-full drill is SQLite's own
    try:
        with anyio.fail_after(20):
            async with syncer_rig(db, leasing=False, store=store) as rig:
                await rig.submit([new_job(-1)])  # schema and first pages exist
                conn = sqlite3.connect(db)  # no store read gives the file's size in pages
                (pages,) = conn.execute("PRAGMA page_count").fetchone()
                conn.close()
                store.set_max_page_count(pages + 2)
                big = "x" * 20_000
                replies = []
                for i in range(20):
                    reply: Reply[SubmitResult] = Reply()
                    await rig.mailbox.send(Submit(
                        (new_job(i, payload=json.dumps({"blob": big})),), reply=reply))
                    replies.append(reply)
                while rig.health.error is None:
                    await rig.health.changed.wait()
                assert "full" in rig.health.error.lower()
                assert rig.health.error_since is not None
                assert not all(r.done for r in replies)
                held = rig.mailbox.pending()
                assert len(held) + sum(r.done for r in replies) == 20  # nothing dropped
                store.set_max_page_count(1_000_000)
                results = [await r.wait() for r in replies]
                assert sum(r.new for r in results) == 20
                assert rig.health.error is None and rig.health.failures_total >= 1
        assert len(await db_rows(db)) == 21
    finally:
        await store.aclose()


async def test_stop_drains_the_mailbox(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with anyio.fail_after(5):
        async with syncer_rig(db, leasing=False) as rig:
            for i in range(50):
                rig.mailbox.send_nowait(Submit((new_job(i),)))
    assert len(await db_rows(db)) == 50


# --- the incident: "push to a list, read 100, write, trim 100" --------------------------

PRODUCERS = 4
PUSHES = 5  # per producer, 50 records each: 1000 records


async def naive_list_sync(db: Path) -> int:
    """The incident's pattern. Producers push batches of 50 while the sync loop, which
    reads 100 (LRANGE 0 99), writes them to SQLite and then trims 100 (LTRIM 100 -1), is in
    the middle of its write. Returns how many records never reached the database."""
    redis_list: list[int] = []
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY)")
    total = PRODUCERS * PUSHES * 50
    batches = [list(range(b * 50, b * 50 + 50)) for b in range(PRODUCERS * PUSHES)]
    read_done = anyio.Event()
    pushed = anyio.Event()

    async def producers() -> None:
        nonlocal read_done
        for batch in batches:
            redis_list.extend(batch)  # RPUSH of 50
            pushed.set()
            await read_done.wait()  # the next push lands while the sync is writing
            read_done = anyio.Event()

    async def sync() -> None:
        nonlocal pushed
        for _ in range(len(batches)):
            await pushed.wait()
            pushed = anyio.Event()
            batch = redis_list[0:100]  # LRANGE 0 99
            read_done.set()
            await anyio.wait_all_tasks_blocked()  # a producer pushes during the write
            await anyio.to_thread.run_sync(
                lambda b=batch: conn.executemany(  # type: ignore[misc]
                    "INSERT OR IGNORE INTO records VALUES (?)", [(x,) for x in b]))
            conn.commit()
            del redis_list[:100]  # LTRIM 100 -1

    async with anyio.create_task_group() as tg:
        tg.start_soon(producers)
        tg.start_soon(sync)
    (written,) = conn.execute("SELECT count(*) FROM records").fetchone()
    conn.close()
    return total - int(written)


async def test_incident_naive_list_sync_loses_records(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        lost = await naive_list_sync(tmp_path / "naive.db")
    assert lost > 0


async def test_incident_the_same_workload_through_the_syncer_loses_nothing(
        tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with anyio.fail_after(10):
        async with syncer_rig(db, leasing=False) as rig:

            async def producer(p: int) -> None:
                for k in range(PUSHES):
                    base = (p * PUSHES + k) * 50
                    await rig.submit([new_job(i) for i in range(base, base + 50)])

            async with anyio.create_task_group() as tg:
                for p in range(PRODUCERS):
                    tg.start_soon(producer, p)
    assert len(await db_rows(db)) == PRODUCERS * PUSHES * 50


@pytest.mark.parametrize("n", [1, 250])
async def test_group_commit_takes_many_messages_per_transaction(tmp_path: Path, n: int) -> None:
    with anyio.fail_after(5):
        async with syncer_rig(tmp_path / "jobs.db", leasing=False) as rig:
            for i in range(n):
                rig.mailbox.send_nowait(Submit((new_job(i),)))
            last: Reply[SubmitResult] = Reply()
            rig.mailbox.send_nowait(Submit((new_job(n),), reply=last))
            await last.wait()
            assert rig.health.messages == n + 1
            assert rig.health.commits <= 1 + (n + 1) // FAST.max_batch + 1


async def test_a_reset_recount_behind_a_periodic_one_still_resets(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        async with syncer_rig(tmp_path / "jobs.db", leasing=False) as rig:
            await rig.submit([new_job(1)])
            rig.mailbox.send_nowait(Recount())  # the periodic one of the old stats-keeper
            rig.mailbox.send_nowait(Recount(reset=True))  # the new incarnation's
            last: Reply[SubmitResult] = Reply()
            rig.mailbox.send_nowait(Submit((), reply=last))
            await last.wait()
            updates = rig.stats.pending()
    with_counts = [u for u in updates if u.counts is not None]
    assert len(with_counts) == 1
    assert with_counts[0].reset
    assert with_counts[0].counts is not None
    assert with_counts[0].counts[JobState.PLANNED] == 1


async def test_leases_granted_after_the_downloaders_stopped_are_released(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with anyio.fail_after(5):
        async with syncer_rig(db, work_capacity=3) as rig:
            rig.work.close()  # the pool has stopped; a commit now leases jobs nobody runs
            await rig.submit([new_job(i) for i in range(3)])
    assert set((await db_rows(db)).values()) == {(JobState.PLANNED, 0, 1)}


async def test_a_submit_delivered_again_after_its_commit_counts_its_own_jobs_as_new(
        tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        first = Submit(tuple(new_job(i) for i in range(5)))
        other = Submit(tuple(new_job(i) for i in range(3, 8)))
        once = await store.apply([first], now=1.0)
        again = await store.apply([first, other], now=2.0)  # redelivered, then a new one
    finally:
        await store.aclose()
    assert once.results == [SubmitResult(new=5, duplicates=0)]
    assert again.results == [SubmitResult(new=5, duplicates=0),
                             SubmitResult(new=3, duplicates=2)]


class _BrokenStore:
    """A store whose every commit fails with an error it does not classify."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls = 0

    async def apply(self, batch: Any, **kw: Any) -> Any:
        self.calls += 1
        raise RuntimeError("the store itself is broken")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_broken_store_crashes_the_syncer_and_refuses_no_message(
        tmp_path: Path) -> None:
    """A failure the store does not classify is not blamed on the messages: the syncer
    commits an empty batch before refusing one alone, and when that fails too it crashes
    (the supervisor restarts it; its mailbox redelivers), so no sender sees a refusal."""
    inner = await open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    store = _BrokenStore(inner)
    replies = [Reply[SubmitResult]() for _ in range(3)]
    async def run() -> None:
        async with syncer_rig(tmp_path, store=store, leasing=False) as rig:  # type: ignore[arg-type]
            for i, reply in enumerate(replies):
                rig.mailbox.send_nowait(Submit((new_job(i),), reply=reply))
            await anyio.sleep_forever()

    try:
        with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as info:
            await run()
    finally:
        await inner.aclose()
    assert info.group_contains(RuntimeError, match="the store itself is broken")
    assert not any(reply.done for reply in replies)  # nobody was told "refused"
    assert store.calls >= 2  # the batch, then the empty one that proved the store broken
