"""``syncward status``: where the store stands, read-only, also while a runtime runs.

Status reads the store through `StoreReader` without taking it (SQLite WAL lets a reader
in beside the running writer), so it works while a runtime runs. What only lives in the
running process comes from what that runtime publishes (`StoreReader.published_status`)
and from the store's own evidence of its owners (`StoreReader.owners`): for SQLite, the
pid in the owner lock file, and the modification time of the database or its WAL as
the last commit.

`collect_status` returns a `Status`, a frozen dataclass; ``Status.as_dict()`` is the JSON
edge (what ``--json`` prints) and `syncward.cli.views.render_status` renders the same
object, so the two can never disagree.

Health: status exits 1 when the store's runtime is unhealthy, so it can serve as a
container's health check. That is judged by `syncward.health.assess_owner`, as the web
app's ``/health`` judges a watched store: a runtime that died holding the store, one
that has not published its status for a while (its event loop is stuck), or one that
publishes reasons of its own (failing commits, a restart loop, ...). No runtime at all
is not unhealthy: nothing is running. The jobs in a live runtime's downloaders, with the
progress their handlers reported (``ctx.progress``), come from what it publishes.

Design note: what a running runtime published (``runtime``, the syncer's counters) and
what the last start-up reconciliation recorded (``last_reconcile``) are JSON documents
written by another process, possibly by another version of syncward; they are carried
as they were read, not parsed into our types, so that ``--json`` shows them whole.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from syncward.cli.common import guard, require_store_file, run_async
from syncward.cli.options import db_option, json_option, stdout
from syncward.cli.views import render_status
from syncward.health import HealthPolicy, assess_owner
from syncward.jobs import JobState
from syncward.report import dumps
from syncward.store import open_store

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from syncward.store.base import EventRow, LeaseRow, OwnerInfo, RunInfo, WorkerRow

__all__ = ["LeaseView", "Restarts", "RunView", "Status", "SyncerView", "WorkerView",
           "collect_status", "render_health", "status"]

_LEASES_LISTED = 100
_RECENT_RESTARTS = 5
_ALL = 1_000_000
_OWNERS_ASSESSED = 20


@dataclass(frozen=True, slots=True)
class LeaseView:
    """An active lease, and whether its owner is the live runtime."""

    row: LeaseRow
    owner_alive: bool

    def as_dict(self) -> dict[str, Any]:
        r = self.row
        return {"key": r.key, "owner": r.owner, "boot_id": r.boot_id, "fence": r.fence,
                "expires_at": r.expires_at, "stage": r.stage, "owner_alive": self.owner_alive}


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as recorded, and whether it belongs to the live runtime."""

    row: WorkerRow
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        w = self.row
        return {"name": w.name, "status": w.status, "pid": w.pid, "host": w.host,
                "started_at": w.started_at, "heartbeat_at": w.heartbeat_at,
                "alive": self.alive}


@dataclass(frozen=True, slots=True)
class SyncerView:
    """The syncer: whether a runtime holds the store, its last commit, what it published.

    ``last_commit_at`` is the published one when the live runtime published it, else the
    store's own evidence. ``published`` holds the live syncer's counters (``commits``,
    ``rejected``, ``error``, ...), empty when no live runtime published any.
    """

    running: bool
    last_commit_at: float | None
    published: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"running": self.running, "last_commit_at": self.last_commit_at,
                **self.published}


@dataclass(frozen=True, slots=True)
class Restarts:
    """Restarts of actors recorded in the store: how many, and the newest few."""

    total: int
    recent: tuple[EventRow, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "recent": [e.as_dict() for e in self.recent]}


@dataclass(frozen=True, slots=True)
class RunView:
    """The latest run and its manifest's distinct keys counted by state."""

    info: RunInfo
    states: Mapping[JobState, int]

    def as_dict(self) -> dict[str, Any]:
        return {**self.info.as_dict(), "states": {s.value: self.states[s] for s in JobState}}


@dataclass(frozen=True, slots=True)
class Status:
    """Where the store stands (see the module docstring). ``counts`` holds every state."""

    store: str
    owner: OwnerInfo | None
    counts: Mapping[JobState, int]
    active_leases: tuple[LeaseView, ...]
    workers: tuple[WorkerView, ...]
    last_reconcile: dict[str, Any] | None
    syncer: SyncerView
    runtime: dict[str, Any] | None
    restarts: Restarts
    stats_drift: int
    latest_run: RunView | None
    unhealthy: tuple[str, ...] = ()  # the reasons; none: healthy
    in_hand: tuple[dict[str, Any], ...] = ()  # as the live runtime published them

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def healthy(self) -> bool:
        return not self.unhealthy

    def as_dict(self) -> dict[str, Any]:
        """What ``status --json`` prints, keys in this order."""
        return {
            "store": self.store,
            "owner": self.owner.as_dict() if self.owner is not None else None,
            "counts": {s.value: self.counts[s] for s in JobState},
            "total": self.total,
            "active_leases": [lease.as_dict() for lease in self.active_leases],
            "workers": [w.as_dict() for w in self.workers],
            "last_reconcile": self.last_reconcile,
            "syncer": self.syncer.as_dict(),
            "runtime": self.runtime,
            "restarts": self.restarts.as_dict(),
            "stats_drift": self.stats_drift,
            "latest_run": self.latest_run.as_dict() if self.latest_run is not None else None,
            "health": {"status": "ok" if self.healthy else "unhealthy",
                       "reasons": list(self.unhealthy)},
            "in_hand": list(self.in_hand),
        }


async def collect_status(url: str, name: str) -> Status:
    """The status of the store at ``url`` (read-only; nothing taken).

    ``name`` is how the store is named to a person (its path, for SQLite).
    Raises:
        StoreError: the store cannot be opened or read.
    """
    store = await open_store(url, readonly=True)
    try:
        counts = await store.counts()
        leases = await store.active_leases(limit=_LEASES_LISTED)
        workers = await store.workers()
        reconcile = await store.get_meta("last_reconcile")
        restarts = await store.events(kind="restart", limit=_ALL)
        drift = await store.events(kind="stats_drift", limit=_ALL)
        latest = await store.latest_run()
        info = await store.run_info(latest) if latest is not None else None
        run = RunView(info, await store.run_states(info.id)) if info is not None else None
        owners = await store.owners()
        owner = owners[0] if owners else None
        live_boot = owner.boot_id if owner is not None and owner.alive is not False else None
        published = await store.published_status(live_boot) if live_boot else None
        last_write = await store.last_write_at()
        unhealthy: list[str] = []
        for other in owners[:_OWNERS_ASSESSED]:
            seen = published if other.boot_id == live_boot else (
                await store.published_status(other.boot_id)
                if other.boot_id and other.alive is not False else None)
            unhealthy.extend(assess_owner(other, seen, now=time.time(), policy=HealthPolicy()))
    finally:
        await store.aclose()
    syncer_published: dict[str, Any] = published.get("syncer", {}) if published else {}
    return Status(
        store=name,
        owner=owner,
        counts={s: counts[s] for s in JobState},
        active_leases=tuple(LeaseView(lease, bool(live_boot) and lease.boot_id == live_boot)
                            for lease in leases),
        workers=tuple(WorkerView(w, bool(live_boot) and w.boot_id == live_boot)
                      for w in workers),
        last_reconcile=json.loads(reconcile) if reconcile else None,
        syncer=SyncerView(
            running=bool(owner is not None and owner.alive is not False),
            last_commit_at=syncer_published.get("last_commit_at", last_write),
            published=syncer_published),
        runtime=published,
        restarts=Restarts(total=len(restarts), recent=tuple(restarts[:_RECENT_RESTARTS])),
        stats_drift=sum(int(e.detail.get("off", 0)) for e in drift),
        latest_run=run,
        unhealthy=tuple(unhealthy),
        in_hand=tuple(item for item in (published or {}).get("in_hand") or ()
                      if isinstance(item, dict)),
    )


@click.command(short_help="Where the store stands (read-only, also while running).")
@db_option
@json_option
@guard
def status(db: str, as_json: bool) -> None:
    """Where the store stands, read-only (works while a run is going on).

    Counts by state, active leases and their owners, workers and their status, the
    owner of the store (and whether its process is alive), the syncer's last commit,
    restarts of actors, stats drift, the last start-up reconciliation, the latest run,
    the jobs in progress (with what their handlers reported) and the runtime's health.

    Exits 1 when the runtime holding the store is unhealthy (gone, stuck, failing
    commits, an actor in a restart loop): usable as a container health check.
    """
    path = require_store_file(db)
    st = run_async(collect_status, db, path, loop="asyncio")
    if as_json:
        click.echo(dumps(st.as_dict()))
    else:
        console = stdout()
        render_status(console, st)
        render_health(console, st)
    if not st.healthy:
        sys.exit(1)


def render_health(console: Console, st: Status) -> None:
    """The jobs in progress and the health verdict, after `render_status`'s tables."""
    if st.in_hand:
        table = Table(title="In progress", title_justify="left")
        for name in ("job", "downloader", "attempt", "stage", "progress"):
            table.add_column(name)
        for item in st.in_hand:
            progress = item.get("progress") or {}
            done, total = progress.get("done"), progress.get("total")
            shown = "-" if done is None else (f"{done:g}" if total is None
                                              else f"{done:g}/{total:g}")
            if progress.get("fraction") is not None:
                shown += f" ({100 * progress['fraction']:.0f}%)"
            table.add_row(str(item.get("key", ""))[:16], str(item.get("downloader", "")),
                          f"{item.get('attempt')}/{item.get('max_attempts')}",
                          str(item.get("stage") or "-"), shown)
        console.print(table)
    if st.healthy:
        console.print("[bold]Health[/]: ok")
    else:
        console.print("[bold]Health[/]: [bold red]unhealthy[/]")
        for reason in st.unhealthy:
            console.print(f"  {reason}")
