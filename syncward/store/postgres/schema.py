"""PostgreSQL schema, versioned in ``schema_version`` with forward migrations only.

Everything lives in one PostgreSQL schema (``syncward`` unless the URL's ``?schema=``
says otherwise), so several syncward stores can share a database and none touches
``public``. Migrations run in one transaction under a transaction-level advisory lock, so
processes starting together apply each migration once; a database whose version is newer
than this syncward knows is refused (`SchemaTooNew`), never altered.

Design notes. Keys are ``bytea`` (32 bytes) beside a ``bigint`` identity primary key, as in
SQLite. Times are ``double precision`` seconds since the epoch, as everywhere in syncward.
``counts`` holds per-writer running totals by state, maintained in the same transactions
as the rows they count: every process can read the store's totals with a tiny query
(``sum(n) GROUP BY state``), and no two writers update the same counter row, so the
counters cost no lock contention.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_V1 = """
CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key              bytea  NOT NULL UNIQUE,
    identity         text   NOT NULL,
    payload          text   NOT NULL,
    state            text   NOT NULL,
    stage            text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    next_attempt_at  double precision NOT NULL,
    lease_owner      text,
    lease_boot       text,
    lease_expires_at double precision,
    lease_seconds    double precision,
    timeout          double precision,
    fence            bigint NOT NULL DEFAULT 0,
    ended_fence      bigint,
    ended_by         text,
    last_error       text,
    result           text,
    created_by       bigint,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL
);
CREATE INDEX jobs_due   ON jobs (next_attempt_at, id) WHERE state = 'planned';
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'leased';
CREATE INDEX jobs_boot  ON jobs (lease_boot) WHERE state = 'leased';
CREATE INDEX jobs_state ON jobs (state, id);

CREATE TABLE ops (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op_key       bytea  NOT NULL UNIQUE,
    job_id       bigint NOT NULL,
    kind         text   NOT NULL,
    result       text   NOT NULL,
    committed_at double precision NOT NULL
);

CREATE TABLE workers (
    name         text PRIMARY KEY,
    boot_id      text NOT NULL UNIQUE,
    pid          integer,
    host         text,
    status       text NOT NULL,
    started_at   double precision,
    heartbeat_at double precision,
    lock_key     integer NOT NULL
);

CREATE TABLE runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token       text NOT NULL UNIQUE,
    source      text NOT NULL,
    options     text NOT NULL,
    status      text NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision,
    boot_id     text
);
CREATE TABLE run_entries (
    run_id bigint NOT NULL,
    line   bigint NOT NULL,
    key    bytea  NOT NULL,
    PRIMARY KEY (run_id, line)
);
CREATE INDEX run_entries_key ON run_entries (key);
CREATE TABLE run_rejects (
    run_id bigint NOT NULL,
    line   bigint NOT NULL,
    reason text   NOT NULL,
    raw    text   NOT NULL,
    PRIMARY KEY (run_id, line)
);

CREATE TABLE rejections (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      double precision NOT NULL,
    job_id  bigint,
    message text NOT NULL,
    reason  text NOT NULL
);

CREATE TABLE events (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     double precision NOT NULL,
    kind   text NOT NULL,
    detail text NOT NULL
);

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO meta (key, value) VALUES ('worker_seq', '0');

CREATE TABLE counts (
    writer text   NOT NULL,
    state  text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (writer, state)
);

CREATE TABLE published (
    boot_id text PRIMARY KEY,
    status  text NOT NULL,
    at      double precision NOT NULL
)
"""

# Priorities and limits per key: see the SQLite schema's version 3 for the two disjoint
# partial indexes of planned jobs.
_V2 = """
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN limit_key text;
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (next_attempt_at, id)
    WHERE state = 'planned' AND priority = 0 AND limit_key IS NULL;
CREATE INDEX jobs_steered ON jobs (limit_key, (next_attempt_at - priority), id)
    WHERE state = 'planned' AND (priority <> 0 OR limit_key IS NOT NULL);
CREATE TABLE limit_state (
    key        text PRIMARY KEY,
    tat        double precision,
    held_until double precision
)
"""

#: MIGRATIONS[i] takes a schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)
