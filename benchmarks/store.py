"""Store benchmarks: what the store's write path costs over raw sqlite3, and why the schema.

Run: ``python -m benchmarks.store [--rows N]``. Prints JSON lines (see `_common`):

* ``store.apply_submit`` — rows/s of ``SQLiteStore.apply([Submit(1000 NewJobs)])`` (WAL,
  synchronous FULL, one transaction per batch) against a raw ``sqlite3`` ``executemany``
  of the same rows into the same schema with the same pragmas and batch size. The ratio
  is the price of the store (thread hop, result building), not of SQLite.
* ``store.schema_text_pk`` — the design note of `_sqlite_schema`: raw inserts of random
  keys as a 32-byte BLOB UNIQUE beside an INTEGER rowid (ours, the baseline) vs a 64-char
  hex TEXT PRIMARY KEY. Two TEXT variants: a rowid table (SQLite keeps such a key in a
  separate index, so the table still grows at its end) and WITHOUT ROWID (the table itself
  is ordered by the random key).
* ``jobs.job_key`` — microseconds per ``job_key()`` call on a two-field identity.

Every database lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import timeit
from pathlib import Path

import anyio

from benchmarks._common import emit, timed
from syncward.jobs import canonical_identity, job_key
from syncward.messages import NewJob, Submit
from syncward.store.sqlite import SQLiteStore
from syncward.store.sqlite.schema import MIGRATIONS

BATCH = 1000
NOW = 1_700_000_000.0

_INSERT = (
    "INSERT OR IGNORE INTO jobs (key, identity, payload, state, max_attempts,"
    " next_attempt_at, lease_seconds, timeout, created_at, updated_at)"
    " VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, ?, ?)"
)


def _make_jobs(rows: int) -> list[NewJob]:
    jobs = []
    for i in range(rows):
        ident = {"source": "bench", "n": i}
        jobs.append(
            NewJob(
                key=job_key(ident),
                identity=canonical_identity(ident),
                payload=json.dumps({"url": f"https://example.org/item/{i}"}),
                max_attempts=3,
            )
        )
    return jobs


async def _store_rows_per_s(path: Path, jobs: list[NewJob]) -> float:
    store = await SQLiteStore.open(f"sqlite:///{path}", synchronous="full")
    try:
        batches = [Submit(tuple(jobs[i : i + BATCH])) for i in range(0, len(jobs), BATCH)]
        start = timed()
        for batch in batches:
            await store.apply([batch], now=NOW)
        elapsed = timed() - start
        assert sum((await store.counts()).values()) == len(jobs)
    finally:
        await store.aclose()
    return len(jobs) / elapsed


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _raw_rows_per_s(path: Path, jobs: list[NewJob]) -> float:
    with contextlib.closing(_connect(path)) as conn:
        for stmt in MIGRATIONS[0].split(";"):
            if stmt.strip():
                conn.execute(stmt)
        start = timed()
        for i in range(0, len(jobs), BATCH):
            rows = [
                (
                    bytes.fromhex(j.key),
                    j.identity,
                    j.payload,
                    j.max_attempts,
                    NOW,
                    j.lease_seconds,
                    j.timeout,
                    NOW,
                    NOW,
                )
                for j in jobs[i : i + BATCH]
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        elapsed = timed() - start
        (n,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        assert n == len(jobs)
    return len(jobs) / elapsed


_SCHEMAS = {
    "blob_unique_rowid": (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, payload TEXT NOT NULL)",
        "INSERT INTO t (key, payload) VALUES (?, ?)",
        bytes.fromhex,
    ),
    "text_pk_rowid": (
        "CREATE TABLE t (key TEXT PRIMARY KEY, payload TEXT NOT NULL)",
        "INSERT INTO t (key, payload) VALUES (?, ?)",
        str,
    ),
    "text_pk_without_rowid": (
        "CREATE TABLE t (key TEXT PRIMARY KEY, payload TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO t (key, payload) VALUES (?, ?)",
        str,
    ),
}


def _schema_rows_per_s(path: Path, schema: str, keys: list[str], payloads: list[str]) -> float:
    create, insert, conv = _SCHEMAS[schema]
    rows = [(conv(k), p) for k, p in zip(keys, payloads, strict=True)]
    with contextlib.closing(_connect(path)) as conn:
        conn.execute(create)
        start = timed()
        for i in range(0, len(rows), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows[i : i + BATCH])
            conn.execute("COMMIT")
        elapsed = timed() - start
    return len(rows) / elapsed


def bench_apply_submit(tmp: Path, rows: int) -> None:
    jobs = _make_jobs(rows)
    store = anyio.run(_store_rows_per_s, tmp / "store.db", jobs)
    raw = _raw_rows_per_s(tmp / "raw.db", jobs)
    emit(
        "store.apply_submit",
        store,
        "rows/s",
        baseline=raw,
        rows=rows,
        batch=BATCH,
        journal="wal",
        synchronous="full",
    )


def bench_schema(tmp: Path, rows: int) -> None:
    keys = [hashlib.sha256(os.urandom(16)).hexdigest() for _ in range(rows)]
    payloads = [
        json.dumps({"source": "bench", "n": i, "url": f"https://example.org/item/{i}"})
        for i in range(rows)
    ]
    results = {s: _schema_rows_per_s(tmp / f"{s}.db", s, keys, payloads) for s in _SCHEMAS}
    ours = results["blob_unique_rowid"]
    emit("store.schema_blob_unique_rowid", ours, "rows/s", rows=rows)
    for schema in ("text_pk_rowid", "text_pk_without_rowid"):
        emit(f"store.schema_{schema}", results[schema], "rows/s", baseline=ours, rows=rows)


def bench_job_key(calls: int) -> None:
    ident = {"source": "manifest", "kic": 8462852}
    best = min(timeit.repeat(lambda: job_key(ident), number=calls, repeat=5))
    emit("jobs.job_key", best / calls * 1e6, "us/call", calls=calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncward-bench-") as tmp:
        bench_apply_submit(Path(tmp), args.rows)
        bench_schema(Path(tmp), args.rows)
    bench_job_key(20_000)


if __name__ == "__main__":
    main()
