"""Review of cancel (f6c8874): a cancel by state on PostgreSQL racing another writer.

`Cancel` without keys reads the ids of the jobs in the state asked for, then locks them
(`PostgresTx.cancel_candidates` -> `load ... FOR UPDATE`) and reads them again. A job
another writer finished (or leased, or released) in between is simply no longer one to
cancel: no key was given, so it is not a given key "already finished" or "in another
state". Before the fix it was listed as one, and `syncward cancel --state leased` beside
live runtimes printed "not cancelled (already finished): KEY" and exited 1.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest
from store.store_helpers import (
    POSTGRES_URL,
    T0,
    drop_schemas,
    lease,
    new_job,
    require_postgres,
    submit,
)

from syncward.jobs import JobState
from syncward.messages import Cancel, CancelResult
from syncward.store import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}_cancelrev"
    try:
        yield schema
    finally:
        await drop_schemas(schema)


async def _wait_for_a_lock_wait(conn: object) -> None:
    """Until some other session waits for a row lock (the cancel, blocked by ours)."""
    while True:
        waiting = await conn.fetchval(  # type: ignore[attr-defined]
            "SELECT count(*) FROM pg_locks WHERE NOT granted")
        if waiting:
            return
        await anyio.sleep(0.01)


@pytest.mark.integration
@pytest.mark.parametrize(("state", "change"), [
    # another runtime's outcome commits while the cancel waits for the row
    (JobState.LEASED, "state = 'succeeded', ended_fence = fence, ended_by = 'succeeded',"
                      " lease_owner = NULL, lease_boot = NULL, lease_expires_at = NULL"),
    # another runtime leases a planned job while the cancel waits for the row
    (JobState.PLANNED, "state = 'leased', fence = fence + 1, attempts = attempts + 1,"
                       " lease_owner = 'w2', lease_boot = 'boot-2',"
                       " lease_expires_at = 1e12"),
])
async def test_a_cancel_by_state_lists_no_job_another_writer_changed_meanwhile(
        pg_schema: str, state: JobState, change: str) -> None:
    import asyncpg

    store = await open_store(f"{POSTGRES_URL}?schema={pg_schema}")
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await submit(store, new_job({"n": 1}), new_job({"n": 2}))
        kept = (await lease(store, 2, now=T0))[1] if state is JobState.LEASED else None
        await conn.execute(f"SET search_path TO {pg_schema}")
        tx = conn.transaction()
        await tx.start()
        locked = await conn.fetchval(
            "SELECT id FROM jobs WHERE identity = '{\"n\":1}' FOR UPDATE")
        result: list[CancelResult] = []

        async def cancel() -> None:
            applied = await store.apply([Cancel(state=state, decided_at=T0 + 5)],
                                        now=T0 + 5)
            result.append(applied.results[0])  # type: ignore[arg-type]

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel)
                await _wait_for_a_lock_wait(conn)  # it read both ids, and waits for ours
                await conn.execute(f"UPDATE jobs SET {change} WHERE id = $1", locked)
                await tx.commit()
        (done,) = result
    finally:
        await conn.close()
        await store.aclose()
    assert (done.finished, done.other_state, done.not_found) == ((), (), ())
    if state is JobState.LEASED:
        assert kept is not None
        assert done == CancelResult(leased=1, leases=((kept.id, kept.fence),))
    else:
        assert done == CancelResult(planned=1)



# --- a syncer crash between the cancel's commit and its aftermath ------------------------


async def test_a_cancel_redelivered_after_a_syncer_crash_still_stops_the_job() -> None:
    """The syncer crashes after committing a `Cancel` and before telling the attempts
    registry (the fault point ``syncer.after_commit``). The batch is redelivered (the Cancel
    now finds the job skipped) and the root restarts everything after the syncer, the pool
    too. What the caller is told, and what the handler does, must still say "cancelled"."""
    from test_cancel import QUICK, Blocked

    from syncward import Runtime
    from syncward.jobs import job_key
    from syncward.testing import Faults

    handler, faults = Blocked(), Faults()
    key = job_key({"n": "a"})
    with anyio.fail_after(15):
        async with Runtime(handler, store="memory://", syncer=QUICK, faults=faults,
                           lease_seconds=60.0, grace=0.5) as rt:
            await rt.submit([{"n": "a"}])
            await handler.event(handler.started, "a").wait()
            faults.arm("syncer.after_commit")
            done = await rt.cancel([key])
            await anyio.sleep(0.5)  # a restarted pool would have started it again by now
            runs = handler.runs["a"]
            row = await rt.store.get_job(key)
    assert faults.fired["syncer.after_commit"] == 1
    assert row is not None and row.state is JobState.SKIPPED
    assert runs == 1, f"the cancelled job's handler ran {runs} times"
    assert done.finished == (), done
