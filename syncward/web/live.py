"""`OpsView` over a running `Runtime`: the app that ``syncward run --http`` serves.

Counts come from the runtime's stats-keeper (loaded from the store before it answers,
then kept from committed deltas), health from `Runtime.health`, progress from the jobs
in the downloaders' hands, reconciliations from the runtime's history; listings and a
job's row are read from the store. Admin actions go through the runtime, so every write
is the syncer's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from syncward.health import WorkerFacts
from syncward.jobs import JobState
from syncward.store import redact
from syncward.web.views import (
    Cache,
    JobPage,
    MetricsSnapshot,
    job_detail,
    list_jobs,
    store_overview,
)

if TYPE_CHECKING:
    from syncward.health import Health
    from syncward.runtime import Runtime

__all__ = ["LiveView"]

_RESTARTS_SHOWN = 10
_CYCLES_SHOWN = 20


class LiveView:
    """The routes' view of ``runtime`` (see the module docstring)."""

    mode = "live"
    writable = True

    def __init__(self, runtime: Runtime, *, cache_seconds: float) -> None:
        self.runtime = runtime
        self.store_name = redact(runtime.store_url)
        self._cache = Cache(cache_seconds)

    async def health(self) -> Health:
        return await self.runtime.health()

    async def jobs(self, state: JobState | None, limit: int, after: int | None) -> JobPage:
        return await list_jobs(self.runtime.store, state, limit, after)

    async def job(self, key: str) -> dict[str, Any] | None:
        row = await self.runtime.store.get_job(key)
        if row is None:
            return None
        held = next((j for j in self.runtime.in_hand() if j.key == key), None)
        return job_detail(row, held.as_dict()["progress"] if held is not None else None)

    async def workers(self) -> list[WorkerFacts]:
        rt = self.runtime
        return [WorkerFacts(w, w.boot_id == rt.boot_id) for w in await rt.store.workers()]

    async def reconciliation(self) -> dict[str, Any]:
        return self.runtime.reconciliations.as_dict()

    async def overview(self) -> dict[str, Any]:
        rt = self.runtime
        health = await self._cache.get("health", rt.health)
        snap = rt.stats()
        progress = {j.key: j.as_dict() for j in rt.in_hand()}
        restarts = rt.restarts
        return {
            "mode": self.mode, "store": self.store_name, "at": time.time(),
            "worker": rt.worker, "health": {"status": "ok" if health.ok else "unhealthy",
                                            "reasons": list(health.reasons)},
            "paused": rt.paused, "counts": {s.value: snap.counts[s] for s in JobState},
            "total": snap.total, "in_hand": len(progress),
            **await store_overview(rt.store, self._cache, snap.counts, progress),
            "workers": [w.as_dict(health.at) for w in health.workers],
            "reconciliation": rt.reconciliations.as_dict(limit=_CYCLES_SHOWN),
            "restarts": {"total": len(restarts), "recent": restarts[-_RESTARTS_SHOWN:][::-1]},
            "drift": {"checks": snap.drift_checks, "total": snap.drift_total,
                      "last": sum(abs(n) for n in snap.last_drift.values())},
        }

    async def metrics(self) -> MetricsSnapshot:
        rt = self.runtime
        st = rt.status()
        snap = st.stats
        health = await self._cache.get("health", rt.health)
        restarts: dict[str, int] = {}
        for entry in rt.restarts:
            actor = f"{entry.get('supervisor')}/{entry.get('actor')}"
            restarts[actor] = restarts.get(actor, 0) + 1
        history = rt.reconciliations
        return MetricsSnapshot(
            counts=snap.counts, healthy=health.ok, paused=rt.paused,
            commits=health.syncer.commits, commit_failures=health.syncer.failures_total,
            rejected=health.syncer.rejected, last_commit_age=health.syncer.age(health.at),
            restarts=restarts, reconcile_cycles=history.total,
            reconcile_fixed=dict(history.fixed), reconcile_seconds=history.seconds_total,
            drift_checks=snap.drift_checks, drift_total=snap.drift_total,
            drift_last=sum(abs(n) for n in snap.last_drift.values()),
            in_hand=len(rt.in_hand()),
            mailboxes={name: int(str(mb.get("queued", 0))) for name, mb in st.mailboxes.items()},
            sources={name: _source_figures(status) for name, status in st.sources.items()})

    async def refresh_stats(self) -> dict[str, Any]:
        return (await self.runtime.refresh_stats()).as_dict()

    async def reconcile(self, *, dry_run: bool) -> dict[str, Any]:
        return (await self.runtime.reconcile(dry_run=dry_run)).as_dict()

    async def retry(self, keys: list[str] | None) -> dict[str, Any]:
        return (await self.runtime.retry_failed(keys)).as_dict()

    async def cancel(self, keys: list[str] | None, state: str | None) -> dict[str, Any]:
        return (await self.runtime.cancel(keys, state=state)).as_dict()

    async def pause(self, paused: bool) -> dict[str, Any]:
        if paused:
            self.runtime.pause()
        else:
            self.runtime.resume()
        return {"paused": self.runtime.paused}

    async def aclose(self) -> None:
        """Nothing to close: the runtime belongs to whoever entered it."""


def _source_figures(status: dict[str, Any]) -> dict[str, float]:
    """A source's lag (read from upstream, not yet acknowledged) and upstream pending."""
    figures: dict[str, float] = {}
    pending = status.get("pending")
    if isinstance(pending, int | float) and not isinstance(pending, bool):
        figures["pending"] = float(pending)
    read, acked = status.get("read"), status.get("acked")
    if isinstance(read, int) and isinstance(acked, int):
        figures["lag"] = float(max(0, read - acked))
    return figures
