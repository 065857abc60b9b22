"""The ``syncward`` command line: run, status, report, reconcile, retry.

This module only declares the commands (click) and wires them to their helpers:
``_cli_run`` (the run itself: signals, submission, progress), ``_cli_views`` (status and
renderings), ``_cli_common`` (exit codes, errors, handler loading, the event loop). It is
the entry point, so it is the one place that reads the environment (``SYNCWARD_DB``,
``SYNCWARD_DEBUG``) and the one place that may choose uvloop.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from syncward import __version__
from syncward._cli_common import (
    DEFAULT_DB,
    ExitCode,
    fail,
    guard,
    require_store_file,
    run_async,
)
from syncward._cli_redis import RedisRunOptions, is_redis_source, run_redis
from syncward._cli_run import RunConfig, execute, exit_code, prepare
from syncward._cli_views import (
    collect_status,
    render_reconcile,
    render_report,
    render_status,
    render_summary,
)
from syncward.adapters.manifest import open_manifest
from syncward.errors import ConfigError
from syncward.jobs import JobState
from syncward.messages import Reconcile, ReconcileReport, Requeue
from syncward.report import build_report, dumps
from syncward.store import open_store

if TYPE_CHECKING:
    from syncward.store.base import RunInfo

__all__ = ["cli", "main"]

_EPILOG = """\b
Exit status:
  0  every manifest entry succeeded or was skipped (other commands: done)
  1  some entries failed or were rejected, or the runtime stopped on an error
  2  usage or configuration error (nothing was done)
  3  interrupted before finishing; run the same command again to resume
"""
_FORMATS = click.Choice(["txt", "csv", "jsonl"], case_sensitive=False)
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def _db_option(fn: Any) -> Any:
    return click.option(
        "--db", default=DEFAULT_DB, show_default=True, envvar="SYNCWARD_DB",
        show_envvar=True, metavar="URL",
        help="The store: sqlite:///relative/path.db or sqlite:////absolute/path.db.")(fn)


def _json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print exactly one JSON object on stdout instead of tables.")(fn)


def _split_key(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(","))


def _stdout(**kwargs: Any) -> Console:
    return Console(highlight=False, soft_wrap=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100},
             epilog=_EPILOG)
@click.version_option(__version__, prog_name="syncward")
def cli() -> None:
    """Run a manifest of jobs through syncward's runtime, watch it, report on it.

    A job is named by its identity (job key = SHA-256 of the canonical identity), so
    running the same manifest again resumes: committed jobs are never redone. The store
    is one SQLite file; `status` and `report` read it while a run is going on.
    """


# --- run ---------------------------------------------------------------------------------


@cli.command(epilog=_EPILOG, short_help="Run every job of a manifest file (or stdin).")
@click.argument("source", metavar="SOURCE")
@click.option("--handler", "handler", required=True, metavar="TARGET",
              help="The async handler(job, ctx): package.module:function or "
                   "path/to/file.py:function.")
@_db_option
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True,
              help="Jobs run at the same time (downloaders).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Attempts per job before it is failed (the dead-letter set).")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Lease length; renewed while the handler runs.")
@click.option("--job-timeout", type=click.FloatRange(min=0), default=600.0,
              show_default=True, help="Seconds one attempt may take (0: no limit).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds in-flight jobs get to finish.")
@click.option("--key", "key", metavar="COL,...",
              help="Identity columns of a .csv (default: id), or the identity field name "
                   "of a .txt (default: id).")
@click.option("--format", "fmt", type=_FORMATS,
              help="Manifest format, when the extension does not say (stdin: txt).")
@click.option("--strict", is_flag=True,
              help="Check every manifest line first; any bad line refuses the whole run "
                   "(exit 2) before any work starts.")
@click.option("--until-empty", is_flag=True,
              help="redis:// SOURCE: stop once it is drained and every job has finished "
                   "(a manifest always runs until done).")
@click.option("--no-progress", is_flag=True,
              help="No progress bar (it is only shown when stdout is a terminal).")
@_json_option
@click.option("--loop", type=click.Choice(["auto", "asyncio", "uvloop"]), default="auto",
              show_default=True, help="Event loop: auto is uvloop when it is installed.")
@guard
def run(source: str, handler: str, db: str, concurrency: int, max_attempts: int,
        lease_seconds: float, job_timeout: float, grace: float, key: str | None,
        fmt: str | None, strict: bool, until_empty: bool, no_progress: bool, as_json: bool,
        loop: str) -> None:
    """Run every job of the manifest SOURCE (a file, or - for stdin) through TARGET.

    \b
    Manifest formats, by extension (or --format):
      .txt    one identity per line, {"id": line}; blank lines and # comments ignored
      .csv    a header line; the identity is the --key columns (default id), the other
              columns are the payload
      .jsonl  one object per line: {"identity": {...}, "payload": {...}} (payload optional)

    The manifest is read as a stream. Bad lines (not UTF-8, unparseable, wrong columns,
    empty or invalid identity) are rejected one by one, recorded with the run with their
    line number and reason, and listed in the report; the good lines still run. With
    --strict any bad line refuses the whole run first.

    Running the same command again resumes: committed jobs are not redone, and the
    report compares the store with this run's entries. SIGINT or SIGTERM stops leasing,
    lets in-flight jobs finish within --grace, releases the rest and exits 3; a second
    SIGINT stops at once (the next run recovers its leases).

    At the end: a summary table, or with --json the report object (as `syncward report
    --json --run ID`).

    SOURCE may also be redis://HOST:PORT/DB?stream=NAME&group=G (a Redis stream read
    through a consumer group) or redis://HOST:PORT/DB?list=NAME (a Redis list, drained
    without loss); it runs until stopped (exit 3), or with --until-empty until drained.
    """
    if is_redis_source(source):
        if key or fmt or strict:
            raise ConfigError("--key, --format and --strict apply to manifests, not to "
                              "redis:// sources")
        run_redis(RedisRunOptions(
            source=source, handler=handler, db=db, concurrency=concurrency,
            max_attempts=max_attempts, lease_seconds=lease_seconds,
            job_timeout=job_timeout or None, grace=grace, until_empty=until_empty,
            progress=not no_progress, as_json=as_json, loop=loop))
    cfg = RunConfig(
        source=source, handler=handler, db=db, format=fmt, key=_split_key(key),
        concurrency=concurrency, max_attempts=max_attempts, lease_seconds=lease_seconds,
        job_timeout=job_timeout or None, grace=grace, strict=strict,
        progress=not no_progress, loop=loop)
    prepared = prepare(cfg)
    try:
        out = _stdout()
        console = out if cfg.progress and out.is_terminal else None
        outcome = run_async(execute, cfg, prepared, console, loop=loop)
    finally:
        prepared.close()
    code = exit_code(outcome)
    if as_json:
        click.echo(dumps(outcome.report))
    else:
        render_summary(_stdout(), outcome, int(code))
    sys.exit(int(code))


# --- status ------------------------------------------------------------------------------


@cli.command(short_help="Where the store stands (read-only, also while running).")
@_db_option
@_json_option
@guard
def status(db: str, as_json: bool) -> None:
    """Where the store stands, read-only (works while a run is going on).

    Counts by state, active leases and their owners, workers and their status, the
    owner of the store (and whether its process is alive), the syncer's last commit,
    restarts of actors, stats drift, the last start-up reconciliation and the latest run.
    """
    path = require_store_file(db)
    st = run_async(collect_status, db, path, loop="asyncio")
    if as_json:
        click.echo(dumps(st))
    else:
        render_status(_stdout(), st)


# --- report ------------------------------------------------------------------------------


async def _report(db: str, run_id: int | None, manifest: str | None, fmt: str | None,
                  key: tuple[str, ...] | None) -> tuple[dict[str, Any], RunInfo | None,
                                                          dict[str, int] | None]:
    store = await open_store(db, readonly=True)
    try:
        if manifest is not None:
            with open_manifest(manifest, fmt=fmt, key=key) as m:
                return await build_report(store, manifest=m), None, None
        if run_id is None:
            run_id = await store.latest_run()
        info = states = None
        if run_id is not None:
            info = await store.run_info(run_id)
            if info is None:
                raise ConfigError(f"store {db} has no run {run_id}")
            counted = await store.run_states(run_id)
            states = {s.value: counted[s] for s in JobState}
        return await build_report(store, run_id=run_id), info, states
    finally:
        await store.aclose()


@cli.command(epilog="""\b
JSON shape (--json):
  {"counts": {"planned", "leased", "succeeded", "failed", "skipped"}, "total",
   "failures": [{"key", "identity", "attempts", "error"}],
   "rejected": [{"line", "reason"}],
   "manifest": {"entries", "distinct", "missing": [identity, ...], "not_terminal"} | null,
   "stats_drift"}
""")
@_db_option
@click.option("--run", "run_id", type=click.IntRange(min=1), metavar="ID",
              help="Compare with this run's manifest entries (default: the latest run).")
@click.option("--manifest", type=click.Path(dir_okay=False, allow_dash=True),
              metavar="FILE", help="Compare with this manifest file instead of a run.")
@click.option("--key", "key", metavar="COL,...", help="Identity columns of --manifest (.csv).")
@click.option("--format", "fmt", type=_FORMATS, help="Format of --manifest.")
@_json_option
@guard
def report(db: str, run_id: int | None, manifest: str | None, key: str | None,
           fmt: str | None, as_json: bool) -> None:
    """The health report: what happened to every input.

    Counts by state and the failed jobs (the dead-letter set) of the whole store; the
    rejected lines of the manifest and its comparison with the store: entries, distinct
    entries, entries with no job at all ("missing", which must always be empty) and
    entries not finished yet; and the stats drift (must be 0).
    """
    if run_id is not None and manifest is not None:
        raise click.UsageError("give --run or --manifest, not both")
    require_store_file(db)
    rep, info, states = run_async(_report, db, run_id, manifest, fmt, _split_key(key),
                                  loop="asyncio")
    if as_json:
        click.echo(dumps(rep))
        return
    if manifest is not None:
        title, source = f"Report: store compared with {manifest}", manifest
    elif info is not None:
        title = f"Report of run {info.id} ({info.status}): {info.source}"
        source = info.source
    else:
        title, source = "Report (no run recorded)", None
    render_report(_stdout(), rep, title=title, source=source, run_counts=states)


# --- reconcile ---------------------------------------------------------------------------


async def _reconcile(db: str, dry_run: bool) -> dict[str, Any]:
    store = await open_store(db)
    try:
        result = await store.apply([Reconcile(uuid.uuid4().hex, dry_run=dry_run)],
                                   now=time.time(), dry_run=dry_run)
    finally:
        await store.aclose()
    rec = result.results[0]
    assert isinstance(rec, ReconcileReport)
    return rec.as_dict()


@cli.command(short_help="Run start-up reconciliation, without doing any work.")
@_db_option
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@_json_option
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
        click.echo(dumps(rec))
    else:
        render_reconcile(_stdout(), rec)


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


@cli.command()
@_db_option
@click.option("--state", type=click.Choice(["failed"]), default="failed", show_default=True,
              help="Requeue jobs in this state (failed is the dead-letter set).")
@click.option("--key", "keys", multiple=True, metavar="KEY",
              help="Only this job key (64 hex digits); repeat for more. Default: all.")
@_json_option
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


def main() -> None:
    """The console script ``syncward``."""
    logging.basicConfig(level=logging.WARNING, format="syncward: %(message)s",
                        stream=sys.stderr)
    try:
        cli(prog_name="syncward")
    except KeyboardInterrupt:  # before the run installed its signal handling
        fail("interrupted", ExitCode.INTERRUPTED)


from syncward._cli_demo import demo  # noqa: E402

cli.add_command(demo)


if __name__ == "__main__":
    main()
