"""Rows of the SQL backends' ``jobs`` table, decoded once for all of them.

SQLite and PostgreSQL keep the same columns (a 32-byte key, JSON text for identity,
payload and result); the column lists and their decoding live here so the two backends
cannot read them differently.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from syncward.jobs import Job, JobState
from syncward.store.base import JobRow

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["JOB_COLUMNS", "LEASED_COLUMNS", "job_row", "leased_job"]

#: The columns `job_row` decodes, in its order.
JOB_COLUMNS = ("id, key, identity, payload, state, stage, attempts, max_attempts,"
               " next_attempt_at, lease_owner, lease_expires_at, fence, last_error, result,"
               " created_at, updated_at")
#: The columns `leased_job` decodes, in its order.
LEASED_COLUMNS = ("id, key, identity, payload, attempts, max_attempts, stage, fence,"
                  " lease_seconds, timeout, lease_expires_at")


def job_row(r: Sequence[Any]) -> JobRow:
    return JobRow(
        id=r[0], key=bytes(r[1]).hex(), identity=json.loads(r[2]), payload=json.loads(r[3]),
        state=JobState(r[4]), stage=r[5], attempts=r[6], max_attempts=r[7],
        next_attempt_at=r[8], lease_owner=r[9], lease_expires_at=r[10], fence=r[11],
        last_error=r[12], result=json.loads(r[13]) if r[13] is not None else None,
        created_at=r[14], updated_at=r[15])


def leased_job(r: Sequence[Any], default_lease_seconds: float) -> Job:
    """A leased row as a downloader receives it (``attempt`` counts the current one)."""
    return Job(id=r[0], key=bytes(r[1]).hex(), identity=json.loads(r[2]),
               payload=json.loads(r[3]), attempt=r[4], max_attempts=r[5], stage=r[6],
               fence=r[7], lease_seconds=r[8] if r[8] is not None else default_lease_seconds,
               lease_expires_at=r[10], timeout=r[9])
