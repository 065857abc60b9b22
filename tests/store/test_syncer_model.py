"""The syncer against a plain-Python model, under injected commit failures and restarts.

Random sequences of submits, stage reports, outcomes and heartbeats go through a real
syncer into a real store, once per backend of the contract suite. Commits fail at random
— before the transaction (rolled back) or after it (committed, but the syncer is told it
failed: the outcome is unknown and the retry must be harmless) — and the syncer is
restarted at random while it may be mid-batch. After every acknowledged message the
store must already show it, and at the end the store must equal the model: nothing lost,
nothing applied twice.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import BACKENDS, POSTGRES_URL, all_jobs, drop_schemas, require_postgres

from syncward.actors.mailbox import Mailbox
from syncward.actors.syncer import LeaseControl, StatsUpdate, Syncer, SyncerConfig, SyncerHealth
from syncward.errors import StoreUnavailable
from syncward.jobs import Job, canonical_identity, job_key
from syncward.messages import (
    Accepted,
    ApplyResult,
    LeaseOrder,
    NewJob,
    Outcome,
    OutcomeKind,
    Renew,
    Reply,
    Stage,
    Submit,
    SubmitResult,
    SyncerMsg,
)
from syncward.store import open_store
from syncward.store.base import Store, StoreReader
from syncward.store.memory import MemoryStore
from syncward.testing import FakeClock

MAX_ATTEMPTS = 2
CONFIG = SyncerConfig(max_batch=7, max_delay=0.0, retry_initial=0.0005, retry_max=0.002,
                      idle_poll=0.01)


class FlakyStore:
    """Wraps a store; the next apply may fail before or after the real transaction."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.fail_before = 0
        self.fail_after = 0

    async def apply(self, batch: Sequence[SyncerMsg], **kw: Any) -> ApplyResult:
        if self.fail_before:
            self.fail_before -= 1
            raise StoreUnavailable("commit", OSError("injected: before commit"))
        result = await self.inner.apply(batch, **kw)
        if self.fail_after:
            self.fail_after -= 1
            raise StoreUnavailable("commit", OSError("injected: outcome unknown"))
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class ModelJob:
    state: str = "planned"
    attempts: int = 0
    fence: int = 0
    stage: str | None = None


@dataclass
class Model:
    jobs: dict[int, ModelJob] = field(default_factory=dict)

    def lease(self, job: Job) -> None:
        ident = int(job.identity["id"])
        m = self.jobs[ident]
        assert m.state == "planned", f"leased job {ident} was {m.state} in the model"
        m.state, m.attempts, m.fence = "leased", m.attempts + 1, m.fence + 1
        assert (job.fence, job.attempt) == (m.fence, m.attempts)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.lists(st.integers(0, 12), min_size=1, max_size=5)),
        st.tuples(st.just("outcome"), st.integers(0, 20),
                  st.sampled_from(["succeeded", "retry", "failed", "skipped"])),
        st.tuples(st.just("stage"), st.integers(0, 20), st.sampled_from(["A", "B"])),
        st.tuples(st.just("heartbeat"), st.integers(0, 20)),
        st.tuples(st.just("fail"), st.sampled_from(["before", "after"])),
        st.tuples(st.just("restart")),
    ),
    min_size=1, max_size=25,
)


async def db_state(store: StoreReader) -> dict[int, tuple[str, int, int, str | None]]:
    return {int(j.identity["id"]): (str(j.state), j.attempts, j.fence, j.stage)
            for j in await all_jobs(store)}


def store_url(backend: str, tmp: str) -> str:
    if backend == "memory":
        return f"memory://model-{uuid.uuid4().hex}"
    if backend == "postgres":
        require_postgres()
        return f"{POSTGRES_URL}?schema=model_{uuid.uuid4().hex}"
    return f"sqlite:///{tmp}/jobs.db"


async def close(store: Store) -> None:
    await store.aclose()
    if store.url.startswith("memory://"):
        MemoryStore.forget(store.url[len("memory://"):])
    if "?schema=model_" in store.url:
        await drop_schemas(store.url.rsplit("=", 1)[1])


def model_state(model: Model) -> dict[int, tuple[str, int, int, str | None]]:
    return {i: (m.state, m.attempts, m.fence, m.stage) for i, m in model.jobs.items()}


def new_job(i: int) -> NewJob:
    return NewJob(key=job_key({"id": i}), identity=canonical_identity({"id": i}), payload="{}",
                  max_attempts=MAX_ATTEMPTS)


async def scenario(url: str, steps: list[tuple[Any, ...]]) -> None:
    inner = await open_store(url)
    store = FlakyStore(inner)
    clock = FakeClock()
    mailbox: Mailbox[SyncerMsg] = Mailbox("syncer", 100)
    work: Mailbox[Job] = Mailbox("work", 3)
    stats: Mailbox[StatsUpdate] = Mailbox("stats", 100_000)
    control = LeaseControl(owner="w", boot_id="b", default_lease_seconds=30.0)
    model = Model()
    held: list[Job] = []

    def take_leased() -> None:
        while len(work):
            job = work._take("test", 1)[0]
            model.lease(job)
            held.append(job)

    async def roundtrip(msg: SyncerMsg, reply: Reply[Any]) -> Any:
        await mailbox.send(msg)
        return await reply.wait()

    try:
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def run_syncer(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                nonlocal scope
                with anyio.CancelScope() as scope:
                    syncer = Syncer(store=store, mailbox=mailbox, work=work,  # type: ignore[arg-type]
                                    stats=stats, health=SyncerHealth(), control=control,
                                    clock=clock, config=CONFIG)
                    await syncer.run(task_status=task_status)

            await tg.start(run_syncer)
            for step in steps:
                kind = step[0]
                if kind == "submit":
                    for i in step[1]:
                        model.jobs.setdefault(i, ModelJob())
                    reply: Reply[SubmitResult] = Reply()
                    await roundtrip(Submit(tuple(new_job(i) for i in step[1]), reply=reply),
                                    reply)
                    take_leased()
                    assert set(step[1]) <= set(await db_state(inner))  # acknowledged => committed
                elif kind in ("outcome", "stage", "heartbeat") and held:
                    job = held[step[1] % len(held)]
                    ident = int(job.identity["id"])
                    m = model.jobs[ident]
                    r: Reply[Any] = Reply()
                    if kind == "heartbeat":
                        await mailbox.send(Renew(((job.id, job.fence, 30.0),)))
                        continue
                    if kind == "stage":
                        res = await roundtrip(Stage(job.id, job.fence, step[2], r), r)
                        assert isinstance(res, Accepted)
                        m.stage = step[2]
                        take_leased()
                    else:
                        outcome = OutcomeKind(step[2])
                        res = await roundtrip(Outcome(job.id, job.fence, outcome, result="1",
                                                      error="e", retry_at=clock.now(),
                                                      reply=r), r)
                        assert isinstance(res, Accepted), res
                        held.remove(job)
                        work.ack_item("test", job)
                        if outcome is OutcomeKind.RETRY:
                            m.state = "failed" if m.attempts >= MAX_ATTEMPTS else "planned"
                        else:
                            m.state = outcome.value
                        take_leased()
                    # Acknowledged => committed. Reading yields to the event loop, so a
                    # retried job may already be leased again by a later commit: then its
                    # fence and attempts are one past the model's (it went through planned).
                    state, attempts, fence, _ = (await db_state(inner))[ident]
                    assert (state == m.state or (
                        m.state == "planned" and state == "leased"
                        and (attempts, fence) == (m.attempts + 1, m.fence + 1)))
                elif kind == "fail":
                    if step[1] == "before":
                        store.fail_before += 1
                    else:
                        store.fail_after += 1
                elif kind == "restart":
                    scope.cancel()  # possibly mid-batch, possibly mid-commit
                    await anyio.wait_all_tasks_blocked()
                    mailbox.redeliver("syncer")
                    await tg.start(run_syncer)
            control.enabled = False
            r2: Reply[SubmitResult] = Reply()
            await roundtrip(Submit((), reply=r2), r2)  # every lease so far is handed out
            take_leased()
            assert await db_state(inner) == model_state(model)
            scope.cancel()
    finally:
        await close(inner)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=ops)
@pytest.mark.parametrize("backend", BACKENDS)
def test_syncer_equals_model_under_failures_and_restarts(backend: str,
                                                         steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(scenario, store_url(backend, tmp), steps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lease_order_is_not_lost_when_commit_fails_after_applying(backend: str) -> None:
    """Sanity for FlakyStore itself: 'after' really committed, 'before' really did not."""

    async def main(url: str) -> None:
        inner = await open_store(url)
        store = FlakyStore(inner)
        try:
            store.fail_after = 1
            try:
                await store.apply([Submit((new_job(1),))], now=1.0)
            except StoreUnavailable:
                pass
            store.fail_before = 1
            try:
                await store.apply([Submit((new_job(2),))], now=1.0,
                                  lease=LeaseOrder(1, "w", "b", 30.0))
            except StoreUnavailable:
                pass
            assert set(await db_state(inner)) == {1}
        finally:
            await close(inner)

    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, store_url(backend, tmp))
