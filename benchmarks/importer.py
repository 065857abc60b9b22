"""Rows/s imported into SQLite, against raw sqlite3 ``executemany`` of the same rows.

``import.rows``: a ``.jsonl`` file of canonical records (a quarter each planned,
succeeded, failed, skipped) through what ``syncward import`` runs (`import_into`): the
streaming reader (a worker thread per chunk), encoding and keying each record, one
`Import` message per 1,000 records applied with `Store.apply` (the lookup of existing
keys, then the insert; the next chunk is read while one commits), into a fresh store,
its open and close included. ``import.apply``: the same rows as ready-made `Import`
messages, so the store's part alone. The baseline inserts the same row tuples into the
same schema with ``executemany``, 1,000 per transaction, with the same ``synchronous``
setting (FULL), in the same run.

Run: python -m benchmarks.importer [--rows N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks._common import emit, timed
from syncward.adapters.importer import Record, chunks, open_import
from syncward.cli.importing import import_into
from syncward.imports import to_import_job
from syncward.jobs import JobState
from syncward.messages import Import, ImportJob
from syncward.store import open_store

CHUNK = 1000
STATES = [JobState.PLANNED, JobState.SUCCEEDED, JobState.FAILED, JobState.SKIPPED]


def write_records(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            state = STATES[i % 4]
            record = {"identity": {"kic": i}, "state": state.value}
            if state is JobState.SUCCEEDED:
                record["result"] = {"path": f"kplr{i:09d}.fits"}
            elif state is JobState.FAILED:
                record.update(error="HTTP 404", attempts=3)
            fh.write(json.dumps(record) + "\n")


async def through_import(path: Path, source: Path) -> float:
    with open_import(str(source)) as reader:
        start = timed()
        result = await import_into(f"sqlite:///{path}", lambda: chunks(reader, CHUNK),
                                   max_attempts=5, dry_run=False)
        elapsed = timed() - start
    if result.rejected or result.conflicts:
        raise RuntimeError(f"the benchmark's import was not clean: {result}")
    return result.total_new / elapsed


async def through_apply(path: Path, jobs: list[ImportJob]) -> float:
    store = await open_store(f"sqlite:///{path}")
    try:
        msgs = [Import(tuple(jobs[i:i + CHUNK])) for i in range(0, len(jobs), CHUNK)]
        start = timed()
        for msg in msgs:
            await store.apply([msg], now=time.time())
        elapsed = timed() - start
    finally:
        await store.aclose()
    return len(jobs) / elapsed


def raw_sqlite(path: Path, template: Path, jobs: list[ImportJob]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    schema = sqlite3.connect(template)
    (ddl,) = schema.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    schema.close()
    conn.execute(ddl)
    now = time.time()
    rows = [(bytes.fromhex(j.key), j.identity, j.payload, j.state.value, j.result, j.error,
             j.attempts, j.max_attempts, now, now, now) for j in jobs]
    start = timed()
    for i in range(0, len(rows), CHUNK):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO jobs (key, identity, payload, state, result, last_error,"
            " attempts, max_attempts, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[i:i + CHUNK])
        conn.execute("COMMIT")
    elapsed = timed() - start
    conn.close()
    return len(rows) / elapsed


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        source = base / "records.jsonl"
        write_records(source, n)
        with open_import(str(source)) as reader:
            jobs = [to_import_job(item.record, max_attempts=5, line=item.line)
                    for item in reader if isinstance(item, Record)]
        ours = await through_import(base / "ours.db", source)
        store_only = await through_apply(base / "apply.db", jobs)
        raw = raw_sqlite(base / "raw.db", base / "ours.db", jobs)
    emit("import.rows", ours, "rows/s", baseline=raw, rows=n, chunk=CHUNK,
         source="jsonl file")
    emit("import.apply", store_only, "rows/s", baseline=raw, rows=n, chunk=CHUNK)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    anyio.run(main, parser.parse_args().rows)
