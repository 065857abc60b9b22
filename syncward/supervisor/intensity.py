"""Restart intensity as a pure function of timestamps: OTP's ``add_restart/3``, without a loop.

Design note: the supervisor passes ``clock.now()`` into `RestartWindow.record`, so this
module never reads a clock and is tested with plain floats. The window is closed at its
old end: a restart exactly ``within`` seconds before ``now`` still counts, one any older
is forgotten.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncward.supervisor.spec import RestartIntensity

__all__ = ["RestartWindow"]


class RestartWindow:
    """The restarts of the last ``intensity.within`` seconds, and whether one more is allowed.

    Invariant: after ``record(now)``, the window holds exactly the recorded timestamps
    ``t`` with ``now - within <= t <= now`` (timestamps are expected not to decrease).
    """

    def __init__(self, intensity: RestartIntensity) -> None:
        self._intensity = intensity
        self._times: deque[float] = deque()

    @property
    def count(self) -> int:
        """How many restarts lie inside the window, as of the last `record`."""
        return len(self._times)

    def record(self, now: float) -> bool:
        """Count one restart at ``now``.

        Returns:
            True while at most ``max_restarts`` restarts (this one included) lie inside
            the window, i.e. the restart may go ahead; False once that is exceeded and
            the supervisor must give up.
        """
        horizon = now - self._intensity.within
        while self._times and self._times[0] < horizon:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self._intensity.max_restarts
