"""Review of priorities and limits per key: bugs found, one failing test each.

Each test runs on every backend of `store_helpers.BACKENDS` unless marked otherwise; the
comment under each says which backend it failed on, and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from store_helpers import T0, lease_order, submit
from store_helpers import lease_with as lease
from store_helpers import numbers as leased_numbers
from store_helpers import steered_job as job

from syncward.limits import LimitRule
from syncward.messages import Cancel, Outcome, OutcomeKind

if TYPE_CHECKING:
    from conftest import Backend

    from syncward.jobs import Job
    from syncward.messages import ApplyResult


def numbers(jobs: list[Job]) -> list[int]:
    return sorted(leased_numbers(jobs))


@pytest.mark.parametrize("limited", [False, True])
async def test_a_rolled_back_cancel_and_lease_leave_the_job_leasable(
        backend: Backend, limited: bool) -> None:
    """A batch that cancels a due job and leases, rolled back (a dry run here; a failed
    batch the same), must leave the job planned *and leasable*.

    Memory store: the lease promotes the due jobs from the waiting heap to the rank heaps;
    the cancelled job's entry looks stale (state skipped) and is dropped for good, with no
    undo. The rollback makes the job planned again, but no heap holds it: it is never
    leased again and ``next_due`` says there is nothing to do.
    """
    store = await backend.open()
    key = "host:a" if limited else None
    limits = {"host": LimitRule(concurrency=5)} if limited else None
    a, b = job(1, key=key), job(2, key=key)
    await submit(store, a, b)
    await store.apply([Cancel(keys=(a.key,))], now=T0, lease=lease_order(5, limits), dry_run=True)
    assert await store.next_due() == T0
    got = (await lease(store, 5, now=T0, limits=limits)).leased
    assert numbers(got) == [1, 2]


async def test_a_rolled_back_lease_at_a_later_time_does_not_lease_early_later(
        backend: Backend) -> None:
    """Memory store: a lease at ``now`` promotes the jobs due by then into the rank heaps,
    which are never checked against the due time again, and a rollback leaves them there.
    A later lease with an earlier ``now`` (a dry run, a failed batch, a clock stepped
    back, two runtimes' clocks on one named store) then leases a job not yet due — the SQL
    backends do not."""
    store = await backend.open()
    await submit(store, job(1), now=T0 + 50)  # due at T0 + 50
    await store.apply([], now=T0 + 100, lease=lease_order(5), dry_run=True)
    assert (await lease(store, 5, now=T0)).leased == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_hold_committed_by_another_writer_during_a_limited_lease_is_kept(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Shared stores.) Writer A commits ``Retry(hold_key=True)`` (a 429) while writer B is
    inside a limited lease of the same key (after it read the key's state under the
    limits lock). B's ``save_limits`` writes back the ``held_until`` it read (none), so
    A's hold is lost and the key is leased during the hold.

    PostgreSQL: ``save_limits`` does ``held_until = excluded.held_until``; ``hold_limits``
    does not take the limits lock, so nothing orders the two.
    """
    from syncward.store.postgres.tx import PostgresTx

    first = await backend.open()
    second = await backend.open()
    limits = {"host": LimitRule(concurrency=5, rate=100.0)}  # the rate: save_limits runs
    await submit(first, *(job(i, key="host:a") for i in range(4)))
    told = (await lease(first, 1, now=T0, limits=limits)).leased[0]
    original = PostgresTx.limit_usage
    fired = False
    results: dict[str, ApplyResult] = {}

    async def a_batch() -> None:
        # Writer A's batch: no lease in it (its downloaders are busy), just the 429.
        results["a"] = await first.apply([Outcome(
            told.id, told.fence, OutcomeKind.RETRY, error="HTTP 429", retry_at=T0 + 300,
            hold_key=True)], now=T0 + 1)

    async with anyio.create_task_group() as tg:
        async def usage_then_other_writer(self: PostgresTx, keys: Any) -> Any:
            nonlocal fired
            got = await original(self, keys)
            if not fired:
                fired = True
                tg.start_soon(a_batch)
                await anyio.sleep(0.5)  # A commits its hold now (or waits for B)
            return got

        monkeypatch.setattr(PostgresTx, "limit_usage", usage_then_other_writer)
        during = await lease(second, 1, now=T0 + 1, limits=limits)  # B: before A's hold
    monkeypatch.setattr(PostgresTx, "limit_usage", original)
    assert "a" in results
    assert len(during.leased) == 1  # B saw no hold: fine, it started before the hold
    # The hold A committed must hold now:
    assert (await lease(second, 5, now=T0 + 2, limits=limits)).leased == []


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_hold_and_a_limited_lease_in_one_batch_do_not_deadlock_another_writer(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Shared stores.) Writer A's batch holds a key (row lock on its limit_state row, at
    flush) and then leases (waits for the limits lock); writer B, holding the limits lock,
    saves the same key's rate state (waits for A's row lock): a deadlock, which the server
    breaks by failing one batch after ``deadlock_timeout``."""
    import asyncpg

    first = await backend.open()
    second = await backend.open()
    limits = {"host": LimitRule(concurrency=5, rate=100.0)}
    await submit(first, *(job(i, key="host:a") for i in range(4)))
    told = (await lease(first, 1, now=T0, limits=limits)).leased[0]
    from syncward.store.postgres.tx import PostgresTx

    original = PostgresTx.limit_usage
    errors: list[BaseException] = []
    fired = False

    async def a_batch() -> None:
        try:
            await lease(first, 1, now=T0 + 1, limits=limits, msgs=[Outcome(
                told.id, told.fence, OutcomeKind.RETRY, error="HTTP 429",
                retry_at=T0 + 300, hold_key=True)])
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        async def usage_then_other_writer(self: PostgresTx, keys: Any) -> Any:
            nonlocal fired
            got = await original(self, keys)
            if not fired:
                fired = True
                tg.start_soon(a_batch)
                await anyio.sleep(0.5)  # A has flushed its hold and waits for the lock
            return got

        monkeypatch.setattr(PostgresTx, "limit_usage", usage_then_other_writer)
        try:
            await lease(second, 1, now=T0 + 1, limits=limits)
        except Exception as exc:
            errors.append(exc)
    monkeypatch.setattr(PostgresTx, "limit_usage", original)
    deadlocks = [e for e in errors
                 if isinstance(e.__cause__ or e, asyncpg.DeadlockDetectedError)
                 or "deadlock" in str(e)]
    assert deadlocks == []
