"""Fixtures of the store contract suite: one ``backend`` parameter per store.

A new backend joins the suite by adding one entry to `store_helpers.BACKENDS` (and a
branch in `Backend.url`): every contract test then runs on it unchanged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from store_helpers import BACKENDS, POSTGRES_URL, drop_schemas, require_postgres

from syncward.store import open_store
from syncward.store.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from syncward.store.base import Store

@dataclass
class Backend:
    """Opens stores of one backend by name; the same name is the same store again."""

    name: str
    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    opened: list[Store] = field(default_factory=list)
    names: set[str] = field(default_factory=set)

    def url(self, db: str = "jobs") -> str:
        self.names.add(db)
        if self.name == "memory":
            return f"memory://contract-{self.tag}-{db}"
        if self.name == "postgres":
            return f"{POSTGRES_URL}?schema=t_{self.tag}_{db}"
        return f"sqlite:///{self.tmp}/{db}.db"

    async def open(self, db: str = "jobs", **kwargs: Any) -> Store:
        store = await open_store(self.url(db), **kwargs)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.opened):
            await store.aclose()
        if self.name == "memory":
            for db in self.names:
                MemoryStore.forget(f"contract-{self.tag}-{db}")
        if self.name == "postgres":
            await drop_schemas(f"t_{self.tag}_")


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "postgres":
        require_postgres()
    b = Backend(request.param, tmp_path)
    try:
        yield b
    finally:
        await b.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()
