"""Late review of the performance changes (steered index and mark, bulk limited lease,
holds by job id): one failing test per bug found."""

from __future__ import annotations

from typing import TYPE_CHECKING

from store_helpers import T0, submit
from store_helpers import lease_with as lease
from store_helpers import numbers as leased_numbers
from store_helpers import steered_job as job

from syncward.messages import Submit

if TYPE_CHECKING:
    from conftest import Backend

    from syncward.jobs import Job


def numbers(jobs: list[Job]) -> list[int]:
    return sorted(leased_numbers(jobs))


async def test_a_rolled_back_first_steered_insert_does_not_lose_the_mark(
        backend: Backend) -> None:
    """SQLite: the first job with a priority comes in a batch that rolls back (a dry run
    here; a failed commit the same). `SQLiteTx._steered` set ``_plain = False`` though the
    mark's insert was rolled back; the next steered insert then skips writing the mark
    (``plain()`` is False). The store leases them in this process, but once reopened the
    mark is missing: leasing reads the plain index alone and the prioritised job is never
    leased (``next_due`` still says it is due)."""
    store = await backend.open()
    await store.apply([Submit((job(1, priority=5),))], now=T0, dry_run=True)
    await submit(store, job(2, priority=5))
    await store.aclose()
    again = await backend.open()
    assert numbers((await lease(again, 5, now=T0 + 1)).leased) == [2]
