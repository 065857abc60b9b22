"""SQLite schema, versioned with ``PRAGMA user_version`` and forward migrations only.

Design note: a job's key is 32 raw bytes in a UNIQUE column beside an INTEGER rowid
primary key, not a 64-character hex TEXT primary key. With a rowid the table grows at
its end and only the key index takes random inserts, and a 32-byte key makes that index
half the size of a hex one. `benchmarks/store.py` measures the choice: at 100k random
keys a TEXT primary key inserted 1.6x slower, and WITHOUT ROWID with the key as the
table's own b-tree 2.6x slower, than the BLOB key beside a rowid.

Indexes are partial where the query is: due planned jobs (leasing, oldest first) and
leases by expiry (the reaper). Counting by state scans the table, which happens only at
start-up and on the stats-keeper's recount period.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_V1 = """
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    key              BLOB    NOT NULL UNIQUE,
    identity         TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    stage            TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    next_attempt_at  REAL    NOT NULL,
    lease_owner      TEXT,
    lease_boot       TEXT,
    lease_expires_at REAL,
    lease_seconds    REAL,
    timeout          REAL,
    fence            INTEGER NOT NULL DEFAULT 0,
    ended_fence      INTEGER,
    ended_by         TEXT,
    last_error       TEXT,
    result           TEXT,
    created_by       INTEGER,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL
);
CREATE INDEX jobs_due   ON jobs (next_attempt_at, id) WHERE state = 'planned';
CREATE INDEX jobs_lease ON jobs (lease_expires_at)    WHERE state = 'leased';

CREATE TABLE ops (
    id           INTEGER PRIMARY KEY,
    op_key       BLOB    NOT NULL UNIQUE,
    job_id       INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    result       TEXT    NOT NULL,
    committed_at REAL    NOT NULL
);

CREATE TABLE workers (
    name         TEXT PRIMARY KEY,
    boot_id      TEXT NOT NULL UNIQUE,
    pid          INTEGER,
    host         TEXT,
    status       TEXT NOT NULL,
    started_at   REAL,
    heartbeat_at REAL
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    token       TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    options     TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE run_entries (
    run_id INTEGER NOT NULL,
    line   INTEGER NOT NULL,
    key    BLOB    NOT NULL,
    PRIMARY KEY (run_id, line)
) WITHOUT ROWID;
CREATE TABLE run_rejects (
    run_id INTEGER NOT NULL,
    line   INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    raw    TEXT    NOT NULL,
    PRIMARY KEY (run_id, line)
) WITHOUT ROWID;

CREATE TABLE rejections (
    id      INTEGER PRIMARY KEY,
    at      REAL    NOT NULL,
    job_id  INTEGER,
    message TEXT    NOT NULL,
    reason  TEXT    NOT NULL
);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    at     REAL NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('worker_seq', '0');
"""

# A run belongs to the boot that runs it: only that boot's death interrupts it (a store
# shared by several runtimes must not interrupt the runs of the living ones).
_V2 = """
ALTER TABLE runs ADD COLUMN boot_id TEXT;
"""

# Priorities and limits per key (`syncward.limits`). Planned jobs are split over two
# disjoint partial indexes: the plain ones (priority 0, no limit key) in due order, as
# before, and the others by limit key (NULL first: the prioritised ones without a key),
# then rank (due time minus priority), so the prioritised jobs are one range in rank
# order and each key's head is one seek. Every partial index costs every write that
# changes a job's state (measured with raw executemany at 40,000 rows: a third and fourth
# index made inserts 4 % and final updates 8 % slower than two; prioritised and limited
# jobs in one index cost 1-2 %), so there are no more: the due time of prioritised and
# limited jobs is found by reading that range (after a lease that was not full, those
# left are the ones not due yet), a key's leased jobs are counted among the leased ones.
# The 'steered' mark in meta says a job has had a priority or a limit key: until then
# leasing reads the plain index alone (see `SQLiteTx.plain`).
_V3 = """
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN limit_key TEXT;
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (next_attempt_at, id)
    WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL;
CREATE INDEX jobs_steered ON jobs (limit_key, next_attempt_at - priority, id)
    WHERE state = 'planned' AND (priority != 0 OR limit_key IS NOT NULL);
CREATE TABLE limit_state (
    key        TEXT PRIMARY KEY,
    tat        REAL,
    held_until REAL
);
"""

#: MIGRATIONS[i] takes a database from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)
