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

# Priorities and limits per key (`syncward.limits`). The planned jobs are split over three
# disjoint partial indexes, so a row is in exactly one and a store that uses neither pays
# nothing: priority 0 and no limit key (due order, as before), a priority (rank order: due
# time minus priority), a limit key (by key, then rank, so each key's head is one seek).
# Leased rows with a limit key are indexed by key for the concurrency count.
_V3 = """
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN limit_key TEXT;
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (next_attempt_at, id)
    WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL;
CREATE INDEX jobs_rank ON jobs (next_attempt_at - priority, id)
    WHERE state = 'planned' AND priority != 0 AND limit_key IS NULL;
CREATE INDEX jobs_limited ON jobs (limit_key, next_attempt_at - priority, id)
    WHERE state = 'planned' AND limit_key IS NOT NULL;
CREATE INDEX jobs_limit_leased ON jobs (limit_key)
    WHERE state = 'leased' AND limit_key IS NOT NULL;
CREATE TABLE limit_state (
    key        TEXT PRIMARY KEY,
    tat        REAL,
    held_until REAL
);
"""

# When the next prioritised or limited job is due: their own indexes are in rank order,
# so without these the minimum due time reads every such planned row. Only prioritised
# and limited rows pay for them.
_V4 = """
CREATE INDEX jobs_rank_due ON jobs (next_attempt_at)
    WHERE state = 'planned' AND priority != 0 AND limit_key IS NULL;
CREATE INDEX jobs_limited_due ON jobs (next_attempt_at)
    WHERE state = 'planned' AND limit_key IS NOT NULL;
"""

#: MIGRATIONS[i] takes a database from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)
