"""What an operator asks of a running runtime, as typed answers, and who may watch it.

`Runtime` answers with these: `InHand` (a job a downloader holds now, with the progress
its handler reported through ``ctx.progress``), `StatsRefresh` (a recount on demand),
`RetryResult` (failed jobs sent back to planned). They stay frozen dataclasses until the
JSON edge (``as_dict``), where the web app and the command line meet them.

`RuntimeObserver` is what instrumentation (the web app's metrics) implements: the
syncer's `CommitObserver` plus the latency of submits. A runtime with no observer pays
nothing for them (see `Runtime.add_observer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from syncward.actors.syncer import CommitObserver
from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from syncward.actors.stats_keeper import StatsSnapshot
    from syncward.messages import ApplyResult, SyncerMsg

__all__ = ["InHand", "RetryResult", "RuntimeObserver", "StatsRefresh", "fan_out"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InHand:
    """A job a downloader is running now. ``progress_total`` is None when not reported."""

    downloader: str
    key: str
    identity: Mapping[str, str | int]
    attempt: int
    max_attempts: int
    stage: str | None
    progress_done: float
    progress_total: float | None

    @property
    def fraction(self) -> float | None:
        """Done over total, within [0, 1], when a total was reported."""
        if not self.progress_total:
            return None
        return max(0.0, min(1.0, self.progress_done / self.progress_total))

    def as_dict(self) -> dict[str, Any]:
        return {"downloader": self.downloader, "key": self.key, "identity": dict(self.identity),
                "attempt": self.attempt, "max_attempts": self.max_attempts,
                "stage": self.stage, "progress": {"done": self.progress_done,
                                                  "total": self.progress_total,
                                                  "fraction": self.fraction}}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsRefresh:
    """A recount on demand: the counts before it, after it, and the drift it found."""

    before: StatsSnapshot
    after: StatsSnapshot

    @property
    def checked(self) -> bool:
        """Whether the rows were counted (False only if the stats-keeper was restarting)."""
        return self.after.drift_checks > self.before.drift_checks

    @property
    def drift(self) -> dict[JobState, int]:
        """The drift this recount found, by state (zeros left out): kept minus counted."""
        if not self.checked:
            return {}
        return {s: n for s, n in self.after.last_drift.items() if n}

    def as_dict(self) -> dict[str, Any]:
        return {"before": _counts(self.before.counts), "after": _counts(self.after.counts),
                "drift": {"checked": self.checked,
                          "by_state": {s.value: n for s, n in self.drift.items()},
                          "off": sum(abs(n) for n in self.drift.values()),
                          "total": self.after.drift_total}}


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryResult:
    """Failed jobs sent back to planned; ``not_requeued``: given keys with no failed job."""

    requeued: int
    not_requeued: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"requeued": self.requeued, "not_requeued": list(self.not_requeued)}


def _counts(counts: Mapping[JobState, int]) -> dict[str, int]:
    return {s.value: counts.get(s, 0) for s in JobState}


class RuntimeObserver(CommitObserver, Protocol):
    """Instrumentation of a runtime: every committed batch, and each submit's latency."""

    def submit_committed(self, seconds: float) -> None:
        """A `Runtime.submit` chunk committed ``seconds`` after it was sent."""
        ...


class _FanOut:
    """Several observers as one (each app mounted on a runtime has its own metrics)."""

    def __init__(self, observers: Sequence[RuntimeObserver]) -> None:
        self.observers = tuple(observers)

    def committed(self, batch: Sequence[SyncerMsg], result: ApplyResult,
                  seconds: float) -> None:
        for observer in self.observers:
            observer.committed(batch, result, seconds)

    def submit_committed(self, seconds: float) -> None:
        for observer in self.observers:
            observer.submit_committed(seconds)


def fan_out(observers: Sequence[RuntimeObserver]) -> RuntimeObserver | None:
    """None for no observer, the observer itself for one, else one that calls them all."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return _FanOut(observers)
