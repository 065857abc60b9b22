"""Messages/s through mailbox + syncer into SQLite, against raw sqlite3 in the same run.

Each message is a `Submit` of one job, sent by a producer task into the syncer's mailbox
(which is how sources feed it); the syncer group-commits up to 1000 per transaction. The
baseline inserts the same rows into the same schema with `sqlite3.executemany`, 1000 per
transaction, with the same `synchronous` setting. Lines: ``syncer.full``, ``syncer.normal``.

Run: python -m benchmarks.syncer [--messages N]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks._common import emit, timed
from syncward.actors.mailbox import Mailbox
from syncward.actors.syncer import LeaseControl, StatsUpdate, Syncer, SyncerConfig, SyncerHealth
from syncward.clock import SystemClock
from syncward.jobs import Job, canonical_identity, job_key
from syncward.messages import NewJob, Reply, Submit, SubmitResult, SyncerMsg
from syncward.store.sqlite import SQLiteStore

BATCH = 1000


def make_jobs(n: int, offset: int = 0) -> list[NewJob]:
    return [NewJob(key=job_key({"id": i}), identity=canonical_identity({"id": i}),
                   payload="{}", max_attempts=5) for i in range(offset, offset + n)]


async def through_syncer(path: Path, jobs: list[NewJob], synchronous: str) -> float:
    store = await SQLiteStore.open(f"sqlite:///{path}", synchronous=synchronous)
    mailbox: Mailbox[SyncerMsg] = Mailbox("syncer", 10_000)
    work: Mailbox[Job] = Mailbox("work", 1)
    stats: Mailbox[StatsUpdate] = Mailbox("stats", 1_000_000)
    syncer = Syncer(store=store, mailbox=mailbox, work=work, stats=stats,
                    health=SyncerHealth(), clock=SystemClock(),
                    control=LeaseControl(owner="bench", boot_id="bench",
                                         default_lease_seconds=60, enabled=False),
                    config=SyncerConfig(max_batch=BATCH))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(syncer.run)
            start = timed()
            last: Reply[SubmitResult] = Reply()
            for job in jobs[:-1]:
                await mailbox.send(Submit((job,)))
            await mailbox.send(Submit((jobs[-1],), reply=last))
            await last.wait()
            elapsed = timed() - start
            syncer.request_stop()
    finally:
        await store.aclose()
    return len(jobs) / elapsed


def raw_sqlite(path: Path, template: Path, jobs: list[NewJob], synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    schema = sqlite3.connect(template)
    (ddl,) = schema.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    schema.close()
    conn.execute(ddl)
    now = time.time()
    rows = [(bytes.fromhex(j.key), j.identity, j.payload, j.max_attempts, now, now, now)
            for j in jobs]
    start = timed()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, 'planned', ?, ?, ?, ?)",
            rows[i:i + BATCH])
        conn.execute("COMMIT")
    elapsed = timed() - start
    conn.close()
    return len(rows) / elapsed


async def main(n: int) -> None:
    jobs = make_jobs(n)
    for synchronous in ("full", "normal"):
        with tempfile.TemporaryDirectory() as tmp:
            ours = await through_syncer(Path(tmp) / "ours.db", jobs, synchronous)
            raw = raw_sqlite(Path(tmp) / "raw.db", Path(tmp) / "ours.db", jobs, synchronous)
        emit(f"syncer.{synchronous}", ours, "msg/s", baseline=raw, batch=BATCH, messages=n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    anyio.run(main, parser.parse_args().messages)
