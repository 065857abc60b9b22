"""``syncward report``: what happened to every input, from a read-only store.

The report itself (`Report`, `build_report`) is `syncward.report`; this module only picks
what to compare the store with (a recorded run, by default the latest, or a manifest
file), prints ``Report.as_dict()`` for ``--json`` and renders it otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from syncward.adapters.manifest import open_manifest
from syncward.cli.common import guard, require_store_file, run_async
from syncward.cli.options import FORMATS, db_option, json_option, split_key, stdout
from syncward.cli.views import render_report
from syncward.errors import ConfigError
from syncward.report import build_report, dumps
from syncward.store import open_store

if TYPE_CHECKING:
    from syncward.jobs import JobState
    from syncward.report import Report
    from syncward.store.base import RunInfo

__all__ = ["report"]


async def _report(db: str, run_id: int | None, manifest: str | None, fmt: str | None,
                  key: tuple[str, ...] | None
                  ) -> tuple[Report, RunInfo | None, dict[JobState, int] | None]:
    """The report, the run it compares with (if any) and that run's keys by state.

    Raises:
        ConfigError: no such run, or a manifest that cannot be opened.
    """
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
            states = await store.run_states(run_id)
        return await build_report(store, run_id=run_id), info, states
    finally:
        await store.aclose()


@click.command(epilog="""\b
JSON shape (--json):
  {"counts": {"planned", "leased", "succeeded", "failed", "skipped"}, "total",
   "failures": [{"key", "identity", "attempts", "error"}],
   "rejected": [{"line", "reason"}],
   "manifest": {"entries", "distinct", "missing": [identity, ...], "not_terminal"} | null,
   "stats_drift"}
""")
@db_option
@click.option("--run", "run_id", type=click.IntRange(min=1), metavar="ID",
              help="Compare with this run's manifest entries (default: the latest run).")
@click.option("--manifest", type=click.Path(dir_okay=False, allow_dash=True),
              metavar="FILE", help="Compare with this manifest file instead of a run.")
@click.option("--key", "key", metavar="COL,...", help="Identity columns of --manifest (.csv).")
@click.option("--format", "fmt", type=FORMATS, help="Format of --manifest.")
@json_option
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
    rep, info, states = run_async(_report, db, run_id, manifest, fmt, split_key(key),
                                  loop="asyncio")
    if as_json:
        click.echo(dumps(rep.as_dict()))
        return
    if manifest is not None:
        title, source = f"Report: store compared with {manifest}", manifest
    elif info is not None:
        title = f"Report of run {info.id} ({info.status}): {info.source}"
        source = info.source
    else:
        title, source = "Report (no run recorded)", None
    render_report(stdout(), rep, title=title, source=source, run_counts=states)
