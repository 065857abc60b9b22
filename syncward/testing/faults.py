"""Deliberate crashes at named points, for tests and stress harnesses.

Actors call ``faults.check("syncer.before_commit")`` at a few places; a `Faults` armed
for a point raises `InjectedCrash` there (a given number of times, or with a seeded
probability). A runtime without faults pays one attribute test per point.
"""

from __future__ import annotations

import random
from collections import Counter

from syncward.errors import InjectedCrash

__all__ = ["Faults"]


class Faults:
    """Crash switches by point name. ``fired`` counts the crashes raised per point."""

    def __init__(self, *, seed: int = 0) -> None:
        self._times: Counter[str] = Counter()
        self._rates: dict[str, float] = {}
        self._rng = random.Random(seed)
        self.fired: Counter[str] = Counter()

    def arm(self, point: str, times: int = 1) -> None:
        """Crash the next ``times`` passes through ``point``."""
        self._times[point] += times

    def rate(self, point: str, probability: float) -> None:
        """Crash each pass through ``point`` with this probability (seeded)."""
        self._rates[point] = probability

    def disarm(self) -> None:
        self._times.clear()
        self._rates.clear()

    def check(self, point: str) -> None:
        """Raises:
        InjectedCrash: this point is armed.
        """
        if self._times[point] > 0:
            self._times[point] -= 1
        elif not (point in self._rates and self._rng.random() < self._rates[point]):
            return
        self.fired[point] += 1
        raise InjectedCrash(point)
