"""Review of limits per key at the runtime: a key function that fails on one job's data."""

from __future__ import annotations

from typing import Any

import pytest

from syncward import InvalidJob, Job, JobSpec, Limit, Runtime


async def handler(job: Job, ctx: Any) -> None:
    return None


def host_of(spec: JobSpec) -> str:
    return str(spec.identity["url"]).split("/")[2]  # KeyError for a job without a url


async def test_a_key_function_failing_on_one_job_is_that_job_s_fault() -> None:
    """A key function that raises on a job's data makes that job invalid (InvalidJob, as a
    bad priority does: the web API answers 400, a schedule's submit is refused), not a
    configuration error: `limit_key_of` raises ConfigError, which `Runtime.submit` lets
    through, so POST /api/jobs answers 500 "internal error" (routes catch InvalidJob)."""
    async with Runtime(handler, store="memory://",
                       limits=[Limit("host", key=host_of, concurrency=1)]) as rt:
        with pytest.raises(InvalidJob, match="host"):
            await rt.submit([JobSpec({"n": 1})])
