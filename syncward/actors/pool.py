"""The downloader pool: a one-for-one supervisor over downloader-1..N and the lease-renewer.

Owns: its inner supervisor. When it is asked to stop it lets every downloader finish
the job in hand (each within the runtime's grace period; past it the downloader's scope
is cancelled). When the runtime is closing it then gives back every lease this process
still holds (jobs queued in the work mailbox, jobs whose downloader was cancelled) as
`Release` messages to the syncer, which is still running (the root stops its children
in reverse order).
Released jobs are planned again without the attempt being counted; a job whose lease
already ended (cancelled, or its renewal refused: see `syncward.actors.attempts`) is not
released — there is nothing to give back. When the pool is
only being restarted (its supervisor's strategy), the jobs stay in the work mailbox and
the next incarnation takes them up first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from syncward.messages import Release, SyncerMsg

if TYPE_CHECKING:
    from collections.abc import Callable

    from syncward.actors.attempts import Attempts
    from syncward.actors.mailbox import Mailbox
    from syncward.jobs import Job
    from syncward.supervisor import Supervisor

__all__ = ["DownloaderPool"]


class DownloaderPool:
    """One incarnation of the pool actor (wraps a fresh inner supervisor)."""

    def __init__(self, *, supervisor: Supervisor, work: Mailbox[Job],
                 syncer: Mailbox[SyncerMsg], closing: Callable[[], bool],
                 attempts: Attempts | None = None) -> None:
        self.supervisor = supervisor
        self.attempts = attempts
        self.work = work
        self.syncer = syncer
        self.closing = closing
        self.stopped = anyio.Event()
        self.released = 0

    def request_stop(self) -> None:
        """Idle downloaders return at once; busy ones finish their job first."""
        self.supervisor.request_stop()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        # Jobs held by the downloaders of an earlier incarnation of the pool go to the front.
        self.work.redeliver_all()
        try:
            await self.supervisor.run(task_status=task_status)
        finally:
            if self.closing():
                with anyio.CancelScope(shield=True):
                    await self._release_held()
            self.stopped.set()

    async def _release_held(self) -> None:
        self.work.close()
        held = self.work.clear()
        attempts = self.attempts
        if attempts is not None:
            ended = attempts.ended_leases()
            held = [job for job in held if (job.id, job.fence) not in ended]
            attempts.forget_waiting()
        for job in held:
            await self.syncer.send(Release(job.id, job.fence))
        self.released = len(held)
