"""Time as a dependency: wall time for what is stored, sleeps that a test can drive.

Everything that decides by time (lease expiry, back-off, periodic recounts and reaping)
asks a `Clock`; production uses `SystemClock`, tests use `syncward.testing.FakeClock`
and move time by hand instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (stored in the database, compared across processes)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` of this clock's time have passed."""
        ...


class SystemClock:
    """The real clock: `time.time` and `anyio.sleep`."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))
