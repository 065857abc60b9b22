"""Import on a shared store: a key another writer inserts between the lookup and the
insert. PostgreSQL only (the one store several runtimes write); the rules every backend
shares are in the contract suite."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from store_helpers import POSTGRES_URL, drop_schemas, require_postgres

from syncward.imports import ImportRecord, to_import_job
from syncward.jobs import JobState
from syncward.messages import Import, ImportResult
from syncward.store import open_store
from syncward.store.postgres import tx as pg_tx


async def test_postgres_import_racing_another_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key another runtime inserts between the lookup and the insert (PostgreSQL only:
    a shared store) is compared with what that writer committed, not counted as new."""
    require_postgres()
    tag = f"t_imp_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}?schema={tag}"
    a, b = await open_store(url), await open_store(url)
    try:
        def job(n: int, state: JobState) -> Any:
            return to_import_job(ImportRecord(identity={"n": n}, state=state),
                                 max_attempts=3, line=n)

        real = pg_tx.PostgresTx.existing
        raced = False

        async def existing(self: Any, keys: Any) -> Any:
            nonlocal raced
            found = await real(self, keys)
            if not raced:
                raced = True  # the other writer commits after our lookup
                await b.apply([Import((job(1, JobState.SUCCEEDED), job(2, JobState.FAILED)))],
                              now=1.0)
            return found

        monkeypatch.setattr(pg_tx.PostgresTx, "existing", existing)
        applied = await a.apply([Import((job(1, JobState.SUCCEEDED), job(2, JobState.SKIPPED),
                                         job(3, JobState.SUCCEEDED)))], now=2.0)
        (result,) = applied.results
        assert isinstance(result, ImportResult)
        assert result.new == {JobState.SUCCEEDED: 1}
        assert (result.unchanged, result.conflicts) == (1, 1)
        assert result.conflicts_listed[0].existing is JobState.FAILED
        assert applied.deltas == {JobState.SUCCEEDED: 1}
        counts = await a.counts()
        assert (counts[JobState.SUCCEEDED], counts[JobState.FAILED]) == (2, 1)
    finally:
        await a.aclose()
        await b.aclose()
        await drop_schemas(tag)
