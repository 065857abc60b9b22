"""``syncward reconcile``, ``syncward retry`` and ``syncward cancel``: the commands that
change a store.

Each opens the store for writing — an exclusive store (SQLite) takes its lock, so a runtime
holding it makes them fail with "in use", exit 2; a shared one (PostgreSQL) lets them in
beside live runtimes, whose leases reconciliation leaves alone — apply one message through
`Store.apply` (the same write the runtime's syncer would make) and close it again.
None runs any job. On a running runtime, use the operations API
(`POST /api/reconciliation`, `POST /api/jobs/retry`, `POST /api/jobs/cancel`).

``cancel`` beside live runtimes (a shared store): a leased job is skipped at once and its
lease ends; the runtime running it stops its handler when its next renewal is refused,
within about two thirds of the job's lease time (see `syncward.actors.attempts`).
"""

from __future__ import annotations

import re
import sys
import time
import uuid

import click

from syncward.cli.common import ExitCode, guard, require_store_file, run_async
from syncward.cli.options import db_option, json_option, stdout
from syncward.cli.views import render_reconcile
from syncward.errors import ConfigError
from syncward.jobs import JobState
from syncward.messages import Cancel, CancelResult, Reconcile, ReconcileReport, Requeue
from syncward.report import dumps
from syncward.store import open_store

__all__ = ["cancel", "reconcile", "retry"]

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


# --- reconcile ---------------------------------------------------------------------------


async def _reconcile(db: str, dry_run: bool) -> ReconcileReport:
    store = await open_store(db)
    try:
        result = await store.apply([Reconcile(uuid.uuid4().hex, dry_run=dry_run)],
                                   now=time.time(), dry_run=dry_run)
    finally:
        await store.aclose()
    rec = result.results[0]
    assert isinstance(rec, ReconcileReport)
    return rec


@click.command(short_help="Run start-up reconciliation, without doing any work.")
@db_option
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@json_option
@guard
def reconcile(db: str, dry_run: bool, as_json: bool) -> None:
    """Run start-up reconciliation against the store, without doing any work.

    Every lease is stale (no runtime may hold the store meanwhile: this command takes
    its lock), so leased jobs go back to planned (or to failed when their attempts are
    exhausted) and workers still marked running are marked dead.
    """
    require_store_file(db)
    rec = run_async(_reconcile, db, dry_run, loop="asyncio")
    if as_json:
        click.echo(dumps(rec.as_dict()))
    else:
        render_reconcile(stdout(), rec)


# --- retry -------------------------------------------------------------------------------


async def _retry(db: str, state: JobState, keys: tuple[str, ...] | None
                 ) -> tuple[int, list[str]]:
    store = await open_store(db)
    try:
        skipped: list[str] = []
        if keys:
            before = await store.key_states(list(keys))
            skipped = [k for k in keys if before.get(k) is not state]
        result = await store.apply([Requeue(state=state, keys=keys)], now=time.time())
    finally:
        await store.aclose()
    count = result.results[0]
    if not isinstance(count, int):
        raise ConfigError(f"cannot requeue: {getattr(count, 'reason', count)}")
    return count, skipped


@click.command()
@db_option
@click.option("--state", type=click.Choice(["failed"]), default="failed", show_default=True,
              help="Requeue jobs in this state (failed is the dead-letter set).")
@click.option("--key", "keys", multiple=True, metavar="KEY",
              help="Only this job key (64 hex digits); repeat for more. Default: all.")
@json_option
@guard
def retry(db: str, state: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Send failed jobs back to planned with their attempts reset.

    The manual path for the dead-letter set; the next `syncward run` (or any runtime on
    the store) picks them up. Exits 1 when a given --key was not requeued.
    """
    bad = [k for k in keys if not _KEY_RE.match(k.lower())]
    if bad:
        raise ConfigError(f"--key: not a job key (64 hex digits): {', '.join(bad)}")
    require_store_file(db)
    wanted = tuple(k.lower() for k in keys) or None
    count, skipped = run_async(_retry, db, JobState(state), wanted, loop="asyncio")
    if as_json:
        click.echo(dumps({"requeued": count, "not_requeued": skipped}))
    else:
        click.echo(f"requeued {count} {state} job(s) to planned")
        for k in skipped:
            click.echo(f"not requeued (no such {state} job): {k}", err=True)
    if skipped:
        sys.exit(int(ExitCode.FAILED))


# --- cancel ------------------------------------------------------------------------------


async def _cancel(db: str, keys: tuple[str, ...] | None, state: JobState | None
                  ) -> CancelResult:
    store = await open_store(db)
    try:
        now = time.time()
        result = await store.apply([Cancel(keys=keys, state=state, decided_at=now)], now=now)
    finally:
        await store.aclose()
    done = result.results[0]
    if not isinstance(done, CancelResult):
        raise ConfigError(f"cannot cancel: {getattr(done, 'reason', done)}")
    return done


@click.command(short_help="Cancel jobs: planned or leased ones become skipped.")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@db_option
@click.option("--state", type=click.Choice(["planned", "leased"]), default=None,
              help="Cancel every job in this state (with KEYs: only those in it).")
@json_option
@guard
def cancel(keys: tuple[str, ...], db: str, state: str | None, as_json: bool) -> None:
    """Cancel jobs: each KEY (a job key, 64 hex digits), or every job in --state.

    A planned job becomes skipped (last error "cancelled"). A leased one becomes skipped
    and its lease ends: the runtime running it stops its handler when its next lease
    renewal is refused (on a shared store; an exclusive one is refused while a runtime
    holds it: cancel through its API instead). Effects it committed stay committed; jobs
    already finished are left alone. Exits 1 when a given KEY was not cancelled.
    """
    bad = [k for k in keys if not _KEY_RE.match(k.lower())]
    if bad:
        raise ConfigError(f"KEY: not a job key (64 hex digits): {', '.join(bad)}")
    if not keys and state is None:
        raise ConfigError("cancel: give job keys (KEY...) or --state planned|leased")
    require_store_file(db)
    wanted = tuple(dict.fromkeys(k.lower() for k in keys)) or None
    done = run_async(_cancel, db, wanted, None if state is None else JobState(state),
                     loop="asyncio")
    left = [*done.not_found, *done.finished, *done.other_state]
    if as_json:
        click.echo(dumps(done.as_dict()))
    else:
        click.echo(f"cancelled {done.cancelled} job(s): {done.planned} planned, "
                   f"{done.leased} leased")
        for k in done.already_cancelled:
            click.echo(f"already cancelled: {k}", err=True)
        for why, found in (("no such job", done.not_found),
                           ("already finished", done.finished),
                           (f"not {state}", done.other_state)):
            for k in found:
                click.echo(f"not cancelled ({why}): {k}", err=True)
    if left:
        sys.exit(int(ExitCode.FAILED))
