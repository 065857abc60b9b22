"""`OpsView` over a store alone, read-only: the app that ``syncward serve`` serves.

The store is opened read-only on first use (or given, already open, by the caller) and
read through `StoreReader`: counts are the store's own rows counted at the time asked,
health is whether the store answers and whether the runtimes that hold it are healthy by
what they publish (`syncward.health.assess_owner`), progress and reconciliation history
come from what a live runtime publishes. Admin actions need a runtime: they answer 409.

Design note: a watcher may run beside a store that nothing runs, or that another process
is writing at full speed; every read it makes is one a ``syncward status`` would make,
and reads are reused for ``cache_seconds`` so that many dashboards cost one read.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio

from syncward.health import (
    Health,
    HealthPolicy,
    RecountFacts,
    SyncerFacts,
    WorkerFacts,
    assess_owner,
    notable_workers,
)
from syncward.jobs import JobState
from syncward.store import open_store, redact
from syncward.web.responses import ApiError
from syncward.web.views import (
    Cache,
    JobPage,
    MetricsSnapshot,
    job_detail,
    list_jobs,
    store_overview,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from syncward.store.base import OwnerInfo, StoreReader

__all__ = ["StoreView"]

_READ_ONLY = ("read-only: this app watches a store; admin actions need the runtime's own "
              "app (syncward run --http, or create_app(runtime))")
_OWNERS_READ = 20
_EVENTS_READ = 100_000
_STATES = frozenset(s.value for s in JobState)


class StoreView:
    """The routes' view of the store at ``url`` (see the module docstring)."""

    mode = "watch"
    writable = False

    def __init__(self, store: str | StoreReader, *, cache_seconds: float,
                 policy: HealthPolicy) -> None:
        self._url = store if isinstance(store, str) else store.url
        self._store: StoreReader | None = None if isinstance(store, str) else store
        self._owned = isinstance(store, str)
        self._lock = anyio.Lock()
        self._cache = Cache(cache_seconds)
        self._policy = policy
        self.store_name = redact(self._url)

    async def _reader(self) -> StoreReader:
        """The store, opened read-only the first time.

        Raises:
            StoreError: it cannot be opened (it does not exist, it is not a store, ...).
        """
        async with self._lock:
            if self._store is None:
                self._store = await open_store(self._url, readonly=True)
            return self._store

    async def aclose(self) -> None:
        store, self._store = self._store, None
        if store is not None and self._owned:
            await store.aclose()

    async def _runtimes(self, store: StoreReader
                        ) -> tuple[list[OwnerInfo], dict[str, dict[str, Any]]]:
        owners = await store.owners()
        published: dict[str, dict[str, Any]] = {}
        for owner in owners[:_OWNERS_READ]:
            if owner.boot_id and owner.alive is not False:
                status = await store.published_status(owner.boot_id)
                if status is not None:
                    published[owner.boot_id] = status
        return owners, published

    async def health(self) -> Health:
        return await self._cache.get("health", self._health)

    async def _health(self) -> Health:
        now = time.time()
        try:
            store = await self._reader()
            counts = await store.counts()
            owners, published = await self._runtimes(store)
            rows = await store.workers()
        except Exception as exc:
            return Health(at=now, reasons=(f"store unreachable: {type(exc).__name__}: {exc}",),
                          counts=dict.fromkeys(JobState, 0), stats_loaded_at=None,
                          recount=RecountFacts(), syncer=SyncerFacts())
        reasons = [r for o in owners
                   for r in assess_owner(o, published.get(o.boot_id or ""), now=now,
                                         policy=self._policy)]
        live = next(iter(published.values()), None)
        alive = {o.boot_id for o in owners if o.alive}
        return Health(
            at=now, reasons=tuple(reasons), counts=counts, stats_loaded_at=now,
            recount=_recount(live), syncer=_syncer(live),
            workers=tuple(WorkerFacts(w, w.boot_id in alive) for w in notable_workers(rows)),
            paused=bool(live and live.get("paused")))

    async def jobs(self, state: JobState | None, limit: int, after: int | None) -> JobPage:
        return await list_jobs(await self._reader(), state, limit, after)

    async def job(self, key: str) -> dict[str, Any] | None:
        store = await self._reader()
        row = await store.get_job(key)
        if row is None:
            return None
        held = (await self._progress()).get(key)
        return job_detail(row, held.get("progress") if held is not None else None)

    async def _progress(self) -> dict[str, Mapping[str, Any]]:
        """What the live runtimes published of their jobs in hand, by key."""
        _, published = await self._cache.get("runtimes", self._reader_runtimes)
        return {str(item.get("key")): item for status in published.values()
                for item in status.get("in_hand") or () if isinstance(item, dict)}

    async def _reader_runtimes(self) -> tuple[list[OwnerInfo], dict[str, dict[str, Any]]]:
        return await self._runtimes(await self._reader())

    async def workers(self) -> list[WorkerFacts]:
        store = await self._reader()
        owners = await store.owners()
        alive = {o.boot_id for o in owners if o.alive}
        return [WorkerFacts(w, w.boot_id in alive) for w in await store.workers()]

    async def reconciliation(self) -> dict[str, Any]:
        store = await self._reader()
        _, published = await self._cache.get("runtimes", self._reader_runtimes)
        last = await store.get_meta("last_reconcile")
        return {"last_recorded": json.loads(last) if last else None,
                "runtimes": {boot: status.get("reconciliation")
                             for boot, status in published.items()}}

    async def overview(self) -> dict[str, Any]:
        health = await self.health()
        store = await self._reader()
        _, published = await self._cache.get("runtimes", self._reader_runtimes)
        live = next(iter(published.values()), None) or {}
        progress = await self._progress()
        restarts = await self._cache.get("restarts", lambda: store.events(
            kind="restart", limit=10))
        recount = health.recount
        return {
            "mode": self.mode, "store": self.store_name, "at": health.at,
            "worker": live.get("worker"),
            "health": {"status": "ok" if health.ok else "unhealthy",
                       "reasons": list(health.reasons)},
            "paused": health.paused,
            "counts": {s.value: health.counts.get(s, 0) for s in JobState},
            "total": sum(health.counts.values()), "in_hand": len(progress),
            **await store_overview(store, self._cache, health.counts, progress),
            "workers": [w.as_dict(health.at) for w in health.workers],
            "reconciliation": live.get("reconciliation"),
            "restarts": {"total": live.get("restarts_total", len(restarts)),
                         "recent": [e.as_dict() for e in restarts]},
            "drift": {"checks": recount.checks, "total": recount.drift_total,
                      "last": sum(abs(n) for n in recount.last_drift.values())},
        }

    async def metrics(self) -> MetricsSnapshot:
        health = await self.health()
        if health.stats_loaded_at is None:  # the store did not answer
            return MetricsSnapshot(counts=health.counts, healthy=False)
        store = await self._reader()
        _, published = await self._cache.get("runtimes", self._reader_runtimes)
        live = next(iter(published.values()), None)
        rejected = await self._cache.get("rejected", store.rejection_count)
        events = await self._cache.get("restart-events", lambda: store.events(
            kind="restart", limit=_EVENTS_READ))
        restarts: dict[str, int] = {}
        for event in events:
            actor = f"{event.detail.get('supervisor')}/{event.detail.get('actor')}"
            restarts[actor] = restarts.get(actor, 0) + 1
        history = live.get("reconciliation") if live else None
        history = history if isinstance(history, dict) else {}
        return MetricsSnapshot(
            counts=health.counts, healthy=health.ok, paused=health.paused,
            commits=health.syncer.commits if live else None,
            commit_failures=health.syncer.failures_total if live else None,
            rejected=rejected, restarts=restarts,
            last_commit_age=health.syncer.age(health.at) if live else None,
            reconcile_cycles=_int(history.get("cycles_total")) if live else None,
            reconcile_fixed={str(k): _int(v) for k, v in
                             (history.get("fixed_total") or {}).items()},
            reconcile_seconds=_float(history.get("seconds_total")),
            drift_checks=health.recount.checks if live else None,
            drift_total=health.recount.drift_total if live else None,
            drift_last=(sum(abs(n) for n in health.recount.last_drift.values())
                        if live else None))

    async def refresh_stats(self) -> dict[str, Any]:
        raise ApiError(409, _READ_ONLY)

    async def reconcile(self, *, dry_run: bool) -> dict[str, Any]:
        raise ApiError(409, _READ_ONLY)

    async def retry(self, keys: list[str] | None) -> dict[str, Any]:
        raise ApiError(409, _READ_ONLY)

    async def cancel(self, keys: list[str] | None, state: str | None) -> dict[str, Any]:
        raise ApiError(409, _READ_ONLY)

    async def pause(self, paused: bool) -> dict[str, Any]:
        raise ApiError(409, _READ_ONLY)


def _syncer(live: Mapping[str, Any] | None) -> SyncerFacts:
    syncer = (live or {}).get("syncer")
    if not isinstance(syncer, dict):
        return SyncerFacts()
    queued = ((live or {}).get("mailboxes") or {}).get("syncer", {}).get("queued", 0)
    return SyncerFacts(commits=_int(syncer.get("commits")),
                       last_commit_at=_opt_float(syncer.get("last_commit_at")),
                       error=syncer.get("error"), error_since=_opt_float(syncer.get("error_since")),
                       retries=_int(syncer.get("retries")), queued=_int(queued),
                       rejected=_int(syncer.get("rejected")),
                       failures_total=_int(syncer.get("failures_total")))


def _recount(live: Mapping[str, Any] | None) -> RecountFacts:
    stats = (live or {}).get("stats")
    if not isinstance(stats, dict):
        return RecountFacts()
    syncer = (live or {}).get("syncer") or {}
    drift = {JobState(s): _int(n) for s, n in (stats.get("last_drift") or {}).items()
             if s in _STATES}
    return RecountFacts(last_at=_opt_float(syncer.get("last_check_at")),
                        checks=_int(stats.get("drift_checks")), last_drift=drift,
                        drift_total=_int(stats.get("drift_total")))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
