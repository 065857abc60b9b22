"""A tour of the store's write entry point: submit, lease, finish, count.

Run: python examples/store_tour.py [path/to/jobs.db]
"""

from __future__ import annotations

import sys
import time

import anyio

from syncward.jobs import canonical_identity, job_key
from syncward.messages import LeaseOrder, NewJob, Outcome, OutcomeKind, Submit
from syncward.store.sqlite import SQLiteStore


async def main(path: str) -> None:
    store = await SQLiteStore.open(f"sqlite:///{path}")
    try:
        jobs = tuple(
            NewJob(key=job_key({"kic": k}), identity=canonical_identity({"kic": k}),
                   payload="{}", max_attempts=3)
            for k in range(1000)
        )
        first = await store.apply([Submit(jobs)], now=time.time())
        again = await store.apply([Submit(jobs)], now=time.time())
        print("submitted:", first.results[0], "| again:", again.results[0])
        order = LeaseOrder(n=100, owner="tour", boot_id="tour", default_lease_seconds=30)
        leased = (await store.apply([], now=time.time(), lease=order)).leased
        done = [Outcome(j.id, j.fence, OutcomeKind.SUCCEEDED, result="true") for j in leased]
        await store.apply(done, now=time.time())
        print("counts:", {str(k): v for k, v in (await store.counts()).items()})
    finally:
        await store.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "syncward-tour.db")
