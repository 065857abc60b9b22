"""The liveness keeper: this boot's lock held, other boots' deaths acted on, wake-ups heard.

Owns: nothing that outlives it (the life connection belongs to the store). Every
``every`` seconds of its clock it

1. makes sure this boot's life connection is up and holds its advisory lock, taking it
   again on a new connection after PostgreSQL restarted or the network dropped it (in
   between, other runtimes may have taken this boot's leases back: its late writes are
   then fenced out, never applied twice);
2. asks whether any lease or running worker belongs to a boot whose lock nobody holds —
   a process that died — and if so sends `Reconcile` to the syncer, which gives those
   leases back (an attempt counted, a crash recorded), marks the workers dead and
   interrupts their runs, in one transaction. A killed runtime's work is therefore back
   in play within about ``every`` seconds, whatever its lease length;
3. every ``heartbeat_every`` seconds, sends this worker's heartbeat (`WorkerStatus`).

After a PostgreSQL restart every session is gone at once, so every boot's lock is free
until its own keeper takes it again (within ``every`` seconds). A keeper that had to take
its own lock again therefore waits ``settle`` seconds before it judges anyone dead:
otherwise the first runtime back would take the live ones' leases (fenced, so nothing
would be applied twice, but their work in hand would be redone).

Wake-ups: the life connection LISTENs on the store's channel; a NOTIFY from another
runtime's commit (jobs submitted or planned again) calls `StoreHooks.wake`, so an idle
runtime leases them at once instead of at its next poll.

Receives nothing; sends `Reconcile`, `WorkerStatus` and `Wake` to the syncer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from syncward.messages import Reconcile, WorkerStatus
from syncward.store.base import WorkerState

if TYPE_CHECKING:
    from syncward.store.base import StoreHooks
    from syncward.store.postgres.store import PostgresStore

__all__ = ["LivenessKeeper"]

log = logging.getLogger("syncward.postgres")


class LivenessKeeper:
    """One incarnation of the liveness keeper. See the module docstring."""

    def __init__(self, *, store: PostgresStore, hooks: StoreHooks, every: float = 0.5,
                 heartbeat_every: float = 5.0, settle: float = 5.0) -> None:
        self.store = store
        self.hooks = hooks
        self.every = every
        self.heartbeat_every = heartbeat_every
        self.settle = settle
        self._stop = anyio.Event()
        self._quiet_until = float("-inf")
        self.reconciles = 0

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        await self.store.listen(self._heard)
        task_status.started()
        clock = self.hooks.clock
        last_beat = clock.now()
        while not self._stop.is_set():
            await self.once()
            beat_due = clock.now() - last_beat >= self.heartbeat_every
            # Not while stopping: a heartbeat after "stopped" would say "running" again.
            if beat_due and self.hooks.worker and not self.hooks.closing:
                last_beat = clock.now()
                await self.hooks.send(WorkerStatus(self.hooks.worker, WorkerState.RUNNING))
            with anyio.move_on_after(self.every):
                await self._stop.wait()

    async def once(self) -> bool:
        """One round: keep the lock, reconcile if a boot died. Returns whether it did."""
        now = self.hooks.clock.now()
        if await self.store.keep_alive(self._heard):
            self._quiet_until = now + self.settle  # everyone is taking their locks again
        if now < self._quiet_until:
            return False
        try:
            dead = await self.store.someone_died(self.hooks.boot_id)
        except Exception as exc:  # a read that failed: look again next round
            log.warning("liveness check failed (will retry): %s", exc)
            return False
        if dead:
            self.reconciles += 1
            await self.hooks.send(Reconcile(self.hooks.boot_id))
        return dead

    def _heard(self, *args: Any) -> None:
        payload = args[-1] if args else ""
        if payload != self.hooks.boot_id:  # our own commits need no wake-up
            self.hooks.wake()
