"""The status publisher: the runtime's in-memory truth, readable from another process.

Owns: nothing. Every ``every`` seconds it hands the runtime's status (syncer health with
its current error, restarts, mailboxes, sources) to the store's `publish_status`, which
puts it where other processes can read it (SQLite: a sidecar file written atomically),
and withdraws it when it stops. The database's own transactions cannot carry this: when
commits fail (a full disk) the syncer's error is exactly what cannot be committed.
``syncward status`` reads it back through `StoreReader.published_status`.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["StatusPublisher"]

log = logging.getLogger("syncward.status")


class StatusPublisher:
    """One incarnation of the status publisher actor."""

    def __init__(self, *, publish: Callable[[dict[str, Any] | None], Awaitable[None]],
                 snapshot: Callable[[], dict[str, Any]], every: float = 1.0) -> None:
        self.publish = publish
        self.snapshot = snapshot
        self.every = every
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            failing = False
            while not self._stop.is_set():
                try:
                    await self.publish(self.snapshot())
                    failing = False
                except OSError as exc:  # a full disk must not take the runtime down
                    if not failing:  # said once per run of failures, not every second;
                        # a full or read-only disk is the syncer's to report
                        quiet = exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
                        log.log(logging.INFO if quiet else logging.WARNING,
                                "could not publish the runtime's status: %s", exc)
                    failing = True
                with anyio.move_on_after(self.every):
                    await self._stop.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await self.publish(None)
                except OSError as exc:
                    log.warning("could not withdraw the runtime's status: %s", exc)
