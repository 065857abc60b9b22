"""A clock that only moves when a test moves it."""

from __future__ import annotations

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """`Clock` whose time advances only through `advance`.

    Sleepers wake, in deadline order, when `advance` moves time past their deadline.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._sleepers.append((self._now + seconds, event))
        await event.wait()

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock (for waiting until they are)."""
        return sum(1 for _, ev in self._sleepers if not ev.is_set())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        due = [s for s in self._sleepers if s[0] <= self._now]
        self._sleepers = [s for s in self._sleepers if s[0] > self._now]
        for _, event in sorted(due, key=lambda s: s[0]):
            event.set()
