"""Lease-renewer: every lease this process holds is renewed, batched, before it expires.

The renewer reads the work mailbox (jobs queued for a downloader or in one's hands) and
sends `Renew` to the syncer mailbox; the test plays both the syncer (it reads what was
sent and, where it matters, keeps each lease's expiry as a commit would) and the
downloaders (they take and ack jobs). Time is a `FakeClock` starting at ``T0``, when
every job here was leased; steps are ordered by `anyio.wait_all_tasks_blocked`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from syncward.actors.lease_renewer import LeaseRenewer
from syncward.actors.mailbox import Mailbox
from syncward.actors.syncer import LeaseControl
from syncward.jobs import Job
from syncward.messages import Renew, SyncerMsg
from syncward.testing import FakeClock

T0 = 1_700_000_000.0
DEFAULT = 30.0


def job(job_id: int, lease_seconds: float = DEFAULT, *, fence: int = 1,
        leased_at: float = T0) -> Job:
    return Job(id=job_id, key=f"{job_id:064x}", identity={"n": job_id}, payload={},
               attempt=1, max_attempts=3, stage=None, fence=fence,
               lease_seconds=lease_seconds, lease_expires_at=leased_at + lease_seconds,
               timeout=None)


class Rig:
    def __init__(self, *, with_control: bool = False) -> None:
        self.work: Mailbox[Job] = Mailbox("work", 100)
        self.syncer: Mailbox[SyncerMsg] = Mailbox("syncer", 100)
        self.clock = FakeClock(T0)
        self.control = (LeaseControl(owner="w1", boot_id="boot-1",
                                     default_lease_seconds=DEFAULT)
                        if with_control else None)

    def renewer(self) -> LeaseRenewer:
        return LeaseRenewer(work=self.work, syncer=self.syncer, clock=self.clock,
                            default_lease_seconds=DEFAULT, control=self.control)

    def hold(self, *jobs: Job) -> None:
        for j in jobs:
            self.work.send_nowait(j)

    async def advance(self, seconds: float) -> list[SyncerMsg]:
        """Move the clock, let the renewer act, and return what it sent to the syncer."""
        self.clock.advance(seconds)
        await anyio.wait_all_tasks_blocked()
        return self.syncer.clear()


@asynccontextmanager
async def running(renewer: LeaseRenewer) -> AsyncIterator[None]:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(renewer.run)
            await anyio.wait_all_tasks_blocked()
            yield
            renewer.request_stop()


def renew(*jobs: Job) -> Renew:
    return Renew(tuple((j.id, j.fence, j.lease_seconds) for j in jobs))


@pytest.mark.parametrize("with_control", [False, True], ids=["alone", "with-control"])
async def test_a_held_lease_is_renewed_once_before_it_expires(with_control: bool) -> None:
    rig = Rig(with_control=with_control)
    a = job(1)
    rig.hold(a)
    renewer = rig.renewer()
    async with running(renewer):
        sent = await rig.advance(10.0)
        sent += await rig.advance(10.0)  # T0+20: ten seconds left on the lease
    assert sent == [renew(a)]
    assert renewer.renewals == 1


async def test_renewed_leases_never_lapse_and_are_not_renewed_on_every_tick() -> None:
    rig = Rig()
    a, b = job(1), job(2, 45.0, fence=7)
    rig.hold(a, b)
    expiry = {j.id: j.lease_expires_at for j in (a, b)}
    renewals = 0
    async with running(rig.renewer()):
        for _ in range(60):  # ten minutes of the clock, in 10-second ticks
            sent = await rig.advance(10.0)
            now = rig.clock.now()
            assert all(at > now for at in expiry.values()), "a lease lapsed"
            for msg in sent:
                assert isinstance(msg, Renew)
                for job_id, _, seconds in msg.items:
                    expiry[job_id] = now + seconds  # what the syncer's commit does
                    renewals += 1
    # A lease is renewed once it is past a third of its time, so not on two ticks running.
    assert renewals <= 2 * 60 // 2


async def test_jobs_in_a_downloaders_hands_are_renewed_and_acked_ones_are_not() -> None:
    rig = Rig()
    queued, running_job, finished = job(1), job(2), job(3)
    rig.hold(running_job, finished, queued)
    assert await rig.work.receive("downloader-1") is running_job
    assert await rig.work.receive("downloader-2") is finished
    rig.work.ack("downloader-2")
    async with running(rig.renewer()):
        sent = await rig.advance(10.0)
        sent += await rig.advance(10.0)
    assert len(sent) == 1  # one message for every renewal due on a tick
    assert isinstance(sent[0], Renew)
    assert sorted(sent[0].items) == sorted(renew(queued, running_job).items)


async def test_each_job_is_renewed_by_its_own_lease_seconds() -> None:
    rig = Rig()
    short, long = job(1, DEFAULT), job(2, 3 * DEFAULT)
    rig.hold(short, long)
    async with running(rig.renewer()):
        assert await rig.advance(10.0) == []
        assert await rig.advance(10.0) == [renew(short)]  # T0+20: `long` has 70 s left
        assert await rig.advance(10.0) == []
        assert await rig.advance(10.0) == [renew(short, long)]  # T0+40: 50 s < 2/3 of 90


async def test_it_ticks_at_a_third_of_the_shortest_lease_it_holds() -> None:
    rig = Rig()
    brief = job(1, 6.0)  # expires at T0+6, long before the default tick of 10 s
    rig.hold(brief)
    async with running(rig.renewer()):
        assert await rig.advance(2.0) == []
        assert await rig.advance(2.0) == [renew(brief)]  # T0+4: before T0+6


async def test_a_job_with_a_shorter_lease_handed_out_wakes_it_early() -> None:
    rig = Rig(with_control=True)
    assert rig.control is not None
    async with running(rig.renewer()):  # holds nothing: asleep for DEFAULT/3 = 10 s
        assert await rig.advance(1.0) == []
        brief = job(1, 3.0, leased_at=rig.clock.now())  # expires at T0+4
        rig.hold(brief)
        wake = rig.control.renew_wake
        wake.set()  # what the syncer does when it hands out a lease shorter than default
        await anyio.wait_all_tasks_blocked()
        assert rig.control.renew_wake is not wake  # a fresh event for the next wake-up
        assert not rig.control.renew_wake.is_set()
        assert rig.syncer.clear() == []  # nothing due yet: 3 s left of 3
        assert await rig.advance(1.0) == []
        assert await rig.advance(1.0) == [renew(brief)]  # T0+3: before T0+4


async def test_a_restarted_renewer_renews_early_rather_than_late() -> None:
    rig = Rig()
    a = job(1)
    rig.hold(a)
    async with running(rig.renewer()):
        await rig.advance(10.0)
        assert await rig.advance(10.0) == [renew(a)]  # T0+20: the lease now ends at T0+50
    async with running(rig.renewer()):  # it has forgotten that renewal
        assert await rig.advance(10.0) == [renew(a)]  # T0+30 by the job's own expiry
        assert await rig.advance(10.0) == []


async def test_it_sends_nothing_while_it_holds_nothing() -> None:
    rig = Rig()
    renewer = rig.renewer()
    async with running(renewer):
        for _ in range(10):
            assert await rig.advance(DEFAULT) == []
    assert renewer.renewals == 0


async def test_a_refused_renewal_ends_the_lease_here_and_it_is_not_renewed_again() -> None:
    from syncward.actors.attempts import Attempts
    from syncward.messages import NotRenewed

    rig = Rig()
    gone, kept = job(1), job(2)
    rig.hold(gone, kept)
    attempts = Attempts(rig.work)
    renewer = LeaseRenewer(work=rig.work, syncer=rig.syncer, clock=rig.clock,
                           default_lease_seconds=DEFAULT, attempts=attempts)
    async with running(renewer):
        sent = await rig.advance(10.0)
        sent += await rig.advance(10.0)
        (msg,) = sent
        assert isinstance(msg, Renew) and msg.reply is not None
        assert sorted(msg.items) == sorted(renew(gone, kept).items)
        msg.reply.set(NotRenewed("1 lease(s) were no longer held",
                                 leases=((gone.id, gone.fence),)))  # what the commit says
        await anyio.wait_all_tasks_blocked()
        assert attempts.ended(gone.id, gone.fence)
        assert not attempts.ended(kept.id, kept.fence)
        later = await rig.advance(10.0)
        later += await rig.advance(10.0)
        assert await rig.work.receive("downloader-1") is gone
        assert not attempts.slot("downloader-1").begin(gone)  # taken, never started
        rig.work.ack("downloader-1")
    assert [m.items for m in later if isinstance(m, Renew)] == [renew(kept).items]
    assert renewer.lost == 1
    assert not attempts.ended(gone.id, gone.fence)  # forgotten once dropped
