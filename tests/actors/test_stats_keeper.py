"""Stats-keeper: loaded from a reset snapshot, updated by committed deltas, recounted.

The stats-keeper is driven through its two mailboxes directly, with no runtime and no
syncer: the test plays the syncer, reading what the stats-keeper sends to the syncer
mailbox and sending it `StatsUpdate`s. Time is a `FakeClock`; steps are ordered by
`anyio.wait_all_tasks_blocked`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest

from syncward.actors.mailbox import Mailbox
from syncward.actors.stats_keeper import Stats, StatsKeeper
from syncward.actors.syncer import StatsUpdate
from syncward.errors import InjectedCrash
from syncward.jobs import JobState
from syncward.messages import RecordEvent, Recount, SyncerMsg
from syncward.testing import FakeClock, Faults

T0 = 1_700_000_000.0
CONSUMER = "stats-keeper"
P, L, S, F = JobState.PLANNED, JobState.LEASED, JobState.SUCCEEDED, JobState.FAILED


def counts(**by_state: int) -> dict[JobState, int]:
    """Every state, zero unless given: what the store's count by state returns."""
    out = dict.fromkeys(JobState, 0)
    out.update({JobState(k): v for k, v in by_state.items()})
    return out


@dataclass
class Rig:
    stats: Stats = field(default_factory=Stats)
    updates: Mailbox[StatsUpdate] = field(default_factory=lambda: Mailbox("stats", 100))
    syncer: Mailbox[SyncerMsg] = field(default_factory=lambda: Mailbox("syncer", 100))
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))

    def keeper(self, *, recount_every: float = 1000.0, faults: Faults | None = None
               ) -> StatsKeeper:
        return StatsKeeper(stats=self.stats, mailbox=self.updates, syncer=self.syncer,
                           clock=self.clock, recount_every=recount_every, faults=faults)

    def sent(self) -> list[SyncerMsg]:
        """What the stats-keeper has sent to the syncer since the last look."""
        return self.syncer.clear()

    async def deliver(self, update: StatsUpdate) -> None:
        """Send ``update`` as the syncer would, and wait until it has been handled."""
        await self.updates.send(update)
        await anyio.wait_all_tasks_blocked()

    async def load(self, snapshot: dict[JobState, int]) -> None:
        """Answer the start-up ``Recount(reset=True)``."""
        await self.deliver(StatsUpdate(deltas={}, counts=snapshot, reset=True))
        assert self.stats.loaded


@asynccontextmanager
async def running(keeper: StatsKeeper) -> AsyncIterator[None]:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(keeper.run)
            await anyio.wait_all_tasks_blocked()
            yield
            keeper.request_stop()


async def test_it_asks_for_a_reset_recount_at_start_and_is_not_loaded_until_it_comes() -> None:
    rig = Rig()
    async with running(rig.keeper()):
        assert rig.sent() == [Recount(reset=True)]
        assert not rig.stats.loaded
        await rig.load(counts(planned=3, succeeded=7))
        assert rig.stats.counts == counts(planned=3, succeeded=7)
        assert rig.stats.snapshot().total == 10
        assert rig.sent() == []


async def test_wait_loaded_returns_only_once_the_snapshot_has_arrived() -> None:
    rig = Rig()
    loaded = anyio.Event()

    async def wait() -> None:
        await rig.stats.wait_loaded()
        loaded.set()

    async with running(rig.keeper()), anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await rig.deliver(StatsUpdate(deltas={P: 1}))
        assert not loaded.is_set()
        await rig.load(counts(planned=1))
        assert loaded.is_set()


async def test_deltas_from_before_the_snapshot_are_discarded() -> None:
    rig = Rig()
    async with running(rig.keeper()):
        await rig.deliver(StatsUpdate(deltas={P: 5}))
        await rig.deliver(StatsUpdate(deltas={P: -1, L: 1}, counts=counts(planned=9)))
        assert not rig.stats.loaded
        assert rig.stats.counts == counts()
        assert rig.stats.drift_checks == 0
        # The snapshot's own batch deltas are inside the snapshot too.
        await rig.deliver(StatsUpdate(deltas={P: 2}, counts=counts(planned=4, leased=1),
                                      reset=True))
        assert rig.stats.counts == counts(planned=4, leased=1)
        assert rig.updates.in_flight(CONSUMER) == 0  # discarded updates are acked too


async def test_deltas_after_the_snapshot_are_applied() -> None:
    rig = Rig()
    async with running(rig.keeper()):
        assert rig.sent() == [Recount(reset=True)]
        await rig.load(counts(planned=4))
        changed = rig.stats.changed
        await rig.deliver(StatsUpdate(deltas={P: -2, L: 2}))
        assert changed.is_set()  # watchers of the stats are told
        await rig.deliver(StatsUpdate(deltas={L: -1, S: 1}))
        await rig.deliver(StatsUpdate(deltas={L: -1, F: 1, P: 3}))
        assert rig.stats.counts == counts(planned=5, succeeded=1, failed=1)
        assert rig.stats.snapshot().active == 5
        assert rig.updates.in_flight(CONSUMER) == 0
        assert rig.sent() == []


async def test_a_recount_is_asked_for_every_recount_every_seconds_of_the_clock() -> None:
    rig = Rig()
    async with running(rig.keeper(recount_every=30.0)):
        assert rig.sent() == [Recount(reset=True)]
        rig.clock.advance(29.5)
        await anyio.wait_all_tasks_blocked()
        assert rig.sent() == []
        rig.clock.advance(0.5)
        await anyio.wait_all_tasks_blocked()
        assert rig.sent() == [Recount()]
        rig.clock.advance(29.5)
        await anyio.wait_all_tasks_blocked()
        assert rig.sent() == []
        rig.clock.advance(0.5)
        await anyio.wait_all_tasks_blocked()
        assert rig.sent() == [Recount()]


async def test_a_recount_that_agrees_after_the_batch_deltas_shows_no_drift() -> None:
    rig = Rig()
    async with running(rig.keeper()):
        await rig.load(counts(planned=4))
        rig.sent()
        # The recount is taken at the end of its batch: after this batch's deltas.
        await rig.deliver(StatsUpdate(deltas={P: -1, S: 1},
                                      counts=counts(planned=3, succeeded=1)))
        assert rig.stats.drift_checks == 1
        assert rig.stats.drift_total == 0
        assert not any(rig.stats.last_drift.values())
        assert rig.stats.counts == counts(planned=3, succeeded=1)
        assert rig.sent() == []


async def test_a_recount_that_differs_corrects_the_counts_and_records_drift(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    async with running(rig.keeper()):
        await rig.load(counts(planned=10, succeeded=5))
        rig.sent()
        rig.clock.advance(7.0)
        with caplog.at_level(logging.ERROR, logger="syncward.stats"):
            await rig.deliver(StatsUpdate(deltas={P: -1, S: 1},
                                          counts=counts(planned=7, succeeded=7)))
        drift = counts(planned=2, succeeded=-1)
        assert rig.stats.counts == counts(planned=7, succeeded=7)
        assert (rig.stats.drift_checks, rig.stats.drift_total) == (1, 3)
        assert rig.stats.last_drift == drift
        assert rig.sent() == [RecordEvent(kind="stats_drift", at=T0 + 7.0, detail={
            "off": 3, "drift": {"planned": 2, "succeeded": -1}})]
        assert "stats drift" in caplog.text
        snap = rig.stats.snapshot()
        assert snap.as_dict()["last_drift"] == {"planned": 2, "succeeded": -1}

        await rig.deliver(StatsUpdate(deltas={}, counts=counts(planned=7, succeeded=8)))
        assert (rig.stats.drift_checks, rig.stats.drift_total) == (2, 4)
        assert rig.stats.last_drift == counts(succeeded=-1)
        assert [type(m) for m in rig.sent()] == [RecordEvent]
        await rig.deliver(StatsUpdate(deltas={}, counts=counts(planned=7, succeeded=8)))
        assert (rig.stats.drift_checks, rig.stats.drift_total) == (3, 4)
        assert rig.sent() == []


async def test_a_restarted_stats_keeper_reports_nothing_until_it_has_reloaded() -> None:
    rig = Rig()
    async with running(rig.keeper()):
        await rig.load(counts(planned=4))
        await rig.deliver(StatsUpdate(deltas={P: -1, S: 1}))
    assert rig.sent() == [Recount(reset=True)]
    assert rig.stats.loaded  # the runtime's Stats outlive the incarnation

    reloaded = anyio.Event()

    async def wait() -> None:
        await rig.stats.wait_loaded()
        reloaded.set()

    async with running(rig.keeper()), anyio.create_task_group() as tg:
        assert not rig.stats.loaded
        assert rig.sent() == [Recount(reset=True)]
        tg.start_soon(wait)
        await rig.deliver(StatsUpdate(deltas={P: -1, L: 1}))  # inside the coming snapshot
        assert not rig.stats.loaded
        assert not reloaded.is_set()
        await rig.load(counts(planned=2, leased=1, succeeded=1))
        assert reloaded.is_set()
        await rig.deliver(StatsUpdate(deltas={L: -1, S: 1}))
        assert rig.stats.counts == counts(planned=2, succeeded=2)


async def test_a_crash_while_applying_leaves_the_update_in_flight_for_redelivery() -> None:
    rig = Rig()
    faults = Faults()

    async def crash() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.keeper(faults=faults).run)
            await rig.load(counts(planned=1))
            faults.arm("stats.apply")
            await rig.updates.send(StatsUpdate(deltas={P: -1, S: 1}))

    with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as info:
        await crash()
    assert info.group_contains(InjectedCrash)
    assert rig.updates.in_flight(CONSUMER) == 1
    assert rig.stats.counts == counts(planned=1)


async def test_closing_its_mailbox_ends_the_stats_keeper() -> None:
    rig = Rig()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(rig.keeper(recount_every=1.0).run)
            await anyio.wait_all_tasks_blocked()
            rig.updates.close()
    assert rig.sent() == [Recount(reset=True)]
