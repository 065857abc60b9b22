"""Health: whether a runtime is fit to be trusted, and if not, why — decided in one place.

Healthy means: the store answers, the stats-keeper has loaded its counts from the store,
the syncer is committing (no failing commits, no messages waiting on a syncer that has
stopped committing), and no actor is in a restart loop. `assess` turns what a runtime
knows about itself into the reasons it is unhealthy (none: healthy); `assess_owner` does
the same for a runtime seen from outside, through the status it publishes. The runtime
(`Runtime.health`), the web app's ``/health`` and ``syncward status`` all use these, so
they cannot disagree about what "healthy" means.

Design note: a restart loop is judged from the restarts the runtime records, not from
the supervisor's intensity: the supervisor gives up (and the runtime stops) on a fast
loop, but an actor that crashes every ten seconds stays inside any sane intensity while
doing no useful work. ``restart_limit`` restarts of one actor inside ``restart_window``
seconds is a loop.

Results are frozen dataclasses until the JSON edge (`Health.as_dict`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from syncward.store.base import OwnerInfo, WorkerRow

__all__ = [
    "Health",
    "HealthPolicy",
    "RecountFacts",
    "SyncerFacts",
    "WorkerFacts",
    "assess",
    "assess_owner",
    "notable_workers",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    """The thresholds of `assess`.

    ``commit_stale_after``: seconds a syncer may go without committing while messages
    wait in its mailbox. ``published_stale_after``: seconds after which a live runtime's
    published status (rewritten every second) means its event loop is stuck.
    """

    restart_window: float = 60.0
    restart_limit: int = 3
    commit_stale_after: float = 30.0
    published_stale_after: float = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncerFacts:
    """The syncer as health sees it."""

    commits: int = 0
    last_commit_at: float | None = None
    error: str | None = None
    error_since: float | None = None
    retries: int = 0
    queued: int = 0  # messages waiting in its mailbox
    rejected: int = 0  # messages refused on their own (stale fences, ...)
    failures_total: int = 0  # failed commits, each retried

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"commits": self.commits, "last_commit_at": self.last_commit_at,
                "last_commit_age": self.age(now), "error": self.error,
                "error_since": self.error_since, "retries": self.retries,
                "queued": self.queued, "rejected": self.rejected,
                "failures_total": self.failures_total}

    def age(self, now: float) -> float | None:
        """Seconds since the last commit (None: none yet)."""
        return None if self.last_commit_at is None else max(0.0, now - self.last_commit_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecountFacts:
    """The stats-keeper's recounts: when the last one counted the rows, and the drift."""

    last_at: float | None = None
    checks: int = 0
    last_drift: Mapping[JobState, int] = field(default_factory=dict)
    drift_total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"last_at": self.last_at, "checks": self.checks,
                "last_drift": {str(s): n for s, n in self.last_drift.items() if n},
                "drift": sum(abs(n) for n in self.last_drift.values()),
                "drift_total": self.drift_total}


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    """A worker as recorded, and whether it is (one of) the live runtime(s)."""

    row: WorkerRow
    alive: bool | None

    def as_dict(self, now: float) -> dict[str, Any]:
        w = self.row
        age = None if w.heartbeat_at is None else max(0.0, now - w.heartbeat_at)
        return {"name": w.name, "status": w.status, "pid": w.pid, "host": w.host,
                "started_at": w.started_at, "heartbeat_at": w.heartbeat_at,
                "heartbeat_age": age, "alive": self.alive}


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """A health snapshot. ``reasons`` is empty when healthy."""

    at: float
    reasons: tuple[str, ...]
    counts: Mapping[JobState, int]
    stats_loaded_at: float | None
    recount: RecountFacts
    syncer: SyncerFacts
    workers: tuple[WorkerFacts, ...] = ()
    paused: bool = False

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        """The JSON edge: what ``GET /health`` answers."""
        return {
            "status": "ok" if self.ok else "unhealthy",
            "reasons": list(self.reasons),
            "at": self.at,
            "counts": {s.value: self.counts.get(s, 0) for s in JobState},
            "total": sum(self.counts.values()),
            "stats_loaded_at": self.stats_loaded_at,
            "recount": self.recount.as_dict(),
            "syncer": self.syncer.as_dict(self.at),
            "workers": [w.as_dict(self.at) for w in self.workers],
            "paused": self.paused,
        }


def notable_workers(rows: Sequence[WorkerRow], *, others: int = 10) -> list[WorkerRow]:
    """The workers worth showing: every running one, and the newest few others."""
    running = [w for w in rows if w.status == "running"]
    rest = sorted((w for w in rows if w.status != "running"),
                  key=lambda w: w.started_at or 0.0, reverse=True)
    return running + rest[:others]


def assess(*, now: float, running: bool, store_error: str | None, stats_loaded: bool,
           syncer: SyncerFacts, restarts: Sequence[Mapping[str, Any]],
           policy: HealthPolicy) -> tuple[str, ...]:
    """The reasons a runtime is unhealthy, from what it knows about itself (none: healthy).

    ``restarts`` are the runtime's restart records (``actor``, ``kind``, ``at``, ...).
    """
    if not running:
        return ("the runtime is not running",)
    reasons: list[str] = []
    if store_error is not None:
        reasons.append(f"store unreachable: {store_error}")
    if not stats_loaded:
        reasons.append("stats not loaded from the store yet")
    if syncer.error is not None:
        since = "" if syncer.error_since is None else f" for {now - syncer.error_since:.1f}s"
        reasons.append(f"syncer: commits failing{since} ({syncer.retries} retries): "
                       f"{syncer.error}")
    elif syncer.queued and syncer.last_commit_at is not None \
            and now - syncer.last_commit_at > policy.commit_stale_after:
        reasons.append(f"syncer: {syncer.queued} message(s) waiting and no commit for "
                       f"{now - syncer.last_commit_at:.1f}s")
    reasons.extend(restart_loops(restarts, now=now, policy=policy))
    return tuple(reasons)


def restart_loops(restarts: Sequence[Mapping[str, Any]], *, now: float,
                  policy: HealthPolicy) -> list[str]:
    """One reason per actor restarted ``restart_limit`` times or more inside the window,
    and per supervisor that gave up."""
    recent: Counter[str] = Counter()
    reasons = []
    for entry in restarts:
        actor = f"{entry.get('supervisor', '?')}/{entry.get('actor', '?')}"
        if entry.get("kind") == "gave_up":
            reasons.append(f"supervisor gave up on {actor}: {entry.get('error')}")
            continue
        at = entry.get("at")
        if isinstance(at, int | float) and now - at <= policy.restart_window:
            recent[actor] += 1
    reasons.extend(f"{actor} in a restart loop: restarted {n} times in the last "
                   f"{policy.restart_window:g}s"
                   for actor, n in sorted(recent.items()) if n >= policy.restart_limit)
    return reasons


def assess_owner(owner: OwnerInfo, published: Mapping[str, Any] | None, *, now: float,
                 policy: HealthPolicy) -> tuple[str, ...]:
    """The reasons the runtime ``owner`` is unhealthy, seen from another process.

    A runtime that is gone (its process died without closing the store) is unhealthy; one
    on another host that the store cannot judge is taken at its published word; a live
    one must have published its status recently, and that status must be healthy.
    """
    who = f"the runtime pid {owner.pid} on {owner.host}"
    if owner.alive is False:
        return (f"{who} is gone (killed or crashed); its leases go back at the next start",)
    if published is None:
        if owner.alive is None:
            return ()
        return (f"{who} has published no status",)
    at = published.get("at")
    if isinstance(at, int | float) and now - at > policy.published_stale_after:
        return (f"{who} has not published its status for {now - at:.0f}s "
                "(is its event loop blocked?)",)
    health = published.get("health")
    if isinstance(health, dict) and health.get("reasons"):
        return tuple(str(r) for r in health["reasons"])
    return ()
