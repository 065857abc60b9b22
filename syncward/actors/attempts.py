"""The attempts this process runs, and how a lease that ends under one of them stops it.

Owned by the runtime (like the work mailbox), shared by the downloaders, the
lease-renewer, the pool and the syncer, so it outlives any one incarnation of them.
Not an actor: a registry that actors call, on the one event loop, without awaiting.

A lease held here can end without its downloader's doing: a `Cancel` committed (through
this runtime's syncer: the syncer reports the leases it ended, before it answers anyone),
or the store refused to renew it (a `Cancel` another process committed on a shared
store; a reap after expiry; a reconciliation): the lease-renewer reports those. `end`
then

* cancels the cancel scope of an attempt running under that lease: its handler sees
  cancellation (asyncio's ``CancelledError``) at its next await, and the downloader
  sends no outcome (it could only be rejected as stale);
* marks a job still waiting in the work mailbox (prefetched, or taken but not started)
  so that it is never started, nor renewed, nor released.

Latency: through this runtime (`Runtime.cancel`, the web API) the handler is cancelled
in the same turn of the event loop as the commit. From another process on a shared
store, the owner learns at its next renewal of the lease: within about two thirds of the
job's lease time (renewals go out once a third of it has passed, on a tick of a third
of the shortest lease held), or sooner if the handler commits a stage or an effect (its
write is rejected: `LeaseLost`).

Design note: an attempt's cancel scope is the ``asyncio.Timeout`` that already bounds
the handler (the per-job timeout, with no deadline when there is none): moved to now, it
cancels the handler as an expiry would, and the downloader tells the two apart by the
attempt's ``ended``. An anyio CancelScope per attempt costs a tenth of a no-op job's CPU
(see `syncward.actors.downloader`). Each downloader has one `Attempt` slot, reused job
after job (kept by name, so a restarted downloader gets the same one): the hot path sets
a few attributes, and only an end of leases — rare — looks through the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from syncward.actors.mailbox import Mailbox
    from syncward.jobs import Job

__all__ = ["Attempt", "Attempts"]


class Attempt:
    """One downloader's attempt slot: the lease it runs under now, and its cancel scope."""

    __slots__ = ("_registry", "busy", "ended", "fence", "job_id", "scope")

    def __init__(self, registry: Attempts) -> None:
        self._registry = registry
        self.job_id = self.fence = 0
        self.busy = False
        self.scope: asyncio.Timeout | None = None
        self.ended: str | None = None  # why its lease ended under it, once it has

    def begin(self, job: Job) -> bool:
        """An attempt of ``job`` is about to run here; False if its lease has ended."""
        marks = self._registry._ended
        if marks and marks.pop((job.id, job.fence), None) is not None:
            return False
        self.job_id, self.fence = job.id, job.fence
        self.busy, self.ended, self.scope = True, None, None
        return True

    def enter(self, scope: asyncio.Timeout) -> None:
        """The handler now runs inside ``scope`` (cancelled at once if already ended)."""
        self.scope = scope
        if self.ended is not None:
            self._cancel()

    def finish(self) -> None:
        """The attempt is over. One whose lease ended stays marked until its job is
        acknowledged: a downloader stopped before that (a restart of the pool) hands the
        job to the next one, which must not start it again."""
        self.busy, self.scope = False, None
        if self.ended is not None:
            self._registry._ended[(self.job_id, self.fence)] = self.ended

    def acknowledged(self) -> None:
        """Its job has left the work mailbox: nothing can start it again."""
        marks = self._registry._ended
        if marks:
            marks.pop((self.job_id, self.fence), None)

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
            self._cancel()

    def _cancel(self) -> None:
        scope = self.scope
        if scope is not None:
            with contextlib.suppress(RuntimeError):  # the handler has just returned
                scope.reschedule(asyncio.get_running_loop().time())


class Attempts:
    """The registry of this process's attempts. See the module docstring."""

    def __init__(self, work: Mailbox[Job]) -> None:
        self.work = work
        self._slots: dict[str, Attempt] = {}
        self._ended: dict[tuple[int, int], str] = {}  # waiting jobs whose lease ended
        self.stopped = 0  # attempts cancelled and waiting jobs dropped, since start

    def slot(self, name: str) -> Attempt:
        """Downloader ``name``'s slot (the same one after a restart)."""
        found = self._slots.get(name)
        if found is None:
            found = self._slots[name] = Attempt(self)
        return found

    def _running(self) -> dict[tuple[int, int], Attempt]:
        return {(a.job_id, a.fence): a for a in self._slots.values() if a.busy}

    def end(self, leases: Iterable[tuple[int, int]], why: str) -> int:
        """Stop whatever this process does under these ``(job id, fence)`` leases.

        Returns how many it held (running or waiting); leases it does not hold are
        ignored (an outcome that raced the end, another process's).
        """
        running = self._running()
        waiting: set[tuple[int, int]] | None = None
        n = 0
        for ident in leases:
            attempt = running.get(ident)
            if attempt is not None:
                if attempt.ended is None:
                    n += 1
                attempt.end(why)
                continue
            if waiting is None:
                waiting = {(j.id, j.fence) for j in self.work.pending()}
            if ident in waiting and ident not in self._ended:
                self._ended[ident] = why
                n += 1
        self.stopped += n
        return n

    def ended_leases(self) -> set[tuple[int, int]]:
        """The leases held here that have ended (nothing to renew or give back)."""
        out = set(self._ended)
        out.update(ident for ident, a in self._running().items() if a.ended is not None)
        return out

    def ended(self, job_id: int, fence: int) -> bool:
        """Whether the lease ``(job_id, fence)`` held here has ended."""
        return (job_id, fence) in self.ended_leases()

    def forget_waiting(self) -> None:
        """Drop the marks of waiting jobs (the pool cleared the work mailbox)."""
        self._ended.clear()
