"""Helpers of the store tests: build messages, apply them, read back through the reader."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from syncward.jobs import JobState, job_key, op_key
from syncward.jobs import canonical_identity as canonical
from syncward.messages import (
    Effect,
    FinishRun,
    LeaseOrder,
    NewJob,
    Outcome,
    OutcomeKind,
    ReapExpired,
    RegisterWorker,
    Release,
    Renew,
    Reply,
    Requeue,
    RunRejects,
    Stage,
    StartRun,
    Submit,
    SubmitResult,
    SyncerMsg,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from syncward.jobs import Job
    from syncward.limits import LimitRule
    from syncward.messages import ApplyResult
    from syncward.store.base import JobRow, Store, StoreReader

T0 = 1_700_000_000.0
#: Every backend the contract suite runs on.
BACKENDS = ["memory", "sqlite", "postgres"]
#: The PostgreSQL server the suite uses (each test gets schemas of its own).
POSTGRES_URL = os.environ.get("SYNCWARD_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) when the PostgreSQL server does not answer."""
    if postgres_up():
        return
    reason = f"PostgreSQL at {POSTGRES_URL} does not answer"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@functools.cache
def postgres_up() -> bool:
    """Whether the PostgreSQL server of the tests answers on its port."""
    parts = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432),
                                      timeout=5):
            return True
    except OSError:
        return False


async def drop_schemas(prefix: str) -> None:
    """Drop every schema whose name starts with ``prefix`` (a test's own)."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        names = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
                                 prefix + "%")
        for (name,) in names:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


def new_job(identity: dict[str, Any], *, payload: Any = None, max_attempts: int = 3,
            line: int | None = None, lease_seconds: float | None = None) -> NewJob:
    return NewJob(key=job_key(identity), identity=canonical(identity),
                  payload=json.dumps(payload if payload is not None else {}),
                  max_attempts=max_attempts, lease_seconds=lease_seconds, line=line)


async def submit(store: Store, *jobs: NewJob, now: float = T0) -> SubmitResult:
    result = (await store.apply([Submit(tuple(jobs))], now=now)).results[0]
    assert isinstance(result, SubmitResult)
    return result


async def lease(store: Store, n: int, *, now: float, owner: str = "w1", boot: str = "boot-1",
                seconds: float = 10.0) -> list[Job]:
    order = LeaseOrder(n=n, owner=owner, boot_id=boot, default_lease_seconds=seconds)
    return (await store.apply([], now=now, lease=order)).leased


async def row(store: StoreReader, identity: dict[str, Any]) -> JobRow:
    job = await store.get_job(job_key(identity))
    assert job is not None
    return job


async def all_jobs(store: StoreReader) -> list[JobRow]:
    jobs: list[JobRow] = []
    for state in JobState:
        jobs.extend(await store.jobs_in_state(state))
    return sorted(jobs, key=lambda j: j.id)


async def snapshot(store: StoreReader, *, op_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Everything a reader can see of a store (the append-only logs left out)."""
    latest = await store.latest_run()
    runs: list[Any] = []
    for run_id in range(1, (latest or 0) + 1):
        info = await store.run_info(run_id)
        runs.append((info, await store.run_rejects(run_id), await store.compare_run(run_id),
                     await store.run_states(run_id)))
    return {
        "jobs": await all_jobs(store),
        "counts": await store.counts(),
        "ops": (await store.ops_count(), [await store.get_op(k) for k in op_keys]),
        "workers": await store.workers(),
        "runs": runs,
        "meta": await store.get_meta("last_reconcile"),
        "leases": await store.active_leases(limit=1000),
        "next_due": await store.next_due(),
    }


async def prepare_history(store: Store) -> tuple[int, dict[int, Job], list[NewJob]]:
    """The same history for every store of the idempotency test."""
    run_id = (await store.apply([StartRun("run-1", "manifest.csv", {"limit": 8}, Reply())],
                                now=T0)).results[0]
    assert isinstance(run_id, int)
    jobs = [new_job({"n": i}, line=i + 1, lease_seconds=5.0 if i == 7 else None)
            for i in range(8)]
    # The same token in both stores: a job row records the submit that created it.
    await store.apply([Submit(tuple(jobs), run_id=run_id, token=1)], now=T0)
    leased = {int(j.identity["n"]): j for j in await lease(store, 8, now=T0 + 1)}
    assert sorted(leased) == list(range(8))
    j6 = leased[6]
    await store.apply([Outcome(j6.id, j6.fence, OutcomeKind.FAILED, error="gone")], now=T0 + 2)
    return run_id, leased, jobs


def mixed_batch(run_id: int, leased: dict[int, Job], jobs: list[NewJob]) -> list[SyncerMsg]:
    j = leased
    more = tuple(new_job({"n": i}, line=i + 1) for i in range(8, 11))
    return [
        StartRun("run-1", "manifest.csv", {"limit": 8}, Reply()),  # redelivered: same id
        Submit((*more, jobs[0]), run_id=run_id),  # one duplicate
        Stage(j[0].id, j[0].fence, "downloaded"),
        Effect(j[0].id, j[0].fence, op_key("fetch", j[0].key, part=1), "fetch", '{"bytes":10}'),
        Outcome(j[0].id, j[0].fence, OutcomeKind.SUCCEEDED, result='{"ok":true}'),
        Outcome(j[1].id, j[1].fence, OutcomeKind.RETRY, error="HTTP 503", retry_at=T0 + 100),
        Outcome(j[2].id, j[2].fence, OutcomeKind.SKIPPED, error="duplicate content"),
        Outcome(j[3].id, j[3].fence, OutcomeKind.FAILED, error="HTTP 404"),
        Renew(((j[4].id, j[4].fence, 60.0),)),
        Release(j[5].id, j[5].fence),
        Requeue(keys=(j[6].key,)),
        ReapExpired(((j[7].id, j[7].fence),)),
        RegisterWorker("boot-1", 4242, "host-a", Reply()),
        RunRejects(run_id, ((20, "invalid JSON", "{oops"), (21, "missing field", "{}"))),
        FinishRun(run_id, "finished"),
    ]


# --- priorities and limits per key ---------------------------------------------------------


def steered_job(n: int, *, priority: int = 0, key: str | None = None) -> NewJob:
    """Job ``{"n": n}`` with a priority and a limit key."""
    return dataclasses.replace(new_job({"n": n}), priority=priority, limit_key=key)


def lease_order(n: int, limits: dict[str, LimitRule] | None = None) -> LeaseOrder:
    return LeaseOrder(n=n, owner="w1", boot_id="boot-1", default_lease_seconds=60.0,
                      limits=limits)


async def lease_with(store: Store, n: int, *, now: float,
                     limits: dict[str, LimitRule] | None = None,
                     msgs: list[Any] | None = None) -> ApplyResult:
    """Apply ``msgs`` and lease up to ``n`` (with ``limits``, as a runtime declaring them)."""
    return await store.apply(msgs or [], now=now, lease=lease_order(n, limits))


def numbers(jobs: list[Job]) -> list[int]:
    """The ``n`` of leased jobs, in the order leased."""
    return [int(j.identity["n"]) for j in jobs]

