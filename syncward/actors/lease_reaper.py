"""The lease-reaper: leases past their expiry go back, fenced, through the syncer.

Owns: nothing. Reads expired leases from the store's read side on a period of its
clock and sends them to the syncer as one `ReapExpired` batch. The syncer applies each
only if the lease still has the same fence and is still past expiry at commit time, so
a renewal that raced the reaper wins. (Leases of earlier boots are handled before any
actor starts, by start-up reconciliation: their owners are provably gone.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from syncward.actors._periodic import LoopActor
from syncward.errors import StoreUnavailable
from syncward.messages import ReapExpired, SyncerMsg

if TYPE_CHECKING:
    from syncward.actors.mailbox import Mailbox
    from syncward.clock import Clock
    from syncward.store.base import StoreReader
    from syncward.testing.faults import Faults

__all__ = ["LeaseReaper"]

log = logging.getLogger("syncward.reaper")


class LeaseReaper(LoopActor):
    """One incarnation of the lease-reaper actor."""

    def __init__(self, *, store: StoreReader, syncer: Mailbox[SyncerMsg], clock: Clock,
                 every: float = 5.0, batch: int = 1000, faults: Faults | None = None) -> None:
        super().__init__()
        self.store = store
        self.syncer = syncer
        self.clock = clock
        self.every = every
        self.batch = batch
        self.faults = faults
        self.reaped_batches = 0

    async def _loop(self) -> None:
        while True:
            await self.clock.sleep(self.every)
            await self.reap_once()

    async def reap_once(self) -> int:
        """Send one batch of expired leases to the syncer; returns how many were sent."""
        if self.faults is not None:
            self.faults.check("reaper.before_reap")
        try:
            expired = await self.store.expired_leases(self.clock.now(), limit=self.batch)
        except StoreUnavailable as exc:
            log.warning("lease-reaper could not read expired leases: %s", exc)
            return 0
        if expired:
            log.info("reaping %d expired lease(s)", len(expired))
            await self.syncer.send(ReapExpired(tuple(expired)))
            self.reaped_batches += 1
        return len(expired)
