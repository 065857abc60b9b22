"""Choosing a backend by URL, and a runtime on each kind of store."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import syncward
from syncward.errors import ConfigError, MissingDependency, StoreError, StoreLocked
from syncward.jobs import JobState
from syncward.store import check_url, open_store, scheme_of
from syncward.store.base import Liveness
from syncward.store.memory import MemoryStore

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(("url", "scheme"), [
    ("sqlite:///jobs.db", "sqlite"), ("jobs.db", "sqlite"), ("memory://", "memory"),
    ("memory://x", "memory"), ("postgresql://u@h:5432/db", "postgresql"),
    ("postgres://u@h/db", "postgresql"), ("SQLITE:///x.db", "sqlite")])
def test_scheme_of(url: str, scheme: str) -> None:
    assert scheme_of(url) == scheme


@pytest.mark.parametrize("url", ["mysql://h/db", "redis://127.0.0.1:6379/0", ""])
def test_unknown_schemes_are_refused_naming_the_known_ones(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite:///") as info:
        scheme_of(url)
    assert repr(url) in str(info.value) or "empty" in str(info.value)


async def test_postgres_without_its_extra_names_the_pip_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "asyncpg" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependency) as info:
        await open_store("postgresql://postgres@127.0.0.1:5432/test")
    assert info.value.extra == "postgres"
    assert 'pip install "syncward[postgres]"' in str(info.value)


async def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    sqlite = await open_store(f"sqlite:///{tmp_path}/a.db")
    memory = await open_store("memory://")
    try:
        assert type(sqlite).__name__ == "SQLiteStore"
        assert isinstance(memory, MemoryStore)
        assert sqlite.liveness is memory.liveness is Liveness.EXCLUSIVE
    finally:
        await sqlite.aclose()
        await memory.aclose()


async def test_named_memory_stores_are_shared_in_the_process() -> None:
    first = await open_store("memory://shared-test")
    try:
        with pytest.raises(StoreLocked):
            await open_store("memory://shared-test")
        reader = await open_store("memory://shared-test", readonly=True)
        assert await reader.counts() == dict.fromkeys(JobState, 0)
        with pytest.raises(StoreError, match="does not exist"):
            await open_store("memory://never-made", readonly=True)
        assert (await open_store("memory://")) is not (await open_store("memory://"))
    finally:
        await first.aclose()
        MemoryStore.forget("shared-test")


def test_check_url(tmp_path: Path) -> None:
    assert check_url(f"sqlite:///{tmp_path}/new.db", must_exist=False) == f"{tmp_path}/new.db"
    with pytest.raises(ConfigError, match="does not exist"):
        check_url(f"sqlite:///{tmp_path}/new.db", must_exist=True)
    with pytest.raises(ConfigError, match="directory"):
        check_url(f"sqlite:///{tmp_path}/no/such/dir/x.db", must_exist=False)
    with pytest.raises(ConfigError, match="inside one process"):
        check_url("memory://", must_exist=False)
    assert check_url("memory://", must_exist=False, process_local_ok=True) == "memory://"


async def noop(job: syncward.Job, ctx: syncward.Context) -> dict[str, Any]:
    return {"n": job.identity["n"]}


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_a_runtime_on_each_kind_of_url(store: str, tmp_path: Path) -> None:
    url = store if store == "memory://" else f"sqlite:///{tmp_path}/jobs.db"
    with anyio.fail_after(10):
        async with syncward.Runtime(noop, store=url, concurrency=4) as rt:
            result = await rt.submit({"n": i} for i in range(50))
            assert (result.new, result.duplicates) == (50, 0)
            await rt.join()
            assert rt.stats().counts[JobState.SUCCEEDED] == 50
            assert (await rt.store.counts())[JobState.SUCCEEDED] == 50
            job = await rt.store.get_job(syncward.job_key({"n": 7}))
            assert job is not None and job.result == {"n": 7}


async def test_a_runtime_on_a_store_object_leaves_it_open_and_a_crash_is_recovered() -> None:
    store = MemoryStore()
    started = anyio.Event()
    release = anyio.Event()

    async def hang(job: syncward.Job, ctx: syncward.Context) -> None:
        started.set()
        await release.wait()

    with anyio.fail_after(10):
        async with syncward.Runtime(hang, store=store, concurrency=1) as rt:
            await rt.submit([{"n": 1}])
            await started.wait()
            rt.kill()  # as a crash: the lease is not given back
        assert (await store.counts())[JobState.LEASED] == 1  # still open, still readable
        async with syncward.Runtime(noop, store=store, concurrency=1) as rt:
            report = rt.reconcile_report
            assert report is not None and report.leases_requeued == 1
            await rt.join()
        job = await store.get_job(syncward.job_key({"n": 1}))
        assert job is not None and (job.state, job.attempts) == (JobState.SUCCEEDED, 2)
        assert [w.status for w in await store.workers()] == ["dead", "stopped"]
    await store.aclose()
