"""What the command line shows: rich renderings of the status, the report and a run.

Each rendering reads the same frozen dataclass that ``--json`` turns into a dict
(`Status`, `Report`, `ReconcileReport`, a run's outcome), so the table and the JSON can
never disagree. Nothing here reads the store.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.table import Table

from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from syncward.cli.run import RunOutcome
    from syncward.cli.status import LeaseView, Status, WorkerView
    from syncward.messages import ReconcileReport
    from syncward.report import Report

__all__ = ["render_reconcile", "render_report", "render_status", "render_summary"]

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


def render_status(console: Console, st: Status) -> None:
    now = time.time()
    owner = st.owner
    if owner is None:
        console.print(f"[bold]Store[/] {st.store}: no runtime holds it")
    else:
        state = {True: "running", False: "gone (killed or crashed; recovered at next start)",
                 None: "on another host"}[owner.alive]
        console.print(f"[bold]Store[/] {st.store}: owner pid {owner.pid} on "
                      f"{owner.host} since {owner.since}: {state}")
    counts = Table(title="Jobs by state", title_justify="left", min_width=40)
    for s in JobState:
        counts.add_column(s.value, justify="right")
    counts.add_column("total", justify="right")
    counts.add_row(*(f"{st.counts[s]:,}" for s in JobState), f"{st.total:,}")
    console.print(counts)
    _render_leases(console, st.active_leases, now)
    _render_workers(console, st.workers, now)
    _render_syncer(console, st, now)
    restarts = st.restarts
    console.print(f"[bold]Restarts[/]: {restarts.total}")
    for event in restarts.recent:
        r = event.as_dict()  # the event's detail names the actor and the error
        console.print(f"  {_when(r.get('at'))} {r.get('supervisor')}/{r.get('actor')} "
                      f"{r.get('kind')}: {r.get('error')}")
    console.print(f"[bold]Stats drift[/]: {st.stats_drift}")
    rec = st.last_reconcile
    if rec is None:
        console.print("[bold]Last reconciliation[/]: none recorded")
    else:
        console.print(f"[bold]Last reconciliation[/] {_when(rec.get('at'))}: "
                      f"{rec.get('leases_requeued', 0)} lease(s) requeued, "
                      f"{rec.get('leases_failed', 0)} failed, workers marked dead: "
                      f"{', '.join(rec.get('workers_marked_dead') or []) or 'none'}")
    run = st.latest_run
    if run is not None:
        states = ", ".join(f"{s.value} {run.states[s]:,}" for s in JobState
                           if run.states[s]) or "no jobs"
        info = run.info
        console.print(f"[bold]Latest run[/] {info.id} ({info.status}, started "
                      f"{_when(info.started_at)}): {info.source}: {states}")


def _render_syncer(console: Console, st: Status, now: float) -> None:
    syncer, published = st.syncer, st.syncer.published
    line = (f"[bold]Syncer[/]: {'running' if syncer.running else 'not running'}; "
            f"last commit {_ago(syncer.last_commit_at, now)}")
    if "commits" in published:
        line += (f"; {published['commits']:,} commits, {published['rejected']:,} rejected "
                 "messages")
    console.print(line)
    if published.get("error"):
        console.print(f"  [bold red]failing[/] since {_when(published.get('error_since'))} "
                      f"({published.get('retries')} retries): {published['error']}")


def _render_leases(console: Console, leases: tuple[LeaseView, ...], now: float) -> None:
    if not leases:
        console.print("[bold]Active leases[/]: none")
        return
    console.print(f"[bold]Active leases[/] ({len(leases)}):")
    table = Table()
    for col in ("job", "owner", "fence", "expires", "stage"):
        table.add_column(col)
    for lease in leases:
        row = lease.row
        who = row.owner or "-"
        if not lease.owner_alive:
            who += " (gone)"
        table.add_row(row.key[:16], who, str(row.fence), _rel(row.expires_at, now),
                      row.stage or "-")
    console.print(table)


def _render_workers(console: Console, workers: tuple[WorkerView, ...], now: float) -> None:
    if not workers:
        console.print("[bold]Workers[/]: none")
        return
    console.print("[bold]Workers[/]:")
    table = Table()
    for col in ("name", "status", "pid", "host", "started", "last seen"):
        table.add_column(col)
    for worker in workers:
        w = worker.row
        status = w.status
        if status == "running" and not worker.alive:
            status += " (process gone: marked dead at next start)"
        table.add_row(w.name, status, str(w.pid), str(w.host), _when(w.started_at),
                      _rel(w.heartbeat_at, now))
    console.print(table)


# --- report and run summary --------------------------------------------------------------


def render_report(console: Console, report: Report, *, title: str, source: str | None,
                  run_counts: Mapping[JobState, int] | None = None) -> None:
    console.print(title, markup=False)
    table = Table()
    table.add_column("state")
    table.add_column("store", justify="right")
    if run_counts is not None:
        table.add_column("this run", justify="right")
    for s in JobState:
        row = [s.value, f"{report.counts[s]:,}"]
        if run_counts is not None:
            row.append(f"{run_counts[s]:,}")
        table.add_row(*row)
    total = [f"{report.total:,}"]
    if run_counts is not None:
        total.append(f"{sum(run_counts.values()):,}")
    table.add_row("total", *total, end_section=True)
    console.print(table)
    m = report.manifest
    if m is not None:
        console.print(
            f"Manifest: {m.entries:,} entries ({m.distinct:,} distinct), "
            f"{len(report.rejected):,} rejected, {len(m.missing):,} missing, "
            f"{m.not_terminal:,} not finished")
        for identity in m.missing[:_LISTED]:
            console.print(f"  missing: {_identity(identity)}")
    _render_list(console, "Rejected lines", [
        f"{source or 'manifest'}:{r.line}: {r.reason}" for r in report.rejected])
    _render_list(console, "Failures", [
        f"{f.key[:16]} {_identity(f.identity)} after {f.attempts} attempt(s): {f.error}"
        for f in report.failures])
    if report.stats_drift:
        console.print(f"[bold red]Stats drift[/]: {report.stats_drift} (should be 0)")


def _render_list(console: Console, title: str, lines: list[str]) -> None:
    if not lines:
        return
    console.print(f"[bold]{title}[/] ({len(lines):,}):", highlight=False)
    for line in lines[:_LISTED]:
        console.print(f"  {line}", highlight=False, markup=False)
    if len(lines) > _LISTED:
        console.print(f"  … and {len(lines) - _LISTED:,} more (see --json)")


def render_summary(console: Console, outcome: RunOutcome, code: int) -> None:
    verb = {0: "finished", 1: "finished with problems", 3: "interrupted"}.get(code, "ended")
    run = f"Run {outcome.run_id}" if outcome.run_id is not None else "Run"  # None: --schedule
    title = (f"{run} of {outcome.source}: {verb} in {outcome.elapsed:,.1f}s "
             f"(exit {code})")
    render_report(console, outcome.report, title=title, source=outcome.source,
                  run_counts=outcome.run_states)
    c = outcome.counters
    if outcome.run_id is not None:
        console.print(f"Submitted {c.entries:,} entries: {c.new:,} new job(s), "
                      f"{c.duplicates:,} already known (not redone).")
    if code == 3:
        how = "stopped at once" if outcome.killed else "in-flight jobs drained"
        console.print(f"Interrupted ({how}): run the same command again to resume; "
                      "committed jobs are not redone.")


def render_reconcile(console: Console, rec: ReconcileReport) -> None:
    head = "Reconciliation (dry run: nothing changed)" if rec.dry_run else "Reconciliation"
    console.print(f"[bold]{head}[/] at {_when(rec.at)}")
    console.print(f"  leases requeued:     {rec.leases_requeued}")
    console.print(f"  leases failed:       {rec.leases_failed} (attempts exhausted)")
    dead = ", ".join(rec.workers_marked_dead) or "none"
    console.print(f"  workers marked dead: {dead}")
    for line in rec.lost:
        console.print(f"  {line}", markup=False, highlight=False)
