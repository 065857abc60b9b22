"""The progress bar of ``syncward run``: done, failed, retrying, in flight, rate, ETA.

Counts come from `Runtime.stats` (the stats-keeper's committed counts, no database read),
refreshed a few times a second. "Retrying" (planned jobs that already failed an attempt)
is not among those counts, so it is read from the runtime's store about once a second.
The bar covers every job in the store: a resumed run starts where the last one stopped.
`Counters` is what the submitting side has done so far (lines read, jobs new or known):
the manifest run, the Redis run and the demo each fill one in for the bar to show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from syncward.errors import StoreError
from syncward.jobs import JobState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rich.console import Console, RenderableType
    from rich.progress import Task

    from syncward.actors.stats_keeper import StatsSnapshot
    from syncward.runtime import Runtime
    from syncward.store.base import StoreReader

__all__ = ["Counters", "show_progress"]

_REFRESH = 0.25
_RETRYING_EVERY = 1.0


@dataclass
class Counters:
    """What the submission has done so far (written by the submitter, read by the bar)."""

    entries: int = 0
    rejected: int = 0
    new: int = 0
    duplicates: int = 0
    submitted_all: bool = False


class _RateColumn(ProgressColumn):
    """Jobs finished per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


class _Bar(Progress):
    """The bar on one line, the counts (done, failed, ...) on the next."""

    detail = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield Text(self.detail, style="progress.description")


def _terminal(snap: StatsSnapshot) -> int:
    c = snap.counts
    return c[JobState.SUCCEEDED] + c[JobState.SKIPPED] + c[JobState.FAILED]


def _detail(snap: StatsSnapshot, retrying: int, counters: Counters) -> str:
    c = snap.counts
    text = (f"done {c[JobState.SUCCEEDED] + c[JobState.SKIPPED]:,} · "
            f"failed {c[JobState.FAILED]:,} · retrying {retrying:,} · "
            f"in flight {c[JobState.LEASED]:,}")
    if not counters.submitted_all:
        text += f" · read {counters.entries + counters.rejected:,} lines"
    return text


async def show_progress(rt: Runtime, db: str, counters: Counters, console: Console) -> None:
    """Show the bar until cancelled (it is removed then; the summary follows).

    ``db`` is the store's URL; the runtime's own store answers the few reads the bar
    makes (jobs waiting to retry).
    """
    await _loop(rt, rt.store, counters, console)


async def _loop(rt: Runtime, reader: StoreReader | None, counters: Counters,
                console: Console) -> None:
    columns = (TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with _Bar(*columns, console=console, transient=True, refresh_per_second=4) as bar:
        snap = rt.stats()
        task = bar.add_task("jobs", total=snap.total, completed=_terminal(snap))
        retrying, asked = 0, 0.0
        while True:
            snap = rt.stats()
            if reader is not None and time.monotonic() - asked >= _RETRYING_EVERY:
                asked = time.monotonic()
                try:
                    retrying = await reader.retrying_count()
                except StoreError:
                    pass
            bar.detail = _detail(snap, retrying, counters)
            bar.update(task, total=snap.total, completed=_terminal(snap))
            await anyio.sleep(_REFRESH)
