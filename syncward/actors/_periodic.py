"""The shape shared by actors that run one loop until they are asked to stop."""

from __future__ import annotations

import anyio

__all__ = ["LoopActor"]


class LoopActor:
    """Runs ``_loop`` in its own task until `request_stop`; then cancels it.

    Subclasses call ``super().__init__()`` and implement ``_loop``.
    """

    def __init__(self) -> None:
        self._stop = anyio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._loop)
            await self._stop.wait()
            tg.cancel_scope.cancel()

    async def _loop(self) -> None:
        raise NotImplementedError
