"""The status publisher: the runtime's in-memory truth, readable from another process.

Owns: the sidecar file ``<db>.status.json``. Every ``every`` seconds it writes the
runtime's status (syncer health with its current error, restarts, mailboxes, sources)
there, atomically (a temporary file renamed over it), and removes it when it stops. The
database cannot carry this: when commits fail (a full disk) the syncer's error is exactly
what cannot be committed. ``syncward status`` reads the file when the store's owner is
alive and the boot ids match.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["StatusPublisher", "status_path"]

log = logging.getLogger("syncward.status")


def status_path(db_path: Path) -> Path:
    return Path(str(db_path) + ".status.json")


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class StatusPublisher:
    """One incarnation of the status publisher actor."""

    def __init__(self, *, path: Path, snapshot: Callable[[], dict[str, Any]],
                 every: float = 1.0) -> None:
        self.path = path
        self.snapshot = snapshot
        self.every = every
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        try:
            while not self._stop.is_set():
                try:
                    await anyio.to_thread.run_sync(_write, self.path, self.snapshot())
                except OSError as exc:  # a full disk must not take the runtime down
                    log.warning("could not write %s: %s", self.path, exc)
                with anyio.move_on_after(self.every):
                    await self._stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, self.path)
