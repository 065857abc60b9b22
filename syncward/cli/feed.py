"""`ManifestFeed`: a manifest read by a daemon thread, handed to the event loop in chunks.

Owns: the reader thread and the manifest it is given (the thread closes it when done).
Gives: lists of `ManifestItem` in file order through ``feed.chunks()``; a chunk
is up to ``chunk`` items, or whatever has been read when the loop asks and the thread
is waiting for more input. So a big file moves a thousand lines at a time, while lines
trickling in on a pipe are handed over as they arrive, not when a chunk fills.

Design notes. A daemon thread rather than `anyio.to_thread`: a read of stdin cannot be
cancelled, and an anyio worker blocked in one keeps the process alive after an
interrupted run until stdin closes; a daemon thread does not. (It must then not hold
``sys.stdin``'s lock, which the interpreter's shutdown takes: the command line gives it
its own file object on a copy of fd 0.) The two sides share a list under a
`threading.Condition`; the thread waits on it when a full chunk is pending
(back-pressure), and wakes the loop through `anyio.from_thread.run_sync` only when the
loop is waiting, so the per-line cost is one lock and one append.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

import anyio
import anyio.from_thread
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator
    from types import TracebackType

    from syncward.adapters.manifest import Manifest, ManifestItem

__all__ = ["ManifestFeed"]


class ManifestFeed:
    """Iterate `chunks` inside ``async with``. See the module docstring."""

    def __init__(self, manifest: Manifest, *, chunk: int = 1000) -> None:
        self._manifest = manifest
        self._chunk = chunk
        self._cond = threading.Condition()
        self._pending: list[ManifestItem] = []
        self._done = False
        self._stopped = False
        self._error: Exception | None = None
        self._wake: anyio.Event | None = None  # set while the loop waits for items
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def __aenter__(self) -> ManifestFeed:
        self._token = anyio.lowlevel.current_token()
        threading.Thread(target=self._read, name="syncward-manifest", daemon=True).start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._cond:
            self._stopped = True  # a thread waiting for room gives up
            self._cond.notify_all()

    async def chunks(self) -> AsyncGenerator[list[ManifestItem], None]:
        """The items read so far, a list at a time, until the manifest's end.

        Raises:
            ConfigError: reading the manifest failed part-way.
        """
        while True:
            with self._cond:
                chunk, self._pending = self._pending, []
                done, error = self._done, self._error
                wake = self._wake = anyio.Event() if not chunk and not done else None
                self._cond.notify_all()
            if chunk:
                yield chunk
            elif error is not None:
                raise error
            elif done:
                return
            elif wake is not None:
                await wake.wait()

    # --- the thread ------------------------------------------------------------------

    def _read(self) -> None:
        cond = self._cond
        try:
            for item in self._manifest:
                with cond:
                    self._pending.append(item)
                    n = len(self._pending)
                    wake = self._take_wake() if n == 1 or n >= self._chunk else None
                self._notify(wake)
                with cond:
                    while len(self._pending) >= self._chunk and not self._stopped:
                        cond.wait()
                    if self._stopped:
                        return
        except Exception as exc:
            with cond:
                self._error = exc
        finally:
            self._manifest.close()  # here: this thread may be the one blocked reading it
            with cond:
                self._done = True
                wake = self._take_wake()
            self._notify(wake)

    def _take_wake(self) -> anyio.Event | None:
        """The loop's wake-up event, if it waits for items (call with the lock held)."""
        wake, self._wake = self._wake, None
        return wake

    def _notify(self, wake: anyio.Event | None) -> None:
        """Set ``wake`` in the loop (never with the lock held: the loop may want it)."""
        if wake is not None and self._token is not None:
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(wake.set, token=self._token)
