"""``syncward import``: bring an existing pipeline's state into a store.

Reads a ``.jsonl`` or ``.csv`` file, or a Redis list (``redis://...?list=NAME``), as a
stream (`syncward.adapters.importer`) and applies one `Import` message per thousand
records through `Store.apply` — the write the runtime's syncer would make — in the
store's own transactions. Like `syncward.cli.admin`, it opens the store for writing: an
exclusive store (SQLite) takes its lock, so a runtime holding it makes the command fail
with "in use" (exit 2); a shared one (PostgreSQL) lets it in beside live runtimes. It
runs no job. Bad lines go to stderr as they are read (``SOURCE:LINE: reason``); the
conflicts (the first hundred) after the summary.

Order: the source is opened (and a csv's header checked) and the store URL checked
before the store is opened, so exit 2 means nothing was imported.

XX: a dry run applies each chunk in a transaction it rolls back, so a key repeated in
two chunks of one source is "new" in both (a real import says new, then unchanged or a
conflict). Remembering every key read would make memory grow with the source.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click

from syncward.adapters.importer import (
    chunks,
    import_limit_key,
    is_redis_list,
    open_import,
    redis_chunks,
    run_import,
)
from syncward.cli.common import ExitCode, check_db_dir, fail, guard, run_async
from syncward.cli.options import db_option, json_option
from syncward.errors import StoreLocked
from syncward.imports import parse_state
from syncward.jobs import JobState
from syncward.limits import Limit
from syncward.messages import Import, ImportResult, refuse, settle
from syncward.report import dumps
from syncward.store import check_url, open_store, scheme_of
from syncward.store.urls import redact

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from syncward.adapters.importer import ImportItem, ImportSource
    from syncward.adapters.manifest import Rejection

__all__ = ["import_command", "import_into"]

_CHUNK = 1000
_STATES = ["planned", "succeeded", "failed", "skipped"]

EXIT_STATUS = """\b
Exit status:
  0  every record was imported or was already there in the same state
  1  some records conflicted with existing jobs (kept as they were) or were rejected
  2  usage or configuration error, the store in use, the source unreadable: nothing
     was imported (a Redis list failing part-way: earlier chunks stay; run it again)
  3  the store's environment failed (disk full, read-only); what committed stays
     committed: mend it and run the same command again (it is idempotent)
"""


@click.command("import", epilog=EXIT_STATUS,
               short_help="Bring an existing pipeline's state in: jobs already done or planned.")
@click.argument("source", metavar="SOURCE")
@db_option
@click.option("--key", "key", multiple=True, metavar="FIELD",
              help="An identity field (repeat, or a,b). csv: the identity columns (default "
                   "id). jsonl: read flat records, the identity being these fields; "
                   "without --key each line is {\"identity\": {...}, \"state\": ...}.")
@click.option("--state", type=click.Choice(_STATES, case_sensitive=False), default=None,
              help="The state of records that name none (default planned).")
@click.option("--key-text", is_flag=True,
              help="Integer identity values become text (757076 -> "
                   "\"757076\"), as a .txt or .csv manifest reads them, so a later "
                   "`syncward run` of such a manifest finds the jobs.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"], case_sensitive=False),
              default=None, help="The file's format when its extension does not say.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Attempts allowed to imported jobs whose records name none.")
@click.option("--limit", "limit", multiple=True, metavar="FIELD:concurrency=N,rate=R",
              help="The limits the runtimes running these jobs declare (as `syncward run "
                   "--limit`): jobs imported as planned get their limit keys.")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@json_option
@guard
def import_command(source: str, db: str, key: tuple[str, ...], state: str | None,
                   key_text: bool, fmt: str | None, max_attempts: int,
                   limit: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Import jobs in their states from SOURCE: a .jsonl or .csv file, or a Redis list
    (redis://HOST:PORT/DB?list=NAME, read without changing it).

    A .jsonl line is {"identity": {...}, "state": "succeeded", "result": {...},
    "error": "...", "attempts": 2} (state planned when absent; also "payload",
    "max_attempts"), or with --key a flat record such as {"kic": 757076, "status":
    "downloaded"}. A .csv has a header; its identity is the --key columns, the columns
    state, error, attempts, result (JSON) and max_attempts are read as such, the others
    are payload. States: planned, succeeded, failed, skipped.

    Job keys are those of `syncward run`, so a later run of the same manifest redoes
    nothing imported as done. A job that already exists is never changed: in the same
    state (or imported as planned) it is unchanged, otherwise a conflict, listed.
    """
    keys = tuple(part.strip() for k in key for part in k.split(","))
    limits = tuple(Limit.from_option(spec) for spec in limit)
    default_state = parse_state(state) if state is not None else JobState.PLANNED
    check_db_dir(db)
    label = redact(source) if is_redis_list(source) else source
    opened: ImportSource | None = None
    if not is_redis_list(source):
        opened = open_import(source, key=keys, state=default_state, key_text=key_text,
                             fmt=fmt)

    def rejected(item: Rejection) -> None:
        click.echo(f"{label}:{item.line}: {item.reason}", err=True)

    async def items() -> AsyncIterator[list[ImportItem]]:
        if opened is not None:
            async for chunk in chunks(opened, _CHUNK):
                yield chunk
        else:
            async for chunk in redis_chunks(source, key=keys, state=default_state,
                                            key_text=key_text, size=_CHUNK):
                yield chunk

    try:
        result = run_async(partial(import_into, db, items, max_attempts=max_attempts,
                                   dry_run=dry_run, on_rejected=rejected, limits=limits),
                           loop="asyncio")
    finally:
        if opened is not None:
            opened.close()
    _show(result, label, as_json)
    if result.conflicts or result.rejected:
        raise SystemExit(int(ExitCode.FAILED))


async def import_into(db: str, items: Callable[[], AsyncIterator[list[ImportItem]]], *,
                      max_attempts: int, dry_run: bool,
                      on_rejected: Callable[[Rejection], None] | None = None,
                      limits: tuple[Limit, ...] = ()) -> ImportResult:
    """Open the store ``db`` for writing and import ``items()`` into it, one transaction
    per chunk, in order; the next chunk is read and encoded while one commits.

    Raises:
        StoreLocked: a runtime holds the (exclusive) store (exit 2, with a hint).
    """
    try:
        store = await open_store(_dry_run_url(db) if dry_run else db)
    except StoreLocked as exc:
        fail(f"{exc}: stop it first, or import through its API (Runtime.import_jobs)")
    send, receive = anyio.create_memory_object_stream[Import](1)

    async def apply_all() -> None:
        # A failed chunk fails its reply (and every later one), so the error surfaces
        # once, from `run_import`; what committed before it stays committed.
        failure: Exception | None = None
        async with receive:
            async for msg in receive:
                if failure is None:
                    try:
                        applied = await store.apply([msg], now=time.time(), dry_run=dry_run)
                    except Exception as exc:
                        failure = exc
                    else:
                        settle(msg, applied.results[0])
                        continue
                refuse(msg, failure)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(apply_all)
            async with send:
                result = await run_import(items(), send.send, max_attempts=max_attempts,
                                          dry_run=dry_run, window=2, on_rejected=on_rejected,
                                          limit_key=import_limit_key(limits))
    finally:
        await store.aclose()
    return result


def _dry_run_url(db: str) -> str:
    """The store a dry run reads: ``db``, or an empty one in memory when ``db`` is a SQLite
    file that does not exist yet (opening it would create it: a dry run writes nothing)."""
    if scheme_of(db) != "sqlite":
        return db
    return db if Path(check_url(db, must_exist=False)).exists() else "memory://"


def _show(result: ImportResult, label: str, as_json: bool) -> None:
    if as_json:
        click.echo(dumps({"source": label, **result.as_dict()}))
    else:
        verb = "would import" if result.dry_run else "imported"
        by_state = ", ".join(f"{s.value} {n}" for s, n in result.new.items() if n)
        click.echo(f"{verb} from {label}: {result.total_new} new"
                   f"{f' ({by_state})' if by_state else ''}, {result.unchanged} unchanged, "
                   f"{result.conflicts} conflict(s), {result.rejected} rejected line(s)")
    for c in result.conflicts_listed:
        where = f"{label}:{c.line}: " if c.line is not None else ""
        click.echo(f"{where}conflict: job {c.key} is {c.existing.value}, the import says "
                   f"{c.imported.value}; kept as {c.existing.value}", err=True)
    more = result.conflicts - len(result.conflicts_listed)
    if more > 0:
        click.echo(f"... and {more} more conflict(s)", err=True)
