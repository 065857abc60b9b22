"""What the command line shows: status gathered from a read-only store, and rich renderings.

Status reads the store through `StoreReader` without taking it (SQLite WAL lets a reader
in beside the running writer), so it works while a runtime runs. What only lives in the
running process comes from what that runtime publishes (`StoreReader.published_status`)
and from the store's own evidence of its owners (`StoreReader.owners`): for SQLite, the
pid in the owner lock file, and the modification time of the database or its WAL as
the last commit.

Design note: each view is a plain dict first (that is what ``--json`` prints) and a rich
rendering of that dict second, so the two can never disagree.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.table import Table

from syncward.jobs import JobState
from syncward.store import open_store

if TYPE_CHECKING:
    from rich.console import Console

    from syncward._cli_run import RunOutcome

__all__ = ["collect_status", "render_reconcile", "render_report", "render_status",
           "render_summary"]

_LISTED = 20


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    delta = now - at
    return f"{_when(at)} ({delta:,.1f}s ago)" if delta >= 0 else f"{_when(at)} (in {-delta:,.1f}s)"


def _rel(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    delta = now - at
    return f"{delta:,.1f}s ago" if delta >= 0 else f"in {-delta:,.1f}s"


def _identity(identity: Any) -> str:
    return json.dumps(identity, ensure_ascii=False, separators=(",", ":"))


# --- status ------------------------------------------------------------------------------


async def collect_status(url: str, name: str) -> dict[str, Any]:
    """The status of the store at ``url`` as a JSON-ready dict (read-only; nothing taken).

    ``name`` is how the store is named to a person (its path, for SQLite).
    """
    store = await open_store(url, readonly=True)
    try:
        counts = await store.counts()
        leases = await store.active_leases(limit=100)
        workers = await store.workers()
        reconcile = await store.get_meta("last_reconcile")
        restarts = await store.events(kind="restart", limit=1_000_000)
        drift = await store.events(kind="stats_drift", limit=1_000_000)
        latest = await store.latest_run()
        info = await store.run_info(latest) if latest is not None else None
        run: dict[str, Any] | None = None
        if info is not None:
            states = await store.run_states(info.id)
            run = {**info.as_dict(), "states": {s.value: states[s] for s in JobState}}
        owners = await store.owners()
        owner = owners[0].as_dict() if owners else None
        live_boot = owner.get("boot_id") if owner and owner.get("alive") is not False else None
        published = await store.published_status(live_boot) if live_boot else None
        last_write = await store.last_write_at()
    finally:
        await store.aclose()
    return {
        "store": name,
        "owner": owner,
        "counts": {s.value: counts[s] for s in JobState},
        "total": sum(counts.values()),
        "active_leases": [
            {"key": lease.key, "owner": lease.owner, "boot_id": lease.boot_id,
             "fence": lease.fence, "expires_at": lease.expires_at, "stage": lease.stage,
             "owner_alive": bool(live_boot) and lease.boot_id == live_boot}
            for lease in leases],
        "workers": [
            {"name": w.name, "status": w.status, "pid": w.pid, "host": w.host,
             "started_at": w.started_at, "heartbeat_at": w.heartbeat_at,
             "alive": bool(live_boot) and w.boot_id == live_boot}
            for w in workers],
        "last_reconcile": json.loads(reconcile) if reconcile else None,
        "syncer": {"running": bool(owner and owner.get("alive") is not False),
                   "last_commit_at": last_write,
                   **(published.get("syncer", {}) if published else {})},
        "runtime": published,
        "restarts": {"total": len(restarts), "recent": [e.as_dict() for e in restarts[:5]]},
        "stats_drift": sum(int(e.detail.get("off", 0)) for e in drift),
        "latest_run": run,
    }


def render_status(console: Console, st: dict[str, Any]) -> None:
    now = time.time()
    owner = st["owner"]
    if owner is None:
        console.print(f"[bold]Store[/] {st['store']}: no runtime holds it")
    else:
        state = {True: "running", False: "gone (killed or crashed; recovered at next start)",
                 None: "on another host"}[owner["alive"]]
        console.print(f"[bold]Store[/] {st['store']}: owner pid {owner.get('pid')} on "
                      f"{owner.get('host')} since {owner.get('since')}: {state}")
    counts = Table(title="Jobs by state", title_justify="left", min_width=40)
    for s in JobState:
        counts.add_column(s.value, justify="right")
    counts.add_column("total", justify="right")
    counts.add_row(*(f"{st['counts'][s.value]:,}" for s in JobState), f"{st['total']:,}")
    console.print(counts)
    _render_leases(console, st["active_leases"], now)
    _render_workers(console, st["workers"], now)
    syncer = st["syncer"]
    line = (f"[bold]Syncer[/]: {'running' if syncer['running'] else 'not running'}; "
            f"last commit {_ago(syncer['last_commit_at'], now)}")
    if "commits" in syncer:
        line += f"; {syncer['commits']:,} commits, {syncer['rejected']:,} rejected messages"
    console.print(line)
    if syncer.get("error"):
        console.print(f"  [bold red]failing[/] since {_when(syncer.get('error_since'))} "
                      f"({syncer.get('retries')} retries): {syncer['error']}")
    restarts = st["restarts"]
    console.print(f"[bold]Restarts[/]: {restarts['total']}")
    for r in restarts["recent"]:
        console.print(f"  {_when(r.get('at'))} {r.get('supervisor')}/{r.get('actor')} "
                      f"{r.get('kind')}: {r.get('error')}")
    console.print(f"[bold]Stats drift[/]: {st['stats_drift']}")
    rec = st["last_reconcile"]
    if rec is None:
        console.print("[bold]Last reconciliation[/]: none recorded")
    else:
        console.print(f"[bold]Last reconciliation[/] {_when(rec.get('at'))}: "
                      f"{rec.get('leases_requeued', 0)} lease(s) requeued, "
                      f"{rec.get('leases_failed', 0)} failed, workers marked dead: "
                      f"{', '.join(rec.get('workers_marked_dead') or []) or 'none'}")
    run = st["latest_run"]
    if run is not None:
        states = ", ".join(f"{k} {v:,}" for k, v in run["states"].items() if v) or "no jobs"
        console.print(f"[bold]Latest run[/] {run['id']} ({run['status']}, started "
                      f"{_when(run['started_at'])}): {run['source']}: {states}")


def _render_leases(console: Console, leases: list[dict[str, Any]], now: float) -> None:
    if not leases:
        console.print("[bold]Active leases[/]: none")
        return
    console.print(f"[bold]Active leases[/] ({len(leases)}):")
    table = Table()
    for col in ("job", "owner", "fence", "expires", "stage"):
        table.add_column(col)
    for lease in leases:
        who = lease["owner"] or "-"
        if not lease["owner_alive"]:
            who += " (gone)"
        table.add_row(lease["key"][:16], who, str(lease["fence"]),
                      _rel(lease["expires_at"], now), lease["stage"] or "-")
    console.print(table)


def _render_workers(console: Console, workers: list[dict[str, Any]], now: float) -> None:
    if not workers:
        console.print("[bold]Workers[/]: none")
        return
    console.print("[bold]Workers[/]:")
    table = Table()
    for col in ("name", "status", "pid", "host", "started", "last seen"):
        table.add_column(col)
    for w in workers:
        status = w["status"]
        if status == "running" and not w["alive"]:
            status += " (process gone: marked dead at next start)"
        table.add_row(w["name"], status, str(w["pid"]), str(w["host"]),
                      _when(w["started_at"]), _rel(w["heartbeat_at"], now))
    console.print(table)


# --- report and run summary --------------------------------------------------------------


def render_report(console: Console, report: dict[str, Any], *, title: str,
                  source: str | None, run_counts: dict[str, int] | None = None) -> None:
    console.print(title, markup=False)
    table = Table()
    table.add_column("state")
    table.add_column("store", justify="right")
    if run_counts is not None:
        table.add_column("this run", justify="right")
    for s in JobState:
        row = [s.value, f"{report['counts'][s.value]:,}"]
        if run_counts is not None:
            row.append(f"{run_counts[s.value]:,}")
        table.add_row(*row)
    total = [f"{report['total']:,}"]
    if run_counts is not None:
        total.append(f"{sum(run_counts.values()):,}")
    table.add_row("total", *total, end_section=True)
    console.print(table)
    m = report["manifest"]
    if m is not None:
        console.print(
            f"Manifest: {m['entries']:,} entries ({m['distinct']:,} distinct), "
            f"{len(report['rejected']):,} rejected, {len(m['missing']):,} missing, "
            f"{m['not_terminal']:,} not finished")
        for identity in m["missing"][:_LISTED]:
            console.print(f"  missing: {_identity(identity)}")
    _render_list(console, "Rejected lines", [
        f"{source or 'manifest'}:{r['line']}: {r['reason']}" for r in report["rejected"]])
    _render_list(console, "Failures", [
        f"{f['key'][:16]} {_identity(f['identity'])} after {f['attempts']} attempt(s): "
        f"{f['error']}" for f in report["failures"]])
    if report["stats_drift"]:
        console.print(f"[bold red]Stats drift[/]: {report['stats_drift']} (should be 0)")


def _render_list(console: Console, title: str, lines: list[str]) -> None:
    if not lines:
        return
    console.print(f"[bold]{title}[/] ({len(lines):,}):", highlight=False)
    for line in lines[:_LISTED]:
        console.print(f"  {line}", highlight=False, markup=False)
    if len(lines) > _LISTED:
        console.print(f"  … and {len(lines) - _LISTED:,} more (see --json)")


def render_summary(console: Console, outcome: RunOutcome, code: int) -> None:
    states = {s.value: outcome.run_states[s] for s in JobState}
    verb = {0: "finished", 1: "finished with problems", 3: "interrupted"}.get(code, "ended")
    title = (f"Run {outcome.run_id} of {outcome.source}: {verb} in {outcome.elapsed:,.1f}s "
             f"(exit {code})")
    render_report(console, outcome.report, title=title, source=outcome.source,
                  run_counts=states)
    c = outcome.counters
    console.print(f"Submitted {c.entries:,} entries: {c.new:,} new job(s), "
                  f"{c.duplicates:,} already known (not redone).")
    if code == 3:
        how = "stopped at once" if outcome.killed else "in-flight jobs drained"
        console.print(f"Interrupted ({how}): run the same command again to resume; "
                      "committed jobs are not redone.")


def render_reconcile(console: Console, rec: dict[str, Any]) -> None:
    head = "Reconciliation (dry run: nothing changed)" if rec["dry_run"] else "Reconciliation"
    console.print(f"[bold]{head}[/] at {_when(rec['at'])}")
    console.print(f"  leases requeued:     {rec['leases_requeued']}")
    console.print(f"  leases failed:       {rec['leases_failed']} (attempts exhausted)")
    dead = ", ".join(rec["workers_marked_dead"]) or "none"
    console.print(f"  workers marked dead: {dead}")
    for line in rec["lost"]:
        console.print(f"  {line}", markup=False, highlight=False)
