"""The web tests' store fixture: one parameter per backend (memory, SQLite, PostgreSQL).

PostgreSQL runs in a schema of the test's own (``?schema=w_<unique>``), dropped after;
it is skipped with a reason when the server does not answer, and required under CI=true.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from store.store_helpers import POSTGRES_URL, postgres_up
from web_helpers import drop_schema, require

from syncward.store.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL on each backend, cleaned up after the test."""
    tag = uuid.uuid4().hex[:12]
    if request.param == "memory":
        yield f"memory://web-{tag}"
        MemoryStore.forget(f"web-{tag}")
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        require(postgres_up(), f"PostgreSQL at {POSTGRES_URL} does not answer")
        schema = f"w_{tag}"
        try:
            yield f"{POSTGRES_URL}?schema={schema}"
        finally:
            await drop_schema(schema)
