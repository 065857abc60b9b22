"""Back-off for retried jobs: exponential, capped, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(attempt)`` after a failed attempt (1-based).

    The ceiling is ``base * 2 ** (attempt - 1)`` capped at ``cap``; with ``jitter`` the delay
    is drawn uniformly from [ceiling / 2, ceiling] so retries of a burst of failures spread
    out instead of arriving together.
    """

    base: float = 1.0
    cap: float = 300.0
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        if not self.jitter:
            return ceiling
        return self.rng.uniform(ceiling / 2, ceiling)
