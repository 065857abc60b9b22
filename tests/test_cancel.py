"""Cancel through a running runtime: planned jobs are skipped, running handlers cancelled.

On the in-memory store and SQLite (and PostgreSQL, where another process cancels: the
owner learns at its next renewal). The store is read through the `StoreReader` protocol.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from store.store_helpers import POSTGRES_URL, drop_schemas, require_postgres

from syncward import (
    CancelResult,
    ConfigError,
    Context,
    InvalidJob,
    Job,
    JobState,
    Runtime,
    SyncerConfig,
)
from syncward.jobs import job_key, op_key
from syncward.messages import Cancel
from syncward.store import open_store
from syncward.store.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

QUICK = SyncerConfig(idle_poll=0.01, retry_initial=0.001, retry_max=0.01)


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        name = f"cancel-{uuid.uuid4().hex}"
        yield f"memory://{name}"
        MemoryStore.forget(name)
    else:
        yield f"sqlite:///{tmp_path / 'jobs.db'}"


class Blocked:
    """A handler that commits an effect, then waits on an event that never comes."""

    def __init__(self) -> None:
        self.started: dict[str, anyio.Event] = {}
        self.cancelled: dict[str, anyio.Event] = {}
        self.runs: Counter[str] = Counter()

    def event(self, table: dict[str, anyio.Event], name: str) -> anyio.Event:
        return table.setdefault(name, anyio.Event())

    async def __call__(self, job: Job, ctx: Context) -> str:
        name = str(job.identity["n"])
        self.runs[name] += 1
        if name.startswith("quick"):
            return name
        await ctx.effect("upload", lambda: {"etag": name})
        self.event(self.started, name).set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            self.event(self.cancelled, name).set()
            raise
        return "never"


async def test_cancel_planned_jobs_by_state_and_by_key(store_url: str) -> None:
    ran: list[Job] = []

    async def handler(job: Job, ctx: Context) -> None:
        ran.append(job)

    with anyio.fail_after(10):
        async with Runtime(handler, store=store_url, syncer=QUICK) as rt:
            rt.pause()  # nothing is leased: every job stays planned
            await rt.submit([{"n": i} for i in range(5)])
            one = await rt.cancel([job_key({"n": 0}).upper(), job_key({"n": "none"})])
            assert one == CancelResult(planned=1, not_found=(job_key({"n": "none"}),))
            rest = await rt.cancel(state="planned")
            assert (rest.planned, rest.leased, rest.leases) == (4, 0, ())
            again = await rt.cancel([job_key({"n": 0})])
            assert again.already_cancelled == (job_key({"n": 0}),) and again.cancelled == 0
            rt.resume()
            await rt.submit([{"n": "after"}])  # the cancel does not touch later jobs
            await rt.join()
            snap = rt.stats()
            row = await rt.store.get_job(job_key({"n": 3}))
    assert [j.identity for j in ran] == [{"n": "after"}]
    assert (snap.counts[JobState.SKIPPED], snap.counts[JobState.SUCCEEDED]) == (5, 1)
    assert row is not None and (row.state, row.last_error, row.attempts) == (
        JobState.SKIPPED, "cancelled", 0)


async def test_cancel_refuses_bad_arguments(store_url: str) -> None:
    async def handler(job: Job, ctx: Context) -> None: ...

    async with Runtime(handler, store=store_url, syncer=QUICK) as rt:
        with pytest.raises(ConfigError, match="keys, or a state"):
            await rt.cancel()
        with pytest.raises(ConfigError, match="planned or leased"):
            await rt.cancel(state="failed")
        with pytest.raises(InvalidJob, match="64 hex"):
            await rt.cancel(["xyz"])
        assert await rt.cancel([]) == CancelResult()


async def test_cancel_a_running_job_cancels_its_handler_and_keeps_its_effect(
        store_url: str) -> None:
    handler = Blocked()
    key = job_key({"n": "a"})
    with anyio.fail_after(10):
        async with Runtime(handler, store=store_url, syncer=QUICK, concurrency=2) as rt:
            await rt.submit([{"n": "a"}])
            await handler.event(handler.started, "a").wait()
            result = await rt.cancel([key])
            assert (result.planned, result.leased, len(result.leases)) == (0, 1, 1)
            await handler.event(handler.cancelled, "a").wait()  # the handler saw it
            await rt.join()
            # The downloader is free again, and the runtime counts no error.
            await rt.submit([{"n": "quick-1"}])
            await rt.join()
            row = await rt.store.get_job(key)
            op = await rt.store.get_op(op_key("upload", key))
            rejected = await rt.store.rejection_count()
            health = await rt.health()
            snap = rt.stats()
    assert row is not None
    assert (row.state, row.last_error, row.attempts, row.lease_owner) == (
        JobState.SKIPPED, "cancelled", 1, None)
    assert op == '{"etag": "a"}'  # committed before the cancel: it stays
    assert rejected == 0  # no stale outcome was sent for the cancelled attempt
    assert health.ok, health.reasons
    assert (snap.counts[JobState.SKIPPED], snap.counts[JobState.SUCCEEDED]) == (1, 1)
    assert handler.runs == {"a": 1, "quick-1": 1}


async def test_a_prefetched_job_that_is_cancelled_never_starts(store_url: str) -> None:
    handler = Blocked()
    with anyio.fail_after(10):
        async with Runtime(handler, store=store_url, syncer=QUICK, concurrency=1,
                           grace=0.5) as rt:
            await rt.submit([{"n": "a"}])
            await handler.event(handler.started, "a").wait()
            await rt.submit([{"n": "b"}])  # leased too, waiting for the one downloader
            await rt.wait(lambda s: s.counts[JobState.LEASED] == 2)
            waiting = await rt.cancel([job_key({"n": "b"})])
            assert waiting.leased == 1
            running = await rt.cancel(state="leased")
            assert running.leased == 1
            await rt.join()
            await rt.submit([{"n": "quick-2"}])
            await rt.join()
            rejected = await rt.store.rejection_count()
            snap = rt.stats()
    assert handler.runs == {"a": 1, "quick-2": 1}  # b never started
    assert (snap.counts[JobState.SKIPPED], snap.counts[JobState.SUCCEEDED]) == (2, 1)
    assert rejected == 0


async def test_a_refused_renewal_cancels_the_handler() -> None:
    """A lease that ends behind the runtime's back (here a Cancel applied to the store
    directly, as another process would on a shared store) is noticed at the next renewal."""
    handler = Blocked()
    name = f"cancel-{uuid.uuid4().hex}"
    key = job_key({"n": "a"})
    try:
        with anyio.fail_after(10):
            async with Runtime(handler, store=f"memory://{name}", syncer=QUICK,
                               lease_seconds=0.3) as rt:
                await rt.submit([{"n": "a"}])
                await handler.event(handler.started, "a").wait()
                result = await rt.store.apply([Cancel(keys=(key,))], now=rt.clock.now())
                assert result.results[0] == CancelResult(
                    leased=1, leases=result.results[0].leases)  # type: ignore[union-attr]
                await handler.event(handler.cancelled, "a").wait()
                await rt.refresh_stats()
                await rt.join()
                row = await rt.store.get_job(key)
    finally:
        MemoryStore.forget(name)
    assert row is not None and (row.state, row.last_error) == (JobState.SKIPPED, "cancelled")
    assert handler.runs == {"a": 1}


# --- another process cancels on a shared store -------------------------------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}_cancel"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        await drop_schemas(schema)


@pytest.mark.integration
async def test_a_cancel_by_another_process_stops_the_owners_handler(pg_url: str) -> None:
    handler = Blocked()
    key = job_key({"n": "a"})
    with anyio.fail_after(20):
        async with Runtime(handler, store=pg_url, syncer=QUICK, lease_seconds=0.9) as rt:
            await rt.submit([{"n": "a"}])
            await handler.event(handler.started, "a").wait()
            other = await open_store(pg_url)  # what `syncward cancel KEY --db` does
            try:
                result = (await other.apply([Cancel(keys=(key,))],
                                            now=rt.clock.now())).results[0]
            finally:
                await other.aclose()
            assert isinstance(result, CancelResult) and result.leased == 1
            started = anyio.current_time()
            await handler.event(handler.cancelled, "a").wait()
            latency = anyio.current_time() - started
            await rt.join()
            row = await rt.store.get_job(key)
            op = await rt.store.get_op(op_key("upload", key))
    assert latency < 0.9  # within two thirds of the lease, give or take a tick
    assert row is not None and (row.state, row.last_error) == (JobState.SKIPPED, "cancelled")
    assert op == '{"etag": "a"}'

