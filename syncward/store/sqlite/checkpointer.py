"""The checkpointer: moves the WAL back into the database file, off the syncer's path.

Owns: nothing. On a period of real time it asks the store for a PASSIVE checkpoint,
which copies committed pages from the write-ahead log into the database without
blocking the writer or readers. (What keeps the WAL bounded is the writer's own TRUNCATE
checkpoint past the store's limit: see `syncward.store.sqlite.store`.) The syncer's own
connection has automatic checkpoints turned off, so a commit never pays for copying the
log: measured here, that is about a quarter of a commit's CPU at a few hundred jobs per
batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from syncward.errors import StoreFailure, StoreUnavailable

if TYPE_CHECKING:
    from syncward.store.sqlite.store import SQLiteStore

__all__ = ["Checkpointer"]

log = logging.getLogger("syncward.checkpointer")


class Checkpointer:
    """One incarnation of the checkpointer actor."""

    def __init__(self, *, store: SQLiteStore, every: float = 0.5) -> None:
        self.store = store
        self.every = every
        self._stop = anyio.Event()
        self.checkpoints = 0
        self.failing: str | None = None  # the error of the current run of failures

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while not self._stop.is_set():
            with anyio.move_on_after(self.every):
                await self._stop.wait()
            try:
                await self.store.checkpoint()
                self.checkpoints += 1
            except StoreUnavailable as exc:
                # Said once per run of failures, not every tick (a full disk lasts); a
                # failure of the store's environment is the syncer's to report (it stops
                # the runtime with one line saying what to do), so only with --verbose.
                if self.failing is None:
                    quiet = exc.kind is not StoreFailure.TRANSIENT
                    log.log(logging.INFO if quiet else logging.WARNING,
                            "WAL checkpoint failed (retrying quietly): %s", exc)
                self.failing = str(exc)
            else:
                if self.failing is not None:
                    log.warning("WAL checkpoints work again")
                self.failing = None
