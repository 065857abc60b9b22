"""Lease-reaper: expired leases go to the syncer as one `ReapExpired` per period.

Leases are granted in a fresh `MemoryStore` at ``T0``; the reaper runs on a `FakeClock`
that starts at ``T0`` too, so a lease expires exactly when the test moves the clock past
it (the wall clock is far later than ``T0``: a reaper that read it would see every lease
expired at once). The test plays the syncer: it reads the syncer mailbox and, where a
test needs the reaped jobs gone, applies the message to the store itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from syncward.actors.lease_reaper import LeaseReaper
from syncward.actors.mailbox import Mailbox
from syncward.errors import StoreUnavailable
from syncward.jobs import Job, JobState, canonical_identity, job_key
from syncward.messages import LeaseOrder, NewJob, ReapExpired, Submit, SyncerMsg
from syncward.store.memory import MemoryStore
from syncward.testing import FakeClock

T0 = 1_700_000_000.0
EVERY = 5.0


async def leased(store: MemoryStore, *lease_seconds: float) -> list[Job]:
    """Submit one job per entry of ``lease_seconds`` and lease them all at ``T0``."""
    idents = [{"n": i} for i in range(len(lease_seconds))]
    new = tuple(NewJob(key=job_key(ident), identity=canonical_identity(ident),
                       payload=json.dumps({}), max_attempts=3, lease_seconds=seconds)
                for ident, seconds in zip(idents, lease_seconds, strict=True))
    await store.apply([Submit(new)], now=T0)
    order = LeaseOrder(n=len(new), owner="w1", boot_id="boot-1", default_lease_seconds=60.0)
    jobs = (await store.apply([], now=T0, lease=order)).leased
    assert len(jobs) == len(new)
    by_id = {tuple(j.identity.items()): j for j in jobs}
    return [by_id[tuple(ident.items())] for ident in idents]


def fenced(*jobs: Job) -> ReapExpired:
    return ReapExpired(tuple((j.id, j.fence) for j in jobs))


class FlakyReader:
    """The store's read side, whose ``expired_leases`` fails the next ``failures`` times."""

    def __init__(self, store: MemoryStore, failures: int) -> None:
        self._store = store
        self.failures = failures
        self.calls = 0

    async def expired_leases(self, now: float, *, limit: int) -> list[tuple[int, int]]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("read", OSError("disk I/O error"))
        return await self._store.expired_leases(now, limit=limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Rig:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.syncer: Mailbox[SyncerMsg] = Mailbox("syncer", 100)
        self.clock = FakeClock(T0)

    def reaper(self, *, store: Any = None, batch: int = 1000) -> LeaseReaper:
        return LeaseReaper(store=store if store is not None else self.store,
                           syncer=self.syncer, clock=self.clock, every=EVERY, batch=batch)

    async def advance(self, seconds: float) -> list[SyncerMsg]:
        """Move the clock, let the reaper act, and return what it sent to the syncer."""
        self.clock.advance(seconds)
        await anyio.wait_all_tasks_blocked()
        return self.syncer.clear()


@asynccontextmanager
async def running(reaper: LeaseReaper) -> AsyncIterator[None]:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(reaper.run)
            await anyio.wait_all_tasks_blocked()
            yield
            reaper.request_stop()


async def test_it_sends_nothing_while_no_lease_has_expired() -> None:
    rig = Rig()
    await leased(rig.store, 60.0)
    reaper = rig.reaper()
    async with running(reaper):
        for _ in range(5):
            assert await rig.advance(EVERY) == []
    assert reaper.reaped_batches == 0


async def test_it_sends_nothing_from_an_empty_store() -> None:
    rig = Rig()
    reaper = rig.reaper()
    async with running(reaper):
        assert await rig.advance(EVERY) == []
        assert await rig.advance(1000 * EVERY) == []
    assert reaper.reaped_batches == 0


async def test_it_reads_on_its_period_of_the_clock() -> None:
    rig = Rig()
    (job,) = await leased(rig.store, 1.0)
    async with running(rig.reaper()):
        assert await rig.advance(EVERY - 0.5) == []  # expired, but not yet time to look
        assert await rig.advance(0.5) == [fenced(job)]


async def test_expired_leases_go_to_the_syncer_as_one_message_per_period() -> None:
    rig = Rig()
    a, b, c, _ = await leased(rig.store, 10.0, 20.0, 20.0, 30.0)
    reaper = rig.reaper()
    async with running(reaper):
        assert await rig.advance(EVERY) == []
        sent = await rig.advance(EVERY)  # T0+10: `a` expires now
        assert sent == [fenced(a)]
        await rig.store.apply(sent, now=rig.clock.now())  # the syncer requeues it
        assert await rig.advance(EVERY) == []
        sent = await rig.advance(EVERY)  # T0+20
        assert sent == [fenced(b, c)]
        assert await rig.advance(EVERY) == [fenced(b, c)]  # not applied yet: sent again
    assert reaper.reaped_batches == 3
    assert (await rig.store.counts())[JobState.LEASED] == 3  # `d` was never sent


async def test_one_message_holds_at_most_batch_leases_oldest_first() -> None:
    rig = Rig()
    _, b, c = await leased(rig.store, 3.0, 1.0, 2.0)
    async with running(rig.reaper(batch=2)):
        assert await rig.advance(EVERY) == [fenced(b, c)]


async def test_reap_once_returns_how_many_it_sent() -> None:
    rig = Rig()
    a, _ = await leased(rig.store, 1.0, 100.0)
    reaper = rig.reaper()
    assert await reaper.reap_once() == 0
    rig.clock.advance(1.0)
    assert await reaper.reap_once() == 1
    assert rig.syncer.clear() == [fenced(a)]


async def test_a_store_read_failure_is_logged_and_retried_next_period(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    (job,) = await leased(rig.store, 1.0)
    reader = FlakyReader(rig.store, failures=2)
    reaper = rig.reaper(store=reader)
    with caplog.at_level(logging.WARNING, logger="syncward.reaper"):
        async with running(reaper):
            assert await rig.advance(EVERY) == []
            assert await rig.advance(EVERY) == []
            assert reader.calls == 2  # once per period, no retrying in a loop
            assert await rig.advance(EVERY) == [fenced(job)]
    warnings = [r for r in caplog.records if r.name == "syncward.reaper"
                and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "disk I/O error" in warnings[0].getMessage()
    assert reaper.reaped_batches == 1
