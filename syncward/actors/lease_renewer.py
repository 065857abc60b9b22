"""The lease-renewer: keeps every lease this process holds alive, from its own task.

Owns: the renewal times it has sent (lost on restart, which only makes the next
renewal come early). Reads the work mailbox's pending jobs (queued for a downloader or
in a downloader's hands) — exactly the leases this process holds — and, on each tick,
sends one batched `Renew` to the syncer for those past a third of their own lease time.
It sleeps a third of the shortest lease it holds (or of the default), and is woken early
when the syncer hands out a job whose lease is shorter than the default.
A handler that blocks or runs long cannot starve renewal, and each job is renewed by its
own ``lease_seconds``, not by one global maximum.

A renewal the store refuses (`NotRenewed`: the lease was cancelled, by another process
too on a shared store, reaped or reconciled) means the lease is gone: with an `Attempts`
registry, the renewer hands those leases to it, which cancels the handler running under
one, or keeps a waiting job from starting (see `syncward.actors.attempts`). The reply is
awaited in a task of the renewer's own, so a slow commit never delays the next tick.
Leases that have ended so are not renewed again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from syncward.actors._periodic import LoopActor
from syncward.messages import Accepted, NotRenewed, Rejected, Renew, Reply, SyncerMsg

if TYPE_CHECKING:
    from syncward.actors.attempts import Attempts
    from syncward.actors.mailbox import Mailbox
    from syncward.actors.syncer import LeaseControl
    from syncward.clock import Clock
    from syncward.jobs import Job

__all__ = ["LeaseRenewer"]

_MIN_TICK = 0.01


class LeaseRenewer(LoopActor):
    """One incarnation of the lease-renewer actor."""

    def __init__(self, *, work: Mailbox[Job], syncer: Mailbox[SyncerMsg], clock: Clock,
                 default_lease_seconds: float, control: LeaseControl | None = None,
                 attempts: Attempts | None = None) -> None:
        super().__init__()
        self.control = control
        self.attempts = attempts
        self._replies: anyio.abc.TaskGroup | None = None
        self.lost = 0  # leases whose renewal the store refused
        self.work = work
        self.syncer = syncer
        self.clock = clock
        self.default_lease_seconds = default_lease_seconds
        self._expiry: dict[tuple[int, int], float] = {}
        self.renewals = 0

    def _tick(self, jobs: list[Job]) -> float:
        shortest = min((j.lease_seconds for j in jobs), default=self.default_lease_seconds)
        return max(_MIN_TICK, min(shortest, self.default_lease_seconds) / 3)

    async def _loop(self) -> None:
        async with anyio.create_task_group() as self._replies:
            while True:
                await self._sleep(self._tick(self.work.pending()))
                await self.renew_once()

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the syncer hands out a job with a shorter lease."""
        control = self.control
        if control is None:
            await self.clock.sleep(seconds)
            return
        wake = control.renew_wake
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self.clock.sleep(seconds)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await wake.wait()
            tg.cancel_scope.cancel()
        if wake.is_set():
            control.renew_wake = anyio.Event()

    async def renew_once(self) -> int:
        """Renew the held leases that are past a third of their time; returns how many."""
        now = self.clock.now()
        held = self.work.pending()
        live = {(j.id, j.fence) for j in held}
        self._expiry = {k: v for k, v in self._expiry.items() if k in live}
        due = []
        ended = self.attempts.ended_leases() if self.attempts is not None else ()
        for job in held:
            ident = (job.id, job.fence)
            if ident in ended:
                continue  # its lease is gone: its handler is being stopped
            expires = self._expiry.get(ident, job.lease_expires_at)
            if expires - now < job.lease_seconds * 2 / 3:
                due.append((job.id, job.fence, job.lease_seconds))
                self._expiry[ident] = now + job.lease_seconds
        if due:
            watch = self._replies if self.attempts is not None else None
            reply: Reply[Accepted | Rejected] | None = Reply() if watch is not None else None
            await self.syncer.send(Renew(tuple(due), reply=reply))
            self.renewals += len(due)
            if watch is not None and reply is not None:
                watch.start_soon(self._refused, reply)
        return len(due)

    async def _refused(self, reply: Reply[Accepted | Rejected]) -> None:
        """Once the renewal commits: the leases it could not renew are gone; stop their work."""
        result = await reply.wait()
        if isinstance(result, NotRenewed) and self.attempts is not None:
            self.lost += len(result.leases)
            self.attempts.end(result.leases, "lease lost: its renewal was refused")
