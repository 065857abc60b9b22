"""``syncward reconcile`` and ``syncward retry``: the two commands that change a store.

Both open the store for writing — an exclusive store (SQLite) takes its lock, so a runtime
holding it makes them fail with "in use", exit 2; a shared one (PostgreSQL) lets them in
beside live runtimes, whose leases reconciliation leaves alone — apply one message through
`Store.apply` (the same write the runtime's syncer would make) and close it again.
Neither runs any job. On a running runtime, use the operations API
(`POST /api/reconciliation`, `POST /api/jobs/retry`).
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
from syncward.messages import Reconcile, ReconcileReport, Requeue
from syncward.report import dumps
from syncward.store import open_store

__all__ = ["reconcile", "retry"]

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
